"""What a subtask is doing (recorded at the runtime's boundaries) and the stall rule built on it."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.checkpoints.snapshots import persist
from headwater.engine.local_executor import LocalJob
from headwater.engine.watchdog import SubtaskActivity, activity_of, describe_call, find_stall, stop_timeout
from headwater.errors import ConfigError, StepStalledError
from headwater.runner import plan_flow
from headwater.testing import TestingSink, TestingSource


def _busy(step: str, seconds: float | None, exempt: bool = False, subtask: int = 0) -> SubtaskActivity:
    return SubtaskActivity(0, subtask, step, f"{step} doing", seconds, exempt)


def test_only_calls_longer_than_the_stall_timeout_are_stalls() -> None:
    waiting = SubtaskActivity(0, 0, "src", "waiting for its source partitions to have data")
    assert find_stall([waiting, _busy("slow", 2.9)], 3.0) is None
    assert find_stall([_busy("write", 600.0, exempt=True)], 3.0) is None  # checkpoint writes: their own timeout
    assert find_stall([_busy("hung", 9.0)], None) is None  # the check is off
    error = find_stall([_busy("a", 4.0), _busy("b", 7.5, subtask=1), waiting], 3.0)
    assert error is not None
    assert (error.step_id, error.subtask, error.activity, error.stalled_s) == ("b", 1, "b doing", 7.5)
    assert str(error).startswith("step 'b' (subtask 1): stalled: b doing has not returned for 7.5 s")


def test_calls_are_described_in_words_only_when_asked() -> None:
    batch = pa.record_batch({"v": pa.array(range(65_536))})

    def process(b: pa.RecordBatch) -> None: ...

    assert describe_call("map_batches", ("f", process, (batch, 0), 0.0)) == "map_batches: processing a batch of 65,536 rows"
    activity = activity_of(2, 1, "head", {"out": "sink"}, ("out", persist, (7,), 10.0), "idle", now=12.5)
    assert (activity.step_id, activity.doing, activity.busy_s, activity.exempt) == (
        "out", "sink: writing checkpoint state", 2.5, True)
    assert activity_of(2, 1, "head", {}, None, "waiting for input", now=1.0).describe() == (
        "step 'head' (subtask 1) waiting for input")


def test_stop_timeout_names_the_busy_steps_longest_first() -> None:
    error = stop_timeout([_busy("a", 1.0), _busy("b", 12.0), SubtaskActivity(0, 2, "c", "waiting for input")],
                         10.0, "the run's timeout of 10 s", killed=True)
    assert error.step_id == "b"
    assert "did not stop within RunConfig.stop_grace (10 s) after the run's timeout of 10 s; its workers were killed" in str(error)
    assert str(error).endswith("Busy: step 'b' (subtask 0) b doing for 12.0 s; step 'a' (subtask 0) a doing for 1.0 s")


def test_the_runtime_records_the_call_in_progress_and_clears_it() -> None:
    seen: list[list[SubtaskActivity]] = []
    holder: dict[str, Any] = {}

    def look(batch: pa.RecordBatch) -> pa.RecordBatch:
        seen.append(holder["job"].activities())
        return batch

    flow = hw.Dataflow("look")
    flow.source("in", TestingSource([{"v": i} for i in range(3)])).map_batches(look, step_id="look").sink("out", TestingSink())
    config = hw.RunConfig(executor="local")
    job = LocalJob(plan_flow(flow, config), config)
    holder["job"] = job
    job.wait()
    (during,) = seen[0]  # one fused stage, one subtask
    assert (during.step_id, during.doing) == ("look", "map_batches: processing a batch of 3 rows")
    assert during.busy_s is not None and during.busy_s >= 0
    assert [a.busy_s for a in job.activities()] == [None]


@pytest.mark.parametrize("options, fragment", [
    ({"stall_timeout": timedelta(0)}, "stall_timeout must be a positive"),
    ({"stall_timeout": -1}, "stall_timeout must be a positive"),
    ({"stall_timeout": "5m"}, "stall_timeout must be a positive"),
    ({"stop_grace": 0}, "stop_grace must be a positive"),
])
def test_deadline_options_are_validated(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        hw.RunConfig().with_overrides(**options)


def test_deadline_options_accept_seconds_and_none() -> None:
    config = hw.RunConfig().with_overrides(stall_timeout=3, stop_grace=2.5)
    assert (config.stall_timeout, config.stop_grace) == (timedelta(seconds=3), timedelta(seconds=2.5))
    assert hw.RunConfig(stall_timeout=None).stall_seconds is None
    assert hw.RunConfig().stall_timeout == timedelta(minutes=5)


class _SilentRay:
    """Just enough of ``ray`` for :class:`WorkerWatch`: no ``activity`` call is ever answered."""

    def wait(self, refs: list[Any], num_returns: int, timeout: float) -> tuple[list[Any], list[Any]]:
        return [], refs


def _silent_watch(last: SubtaskActivity | None) -> tuple[Any, Any]:
    from headwater.engine.ray.watch import WorkerWatch

    flow = hw.Dataflow("silent")
    flow.source("in", TestingSource([{"v": 1}])).map_batches(lambda b: b, step_id="m").sink("out", TestingSink())
    plan = plan_flow(flow, executor="local")
    stage = plan.stages[0].stage_id
    watch = WorkerWatch(_SilentRay(), plan, [object()], [[(stage, 0)]], stall_s=3.0)
    if last is not None:
        watch.latest[(stage, 0)] = SubtaskActivity(stage, 0, last.step_id, last.doing, last.busy_s)
    watch._outstanding[0] = ("ref", time.monotonic() - 12.0)  # asked 12 s ago; the floor is 10 s
    return plan, watch


def test_a_worker_silent_while_waiting_is_a_transient_failure_naming_what_it_last_reported() -> None:
    from headwater.engine.failures import classify
    from headwater.errors import JobFailedError

    plan, watch = _silent_watch(SubtaskActivity(0, 0, "m", "waiting for input"))
    with pytest.raises(JobFailedError) as raised:
        watch.poll()
    error = raised.value
    assert not isinstance(error, StepStalledError), "nothing says a call is stuck: the worker is silent"
    assert classify(error).transient
    assert (error.step_id, error.subtask) == (plan.stages[0].head, 0)
    assert "did not answer for 12.0 s" in str(error)
    assert str(error).endswith("It last reported: step 'm' (subtask 0) waiting for input")


def test_a_worker_silent_inside_a_step_call_is_a_stall_naming_it() -> None:
    """Code holding the GIL (a Python loop would let the watch thread answer): a restart would meet it again."""
    from headwater.engine.failures import classify

    _, watch = _silent_watch(SubtaskActivity(0, 0, "m", "map_batches: processing a batch of 1 rows", 1.5))
    with pytest.raises(StepStalledError) as raised:
        watch.poll()
    error = raised.value
    assert not classify(error).transient
    assert (error.step_id, error.activity) == ("m", "map_batches: processing a batch of 1 rows")
    assert error.stalled_s == pytest.approx(13.5, abs=0.5)
    assert "stopped answering" in str(error)
