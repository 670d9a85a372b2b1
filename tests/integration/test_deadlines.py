"""User code has deadlines (issue 16): a run's timeout ends a hung job, a stalled step fails the job naming
what it was doing, slow or idle steps are not flagged, and a checkpoint timeout is logged while a step hangs.

Each test runs on the in-process executor and on Ray (the session ``ray_cluster``). A hung UDF waits for a
release file, which the fixture creates at the end, so in-process threads left behind by a test end too.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import StepStalledError, StopTimeoutError
from headwater.sinks.base import Sink, SinkPartition
from headwater.sources.base import Source, SourcePartition
from headwater.testing import TestingSink, TestingSource


class HangAt:
    """A map_batches class that blocks (synchronously, as hung user code does) on batch ``at`` until the
    ``release`` file exists."""

    def __init__(self, release: str, at: int = 1) -> None:
        self.release = Path(release)
        self.at = at
        self.seen = 0

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.seen += 1
        if self.seen == self.at:
            while not self.release.exists():
                time.sleep(0.02)
        return batch


def _slowly(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.5)
    return batch


class _IdleSource(Source):
    """Unbounded: one row, then nothing, forever (``next_batch`` returns ``None`` at once)."""

    bounded = False

    def list_parts(self) -> list[str]:
        return ["idle"]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        return _IdlePartition()


class _IdlePartition(SourcePartition):
    def __init__(self) -> None:
        self.sent = False

    def next_batch(self) -> pa.RecordBatch | None:
        if self.sent:
            return None
        self.sent = True
        return pa.record_batch({"v": pa.array([1], pa.int64())})

    def snapshot(self) -> Any:
        return self.sent


class _HangingPrepareSink(Sink):
    """Counts committed rows in a file; its ``prepare`` for checkpoint ``at`` blocks until ``release`` exists."""

    def __init__(self, release: Path, at: int) -> None:
        self.release, self.at = release, at

    def build_part(self, index: int, count: int) -> SinkPartition:
        return _HangingPreparePartition(self.release, self.at)


class _HangingPreparePartition(SinkPartition):
    def __init__(self, release: Path, at: int) -> None:
        self.release, self.at = release, at

    def write(self, batch: pa.RecordBatch) -> None:
        pass

    def prepare(self, checkpoint_id: int) -> Any:
        if checkpoint_id == self.at:
            while not self.release.exists():
                time.sleep(0.02)
        return checkpoint_id

    def commit(self, token: Any) -> None:
        pass


@pytest.fixture(params=["local", "ray"])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "release"
    yield path
    path.touch()  # let hung in-process threads return (they then see that the job was abandoned and end)


def _hanging_flow(release: Path, name: str, at: int = 1) -> hw.Dataflow:
    flow = hw.Dataflow(name)
    (
        flow.source("in", TestingSource([{"v": i} for i in range(100)], batch_size=10))
        .map_batches(HangAt, fn_constructor_kwargs={"release": str(release), "at": at}, step_id="hang")
        .sink("out", TestingSink())
    )
    return flow


def test_a_hanging_udf_with_a_timeout_ends_in_time_naming_the_step(executor: str, release: Path) -> None:
    flow = _hanging_flow(release, "hang_timeout")
    started = time.monotonic()
    with pytest.raises(StopTimeoutError) as info:
        hw.run(flow, executor=executor, parallelism=1, timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"the run took {elapsed:.1f} s"
    message = str(info.value)
    assert "did not stop within RunConfig.stop_grace (10 s)" in message and "timeout of 10 s" in message
    assert "step 'hang' (subtask 0) map_batches: processing a batch of 10 rows" in message
    assert info.value.step_id == "hang"


def test_a_stalled_step_fails_the_job_naming_the_step_and_its_activity(executor: str, release: Path) -> None:
    flow = _hanging_flow(release, "hang_stall", at=3)
    started = time.monotonic()
    with pytest.raises(StepStalledError) as info:
        hw.run(flow, executor=executor, parallelism=1, stall_timeout=timedelta(seconds=3))
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the stall was reported after {elapsed:.1f} s"
    error = info.value
    assert (error.step_id, error.subtask) == ("hang", 0)
    assert error.activity == "map_batches: processing a batch of 10 rows"
    assert error.stalled_s >= 3
    # on a loaded machine the worker may also miss the activity poll while inside the call: the other wording of
    # the same diagnosis (watchdog.unanswered), naming the same step and activity
    prefix = "step 'hang' (subtask 0): stalled: map_batches: processing a batch of 10 rows "
    assert prefix + "has not returned" in str(error) or prefix + "had run for" in str(error), str(error)


def test_slow_but_progressing_steps_and_idle_sources_are_not_stalls(executor: str) -> None:
    flow = hw.Dataflow("slow_and_idle")
    slow_out, idle_out = TestingSink(), TestingSink()
    (
        flow.source("slow_in", TestingSource([{"v": i} for i in range(12)], batch_size=1))
        .map_batches(_slowly, step_id="slow")
        .sink("slow_out", slow_out)
    )
    flow.source("idle", _IdleSource()).sink("idle_out", idle_out)

    # stopped once the slow step is through (not by a timeout from the actors' creation, which a slow start-up
    # on a loaded machine would eat into): the test is that nothing is flagged meanwhile
    job = hw.start(flow, executor=executor, parallelism=1, stall_timeout=2)
    started = time.monotonic()
    try:
        done = 0
        while done < 12 and time.monotonic() - started < 90:
            time.sleep(0.2)
            done = sum(m.steps["slow"].rows_out for m in job.metrics() if "slow" in m.steps)
    finally:
        job.stop()
    result = job.wait(60)

    assert result.stopped  # by the stop, gracefully: no stall was flagged with a 2 s stall timeout
    assert time.monotonic() - started >= 6, "12 batches x 0.5 s: the idle source sat idle for > 2 s too"
    assert sorted(r["v"] for r in slow_out.rows()) == list(range(12))  # each call under the stall timeout
    assert [r["v"] for r in idle_out.rows()] == [1]


def test_a_checkpoint_timeout_is_logged_while_a_step_hangs(
    executor: str, release: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flow = hw.Dataflow("hang_checkpoint")
    rows = [{"v": i} for i in range(30)]
    flow.source("in", TestingSource([*rows, TestingSource.PAUSE(60)], batch_size=10)).sink(
        "out", _HangingPrepareSink(release, at=3)
    )
    checkpoint = hw.CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(milliseconds=100),
                                     timeout=timedelta(seconds=1))
    with caplog.at_level(logging.WARNING, logger="headwater.checkpoint"):
        job = hw.start(flow, executor=executor, parallelism=1, checkpoint=checkpoint, stall_timeout=None)
        try:
            deadline = time.monotonic() + 20
            logged: list[str] = []
            while not logged and time.monotonic() < deadline:
                time.sleep(0.1)
                logged = [r.getMessage() for r in caplog.records if "not acknowledged by" in r.getMessage()]
            assert not release.exists()  # logged while the sink still hangs
        finally:
            release.touch()
            job.stop()
        result = job.wait(30)
    assert logged, "no checkpoint timeout was logged while the step hung"
    assert logged[0].startswith("checkpoint 3 timed out after ") and "and was aborted" in logged[0]
    assert "not acknowledged by 1 subtask(s): step 'out' (subtask 0) sink: preparing its output for checkpoint 3 for" in logged[0]
    assert result.checkpoints.aborted >= 1


def test_a_step_asking_for_more_cpus_than_any_node_has_fails_at_once_naming_it(ray_cluster: Any) -> None:
    from headwater.engine.failures import classify
    from headwater.errors import JobFailedError

    flow = hw.Dataflow("too_big")
    flow.source("in", TestingSource([{"v": 1}])).map_batches(_slowly, num_cpus=4, step_id="heavy").sink(
        "out", TestingSink())
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:  # the session cluster has 2 CPUs and no autoscaler
        hw.run(flow, executor="ray", parallelism=1, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"the unplaceable worker was reported after {elapsed:.1f} s"
    assert info.value.step_id == "heavy"
    assert "step 'heavy' (subtask 0) asks for 4 CPU(s) (num_cpus=4), but the largest node of this Ray cluster has 2" in str(info.value)
    assert not classify(info.value).transient
