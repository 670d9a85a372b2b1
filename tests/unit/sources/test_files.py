"""File sources: discovery, schemas, streaming reads, resume after exactly n rows, and error messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.engine.failures import is_transient
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, drain
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource

ROWS = 1_000
ROW_GROUP = 128  # resume offsets cross row-group boundaries
BATCH = 100  # deliberately not a divisor of ROW_GROUP


def make_table(n: int = ROWS, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids], "x": [i / 4 for i in ids]})


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


def write_csv(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, path)
    return path


def write_jsonl(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return path


WRITERS = {"parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl}
SCHEMA = make_table(1).schema


def make_source(fmt: str, path: Path | str, batch_size: int = BATCH) -> Source:
    if fmt == "parquet":
        return ParquetSource(path, batch_size=batch_size)
    if fmt == "csv":
        return CsvSource(path, schema=SCHEMA, batch_size=batch_size, block_size=4096)
    return JsonLinesSource(path, schema=SCHEMA, batch_size=batch_size, block_size=4096)


def read_all(source: Source, part: str, state: int | None = None) -> pa.Table:
    batches = list(drain(source.build_part(part, state)))
    for batch in batches:
        assert batch is not None and 0 < batch.num_rows <= source.batch_size  # type: ignore[attr-defined]
    return pa.Table.from_batches(batches, schema=source.schema())


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    return {fmt: writer(root / f"data.{fmt}", make_table()) for fmt, writer in WRITERS.items()}


# --- round trips and schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
def test_reads_the_whole_file_in_bounded_batches(fmt: str, sample_files: dict[str, Path]) -> None:
    source = make_source(fmt, sample_files[fmt])
    assert source.bounded
    assert source.list_parts() == [f"data.{fmt}"]
    assert source.schema() == SCHEMA
    assert read_all(source, f"data.{fmt}").equals(make_table())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_sources_infer_the_schema_from_the_first_file(fmt: str, sample_files: dict[str, Path]) -> None:
    source = CsvSource(sample_files[fmt]) if fmt == "csv" else JsonLinesSource(sample_files[fmt])
    assert source.schema() == SCHEMA
    assert read_all(source, f"data.{fmt}").equals(make_table())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_given_schema_is_produced_exactly(fmt: str, sample_files: dict[str, Path]) -> None:
    schema = pa.schema([pa.field("x", pa.float32()), pa.field("id", pa.int32(), nullable=False)])
    source = (CsvSource if fmt == "csv" else JsonLinesSource)(sample_files[fmt], schema=schema)
    table = read_all(source, f"data.{fmt}")
    assert table.schema == schema
    assert table.column("id").to_pylist() == list(range(ROWS))


def test_parquet_columns_select_and_order(sample_files: dict[str, Path]) -> None:
    source = ParquetSource(sample_files["parquet"], columns=["x", "id"])
    assert source.schema().names == ["x", "id"]
    assert read_all(source, "data.parquet").equals(make_table().select(["x", "id"]))
    with pytest.raises(ConfigError, match="'nope'"):
        ParquetSource(sample_files["parquet"], columns=["nope"]).schema()


def test_a_projected_parquet_source_decodes_only_the_pipelines_columns(sample_files: dict[str, Path]) -> None:
    source = ParquetSource(sample_files["parquet"])
    projected = source.project(["x", "id"])  # the planner asks in any order; the schema's order is kept
    names = [n for n in source.schema().names if n in ("x", "id")]
    assert projected.schema().names == names and source.schema() == make_table().schema
    assert projected.list_parts() == source.list_parts()
    assert read_all(projected, "data.parquet").equals(make_table().select(names))


def test_parquet_files_that_disagree_name_the_first_that_differs(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", make_table(5))
    write_parquet(tmp_path / "b.parquet", make_table(5))
    write_parquet(tmp_path / "c.parquet", make_table(5).drop_columns(["x"]))
    write_parquet(tmp_path / "d.parquet", make_table(5).drop_columns(["name"]))
    with pytest.raises(ConfigError) as info:
        ParquetSource(tmp_path).schema()
    message = str(info.value)
    assert "c.parquet" in message and "d.parquet" not in message
    assert "x: double" in message  # both schemas are shown


def test_source_pickles_with_its_configuration(sample_files: dict[str, Path]) -> None:
    source = make_source("csv", sample_files["csv"])
    clone = pickle.loads(pickle.dumps(source))
    assert clone.list_parts() == source.list_parts()
    assert read_all(clone, "data.csv").equals(make_table())


# --- discovery -----------------------------------------------------------------------------------------------


def test_directory_discovery_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    write_parquet(tmp_path / "b.parquet", make_table(3))
    write_parquet(tmp_path / "a" / "z.parquet", make_table(3))
    write_parquet(tmp_path / "a" / "b" / "y.parquet", make_table(3))
    write_parquet(tmp_path / "_staging" / "part-0.parquet", make_table(3))
    write_parquet(tmp_path / ".hidden" / "h.parquet", make_table(3))
    write_parquet(tmp_path / "_SUCCESS.parquet", make_table(3))
    write_parquet(tmp_path / ".x.parquet", make_table(3))
    (tmp_path / "notes.txt").write_text("not data")
    source = ParquetSource(tmp_path)
    assert source.list_parts() == ["a/b/y.parquet", "a/z.parquet", "b.parquet"]
    assert ParquetSource(tmp_path).list_parts() == source.list_parts()  # stable


def test_glob_discovery_names_parts_relative_to_the_glob_root(tmp_path: Path) -> None:
    for day in ("2024-01-01", "2024-01-02"):
        write_csv(tmp_path / "events" / day / "part.csv", make_table(4))
    write_csv(tmp_path / "events" / "_tmp" / "part.csv", make_table(4))
    write_csv(tmp_path / "events" / "2024-01-01" / "skip.txt", make_table(4))
    source = CsvSource(str(tmp_path / "events" / "*" / "*.csv"))
    assert source.list_parts() == ["2024-01-01/part.csv", "2024-01-02/part.csv"]
    recursive = CsvSource(str(tmp_path / "**" / "*.csv"))
    assert recursive.list_parts() == ["events/2024-01-01/part.csv", "events/2024-01-02/part.csv"]
    assert all(read_all(source, part).num_rows == 4 for part in source.list_parts())


def test_missing_path_or_no_files_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        ParquetSource(tmp_path / "missing")
    assert "missing" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty"):
        JsonLinesSource(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"\*\.csv"):
        CsvSource(str(tmp_path / "*.csv"))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_batch_size_is_a_config_error(bad: object, sample_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        ParquetSource(sample_files["parquet"], batch_size=bad)  # type: ignore[arg-type]


# --- resume --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
@settings(max_examples=40, deadline=None)
@given(offset=st.integers(min_value=0, max_value=ROWS))
def test_resume_after_n_rows_yields_exactly_the_rest(fmt: str, offset: int, sample_files: dict[str, Path]) -> None:
    source = make_source(fmt, sample_files[fmt])
    assert read_all(source, f"data.{fmt}", offset).equals(make_table().slice(offset))


@pytest.mark.parametrize("fmt", WRITERS)
@settings(max_examples=25, deadline=None)
@given(batches_before_crash=st.integers(min_value=0, max_value=12), batch_size=st.integers(1, 300))
def test_snapshot_then_resume_adds_up_to_a_clean_read(
    fmt: str, batches_before_crash: int, batch_size: int, sample_files: dict[str, Path]
) -> None:
    source = make_source(fmt, sample_files[fmt], batch_size=batch_size)
    part = source.list_parts()[0]
    first = source.build_part(part, None)
    head: list[pa.RecordBatch] = []
    for _ in range(batches_before_crash):
        try:
            batch = first.next_batch()
        except StopIteration:
            break
        assert batch is not None
        head.append(batch)
    state = first.snapshot()
    first.close()
    assert state == sum(b.num_rows for b in head)
    rest = read_all(source, part, pickle.loads(pickle.dumps(state)))
    assert pa.concat_tables([pa.Table.from_batches(head, schema=SCHEMA), rest]).equals(make_table())


def test_resume_at_end_stops_and_past_end_is_a_source_error(sample_files: dict[str, Path]) -> None:
    source = make_source("parquet", sample_files["parquet"])
    with pytest.raises(StopIteration):
        source.build_part("data.parquet", ROWS).next_batch()
    for fmt in WRITERS:
        source = make_source(fmt, sample_files[fmt])
        with pytest.raises(SourceError, match=f"data.{fmt}"):
            source.build_part(f"data.{fmt}", ROWS + 1).next_batch()


def test_unknown_partition_or_bad_state_is_a_source_error(sample_files: dict[str, Path]) -> None:
    source = make_source("parquet", sample_files["parquet"])
    with pytest.raises(SourceError, match="other.parquet"):
        source.build_part("other.parquet", None)
    with pytest.raises(SourceError, match="row count"):
        source.build_part("data.parquet", "12")


# --- unreadable files ----------------------------------------------------------------------------------------


def test_corrupt_parquet_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    write_parquet(tmp_path / "good.parquet", make_table(10))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    source = ParquetSource(tmp_path)
    with pytest.raises(SourceError, match="bad.parquet"):
        source.schema()
    with pytest.raises(SourceError, match="bad.parquet") as info:
        source.build_part("bad.parquet", None).next_batch()
    assert "Parquet" in str(info.value)
    assert source.build_part("good.parquet", None).next_batch().num_rows == 10  # other files still read


def test_truncated_parquet_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "t.parquet", make_table()).read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="t.parquet"):
        ParquetSource(tmp_path / "t.parquet").build_part("t.parquet", None).next_batch()


def test_csv_value_that_does_not_fit_the_schema_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (tmp_path / "b.csv").write_text("id,name\n3,z\nfour,w\n")
    source = CsvSource(tmp_path)
    assert read_all(source, "a.csv").num_rows == 2
    with pytest.raises(SourceError, match="b.csv") as info:
        read_all(source, "b.csv")
    assert "schema=" in str(info.value)


def test_broken_json_line_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n{"id": 2\n')
    source = JsonLinesSource(tmp_path, schema=pa.schema([("id", pa.int64())]))
    with pytest.raises(SourceError, match="a.jsonl"):
        read_all(source, "a.jsonl")


def test_unclosed_csv_quote_gives_a_short_message_naming_the_file_and_row(tmp_path: Path) -> None:
    """pyarrow quotes the whole unterminated value (the rest of the block, ~1 MB here) in its message."""
    path = tmp_path / "q.csv"
    path.write_text('id,amount\n1,2\n3,"4\n' + "5,6\n" * 262_144)
    with pytest.raises(SourceError) as info:
        read_all(CsvSource(path), "q.csv")
    message = str(info.value)
    assert len(message) < 500, message[:600]
    assert str(path) in message and "Row #3" in message and "unclosed quote" in message
    assert "\n" not in message and "more characters" in message


def test_empty_text_file_reads_no_rows(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("")
    source = JsonLinesSource(tmp_path, schema=pa.schema([("id", pa.int64())]))
    assert read_all(source, "e.jsonl").num_rows == 0


@pytest.mark.parametrize("where", ["early", "late"])
def test_unclosed_quote_in_a_string_column_fails_instead_of_swallowing_rows(tmp_path: Path, where: str) -> None:
    """pyarrow reads everything after an unclosed quote as one value without an error (300,002 rows came back
    as 37,862): the source refuses a value with a line break, naming the row and column."""
    before = 2 if where == "early" else 200_000
    path = tmp_path / "s.csv"
    path.write_text("id,name\n" + "1,a\n" * before + '3,"x\n' + "5,y\n" * 100_000)
    with pytest.raises(SourceError) as info:
        read_all(CsvSource(path), "s.csv")
    message = str(info.value)
    assert f"data row {before + 1}, column 'name'" in message and "unclosed quote" in message
    assert str(path) in message and len(message) < 500
    assert not is_transient(info.value)


def test_quoted_values_without_line_breaks_still_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text('id,name\n1,"a, b"\n2,"say ""hi"""\n')
    assert read_all(CsvSource(path), "ok.csv").to_pylist() == [{"id": 1, "name": "a, b"}, {"id": 2, "name": 'say "hi"'}]
