"""File sinks: two-phase commit into a directory, visibility to readers, idempotence, abort and naming."""

from __future__ import annotations

import json
import os
import pickle
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from headwater.engine.failures import is_transient
from headwater.engine.ownership import sink_owner
from headwater.errors import ConfigError, SinkError
from headwater.sinks.base import SinkOwner
from headwater.sinks.files import CsvSink, FileCommitToken, FileSink, JsonLinesSink, ParquetSink
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("x", pa.float64())])


def batch(start: int, n: int) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    return pa.record_batch([ids, [f"n{i}" for i in ids], [i / 2 for i in ids]], schema=SCHEMA)


SINKS: dict[str, type[FileSink]] = {"parquet": ParquetSink, "csv": CsvSink, "jsonl": JsonLinesSink}


def read_back(fmt: str, path: Path) -> pa.Table:
    """Read the directory like a user would; sorted by id. Empty when nothing is committed."""
    if fmt == "parquet":
        dataset = ds.dataset(path, format="parquet")
        return dataset.to_table().sort_by("id") if dataset.files else SCHEMA.empty_table()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.exists() else []
    if not files:
        return SCHEMA.empty_table()
    if fmt == "csv":
        frame = pd.concat([pd.read_csv(f) for f in files])
    else:
        frame = pd.concat([pd.read_json(f, lines=True) for f in files])
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False).sort_by("id")


WRITER_ID = re.compile(r"-[0-9a-f]{16}(\.\w+)$")


def plain(names: list[str]) -> list[str]:
    """``names`` without the per-writer id (``part-000001-0000-0000-<16 hex>.csv`` -> ``part-000001-0000-0000.csv``)."""
    return [WRITER_ID.sub(r"\1", name) for name in names]


def visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file()) if path.exists() else []


def staged(path: Path) -> list[str]:
    """Names of the staged files under ``_staging`` (every owner's area; not the ``_owner`` records)."""
    staging = path / "_staging"
    return sorted(p.name for p in staging.rglob("*") if p.is_file() and p.name != "_owner")


@pytest.mark.parametrize("fmt", SINKS)
def test_round_trip_through_the_matching_source(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = SINKS[fmt](out).build_part(0, 1)
    part.write(batch(0, 5))
    part.write(batch(5, 7))
    token = part.prepare(1)
    part.commit(token)
    part.close()
    assert plain(visible(out)) == [f"part-000001-0000-0000.{fmt}"]
    assert read_back(fmt, out).equals(pa.Table.from_batches([batch(0, 12)]))
    source = {"parquet": ParquetSource, "csv": CsvSource, "jsonl": JsonLinesSource}[fmt](out)
    partition = source.build_part(source.list_parts()[0], None)
    assert partition.next_batch() == batch(0, 12)


@pytest.mark.parametrize("fmt", SINKS)
def test_nothing_is_visible_before_commit(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = SINKS[fmt](out).build_part(0, 1)
    part.write(batch(0, 3))
    assert read_back(fmt, out).num_rows == 0
    token = part.prepare(1)
    assert read_back(fmt, out).num_rows == 0
    assert plain(staged(out)) == [f"part-000001-0000-0000.{fmt}"]
    part.commit(token)
    assert read_back(fmt, out).num_rows == 3
    assert staged(out) == []


def test_commit_is_idempotent_also_from_a_new_incarnation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ParquetSink(out)
    part = sink.build_part(0, 1)
    part.write(batch(0, 4))
    token = pickle.loads(pickle.dumps(part.prepare(7)))  # tokens travel to the coordinator
    part.commit(token)
    part.commit(token)
    part.close()
    # "Crash" after commit, before the engine recorded it: the recovered subtask commits the token again.
    again = sink.build_part(0, 1)
    again.abort()
    again.commit(token)
    assert plain(visible(out)) == ["part-000007-0000-0000.parquet"]
    assert read_back("parquet", out).num_rows == 4


def test_a_crash_between_prepare_and_commit_is_recovered_by_committing_the_token(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = CsvSink(out)
    part = sink.build_part(0, 1)
    part.write(batch(0, 4))
    token = part.prepare(3)
    part.write(batch(4, 2))  # written after the checkpoint, then the worker dies
    del part
    recovered = sink.build_part(0, 1)
    recovered.abort()  # drops the uncommitted in-progress rows, keeps the prepared file
    assert plain(staged(out)) == ["part-000003-0000-0000.csv"]
    recovered.commit(token)
    assert read_back("csv", out).equals(pa.Table.from_batches([batch(0, 4)]))


def test_abort_removes_uncommitted_staging_of_this_subtask_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = JsonLinesSink(out)
    mine, other = sink.build_part(0, 2), sink.build_part(1, 2)
    mine.write(batch(0, 2))
    other.write(batch(10, 2))
    mine_token = mine.prepare(1)
    mine.write(batch(2, 2))
    assert len(staged(out)) == 3
    mine.abort()
    left = staged(out)
    assert len(left) == 2 and "part-000001-0000-0000.jsonl" in plain(left)  # the prepared file stays
    assert any(n.startswith("inprogress-0001-") for n in left)  # the other subtask's file is untouched
    mine.commit(mine_token)
    assert read_back("jsonl", out).equals(pa.Table.from_batches([batch(0, 2)]))
    # After abort the partition keeps working and the aborted rows never appear.
    mine.write(batch(4, 1))
    mine.commit(mine.prepare(2))
    assert read_back("jsonl", out).column("id").to_pylist() == [0, 1, 4]


def test_subtasks_and_checkpoints_never_collide(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ParquetSink(out)
    parts = [sink.build_part(i, 2) for i in range(2)]
    expected = 0
    for checkpoint in (1, 2):
        tokens = []
        for i, part in enumerate(parts):
            part.write(batch(100 * checkpoint + 10 * i, 3))
            expected += 3
            tokens.append(part.prepare(checkpoint))
        for part, token in zip(parts, tokens):
            part.commit(token)
    assert plain(visible(out)) == [
        "part-000001-0000-0000.parquet",
        "part-000001-0001-0000.parquet",
        "part-000002-0000-0000.parquet",
        "part-000002-0001-0000.parquet",
    ]
    assert read_back("parquet", out).num_rows == expected


def test_empty_prepare_returns_a_token_without_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = ParquetSink(out).build_part(0, 1)
    token = part.prepare(1)
    assert token == FileCommitToken(1, 0, ())
    part.commit(token)
    part.write(batch(0, 0))  # an empty batch opens no file
    assert part.prepare(2).files == ()
    assert visible(out) == [] and staged(out) == []


def test_max_rows_per_file_rolls_over_within_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = CsvSink(out, max_rows_per_file=4).build_part(2, 3)
    part.write(batch(0, 6))
    part.write(batch(6, 3))
    part.commit(part.prepare(5))
    assert plain(visible(out)) == ["part-000005-0002-0000.csv", "part-000005-0002-0001.csv", "part-000005-0002-0002.csv"]
    assert [len(pd.read_csv(out / name)) for name in visible(out)] == [4, 4, 1]


def test_schema_change_is_a_sink_error_naming_path_and_both_schemas(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = ParquetSink(out).build_part(0, 1)
    part.write(batch(0, 2))
    changed = pa.record_batch({"id": ["a"], "name": ["b"], "x": [1.0]})
    with pytest.raises(SinkError) as info:
        part.write(changed)
    message = str(info.value)
    assert str(out) in message and "id: int64" in message and "id: string" in message


def test_commit_of_a_lost_staged_file_is_a_sink_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = ParquetSink(out).build_part(0, 1)
    part.write(batch(0, 2))
    token = part.prepare(1)
    os.remove(token.files[0][0])
    with pytest.raises(SinkError, match=r"part-000001-0000-0000-[0-9a-f]{16}\.parquet"):
        part.commit(token)


def test_json_lines_writes_temporal_decimal_and_binary_values_as_strings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = JsonLinesSink(out).build_part(0, 1)
    values = pa.record_batch(
        {
            "ts": pa.array([datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us")),
            "d": pa.array([Decimal("1.50")], pa.decimal128(5, 2)),
            "b": pa.array([b"\x00\xff"]),
        }
    )
    part.write(values)
    part.commit(part.prepare(1))
    row = json.loads((out / visible(out)[0]).read_text())
    assert row == {"ts": "2024-01-02T03:04:05", "d": "1.50", "b": "AP8="}
    source = JsonLinesSource(out, schema=pa.schema([("ts", pa.timestamp("us")), ("d", pa.string())]))
    assert source.build_part(source.list_parts()[0], None).next_batch() == values.select(["ts"]).append_column(
        "d", pa.array(["1.50"])
    )


def test_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ParquetSink(tmp_path / "file")
    with pytest.raises(ConfigError, match="compression"):
        ParquetSink(tmp_path / "out", compression="nope")
    with pytest.raises(ConfigError, match="max_rows_per_file"):
        CsvSink(tmp_path / "out", max_rows_per_file=0)
    with pytest.raises(ConfigError, match="out of range"):
        CsvSink(tmp_path / "out").build_part(2, 2)
    assert pickle.loads(pickle.dumps(ParquetSink(tmp_path / "out"))).path == str(tmp_path / "out")


def test_a_file_uri_goes_through_pyarrow_fs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = ParquetSink(f"file://{out}").build_part(0, 1)
    part.write(batch(0, 3))
    part.commit(part.prepare(1))
    assert plain(visible(out)) == ["part-000001-0000-0000.parquet"]


# -- ownership, names that never collide, no overwrite, clean-up (issue 16) --------------------------------------

def test_two_writers_with_the_same_subtask_and_checkpoint_never_share_a_file_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tokens = []
    for start in (0, 100):  # two sinks (or jobs, or attempts) on one directory, both at checkpoint 1, subtask 0
        part = ParquetSink(out).build_part(0, 1)
        part.write(batch(start, 5))
        tokens.append(part.prepare(1))
        part.commit(tokens[-1])
    assert len(set(visible(out))) == 2 and plain(visible(out)) == ["part-000001-0000-0000.parquet"] * 2
    assert read_back("parquet", out).num_rows == 10


def test_commit_never_overwrites_a_file_it_did_not_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = CsvSink(out).build_part(0, 1)
    part.write(batch(0, 3))
    token = part.prepare(1)
    staged_path, final_path = token.files[0]
    Path(final_path).write_text("someone else's file\n")
    with pytest.raises(SinkError, match="never overwrite") as raised:
        part.commit(token)
    assert Path(final_path).read_text() == "someone else's file\n" and Path(staged_path).exists()
    assert not is_transient(raised.value)  # a restart would meet the same file: not retried


def test_a_commit_interrupted_between_link_and_unlink_completes_on_retry(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part = ParquetSink(out).build_part(0, 1)
    part.write(batch(0, 3))
    token = part.prepare(1)
    staged_path, final_path = token.files[0]
    os.link(staged_path, final_path)  # the crash came before the staged name was removed
    part.commit(token)
    assert staged(out) == [] and visible(out) == [Path(final_path).name]
    assert read_back("parquet", out).num_rows == 3


def test_files_already_in_the_directory_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.Table.from_batches([batch(1000, 2)]), out / "earlier.parquet")
    for run in range(2):  # two runs one after the other, both starting at checkpoint 1
        part = ParquetSink(out).build_part(0, 1)
        part.write(batch(10 * run, 4))
        part.commit(part.prepare(1))
    assert "earlier.parquet" in visible(out) and len(visible(out)) == 3
    assert read_back("parquet", out).num_rows == 10


def test_clean_up_deletes_staged_files_no_token_names_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = JsonLinesSink(out)
    committed = sink.build_part(0, 3)
    committed.write(batch(0, 2))
    committed.commit(committed.prepare(1))
    kept = sink.build_part(1, 3)
    kept.write(batch(10, 2))
    kept_token = kept.prepare(2)  # prepared for the checkpoint being restored
    orphan = sink.build_part(2, 3)
    orphan.write(batch(20, 2))
    orphan.prepare(3)  # prepared for a checkpoint that never completed
    orphan.write(batch(30, 2))  # in progress when the attempt died
    (out / "_staging" / "unchecked" / "inprogress-0007-deadbeef.jsonl").write_text("{}\n")  # a wider earlier run
    (out / "_staging" / "unchecked" / "notes.txt").write_text("not the sink's")
    sink.clean_up([kept_token])
    assert staged(out) == sorted(["notes.txt", Path(kept_token.files[0][0]).name])
    assert read_back("jsonl", out).num_rows == 2  # committed output untouched
    sink.build_part(1, 3).commit(kept_token)
    assert read_back("jsonl", out).num_rows == 4


def test_clean_up_never_deletes_files_another_checkpointed_job_prepared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    job_a = ParquetSink(out).staging_as(sink_owner(tmp_path / "chkA"))
    crashed = job_a.build_part(0, 1)
    crashed.write(batch(0, 3))
    a_token = crashed.prepare(7)  # checkpoint 7 of job A completed; A crashed before its sink committed it
    crashed.write(batch(3, 2))  # in progress when A crashed
    ended = ParquetSink(out).build_part(0, 1)  # a run without checkpointing that was killed
    ended.write(batch(100, 2))
    ended.prepare(1)
    for other in (ParquetSink(out), ParquetSink(out).staging_as(sink_owner(tmp_path / "chkB"))):
        with caplog.at_level("WARNING", logger="headwater.sinks.files"):
            other.clean_up([])  # job B (unchecked, then checkpointed) settles the same directory
    assert len(staged(out)) == 2 and Path(a_token.files[0][0]).name in staged(out)  # A's files are A's
    assert any(n.startswith("inprogress-0000-") for n in staged(out))
    assert str(tmp_path / "chkA") in caplog.text and "kept 1 prepared file(s)" in caplog.text
    record = out / "_staging" / sink_owner(tmp_path / "chkB").key / "_owner"
    assert json.loads(record.read_text()) == {"checkpoint_dir": str(tmp_path / "chkB")}
    job_a.build_part(0, 1).commit(a_token)  # A resumes: checkpoint 7 commits
    job_a.clean_up([a_token])  # and A's own leftovers go
    assert staged(out) == [] and read_back("parquet", out).column("id").to_pylist() == [0, 1, 2]


def test_a_sinks_owner_is_derived_from_the_normalised_checkpoint_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    owner = sink_owner(tmp_path / "real" / "chk")
    assert owner == sink_owner(tmp_path / "link" / "chk") == sink_owner(f"file://{tmp_path}/real/chk")
    assert re.fullmatch(r"job-[0-9a-f]{16}", owner.key) and owner.checkpoint_dir == str(tmp_path / "real" / "chk")
    assert owner != sink_owner(tmp_path / "real" / "chk2")
    assert sink_owner(None) == SinkOwner() and sink_owner(None).key == "unchecked"
    sink = ParquetSink(tmp_path / "out")
    bound = sink.staging_as(owner)
    assert sink.owner == SinkOwner() and bound.owner == owner  # the user's sink object is not changed
    part = bound.build_part(0, 1)
    part.write(batch(0, 1))
    assert Path(part.prepare(1).files[0][0]).parent == tmp_path / "out" / "_staging" / owner.key


def test_a_file_sink_owns_its_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert ParquetSink(tmp_path / "link" / "out").owned_locations() == (str(tmp_path / "real" / "out"),)
    assert ParquetSink(f"file://{tmp_path}/out").owned_locations() == (str(tmp_path / "out"),)
