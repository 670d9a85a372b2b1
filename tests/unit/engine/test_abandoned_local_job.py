"""An in-process job abandoned in a hung call (a stall) keeps its directories' leases until its thread ends,
and that thread, when the call returns, neither completes a checkpoint nor commits anything."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.checkpoints.storage import CheckpointStorage
from headwater.errors import DirectoryInUseError, StepStalledError
from headwater.sinks.base import Sink, SinkPartition
from headwater.testing import TestingSource

FLOW = "abandoned_local"


class _HangingPrepareSink(Sink):
    """Its ``prepare`` for checkpoint ``at`` blocks until ``release`` exists; it records its commits."""

    def __init__(self, release: Path, at: int, commits: list[Any]) -> None:
        self.release, self.at, self.commits = release, at, commits

    def build_part(self, index: int, count: int) -> SinkPartition:
        return _HangingPreparePartition(self)


class _HangingPreparePartition(SinkPartition):
    def __init__(self, sink: _HangingPrepareSink) -> None:
        self.sink = sink

    def write(self, batch: pa.RecordBatch) -> None:
        pass

    def prepare(self, checkpoint_id: int) -> Any:
        if checkpoint_id == self.sink.at:
            while not self.sink.release.exists():
                time.sleep(0.02)
        return checkpoint_id

    def commit(self, token: Any) -> None:
        self.sink.commits.append(token)


def _flow(release: Path, commits: list[Any]) -> hw.Dataflow:
    flow = hw.Dataflow(FLOW)
    rows = [{"v": i} for i in range(30)]
    flow.source("in", TestingSource([*rows, TestingSource.PAUSE(60)], batch_size=10)).sink(
        "out", _HangingPrepareSink(release, at=3, commits=commits))
    return flow


def _job_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == f"headwater-{FLOW}"), None)


def test_an_abandoned_job_holds_its_leases_until_its_thread_ends_and_then_writes_nothing(tmp_path: Path) -> None:
    release = tmp_path / "release"
    checkpoint = hw.CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(milliseconds=100),
                                     timeout=timedelta(seconds=60))
    commits: list[Any] = []
    try:
        with pytest.raises(StepStalledError):  # checkpoint 3's prepare hangs
            hw.run(_flow(release, commits), executor="local", checkpoint=checkpoint, stall_timeout=1)
        zombie = _job_thread()
        assert zombie is not None and zombie.is_alive()

        # a re-run (a notebook cell run again) is refused while the hung thread can still write
        with pytest.raises(DirectoryInUseError, match=r"this process"):
            hw.run(_flow(release, []), executor="local", checkpoint=checkpoint, timeout=1, stop_grace=1)
    finally:
        release.touch()
    zombie.join(10)
    assert not zombie.is_alive()

    storage = CheckpointStorage(checkpoint.uri)
    assert [i for i, _ in storage.completed()] == [1, 2], "the abandoned thread completed a checkpoint"
    assert 3 not in commits, "the abandoned thread committed"
    # its thread ended: the leases are free again, and the next run resumes from checkpoint 2
    job = hw.start(_flow(release, []), executor="local", checkpoint=checkpoint)
    job.stop()
    result = job.wait(30)
    # it resumed from checkpoint 2 (ids go on from there; a periodic checkpoint may come before the final one)
    assert result.last_checkpoint is not None and result.last_checkpoint.checkpoint_id >= 3
