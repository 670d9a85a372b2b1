"""The scaling controller: from a running job's lag signals to a target parallelism, with hysteresis.

Pure logic, driven by the caller's clock (the runner observes the job every ``AutoscaleConfig.interval`` and
restarts it at the parallelism decided; tests feed synthetic traces). Invariants:

* **One estimate of lag, in seconds of input.** A partition's lag in seconds is used as it is; a lag in
  records is divided by the job's processing rate (records read by its sources per second, smoothed), so
  Kafka offsets and CDC commit times compare with one ``target_lag``. No progress at all while records wait
  counts as lag above any target.
* **Sustained, by a majority of observations.** A scale-up needs lag above ``target_lag`` in at least
  :data:`UP_SHARE` of the observations of the last ``scale_up_after``; a scale-down needs lag below
  ``scale_down_fraction`` × ``target_lag`` in at least :data:`DOWN_SHARE` of those of the last
  ``scale_down_after`` (and the window must be that long). Between the two marks nothing happens, so noise
  around one mark cannot make the job flap, a lone spike (a few observations) cannot scale it, and lag that
  dips below the target now and then still can.
* **Bounded reaction.** Lag that jumps above the target and stays there yields a decision within
  ``scale_up_after`` (tested), unless the job is at ``max_parallelism`` or cooling down.
* **Cool-down.** No decision within ``cooldown`` of the start or of the last rescale, and the windows start
  afresh after a rescale (the restored job's first observations describe the restart, not the load).
* **Bounds and step sizes.** Targets stay within [``min_parallelism``, ``max_parallelism``]; a scale-up adds at
  least one subtask and multiplies by at most ``max_step_up`` (sized from the input rate where it can be
  estimated: processing rate plus the growth of the lag); a scale-down keeps enough subtasks for the current
  rate at :data:`TARGET_BUSY` of the capacity per subtask — the lower of the one learned while the job lagged
  (its sources were behind, so it ran flat out) and the one its busy time implies (DS2's true processing rate:
  the rate over the busiest subtask's share of time inside step code) — or removes one subtask where neither
  is known; it never goes down when that estimate says the job needs what it has (at full load no lag shows,
  so lag alone would make it flap).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from headwater.engine.autoscale.config import AutoscaleConfig
from headwater.engine.metrics import SubtaskMetrics

#: smoothing weight of a new observation of the processing rate and of the lag's growth (half-life: 3)
SMOOTHING = 1 - 0.5 ** (1 / 3)
#: share of a window's observations that must be above ``target_lag`` to scale up ...
UP_SHARE = 0.75
#: ... and below the low-water mark to scale down
DOWN_SHARE = 0.9
#: a scale-up sizes for the estimated input rate times this, to drain the lag built up meanwhile
HEADROOM = 1.25
#: a scale-down keeps subtasks at most this share of their learned capacity
TARGET_BUSY = 0.7
#: a busy share below this is too small to estimate a capacity from (noise, idle jobs)
MIN_BUSY = 0.02


@dataclass(frozen=True)
class Signals:
    """One observation of a running job (all figures at ``time``, monotonic seconds).

    ``records_in`` counts rows read by its sources since the attempt started (cumulative); ``lag_records`` is
    the sum over source partitions that report records, ``lag_seconds`` the maximum over those that report
    seconds (``None`` where no partition reports that kind); ``busy`` is, per (stage id, subtask), the seconds
    the subtask spent inside the calls of its steps that process batches since the attempt started
    (cumulative; source reads are left out: a read may wait for input)."""

    time: float
    parallelism: int
    records_in: int
    lag_records: int | None = None
    lag_seconds: float | None = None
    busy: dict[tuple[int, int], float] = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: Iterable[SubtaskMetrics], source_steps: Sequence[str], parallelism: int,
           time: float) -> Signals:
        """The signals of a job from its subtasks' metrics (``RunningJob.metrics()``)."""
        records_in = 0
        lag_records: int | None = None
        lag_seconds: float | None = None
        busy: dict[tuple[int, int], float] = {}
        for subtask in metrics:
            records_in += sum(subtask.steps[s].rows_out for s in source_steps if s in subtask.steps)
            working = [c.processing.sum for s, c in subtask.steps.items() if s not in source_steps]
            if working:
                busy[(subtask.stage_id, subtask.subtask)] = sum(working)
            for lag in subtask.source_lag.values():
                if lag.records is not None:
                    lag_records = (lag_records or 0) + lag.records
                if lag.seconds is not None:
                    lag_seconds = max(lag_seconds or 0.0, lag.seconds)
        return cls(time, parallelism, records_in, lag_records, lag_seconds, busy)


@dataclass(frozen=True)
class Decision:
    """Rescale from ``previous`` to ``parallelism`` subtasks, because of ``reason`` (logged and exported);
    ``at`` is the wall-clock time (``time.time()``) the supervisor acted on it."""

    previous: int
    parallelism: int
    reason: str
    lag_seconds: float
    at: float | None = None

    @property
    def direction(self) -> str:
        return "up" if self.parallelism > self.previous else "down"


class ScalingController:
    """Decides when and where to rescale a job (see the module docstring for the invariants)."""

    def __init__(self, config: AutoscaleConfig, parallelism: int, now: float) -> None:
        self.config = config
        self.parallelism = parallelism
        self._changed_at = now
        #: records/s one subtask processes flat out (learned while lagging; kept across rescales)
        self.capacity_per_subtask: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._last: Signals | None = None
        self._rate: float | None = None  # records/s read by the sources, smoothed
        self._growth: float = 0.0  # records/s by which the lag in records grows, smoothed
        self._window: deque[tuple[float, float]] = deque()  # (time, lag estimate in s)
        self._busy: float | None = None  # the busiest subtask's share of time in step code, smoothed

    @property
    def lag_seconds(self) -> float | None:
        """The median lag estimate over the last ``scale_up_after`` in seconds (``math.inf``: records wait and
        none are processed); ``None`` before the second observation."""
        return self._median(self.config.scale_up_after.total_seconds())

    def rescaled(self, parallelism: int, now: float) -> None:
        """The job now runs ``parallelism`` subtasks (restarted at ``now``): the cool-down starts."""
        self.parallelism = parallelism
        self._changed_at = now
        self._reset()

    def observe(self, signals: Signals) -> Decision | None:
        """Take one observation; return a decision when one is due (the caller rescales, then calls
        :meth:`rescaled`)."""
        estimate = self._estimate(signals)
        if estimate is None:
            return None
        config, now = self.config, signals.time
        self._window.append((now, estimate))
        # keep one interval more than the longest window, so that a window of jittered observations is covered
        horizon = (max(config.scale_up_after, config.scale_down_after) + 2 * config.interval).total_seconds()
        while self._window and now - self._window[0][0] > horizon:
            self._window.popleft()
        target = config.target_lag.total_seconds()
        if estimate > target and self._rate and not math.isinf(estimate):
            per_subtask = self._rate / self.parallelism  # behind the head: running flat out
            self.capacity_per_subtask = max(self.capacity_per_subtask or 0.0, per_subtask)
        if now - self._changed_at < config.cooldown.total_seconds():
            return None
        up = self._share(config.scale_up_after.total_seconds(), now, lambda lag: lag > target)
        if up is not None and up >= UP_SHARE:
            return self._up()
        low = target * config.scale_down_fraction
        down = self._share(config.scale_down_after.total_seconds(), now, lambda lag: lag < low)
        if down is not None and down >= DOWN_SHARE:
            return self._down()
        return None

    def _recent(self, span: float) -> list[float]:
        """The lag estimates of the last ``span`` seconds, oldest first."""
        if not self._window:
            return []
        now = self._window[-1][0]
        return [lag for at, lag in self._window if now - at <= span]

    def _median(self, span: float) -> float | None:
        recent = sorted(self._recent(span))
        return recent[len(recent) // 2] if recent else None

    def _share(self, span: float, now: float, hit: Callable[[float], bool]) -> float | None:
        """Share of the observations of the last ``span`` seconds for which ``hit`` holds; ``None`` while the
        observations do not cover ``span`` yet."""
        if not self._window or now - self._window[0][0] < span:
            return None
        recent = self._recent(span)
        return sum(1 for lag in recent if hit(lag)) / len(recent)

    def _estimate(self, signals: Signals) -> float | None:
        """Update the smoothed rates; return this observation's lag in seconds (``None`` for the first)."""
        last, self._last = self._last, signals
        if last is None or signals.time <= last.time:
            return None
        elapsed = signals.time - last.time
        rate = max(0, signals.records_in - last.records_in) / elapsed
        self._rate = rate if self._rate is None else self._rate + SMOOTHING * (rate - self._rate)
        if signals.lag_records is not None and last.lag_records is not None:
            growth = (signals.lag_records - last.lag_records) / elapsed
            self._growth += SMOOTHING * (growth - self._growth)
        shares = [(signals.busy[key] - last.busy[key]) / elapsed for key in signals.busy if key in last.busy]
        if shares:
            share = min(1.0, max(0.0, max(shares)))
            self._busy = share if self._busy is None else self._busy + SMOOTHING * (share - self._busy)
        estimate = signals.lag_seconds or 0.0
        if signals.lag_records:
            estimate = max(estimate, signals.lag_records / self._rate if self._rate > 0 else math.inf)
        return estimate

    def _up(self) -> Decision | None:
        config, current, lag = self.config, self.parallelism, self.lag_seconds or 0.0
        if current >= config.max_parallelism:
            return None
        factor = config.max_step_up
        if self._rate is not None and self._rate > 0 and not math.isinf(lag):
            factor = min(factor, (self._rate + max(self._growth, 0.0)) / self._rate * HEADROOM)
        wanted = min(config.max_parallelism, max(current + 1, math.ceil(current * factor)))
        shown = "no progress while records wait" if math.isinf(lag) else f"lag {lag:.1f} s"
        return Decision(current, wanted, f"{shown} (median) above target {config.target_lag.total_seconds():g} s "
                                         f"in most of the last {config.scale_up_after.total_seconds():g} s", lag)

    @property
    def busy_capacity_per_subtask(self) -> float | None:
        """Records/s one subtask could process, from the busy share (DS2's true processing rate): the current
        rate over the busiest subtask's share of time in step code, per subtask; ``None`` when the share is
        unknown or too small to divide by (:data:`MIN_BUSY`)."""
        if self._busy is None or self._busy < MIN_BUSY or not self._rate:
            return None
        return self._rate / (self._busy * self.parallelism)

    def _down(self) -> Decision | None:
        config, current = self.config, self.parallelism
        lag = self._median(config.scale_down_after.total_seconds()) or 0.0
        if current <= config.min_parallelism:
            return None
        wanted = current - 1
        learned = [c for c in (self.capacity_per_subtask, self.busy_capacity_per_subtask) if c]
        capacity, rate = (min(learned) if learned else None), self._rate or 0.0
        if capacity:
            wanted = math.ceil(rate / (capacity * TARGET_BUSY))
            if wanted >= current:
                return None  # the job needs what it has: no lag because it keeps up, not because it idles
        wanted = max(config.min_parallelism, wanted)
        low = config.target_lag.total_seconds() * config.scale_down_fraction
        why = f", {rate:.0f} records/s need {wanted} of {capacity:.0f} records/s each" if capacity else ""
        if self._busy is not None:
            why += f" (busiest subtask {self._busy:.0%} busy)"
        return Decision(current, wanted, f"lag {lag:.1f} s (median) below {low:g} s in nearly all of the last "
                                         f"{config.scale_down_after.total_seconds():g} s{why}", lag)
