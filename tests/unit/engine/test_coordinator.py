"""The checkpoint protocol without a transport: barrier alignment (``BarrierAligner`` and a subtask runtime with
two input channels) and the ``CheckpointCoordinator`` (one checkpoint in flight, late acks, timeouts, finished
subtasks standing in, the final checkpoint's kind, retention)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.channels import Barrier, DataMessage, EndOfStream
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator
from headwater.engine.checkpoints.snapshots import BarrierAligner
from headwater.engine.checkpoints.storage import CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig, RunConfig
from headwater.engine.runtime import SubtaskRuntime
from headwater.errors import SinkProtocolError
from headwater.testing import TestingSink, TestingSource

G = 128
SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])



# -- BarrierAligner -----------------------------------------------------------------------------------------------
A, B, C = (0, 0), (0, 1), (1, 0)


def data(n: int) -> DataMessage:
    return DataMessage(pa.record_batch({"v": [n]}), 0)


def test_aligner_blocks_a_channel_from_its_barrier_until_all_open_channels_delivered_it() -> None:
    aligner = BarrierAligner()
    assert not aligner.is_blocked(A) and not aligner.aligned({A, B, C})
    aligner.barrier(A, 4)
    assert aligner.is_blocked(A) and not aligner.is_blocked(B)
    aligner.hold(A, data(1))
    aligner.hold(A, data(2))
    aligner.barrier(C, 4)
    aligner.hold(C, data(10))
    assert not aligner.aligned({A, B, C})
    assert aligner.aligned({A, C}), "a channel that already ended (B) counts as aligned"
    aligner.barrier(B, 4)
    assert aligner.aligned({A, B, C})

    released = aligner.release()

    assert released == [(A, data(1)), (A, data(2)), (C, data(10))], "held messages come back in per-channel order"
    assert aligner.checkpoint_id is None and not aligner.is_blocked(A) and aligner.release() == []


def test_aligner_refuses_a_barrier_of_another_checkpoint_while_aligning() -> None:
    aligner = BarrierAligner()
    aligner.barrier(A, 4)
    with pytest.raises(RuntimeError, match="barrier 5 arrived while aligning checkpoint 4"):
        aligner.barrier(B, 5)


def test_aligner_is_reusable_for_the_next_checkpoint() -> None:
    aligner = BarrierAligner()
    aligner.barrier(A, 1)
    aligner.release()
    aligner.barrier(B, 2)
    assert aligner.checkpoint_id == 2 and aligner.is_blocked(B) and not aligner.is_blocked(A)


# -- alignment in a subtask: the snapshot holds exactly what came before the barrier on every channel -----------
def aggregate_runtime() -> tuple[SubtaskRuntime, TestingSink]:
    sink = TestingSink()
    flow = hw.Dataflow("align")
    source = flow.source("in", TestingSource(partitions=[[], []], schema=SCHEMA))
    source.key_by("k").aggregate(step_id="agg", n=hw.count(), total=hw.sum("v")).sink("out", sink)
    plan = hw.plan_flow(flow, parallelism=2, executor="local")
    stage = next(s for s in plan.stages if s.head == "agg")
    assert [e.src for e in plan.inputs_of(stage.stage_id)] == [0] and plan.stages[0].parallelism == 2
    runtime = SubtaskRuntime(plan, stage.stage_id, 0, RunConfig(executor="local"), checkpointing=True)
    runtime.open()
    return runtime, sink


def rows(k: str, *values: int) -> DataMessage:
    return DataMessage(pa.record_batch({"k": [k] * len(values), "v": list(values)}, schema=SCHEMA), 0)


def snapshot_counts(runtime: SubtaskRuntime) -> list[tuple[int, dict[str, tuple[int, int]]]]:
    out = []
    for snapshot in runtime.take_snapshots():
        table = snapshot.tables["agg"]["accumulators"]
        counts = dict(zip(table.column("k").to_pylist(),
                          zip(table.column("count_all").to_pylist(), table.column("v_sum").to_pylist())))
        out.append((snapshot.checkpoint_id, counts))
    return out


def test_subtask_snapshots_only_what_preceded_the_barrier_on_each_channel() -> None:
    runtime, sink = aggregate_runtime()
    edge = 0
    runtime.on_message(edge, 0, rows("a", 1))
    runtime.on_message(edge, 0, Barrier(1))
    runtime.on_message(edge, 0, rows("a", 100))  # after barrier 1 on a blocked channel: held back
    assert snapshot_counts(runtime) == []
    runtime.on_message(edge, 1, rows("b", 2, 3))  # before barrier 1 on the other channel: counted in 1
    runtime.on_message(edge, 1, Barrier(1))

    assert snapshot_counts(runtime) == [(1, {"a": (1, 1), "b": (2, 5)})]
    assert [t for t, _ in runtime.uncommitted["out"]] == [1], "the sink prepared its output at barrier 1"
    # the held message was handled right after the snapshot
    assert runtime.state_stores["agg"].keyed["accumulators"].columns["count_all"][:2].tolist() == [2, 2]

    runtime.notify_checkpoint_complete(1)
    assert sorted((r["k"], r["n"]) for r in sink.rows()) == [("a", 1), ("b", 2)], "only output up to barrier 1"
    assert not runtime.has_uncommitted

    runtime.on_message(edge, 0, EndOfStream(drain=True))  # an ended channel counts as aligned
    runtime.on_message(edge, 1, Barrier(2))
    assert snapshot_counts(runtime) == [(2, {"a": (2, 101), "b": (2, 5)})]
    runtime.on_message(edge, 1, EndOfStream(drain=True))
    assert runtime.finished and runtime.final_snapshot is not None
    assert runtime.final_snapshot.checkpoint_id == 3 and runtime.final_snapshot.finished
    runtime.close()


# -- CheckpointCoordinator ----------------------------------------------------------------------------------------
SUBTASKS = [(0, 0), (1, 0), (1, 1)]


def test_a_closed_subtask_commits_nothing_when_it_hears_of_a_completed_checkpoint() -> None:
    """A failed subtask's worker may still hear of a checkpoint completing: its sink partition is closed (and
    aborted), so nothing is committed; the next attempt's settle_sinks commits what the checkpoint covers."""
    runtime, sink = aggregate_runtime()
    runtime.on_message(0, 0, rows("a", 1))
    runtime.on_message(0, 0, Barrier(1))
    runtime.on_message(0, 1, Barrier(1))
    assert [t for t, _ in runtime.uncommitted["out"]] == [1]
    runtime.close()
    runtime.notify_checkpoint_complete(1)
    assert sink.rows() == [] and [t for t, _ in runtime.uncommitted["out"]] == [1]


def test_a_sink_protocol_error_in_a_subtask_names_the_sink_step() -> None:
    runtime, _ = aggregate_runtime()
    _, sink_operator = runtime.sinks[0]
    with pytest.raises(SinkProtocolError, match=r"step 'out' \(subtask 0\): sink partition: commit\(1\) of no prepared"):
        runtime._guard("out", sink_operator.commit, 1)


def coordinator(tmp_path: Path, subtasks: list[tuple[int, int]] = SUBTASKS, first_id: int = 1,
                **config: object) -> CheckpointCoordinator:
    settings = {"interval": timedelta(seconds=1), "timeout": timedelta(seconds=10), **config}
    checkpoint = CheckpointConfig(dir=tmp_path / "checkpoints", **settings)  # type: ignore[arg-type]
    storage = CheckpointStorage(checkpoint.uri)
    return CheckpointCoordinator(storage, checkpoint, "flow", subtasks, G, first_id)


def ack(core: CheckpointCoordinator, checkpoint_id: int, stage: int, subtask: int, finished: bool = False,
        with_state: bool = True) -> SubtaskAck:
    files = []
    if with_state:
        table = pa.table({"k": [stage * 10 + subtask], "_key_group": pa.array([0], pa.int32())})
        files.append(core.storage.write_state(checkpoint_id, "agg", "acc", stage, subtask, table, range(G)))
    token = f"token-{checkpoint_id}-{stage}-{subtask}"
    return SubtaskAck(checkpoint_id, stage, subtask, 2, state_files=files, finished=finished,
                      bytes_written=sum(f.size for f in files), sink_tokens={"out": [(checkpoint_id, token)]})


def complete(core: CheckpointCoordinator, subtasks: list[tuple[int, int]] = SUBTASKS):  # type: ignore[no-untyped-def]
    checkpoint_id = core.begin()
    result = None
    for stage, subtask in subtasks:
        if (stage, subtask) not in core.finished:
            result = core.ack(ack(core, checkpoint_id, stage, subtask))
    return result


def test_a_checkpoint_completes_when_every_subtask_acknowledged(tmp_path: Path) -> None:
    core = coordinator(tmp_path, first_id=7)
    checkpoint_id = core.begin()
    assert checkpoint_id == 7
    assert core.ack(ack(core, 7, 0, 0)) is None
    assert core.ack(ack(core, 7, 1, 1)) is None
    assert core.storage.completed() == [], "no _metadata before the last ack"
    metadata = core.ack(ack(core, 7, 1, 0))

    assert metadata is not None and metadata.checkpoint_id == 7 and metadata.kind == "checkpoint"
    assert [(a.stage_id, a.subtask) for a in metadata.acks] == SUBTASKS
    assert [i for i, _ in core.storage.completed()] == [7]
    assert core.pending is None and core.last_completed is metadata and not core.final_completed
    assert core.stats.completed == 1 and core.stats.last_bytes == metadata.bytes_written > 0
    assert len(metadata.sink_tokens()) == 3


def test_only_one_checkpoint_is_in_flight(tmp_path: Path) -> None:
    core = coordinator(tmp_path, interval=timedelta(milliseconds=1))
    core.begin()
    assert not core.due(time.monotonic() + 60)
    with pytest.raises(AssertionError, match="already in flight"):
        core.begin()


def test_due_waits_for_interval_and_min_pause_after_the_last_checkpoint(tmp_path: Path) -> None:
    core = coordinator(tmp_path, interval=timedelta(seconds=2), min_pause=timedelta(seconds=5))
    complete(core)
    assert not core.due(core.last_end + 4.9)
    assert core.due(core.last_end + 5.0)


def test_the_interval_runs_from_trigger_to_trigger(tmp_path: Path) -> None:
    core = coordinator(tmp_path, interval=timedelta(seconds=2))
    assert not core.due(core.last_begin + 1.9) and core.due(core.last_begin + 2.0)
    complete(core)
    begun = core.last_begin
    assert core.last_end >= begun
    assert not core.due(begun + 1.9), "interval counted from the trigger"
    assert core.due(begun + 2.0), "not from the end: the end-to-end latency of committing sinks is the interval"
    core.begin()
    assert not core.due(core.last_begin + 10.0), "one checkpoint in flight at a time"


def test_late_and_foreign_acks_are_ignored(tmp_path: Path) -> None:
    core = coordinator(tmp_path)
    first = core.begin()
    assert core.expire(core.pending.started + 10.0) == (first, 10.0, SUBTASKS)  # type: ignore[union-attr]
    assert core.ack(ack(core, first, 0, 0)) is None, "ack of an aborted checkpoint"
    second = core.begin()
    assert second == first + 1
    for stage, subtask in SUBTASKS:
        assert core.ack(ack(core, first, stage, subtask)) is None, "late ack of the aborted checkpoint"
    assert core.storage.completed() == [] and set(core.pending.acks) == set()  # type: ignore[union-attr]
    assert core.ack(ack(core, second, 0, 0)) is None
    assert core.ack(ack(core, second, 1, 0)) is None
    metadata = core.ack(ack(core, second, 1, 1))
    assert metadata is not None and metadata.checkpoint_id == second
    assert all(a.checkpoint_id == second for a in metadata.acks)


def test_a_checkpoint_that_times_out_is_aborted_and_the_job_goes_on(tmp_path: Path) -> None:
    core = coordinator(tmp_path, timeout=timedelta(seconds=3), interval=timedelta(seconds=1))
    checkpoint_id = core.begin()
    started = core.pending.started  # type: ignore[union-attr]
    core.ack(ack(core, checkpoint_id, 0, 0))
    assert core.expire(started + 2.9) is None and core.pending is not None
    assert core.expire(started + 3.0) == (checkpoint_id, 3.0, [(1, 0), (1, 1)])  # id, age, who did not ack
    assert core.pending is None and core.stats.aborted == 1 and core.stats.completed == 0
    assert core.expire(started + 100) is None, "nothing left to abort"
    assert core.due(started + 3.0), "the interval (1 s) since the trigger has passed, and min_pause is 0"
    assert complete(core) is not None and core.stats.completed == 1
    assert core.last_completed.checkpoint_id == checkpoint_id + 1  # type: ignore[union-attr]


def test_finished_subtasks_stand_in_for_every_later_checkpoint(tmp_path: Path) -> None:
    core = coordinator(tmp_path)
    complete(core)  # 1
    final = ack(core, 2, 0, 0, finished=True)  # the source ended: its final snapshot, written at id 2
    assert core.report_finished(final) is None and not core.all_finished
    for expected_id in (2, 3):
        metadata = complete(core)
        assert metadata is not None and metadata.checkpoint_id == expected_id and metadata.kind == "checkpoint"
        stand_in = next(a for a in metadata.acks if (a.stage_id, a.subtask) == (0, 0))
        assert stand_in.finished and stand_in.checkpoint_id == expected_id
        assert stand_in.state_files == final.state_files, "the final snapshot's files are referenced, not copied"
        assert ("out", 0, 0, 2, "token-2-0-0") in metadata.sink_tokens()


def test_a_finish_completes_the_checkpoint_that_waited_for_it(tmp_path: Path) -> None:
    core = coordinator(tmp_path)
    checkpoint_id = core.begin()
    core.ack(ack(core, checkpoint_id, 1, 0))
    core.ack(ack(core, checkpoint_id, 1, 1))
    metadata = core.report_finished(ack(core, checkpoint_id, 0, 0, finished=True))
    assert metadata is not None and metadata.checkpoint_id == checkpoint_id and metadata.kind == "checkpoint"
    assert core.pending is None and not core.final_completed


@pytest.mark.parametrize("final_kind", ["final", "savepoint"])
def test_the_checkpoint_of_final_snapshots_only_is_the_jobs_last(tmp_path: Path, final_kind: str) -> None:
    core = coordinator(tmp_path)
    core.final_kind = final_kind
    complete(core)  # 1
    assert core.report_finished(ack(core, 2, 0, 0, finished=True)) is None
    assert core.report_finished(ack(core, 2, 1, 0, finished=True)) is None
    metadata = core.report_finished(ack(core, 2, 1, 1, finished=True))

    assert metadata is not None and metadata.kind == final_kind and metadata.checkpoint_id == 2
    assert core.final_completed and core.all_finished and not core.due(time.monotonic() + 60)
    expected_dir = "savepoint-000002" if final_kind == "savepoint" else "chk-000002"
    assert metadata.directory.endswith(expected_dir)
    loaded = core.storage.load(metadata.directory)
    core.storage.verify(loaded)
    assert loaded.kind == final_kind


def test_pending_checkpoint_completed_by_the_last_finish_is_the_final_one(tmp_path: Path) -> None:
    core = coordinator(tmp_path, subtasks=[(0, 0), (1, 0)])
    checkpoint_id = core.begin()
    core.report_finished(ack(core, checkpoint_id, 0, 0, finished=True))
    metadata = core.report_finished(ack(core, checkpoint_id, 1, 0, finished=True))
    assert metadata is not None and metadata.checkpoint_id == checkpoint_id and metadata.kind == "final"
    assert core.final_completed


def test_the_last_finish_completing_a_mixed_checkpoint_still_makes_the_final_one(tmp_path: Path) -> None:
    """The last subtask finishes while a checkpoint waits for it and another subtask acknowledged that checkpoint
    with a regular snapshot (before it finished): the pending checkpoint completes as a plain checkpoint, and the
    final checkpoint must follow at once. (It used to be never begun: the timer begins no checkpoint once every
    subtask finished, and no report was left to come, so the subtasks waited for their commit forever.)"""
    core = coordinator(tmp_path, subtasks=[(0, 0), (0, 1)])
    checkpoint_id = core.begin()
    assert core.ack(ack(core, checkpoint_id, 0, 0)) is None  # a regular snapshot for the pending checkpoint
    assert core.report_finished(ack(core, checkpoint_id + 1, 0, 0, finished=True)) is None
    metadata = core.report_finished(ack(core, checkpoint_id + 1, 0, 1, finished=True))

    assert core.final_completed, "every subtask finished: the job's final checkpoint exists"
    assert metadata is not None and metadata.kind == "final" and metadata.checkpoint_id == checkpoint_id + 1
    assert [i for i, _ in core.storage.completed()] == [checkpoint_id, checkpoint_id + 1]
    assert core.pending is None and core.stats.completed == 2


def test_retention_keeps_the_newest_checkpoints_and_every_directory_they_reference(tmp_path: Path) -> None:
    core = coordinator(tmp_path, retain=2)
    complete(core)  # 1
    core.final_kind = "checkpoint"
    sp = coordinator(tmp_path, subtasks=[(0, 0)], first_id=core.next_id)  # a savepoint taken meanwhile
    sp.final_kind = "savepoint"
    sp.report_finished(ack(sp, sp.next_id, 0, 0, finished=True))  # 2
    core.next_id = sp.next_id
    core.report_finished(ack(core, 3, 0, 0, finished=True))  # final snapshot of (0, 0), written under chk-000003
    for checkpoint_id in range(3, 8):
        complete(core)
        # the newest two, plus chk-000003 (complete too) as long as it holds the stand-in's state file
        newest_two = ([1] + list(range(3, checkpoint_id + 1)))[-2:]
        assert [i for i, _ in core.storage.completed()] == sorted({3, *newest_two})

    root = Path(core.storage.uri)
    assert sorted(p.name for p in root.iterdir()) == ["chk-000003", "chk-000006", "chk-000007", "savepoint-000002"]
    latest = core.storage.latest_valid()
    assert latest is not None and latest.checkpoint_id == 7
    core.storage.verify(latest)  # chk-000003 still holds the stand-in's state file


def test_checkpoint_stats_list_only_the_recent_durations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater.engine.checkpoints import coordinator as module

    monkeypatch.setattr(module, "RECENT_CHECKPOINTS", 3)
    core = coordinator(tmp_path)
    for _ in range(5):
        assert complete(core) is not None
    assert core.stats.completed == 5
    assert len(core.stats.durations_ms) == len(core.stats.sync_ms_max) == 3
    assert sum(core.stats.durations.counts) == 5, "the histogram keeps every duration"
