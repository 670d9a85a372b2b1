"""Slot sharing in the Ray executor: which worker hosts which subtask; the bounded wait for Ray to place them."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

import headwater as hw
from headwater.engine.config import RunConfig
from headwater.engine.failures import classify
from headwater.engine.ray.executor import place_subtasks
from headwater.engine.ray.placement import PlacementWait, worker_reservation
from headwater.errors import ConfigError, JobFailedError
from headwater.planner import plan
from headwater.sinks.testing import TestingSink
from headwater.sources.testing import TestingSource


def _flow(cpus: float | None = None) -> hw.Dataflow:
    rows = [{"k": i % 5, "v": i, "t": i * 100} for i in range(50)]
    flow = hw.Dataflow("placement")
    stream = flow.source("in", TestingSource(partitions=[rows[:25], rows[25:]]), event_time="t")
    counted = stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(step_id="per_key", n=hw.count())
    top = counted.window(hw.TumblingWindow(seconds=1)).aggregate(step_id="top", most=hw.max("n"))
    if cpus is not None:
        top = top.map_batches(lambda b: b, num_cpus=cpus, step_id="heavy")
    top.sink("out", TestingSink())
    return flow


def test_every_subtask_is_placed_once_and_slots_hold_one_subtask_per_stage() -> None:
    physical = plan(_flow(), RunConfig(parallelism=3), 3)
    workers = place_subtasks(physical)
    placed = [s for w in workers for s in w]
    assert sorted(placed) == sorted((st.stage_id, i) for st in physical.stages for i in range(st.parallelism))
    assert len(workers) == max(st.parallelism for st in physical.stages)
    for hosted in workers:
        stages = [stage_id for stage_id, _ in hosted]
        assert len(stages) == len(set(stages))


def test_narrow_stages_spread_over_the_least_loaded_slots() -> None:
    physical = plan(_flow(), RunConfig(parallelism=2), 2)
    loads = sorted(len(w) for w in place_subtasks(physical))
    assert loads[-1] - loads[0] <= 1


def test_a_stage_asking_for_cpus_gets_a_worker_per_subtask() -> None:
    physical = plan(_flow(cpus=0.5), RunConfig(parallelism=2), 2)
    heavy = next(st for st in physical.stages if "heavy" in st.step_ids)
    workers = place_subtasks(physical)
    dedicated = [w for w in workers if any(stage_id == heavy.stage_id for stage_id, _ in w)]
    assert len(dedicated) == heavy.parallelism
    assert all(len(w) == 1 for w in dedicated)


class _FakeRay:
    """Just enough of ``ray`` for PlacementWait: one 2-CPU node; ``here`` says whether this process started it."""

    def __init__(self, here: bool) -> None:
        self._private = SimpleNamespace(worker=SimpleNamespace(_global_node=SimpleNamespace(head=here)))

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def available_resources(self) -> dict[str, float]:
        return {"CPU": 1.0}


def _waiting_for_heavy(here: bool, deadline: float | None) -> tuple[PlacementWait, list[int]]:
    physical = plan(_flow(cpus=4), RunConfig(parallelism=1), 1)
    assignments = place_subtasks(physical)
    cpus = [physical.stages[a[0][0]].num_cpus if len(a) == 1 else None for a in assignments]
    heavy = [i for i, c in enumerate(cpus) if c]
    return PlacementWait(_FakeRay(here), physical, assignments, cpus, deadline), heavy


def test_a_worker_too_big_for_a_cluster_started_here_fails_at_once_and_deterministically() -> None:
    wait, heavy = _waiting_for_heavy(here=True, deadline=None)
    with pytest.raises(JobFailedError, match=r"step 'heavy' \(subtask 0\) asks for 4 CPU\(s\) \(num_cpus=4\), but the "
                       r"largest node of this Ray cluster has 2 CPU\(s\)") as raised:
        wait.check(heavy)
    assert raised.value.step_id == "heavy" and not classify(raised.value).transient


def _parallel_heavy(cpus: float) -> tuple[PlacementWait, list[int]]:
    rows = [{"v": i} for i in range(10)]
    flow = hw.Dataflow("wide")
    flow.source("in", TestingSource(partitions=[rows[:5], rows[5:]])) \
        .map_batches(lambda b: b, num_cpus=cpus, step_id="heavy").sink("out", TestingSink())
    physical = plan(flow, RunConfig(parallelism=2), 2)
    assignments = place_subtasks(physical)
    worker_cpus = [physical.stages[a[0][0]].num_cpus if len(a) == 1 else None for a in assignments]
    heavy = [i for i, c in enumerate(worker_cpus) if c]
    return PlacementWait(_FakeRay(True), physical, assignments, worker_cpus, None), heavy


def test_workers_that_fit_one_by_one_but_not_together_fail_at_once_on_a_cluster_started_here() -> None:
    """num_cpus=2 at parallelism 2 on a 2-CPU machine: each worker fits the node, the job never does."""
    wait, heavy = _parallel_heavy(cpus=2)
    assert len(heavy) == 2
    with pytest.raises(JobFailedError, match=r"ask for 4 CPU\(s\) together .* this Ray cluster has 2") as raised:
        wait.check(heavy[1:])  # the first worker was placed; the second waits for CPUs that never come
    assert not classify(raised.value).transient
    fits, heavy = _parallel_heavy(cpus=1)
    fits.check(heavy[1:])  # 2 CPUs for 2 workers: it waits (for CPUs other work holds), no error


def test_on_a_joined_cluster_the_driver_waits_for_an_autoscaler_until_the_runs_deadline() -> None:
    wait, heavy = _waiting_for_heavy(here=False, deadline=time.monotonic() + 3600)
    wait.check(heavy)  # an autoscaler may add a 4-CPU node: no error before the deadline
    wait.deadline = time.monotonic() - 1
    with pytest.raises(JobFailedError, match=r"not placed the job's workers by the run's deadline .*step 'heavy' "
                       r"\(subtask 0\) asks for 4 CPU\(s\).*1 CPU\(s\) free") as raised:
        wait.check(heavy)
    assert classify(raised.value).transient
    wait.check([])  # nothing left to wait for


def test_workers_reserve_a_cpu_on_a_joined_cluster_and_none_on_one_started_here_unless_told() -> None:
    assert worker_reservation(RunConfig(), _FakeRay(here=False)) == {"CPU": 1.0}
    assert worker_reservation(RunConfig(), _FakeRay(here=True)) == {}
    assert worker_reservation(RunConfig(worker_cpus=0.5), _FakeRay(here=True)) == {"CPU": 0.5}
    assert worker_reservation(RunConfig(worker_cpus=0), _FakeRay(here=False)) == {}
    told = RunConfig(worker_cpus=2, worker_resources={"stream_slot": 1})
    assert worker_reservation(told, _FakeRay(here=False)) == {"CPU": 2.0, "stream_slot": 1.0}


@pytest.mark.parametrize("bad", [-1, True, "1", 2048])
def test_worker_cpus_must_be_a_number_of_cpus(bad: Any) -> None:
    with pytest.raises(ConfigError, match="worker_cpus must be a number of CPUs >= 0"):
        RunConfig(worker_cpus=bad)


@pytest.mark.parametrize("bad", [{"CPU": 1}, {"slot": 0}, {"slot": True}, {"": 1}, {"GPU": 1}, ["slot"]])
def test_worker_resources_must_be_custom_resources_with_positive_amounts(bad: Any) -> None:
    with pytest.raises(ConfigError, match="worker_resources must map custom Ray resource names"):
        RunConfig(worker_resources=bad)


def test_a_custom_resource_no_node_offers_fails_at_once_on_a_cluster_started_here() -> None:
    physical = plan(_flow(), RunConfig(parallelism=2), 2)
    assignments = place_subtasks(physical)
    cpus: list[float | None] = [0.0] * len(assignments)
    here = PlacementWait(_FakeRay(True), physical, assignments, cpus, None, {"stream_slot": 1})
    with pytest.raises(JobFailedError, match=r"ask for stream_slot=1 \(RunConfig.worker_resources\), which no node "
                       r"of this Ray cluster offers") as raised:
        here.check([0])
    assert not classify(raised.value).transient
    joined = PlacementWait(_FakeRay(False), physical, assignments, cpus, time.monotonic() + 3600, {"stream_slot": 1})
    joined.check([0])  # an autoscaler may add a node type that offers it
