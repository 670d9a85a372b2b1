"""The test helpers themselves: TestingSource's batching, resume and EOF / ABORT / PAUSE markers, and
TestingSink's commit-only visibility."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import SimulatedCrashError
from headwater.sources import testing as testing_module
from headwater.sources.base import SourcePartition
from headwater.testing import TestingSink, TestingSource, run_local

SCHEMA = pa.schema([("x", pa.int64())])



class FakeClock:
    """Stands in for the ``time`` module inside ``headwater.sources.testing``."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(testing_module, "time", fake)
    return fake


def rows(*values: int) -> list[dict[str, int]]:
    return [{"x": v} for v in values]


def drain(partition: SourcePartition, limit: int = 100) -> list[list[int] | None]:
    """Call ``next_batch`` until ``StopIteration``; a ``None`` result is kept as ``None``."""
    out: list[list[int] | None] = []
    for _ in range(limit):
        try:
            batch = partition.next_batch()
        except StopIteration:
            return out
        out.append(None if batch is None else batch.column("x").to_pylist())
    raise AssertionError(f"partition did not end within {limit} calls: {out}")


def only_part(source: TestingSource, resume_state: Any = None) -> SourcePartition:
    (part,) = source.list_parts()
    return source.build_part(part, resume_state)


# -- batching and resume ----------------------------------------------------------------------------------------------


def test_rows_are_grouped_by_batch_size() -> None:
    source = TestingSource(rows(1, 2, 3, 4, 5), batch_size=2, schema=SCHEMA)
    assert drain(only_part(source)) == [[1, 2], [3, 4], [5]]


def test_a_record_batch_item_is_emitted_as_is_and_splits_row_runs() -> None:
    item = pa.RecordBatch.from_pydict({"x": pa.array([10, 11, 12], pa.int64())})
    source = TestingSource([*rows(1), item, *rows(2, 3, 4)], batch_size=10)
    partition = only_part(source)
    assert partition.next_batch().column("x").to_pylist() == [1]
    assert partition.next_batch() is item
    assert drain(partition) == [[2, 3, 4]]


def test_declared_schema_is_used_for_row_batches() -> None:
    schema = pa.schema([("x", pa.int32()), ("y", pa.string())])
    source = TestingSource([{"x": 1}], schema=schema)
    assert source.schema() == schema
    batch = only_part(source).next_batch()
    assert batch is not None and batch.schema == schema
    assert batch.to_pylist() == [{"x": 1, "y": None}]
    assert TestingSource([{"x": 1}]).schema() is None


def test_partitions_are_named_stably_and_read_independently() -> None:
    source = TestingSource(partitions=[rows(1, 2), rows(3), []], schema=SCHEMA)
    assert source.list_parts() == ["part-0", "part-1", "part-2"]
    assert drain(source.build_part("part-1", None)) == [[3]]
    assert drain(source.build_part("part-0", None)) == [[1, 2]]
    assert drain(source.build_part("part-2", None)) == []


def test_snapshot_is_the_position_to_resume_after() -> None:
    source = TestingSource(rows(1, 2, 3, 4, 5), batch_size=2, schema=SCHEMA)
    partition = only_part(source)
    assert partition.snapshot() == 0
    partition.next_batch()
    state = partition.snapshot()
    assert state == 2
    assert drain(source.build_part("part-0", state)) == [[3, 4], [5]]
    assert drain(source.build_part("part-0", pickle.loads(pickle.dumps(state)))) == [[3, 4], [5]]


def test_the_source_pickles_with_its_marker_directory() -> None:
    source = TestingSource([*rows(1), TestingSource.ABORT(), *rows(2)])
    copy = pickle.loads(pickle.dumps(source))
    assert copy.marker_dir == source.marker_dir and copy.partitions == source.partitions


# -- EOF ------------------------------------------------------------------------------------------------------------


def test_eof_ends_the_partition_and_resume_continues_after_it() -> None:
    source = TestingSource([*rows(1, 2), TestingSource.EOF(), *rows(3), TestingSource.EOF(), *rows(4)], schema=SCHEMA)
    first = only_part(source)
    assert drain(first) == [[1, 2]]
    state = first.snapshot()
    assert state == 3  # after the marker
    second = only_part(source, state)
    assert drain(second) == [[3]]
    assert drain(only_part(source, second.snapshot())) == [[4]]


def test_a_run_stops_at_eof() -> None:
    flow = hw.Dataflow("eof")
    sink = TestingSink()
    flow.source("in", TestingSource([*rows(1, 2), TestingSource.EOF(), *rows(3)], schema=SCHEMA)).sink("out", sink)
    run_local(flow)
    assert sink.rows() == rows(1, 2)


# -- ABORT ----------------------------------------------------------------------------------------------------------


def test_abort_raises_once_then_is_skipped_on_a_rebuilt_partition() -> None:
    source = TestingSource([*rows(1), TestingSource.ABORT(), *rows(2)], schema=SCHEMA)
    partition = only_part(source)
    assert partition.next_batch().column("x").to_pylist() == [1]
    with pytest.raises(SimulatedCrashError, match="ABORT marker at item 1 of part-0"):
        partition.next_batch()
    rebuilt = only_part(source)
    assert drain(rebuilt) == [[1], None, [2]]


def test_abort_fires_once_per_marker() -> None:
    source = TestingSource([TestingSource.ABORT(), *rows(1), TestingSource.ABORT(), *rows(2)], schema=SCHEMA)
    with pytest.raises(SimulatedCrashError, match="item 0"):
        only_part(source).next_batch()
    with pytest.raises(SimulatedCrashError, match="item 2"):
        drain(only_part(source))
    assert drain(only_part(source)) == [None, [1], None, [2]]


def test_abort_state_is_per_source_object() -> None:
    items = [TestingSource.ABORT(), *rows(1)]
    fired = TestingSource(items, schema=SCHEMA)
    with pytest.raises(SimulatedCrashError):
        only_part(fired).next_batch()
    with pytest.raises(SimulatedCrashError):
        only_part(TestingSource(items, schema=SCHEMA)).next_batch()  # a fresh source fires again


def test_a_run_with_abort_fails_then_a_rerun_succeeds_and_the_sink_shows_only_committed_rows() -> None:
    flow = hw.Dataflow("crash")
    sink = TestingSink()
    source = TestingSource([*rows(1, 2), TestingSource.ABORT(), *rows(3)], schema=SCHEMA, batch_size=1)
    flow.source("in", source).sink("out", sink)
    with pytest.raises(SimulatedCrashError, match=r"step 'in' \(subtask 0\)") as info:
        run_local(flow)
    assert info.value.step_id == "in"
    assert sink.rows() == []  # rows 1 and 2 reached the sink but were never committed
    run_local(flow)
    assert sink.rows() == rows(1, 2, 3)


# -- PAUSE ----------------------------------------------------------------------------------------------------------


def test_pause_returns_none_until_due_and_reports_when(clock: FakeClock) -> None:
    source = TestingSource([*rows(1), TestingSource.PAUSE(5), *rows(2)], schema=SCHEMA)
    partition = only_part(source)
    assert partition.next_awake() is None
    assert partition.next_batch().column("x").to_pylist() == [1]
    assert partition.next_batch() is None
    assert partition.next_awake() == 1_005.0
    clock.now = 1_004.9
    assert partition.next_batch() is None
    assert partition.next_awake() == 1_005.0
    clock.now = 1_005.0
    assert partition.next_awake() is None
    assert partition.next_batch().column("x").to_pylist() == [2]
    with pytest.raises(StopIteration):
        partition.next_batch()


def test_pause_at_the_end_delays_the_end(clock: FakeClock) -> None:
    partition = only_part(TestingSource([TestingSource.PAUSE(1)], schema=SCHEMA))
    assert partition.next_batch() is None
    assert partition.next_batch() is None
    clock.now += 1
    with pytest.raises(StopIteration):
        partition.next_batch()


def test_a_run_waits_for_a_pause() -> None:
    flow = hw.Dataflow("pause")
    sink = TestingSink()
    flow.source("in", TestingSource([*rows(1), TestingSource.PAUSE(0.05), *rows(2)], schema=SCHEMA)).sink("out", sink)
    result = run_local(flow)
    assert result.elapsed_s >= 0.05
    assert sink.rows() == rows(1, 2)


# -- TestingSink ----------------------------------------------------------------------------------------------------


def batch_of(*values: int, key: str = "x") -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({key: pa.array(values, pa.int64())})


def test_sink_shows_only_committed_rows(tmp_path: Path) -> None:
    sink = TestingSink(tmp_path / "out")
    partition = sink.build_part(0, 1)
    partition.write(batch_of(1, 2))
    assert sink.rows() == [] and sink.table() is None
    token = partition.prepare(1)
    assert sink.rows() == []
    partition.commit(token)
    assert sink.rows() == rows(1, 2)
    partition.commit(token)  # idempotent
    assert sink.rows() == rows(1, 2)


def test_sink_abort_discards_staged_rows_and_empty_prepare_is_a_no_op(tmp_path: Path) -> None:
    sink = TestingSink(tmp_path)
    partition = sink.build_part(0, 1)
    partition.write(batch_of(1))
    partition.abort()
    token = partition.prepare(1)
    assert token is None
    partition.commit(token)
    assert sink.rows() == []


def test_sink_commit_of_a_lost_token_raises(tmp_path: Path) -> None:
    partition = TestingSink(tmp_path).build_part(0, 1)
    with pytest.raises(FileNotFoundError):
        partition.commit((str(tmp_path / "gone.arrow"), str(tmp_path / "committed" / "never.arrow")))


def test_sink_reads_committed_output_in_commit_order_per_subtask(tmp_path: Path) -> None:
    sink = TestingSink(tmp_path)
    zero, one = sink.build_part(0, 2), sink.build_part(1, 2)
    for checkpoint, (a, b) in enumerate([(1, 10), (2, 20)], start=1):
        zero.write(batch_of(a))
        one.write(batch_of(b))
        one.commit(one.prepare(checkpoint))
        zero.commit(zero.prepare(checkpoint))
    assert [r["x"] for r in sink.rows()] == [1, 10, 2, 20]
    assert TestingSink(tmp_path).rows() == sink.rows()  # another process reading the same directory
    sink.clear()
    assert sink.rows() == []


def test_sink_latest_is_the_last_row_per_key(tmp_path: Path) -> None:
    sink = TestingSink(tmp_path)
    partition = sink.build_part(0, 1)
    partition.write(pa.RecordBatch.from_pylist([
        {"k": "a", "n": 1, "v": 1}, {"k": "b", "n": 1, "v": 2}, {"k": "a", "n": 1, "v": 3}, {"k": "a", "n": 2, "v": 4},
    ]))
    partition.commit(partition.prepare(0))
    assert sink.latest(["k"]) == {"a": {"k": "a", "n": 2, "v": 4}, "b": {"k": "b", "n": 1, "v": 2}}
    assert sink.latest(["k", "n"]) == {
        ("a", 1): {"k": "a", "n": 1, "v": 3},
        ("b", 1): {"k": "b", "n": 1, "v": 2},
        ("a", 2): {"k": "a", "n": 2, "v": 4},
    }
    assert TestingSink(tmp_path / "empty").latest(["k"]) == {}


def test_read_source_reads_every_partition_of_a_bounded_source_and_refuses_an_endless_one() -> None:
    from headwater.errors import ConfigError
    from headwater.sources import NexmarkSource
    from headwater.testing import read_source

    table = read_source(TestingSource(partitions=[[{"x": 1}, {"x": 2}], [{"x": 3}]]))
    assert sorted(table.column("x").to_pylist()) == [1, 2, 3]
    bids = read_source(NexmarkSource("bid", events=500, partitions=3, batch_size=64))
    assert bids.num_rows == 460 and bids.schema == NexmarkSource("bid").schema()  # 46 of every 50 events
    with pytest.raises(ConfigError, match="bounded"):
        read_source(NexmarkSource("bid", events=None))


def test_a_testing_partition_reports_the_rows_still_to_come_as_its_lag() -> None:
    from headwater.sources.base import SourceLag

    batch = pa.RecordBatch.from_pydict({"v": [1, 2, 3]})
    source = TestingSource([{"v": 0}, {"v": 1}, TestingSource.PAUSE(0), batch, TestingSource.EOF(), {"v": 9}],
                           batch_size=10)
    part = source.build_part(source.list_parts()[0], None)
    assert part.lag() == SourceLag(records=5)  # 2 rows + a 3-row batch, up to the EOF marker
    part.next_batch()
    assert part.lag() == SourceLag(records=3)
