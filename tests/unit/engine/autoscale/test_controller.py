"""The scaling controller on synthetic lag traces: bounded reaction, no flapping, bounds, cool-down."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.engine.autoscale import AutoscaleConfig, Decision, ScalingController, Signals
from headwater.engine.metrics import StepCounters, SubtaskMetrics
from headwater.errors import ConfigError
from headwater.sources.base import SourceLag

pytestmark = pytest.mark.autoscale

CONFIG = AutoscaleConfig(min_parallelism=1, max_parallelism=8, target_lag=timedelta(seconds=5),
                         cooldown=timedelta(seconds=20), scale_up_after=timedelta(seconds=10),
                         scale_down_after=timedelta(seconds=30), interval=timedelta(seconds=1))


class Load:
    """A job whose subtasks each process ``per_subtask`` records/s while ``rate(t)`` arrive; lag in records."""

    def __init__(self, rate: Callable[[float], float], per_subtask: float = 1000.0, parallelism: int = 1) -> None:
        self.rate, self.per_subtask, self.parallelism = rate, per_subtask, parallelism
        self.backlog = 0.0
        self.read = 0.0

    def step(self, t: float, dt: float = 1.0) -> Signals:
        arrived = self.rate(t) * dt
        capacity = self.per_subtask * self.parallelism * dt
        done = min(capacity, self.backlog + arrived)
        self.backlog += arrived - done
        self.read += done
        return Signals(t, self.parallelism, int(self.read), lag_records=int(self.backlog))


def drive(controller: ScalingController, load: Load, seconds: int, start: float = 0.0) -> list[tuple[float, Decision]]:
    decisions = []
    for i in range(seconds):
        t = start + i
        decision = controller.observe(load.step(t))
        if decision is not None:
            decisions.append((t, decision))
            load.parallelism = decision.parallelism
            controller.rescaled(decision.parallelism, t)
    return decisions


def test_a_fivefold_rate_step_scales_up_within_a_bounded_time_and_enough() -> None:
    load = Load(lambda t: 800.0 if t < 60 else 4000.0)
    controller = ScalingController(CONFIG, 1, now=0.0)
    decisions = drive(controller, load, 600)
    assert decisions, "no scale-up"
    first_at, first = decisions[0]
    assert first.direction == "up" and first_at >= 60
    # the lag passes 5 s of input within ~2 s of the step, then 3 in 4 observations of 10 s must be above it
    assert first_at - 60 <= CONFIG.scale_up_after.total_seconds(), decisions
    directions = [d.direction for _, d in decisions]
    ups = directions.count("up")
    assert directions == ["up"] * ups + ["down"] * (len(directions) - ups), f"ups, then downs once the backlog " \
        f"built up meanwhile is drained, never back up: {decisions}"
    assert all(CONFIG.min_parallelism <= d.parallelism <= CONFIG.max_parallelism for _, d in decisions)
    assert 4 <= load.parallelism <= 6, "4,000 records/s need 4 subtasks of 1,000; 6 keep them 70 % busy"
    assert load.backlog < 4000 * CONFIG.target_lag.total_seconds(), "the lag was drained"


def test_when_the_rate_drops_parallelism_comes_back_down() -> None:
    load = Load(lambda t: 4000.0 if t < 100 else 300.0, parallelism=1)
    controller = ScalingController(CONFIG, 1, now=0.0)
    decisions = drive(controller, load, 500)
    ups = [d for _, d in decisions if d.direction == "up"]
    downs = [(t, d) for t, d in decisions if d.direction == "down"]
    assert ups and downs and all(t > 100 for t, _ in downs)
    assert load.parallelism == 1, "300 records/s fit one subtask of 1,000 (capacity learned while lagging)"
    for (t1, _), (t2, _) in zip(downs, downs[1:]):
        assert t2 - t1 >= max(CONFIG.cooldown, CONFIG.scale_down_after).total_seconds(), "a fresh window each time"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mean=st.sampled_from([0.5, 1.0, 3.0, 8.0, 20.0]))
def test_noisy_lag_around_a_steady_level_never_flaps(seed: int, mean: float) -> None:
    """Lag in seconds fluctuating (±80 %) around a steady mean: at most one decision in 10 minutes, and
    never an up followed by a down (or the reverse)."""
    rng = random.Random(seed)
    controller = ScalingController(CONFIG, 2, now=0.0)
    decisions = []
    for t in range(600):
        lag = max(0.0, mean * (1 + rng.uniform(-0.8, 0.8)))
        decision = controller.observe(Signals(float(t), 2, records_in=1000 * t, lag_seconds=lag))
        if decision is not None:
            decisions.append(decision)
            controller.rescaled(decision.parallelism, float(t))
    directions = [d.direction for d in decisions]
    assert len(set(directions)) <= 1, directions
    if 1.0 <= mean <= 3.0:  # between the marks (1 s and 5 s): nothing to do
        assert not decisions


def test_a_lone_spike_does_not_scale() -> None:
    controller = ScalingController(CONFIG, 2, now=0.0)
    for t in range(200):
        lag = 60.0 if 100 <= t < 103 else 2.0
        assert controller.observe(Signals(float(t), 2, records_in=1000 * t, lag_seconds=lag)) is None


def test_cooldown_from_the_start_and_bounds_hold() -> None:
    controller = ScalingController(CONFIG, 8, now=0.0)
    for t in range(100):
        assert controller.observe(Signals(float(t), 8, records_in=0, lag_records=10_000)) is None, "at max"
    controller = ScalingController(CONFIG, 1, now=0.0)
    decided = None
    for t in range(100):
        decided = decided or controller.observe(Signals(float(t), 1, records_in=0, lag_records=10_000))
    assert decided is not None and decided.parallelism == 2, "no progress: max_step_up 2x of 1"
    assert math.isinf(decided.lag_seconds) and "no progress" in decided.reason
    controller = ScalingController(CONFIG, 3, now=0.0)
    early = [controller.observe(Signals(float(t), 3, records_in=0, lag_records=10_000)) for t in range(19)]
    assert early == [None] * 19, "cooling down after the start"


@pytest.mark.parametrize("seed", range(5))
def test_observations_at_jittered_times_still_fill_both_windows(seed: int) -> None:
    rng = random.Random(seed)
    controller = ScalingController(CONFIG, 4, now=0.0)
    t, decisions = 0.0, []
    while t < 200:
        t += rng.uniform(0.9, 1.3)  # an observation is late now and then, never exactly on the second
        decision = controller.observe(Signals(t, controller.parallelism, records_in=int(100 * t), lag_records=0))
        if decision is not None:
            decisions.append(decision)
            controller.rescaled(decision.parallelism, t)
    assert [d.parallelism for d in decisions] == [3, 2, 1], "the down window (30 s) is covered, then it decides"


def test_without_a_learned_capacity_scale_down_goes_one_subtask_at_a_time() -> None:
    controller = ScalingController(CONFIG, 5, now=0.0)
    decisions = []
    for t in range(200):
        decision = controller.observe(Signals(float(t), controller.parallelism, records_in=100 * t, lag_records=0))
        if decision is not None:
            decisions.append(decision)
            controller.rescaled(decision.parallelism, float(t))
    assert [d.parallelism for d in decisions][:3] == [4, 3, 2]
    assert controller.capacity_per_subtask is None


def _busy_load(controller: ScalingController, rate: float, per_subtask: float, seconds: int) -> list[Decision]:
    """A job that keeps up with ``rate`` (no lag), its subtasks busy ``rate / (per_subtask * parallelism)`` of
    the time, as their busy seconds tell."""
    decisions, read, busy = [], 0.0, 0.0
    for t in range(seconds):
        read += rate
        busy += min(1.0, rate / (per_subtask * controller.parallelism))
        signals = Signals(float(t), controller.parallelism, int(read), lag_records=0,
                          busy={(1, i): busy for i in range(controller.parallelism)})
        decision = controller.observe(signals)
        if decision is not None:
            decisions.append(decision)
            controller.rescaled(decision.parallelism, float(t))
            busy = 0.0  # a new attempt's counters start at zero
    return decisions


def test_busy_time_sizes_a_scale_down_without_ever_having_seen_the_job_lag() -> None:
    """DS2: 800 records/s at parallelism 8 with subtasks busy 10 %: each could do 1,000/s, so 800/s need
    ceil(800 / (1,000 x 0.7)) = 2, in one decision instead of six."""
    controller = ScalingController(CONFIG, 8, now=0.0)
    decisions = _busy_load(controller, rate=800.0, per_subtask=1000.0, seconds=200)
    assert controller.capacity_per_subtask is None  # never lagged
    assert [d.parallelism for d in decisions] == [2]
    assert "busiest subtask 10% busy" in decisions[0].reason


def test_a_busy_job_without_lag_is_not_scaled_down() -> None:
    """At 85 % busy the job keeps up only just: no lag shows, and busy time says it needs what it has."""
    controller = ScalingController(CONFIG, 4, now=0.0)
    assert _busy_load(controller, rate=3400.0, per_subtask=1000.0, seconds=200) == []


def test_signals_from_subtask_metrics() -> None:
    agg = StepCounters(rows_out=7)
    agg.processing.observe(0.25)
    agg.processing.observe(0.5)
    metrics = [
        SubtaskMetrics(0, 0, {"src": StepCounters(rows_out=100), "agg": agg},
                       source_lag={"p0": SourceLag(records=40), "p1": SourceLag(seconds=2.5)}),
        SubtaskMetrics(0, 1, {"src": StepCounters(rows_out=50)}, source_lag={"p2": SourceLag(records=2, seconds=0.5)}),
        SubtaskMetrics(1, 0, {"agg": StepCounters(rows_out=9)}),
    ]
    signals = Signals.of(metrics, ["src"], 2, 12.0)
    # busy: seconds inside the steps that process batches, per subtask; the source's reads are left out
    assert signals == Signals(12.0, 2, 150, lag_records=42, lag_seconds=2.5, busy={(0, 0): 0.75, (1, 0): 0.0})
    assert Signals.of([], ["src"], 1, 0.0) == Signals(0.0, 1, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_parallelism": 0}, "min_parallelism"),
    ({"min_parallelism": 4, "max_parallelism": 2}, "below min_parallelism"),
    ({"target_lag": 5}, "target_lag"),
    ({"cooldown": timedelta(0)}, "cooldown"),
    ({"scale_down_fraction": 1.0}, "scale_down_fraction"),
    ({"max_step_up": 1.0}, "max_step_up"),
    ({"scale_up_after": timedelta(milliseconds=500)}, "at least one interval"),
])
def test_bad_configuration_says_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoscaleConfig(**kwargs)  # type: ignore[arg-type]
