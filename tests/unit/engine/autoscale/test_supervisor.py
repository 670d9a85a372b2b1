"""The supervisor's wait for cluster capacity before a scale-up's restart: the running attempt keeps working
while nodes start, bounded by ``AutoscaleConfig.capacity_wait``, and a job that ends meanwhile is not rescaled."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import headwater as hw
from headwater.engine.autoscale.controller import Decision
from headwater.engine.autoscale.supervisor import RescalingSupervisor
from headwater.errors import ConfigError

UP = Decision(previous=1, parallelism=3, reason="lag", lag_seconds=9.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def supervisor(has_capacity: object, clock: Clock, wait_s: float = 60.0) -> RescalingSupervisor:
    config = hw.AutoscaleConfig(capacity_wait=timedelta(seconds=wait_s), interval=timedelta(milliseconds=10),
                                scale_up_after=timedelta(milliseconds=10), scale_down_after=timedelta(milliseconds=10))
    return RescalingSupervisor(config, 1, ["src"], list, lambda: None, lambda: False, lambda n: None, clock,
                               has_capacity=has_capacity)  # type: ignore[arg-type]


def test_a_scale_up_waits_until_the_cluster_holds_the_new_parallelism() -> None:
    clock, asked = Clock(), []

    def has_capacity(slots: int) -> bool:
        asked.append(slots)
        clock.now += 5  # a node takes a few polls to come
        return len(asked) >= 3

    assert supervisor(has_capacity, clock)._await_capacity(UP, threading.Event()) is True
    assert asked == [3, 3, 3]


def test_the_wait_is_bounded_by_capacity_wait_then_the_rescale_goes_on() -> None:
    clock, asked = Clock(), []

    def never(slots: int) -> bool:
        asked.append(slots)
        clock.now += 4
        return False

    assert supervisor(never, clock, wait_s=10)._await_capacity(UP, threading.Event()) is True
    assert len(asked) == 3  # 0, 4, 8 s: under 10; at 12 s it gives up


def test_an_attempt_that_ends_while_waiting_is_not_rescaled() -> None:
    done = threading.Event()

    def never(slots: int) -> bool:
        done.set()  # the job finished by itself meanwhile
        return False

    assert supervisor(never, Clock())._await_capacity(UP, done) is False


def test_a_cluster_that_cannot_say_does_not_block_the_rescale() -> None:
    def broken(slots: int) -> bool:
        raise ConnectionError("GCS gone")

    assert supervisor(broken, Clock())._await_capacity(UP, threading.Event()) is True


def test_capacity_wait_must_be_a_non_negative_timedelta() -> None:
    with pytest.raises(ConfigError, match="capacity_wait must be a non-negative datetime.timedelta"):
        hw.AutoscaleConfig(capacity_wait=5)  # type: ignore[arg-type]
    hw.AutoscaleConfig(capacity_wait=timedelta(0))
