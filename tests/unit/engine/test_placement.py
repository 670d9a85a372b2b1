"""Slot sharing in the Ray executor: which worker hosts which subtask."""

from __future__ import annotations



import headwater as hw
from headwater.engine.config import RunConfig
from headwater.engine.planner import plan
from headwater.engine.ray_executor import place_subtasks
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
