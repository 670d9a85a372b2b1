"""Console sink: readable tables, truncation, stream choice, at-least-once contract."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from headwater.errors import ConfigError
from headwater.sinks.console import ConsoleSink


def events(n: int) -> pa.RecordBatch:
    return pa.record_batch({"user": [f"u{i}" for i in range(n)], "clicks": [i if i % 2 else None for i in range(n)]})


def test_prints_a_table_with_header_and_rows(capsys: pytest.CaptureFixture[str]) -> None:
    part = ConsoleSink().build_part(0, 1)
    part.write(events(3))
    assert capsys.readouterr().out.splitlines() == [
        "user | clicks",
        "-----+-------",
        "u0   |   null",
        "u1   |      1",
        "u2   |   null",
    ]


def test_truncates_and_says_how_many_rows_were_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    part = ConsoleSink(limit_rows_per_batch=2).build_part(0, 1)
    part.write(events(5))
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["u0   |   null", "u1   |      1", "... 3 more rows"]


def test_stderr_and_subtask_labels(capsys: pytest.CaptureFixture[str]) -> None:
    part = ConsoleSink(stream="stderr").build_part(1, 2)
    part.write(events(1))
    part.write(events(0))  # empty batches print nothing
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0] == "[subtask 1]"
    assert captured.err.count("user") == 1


def test_long_values_are_cut(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleSink().build_part(0, 1).write(pa.record_batch({"text": ["x" * 100 + "\nmore"]}))
    row = capsys.readouterr().out.splitlines()[2]
    assert len(row) == 40 and row.endswith("…")


def test_is_at_least_once_with_no_op_commit() -> None:
    sink = ConsoleSink()
    assert sink.exactly_once is False
    part = pickle.loads(pickle.dumps(sink)).build_part(0, 1)
    assert part.prepare(1) is None
    part.commit(None)
    part.abort()
    part.close()


@pytest.mark.parametrize("kwargs", [{"limit_rows_per_batch": -1}, {"limit_rows_per_batch": "5"}, {"stream": "file"}])
def test_bad_configuration_is_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ConsoleSink(**kwargs)  # type: ignore[arg-type]
