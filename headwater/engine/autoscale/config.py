"""``AutoscaleConfig``: the bounds and tempo of the lag-driven scaling controller, validated when made."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from headwater.errors import ConfigError


@dataclass(frozen=True)
class AutoscaleConfig:
    """Scale a running job's parallelism on lag (see :mod:`headwater.engine.autoscale.controller`).

    Attributes:
        min_parallelism: never fewer subtasks than this (≥ 1).
        max_parallelism: never more than this (≤ the job's ``max_key_groups``, checked when the job starts).
        target_lag: the lag the controller keeps the job under: how far the sources are behind the head of
            their systems, in seconds of input (a lag in records is turned into seconds at the job's current
            processing rate).
        cooldown: after a rescale, no other decision for this long (the restored job warms up meanwhile).
        scale_up_after: lag above ``target_lag`` at every observation for this long scales up ...
        scale_down_after: ... and lag below ``scale_down_fraction`` × ``target_lag`` for this long scales down.
        scale_down_fraction: the low-water mark as a share of ``target_lag`` (hysteresis: between the two marks
            nothing happens).
        max_step_up: a scale-up multiplies parallelism by at most this factor (and adds at least one subtask).
        interval: how often the controller reads the job's signals.
        request_resources: also ask Ray's autoscaler for the CPUs of the new parallelism ahead of the restart
            (``ray.autoscaler.sdk.request_resources``), and drop that request when scaling down.
        capacity_wait: with ``request_resources``, a scale-up keeps the running attempt processing for up to this
            long while the cluster grows to the new parallelism's worker resources (nodes starting), and stops it
            for the rescale once they are there, so that the output pauses for the restart only, not for a node
            start; past it the rescale goes on and the new workers wait for placement. ``timedelta(0)``: stop
            at once.
    """

    min_parallelism: int = 1
    max_parallelism: int = 8
    target_lag: timedelta = timedelta(seconds=5)
    cooldown: timedelta = timedelta(seconds=30)
    scale_up_after: timedelta = timedelta(seconds=10)
    scale_down_after: timedelta = timedelta(seconds=60)
    scale_down_fraction: float = 0.2
    max_step_up: float = 2.0
    interval: timedelta = timedelta(seconds=1)
    request_resources: bool = True
    capacity_wait: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        for name in ("min_parallelism", "max_parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AutoscaleConfig.{name} must be an int >= 1, got {value!r}")
        if self.max_parallelism < self.min_parallelism:
            raise ConfigError(f"AutoscaleConfig.max_parallelism ({self.max_parallelism}) is below min_parallelism "
                              f"({self.min_parallelism}); raise max_parallelism or lower min_parallelism")
        for name in ("target_lag", "cooldown", "scale_up_after", "scale_down_after", "interval"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ConfigError(f"AutoscaleConfig.{name} must be a positive datetime.timedelta, got {value!r}")
        if not isinstance(self.capacity_wait, timedelta) or self.capacity_wait < timedelta(0):
            raise ConfigError(f"AutoscaleConfig.capacity_wait must be a non-negative datetime.timedelta, got "
                              f"{self.capacity_wait!r}")
        value = self.scale_down_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"AutoscaleConfig.scale_down_fraction must be a number strictly between 0 and 1, got "
                              f"{value!r}")
        if isinstance(self.max_step_up, bool) or not isinstance(self.max_step_up, (int, float)) or self.max_step_up <= 1:
            raise ConfigError(f"AutoscaleConfig.max_step_up must be a number > 1, got {self.max_step_up!r}")
        if self.scale_up_after < self.interval or self.scale_down_after < self.interval:
            raise ConfigError("AutoscaleConfig.scale_up_after and scale_down_after must be at least one interval "
                              f"({self.interval}); a decision needs at least two observations")
