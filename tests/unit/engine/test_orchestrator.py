"""The checkpoint orchestration both executors share: the lock's rules (who may wait for it, never around user
code), the guard before every coordinator call, the stop and savepoint flags, and snapshots handed out once."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.checkpoints import orchestrator as orchestration
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.orchestrator import CheckpointOrchestrator, SubtaskCheckpoints
from headwater.engine.checkpoints.snapshots import PendingSnapshot
from headwater.engine.checkpoints.storage import CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig
from headwater.sinks.base import Sink, SinkPartition
from headwater.testing import TestingSource

SUBTASKS = [(0, 0), (1, 0)]


def _orchestrator(tmp_path: Path, guard: Any = None, timeout_ms: int = 60_000) -> CheckpointOrchestrator:
    """Checkpoints due every millisecond (the tests wait that long before beginning one)."""
    config = CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(milliseconds=1), min_pause=timedelta(0),
                              timeout=timedelta(milliseconds=timeout_ms))
    core = CheckpointCoordinator(CheckpointStorage(config.uri), config, "flow", SUBTASKS, 128, 1)
    return CheckpointOrchestrator(core) if guard is None else CheckpointOrchestrator(core, guard)


def test_a_checkpoint_completes_with_the_last_ack(tmp_path: Path) -> None:
    checkpoints = _orchestrator(tmp_path)
    time.sleep(0.002)
    checkpoint_id = checkpoints.try_begin()
    assert checkpoint_id == 1 and checkpoints.try_begin() is None, "one checkpoint in flight at most"
    assert checkpoints.ack(SubtaskAck(1, 0, 0, 1)) is None
    completed = checkpoints.ack(SubtaskAck(1, 1, 0, 1))
    assert completed is not None and completed.kind is CheckpointKind.CHECKPOINT
    stats, last, final = checkpoints.result()
    assert stats.completed == 1 and last is completed and not final


@pytest.mark.parametrize("savepoint", [False, True])
def test_after_prepare_stop_nothing_begins_and_the_last_checkpoint_has_the_asked_kind(
    tmp_path: Path, savepoint: bool,
) -> None:
    checkpoints = _orchestrator(tmp_path)
    checkpoints.prepare_stop(savepoint)
    assert checkpoints.stopping and checkpoints.try_begin() is None
    assert checkpoints.report_finished(SubtaskAck(5, 0, 0, 1, finished=True)) is None
    last = checkpoints.report_finished(SubtaskAck(5, 1, 0, 1, finished=True))
    assert last is not None and last.kind is (CheckpointKind.SAVEPOINT if savepoint else CheckpointKind.FINAL)
    assert checkpoints.final_completed and checkpoints.result()[2]


def test_the_guard_refuses_every_coordinator_call_of_the_loop(tmp_path: Path) -> None:
    class Abandoned(Exception):
        pass

    abandoned = False

    def guard() -> None:
        if abandoned:
            raise Abandoned()

    checkpoints = _orchestrator(tmp_path, guard)
    time.sleep(0.002)
    assert checkpoints.try_begin() == 1
    abandoned = True
    for call in (checkpoints.try_begin, lambda: checkpoints.ack(SubtaskAck(1, 0, 0, 1)),
                 lambda: checkpoints.report_finished(SubtaskAck(1, 1, 0, 1, finished=True))):
        with pytest.raises(Abandoned):
            call()
    assert checkpoints.core.pending is not None and checkpoints.core.pending.acks == {}
    assert not checkpoints.core.finished and not checkpoints.lock.locked(), "refused under the lock, released"


def test_the_watchers_calls_never_wait_for_the_lock(tmp_path: Path) -> None:
    checkpoints = _orchestrator(tmp_path, timeout_ms=1)
    time.sleep(0.002)
    assert checkpoints.try_begin() == 1
    time.sleep(0.01)
    with checkpoints.lock:  # a completion in another thread holds it (metadata write and read-back)
        started = time.monotonic()
        assert checkpoints.expire() is None, "skipped while the lock is held"
        assert checkpoints.try_begin(blocking=False) is None
        assert checkpoints.take_expired() == []
        checkpoints.prepare_stop(savepoint=True)
        assert time.monotonic() - started < 0.5
    expired = checkpoints.expire()
    assert expired is not None and expired.checkpoint_id == 1 and expired.missing == SUBTASKS
    assert checkpoints.take_expired() == [expired] and checkpoints.take_expired() == []
    assert checkpoints.core.final_kind is CheckpointKind.SAVEPOINT


class _Runtime:
    def __init__(self) -> None:
        self.snapshots: list[PendingSnapshot] = []
        self.final_snapshot: PendingSnapshot | None = None

    def take_snapshots(self) -> list[PendingSnapshot]:
        taken, self.snapshots = self.snapshots, []
        return taken


def _snapshot(checkpoint_id: int, finished: bool = False) -> PendingSnapshot:
    return PendingSnapshot(checkpoint_id, 0, 0, 1, range(128), {}, {}, {}, {}, finished, 0.0)


def test_each_snapshot_of_a_subtask_is_handed_out_once() -> None:
    runtime = _Runtime()
    snapshots = SubtaskCheckpoints(runtime)
    assert snapshots.taken() == [] and snapshots.final() is None
    runtime.snapshots = [_snapshot(1), _snapshot(2)]
    assert [s.checkpoint_id for s in snapshots.taken()] == [1, 2] and snapshots.taken() == []
    runtime.final_snapshot = _snapshot(3, finished=True)
    final = snapshots.final()
    assert final is not None and final.checkpoint_id == 3
    assert snapshots.final() is None and snapshots.final() is None, "the final snapshot is reported once"


# -- the in-process executor never calls user code while it holds the lock -----------------------------------
class _LockCheckingSink(Sink):
    """Records, at every prepare and commit, whether any orchestrator's lock was held."""

    def __init__(self, orchestrators: list[CheckpointOrchestrator], seen: list[tuple[str, bool]]) -> None:
        self.orchestrators, self.seen = orchestrators, seen

    def build_part(self, index: int, count: int) -> SinkPartition:
        return _LockCheckingPartition(self)


class _LockCheckingPartition(SinkPartition):
    def __init__(self, sink: _LockCheckingSink) -> None:
        self.sink = sink

    def _record(self, what: str) -> None:
        self.sink.seen.append((what, any(o.lock.locked() for o in self.sink.orchestrators)))

    def write(self, batch: pa.RecordBatch) -> None:
        pass

    def prepare(self, checkpoint_id: int) -> Any:
        self._record("prepare")
        return checkpoint_id

    def commit(self, token: Any) -> None:
        self._record("commit")


def test_the_local_executor_calls_sinks_outside_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orchestrators: list[CheckpointOrchestrator] = []
    original = CheckpointOrchestrator.__init__

    def capturing(self: CheckpointOrchestrator, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        orchestrators.append(self)

    monkeypatch.setattr(orchestration.CheckpointOrchestrator, "__init__", capturing)
    seen: list[tuple[str, bool]] = []
    flow = hw.Dataflow("lock_free_sinks")
    rows = [{"v": i} for i in range(40)]
    flow.source("in", TestingSource([*rows[:20], TestingSource.PAUSE(0.3), *rows[20:]], batch_size=5)).sink(
        "out", _LockCheckingSink(orchestrators, seen))
    checkpoint = hw.CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(milliseconds=20))
    result = hw.run(flow, executor="local", checkpoint=checkpoint)
    assert orchestrators and result.checkpoints.completed >= 2
    assert {what for what, _ in seen} == {"prepare", "commit"} and len(seen) >= 4
    assert not any(locked for _, locked in seen), f"a sink was called under the orchestrator's lock: {seen}"
