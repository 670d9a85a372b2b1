"""Apply the controller's decisions to a running job: watch it, stop it with a checkpoint, run it again at the
new parallelism from that checkpoint.

A rescale is the same path as a stop and a resume (key groups move to their new subtasks on restore; see
docs/exactly-once.md), so it loses and duplicates nothing for the same reasons. The runner supplies the job
(``run_segment`` plans and runs it at a parallelism until it ends or is stopped); this module owns the
watching thread, the decisions and their log, and the resource requests to Ray's autoscaler.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Sequence

from headwater.engine.autoscale.config import AutoscaleConfig
from headwater.engine.autoscale.controller import Decision, ScalingController, Signals
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics

log = logging.getLogger("headwater.autoscale")


class RescalingSupervisor:
    """Runs segments of one job until one ends by itself or by the user's stop.

    ``metrics`` and ``stop_attempt`` act on whichever attempt runs now; ``request_workers(n)`` (optional) asks
    the cluster for the resources of ``n`` worker slots ahead of a restart (``0``: drop the request); the
    runner drops it when the job ends. A stop of the user's (``stopped()``
    true) ends the loop after the segment it interrupted; a segment that fails raises as without autoscaling.
    """

    def __init__(
        self,
        config: AutoscaleConfig,
        parallelism: int,
        source_steps: Sequence[str],
        metrics: Callable[[], list[SubtaskMetrics]],
        stop_attempt: Callable[[], None],
        stopped: Callable[[], bool],
        request_workers: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        has_capacity: Callable[[int], bool] | None = None,
    ) -> None:
        self.config = config
        self.parallelism = parallelism
        self.source_steps = list(source_steps)
        self._metrics, self._stop_attempt, self._stopped = metrics, stop_attempt, stopped
        self._request_workers, self._clock = request_workers, clock
        self._has_capacity = has_capacity
        self.controller = ScalingController(config, parallelism, clock())
        self.decisions: list[Decision] = []
        self._pending: Decision | None = None

    @property
    def rescaling(self) -> bool:
        """A decision was taken and the running attempt is being stopped for it (new attempts stop at once)."""
        return self._pending is not None

    def run(self, run_segment: Callable[[int], JobResult]) -> JobResult:
        while True:
            done = threading.Event()
            watcher = threading.Thread(target=self._watch, args=(done,), name="headwater-autoscale", daemon=True)
            watcher.start()
            try:
                result = run_segment(self.parallelism)
            finally:
                done.set()
                watcher.join()
            decision, self._pending = self._pending, None
            if decision is None or self._stopped():
                result.rescales = list(self.decisions)
                return result
            self.parallelism = decision.parallelism
            self.controller.rescaled(decision.parallelism, self._clock())
            log.info("autoscale: restarting at parallelism %d from the checkpoint of the stop", decision.parallelism)

    def _watch(self, done: threading.Event) -> None:
        interval = self.config.interval.total_seconds()
        while not done.wait(interval):
            try:
                metrics = self._metrics()
            except Exception:  # noqa: BLE001 - an attempt between restarts answers nothing: observe later
                log.debug("autoscale: no metrics this time", exc_info=True)
                continue
            signals = Signals.of(metrics, self.source_steps, self.parallelism, self._clock())
            decision = self.controller.observe(signals)
            if decision is None:
                continue
            decision = replace(decision, at=time.time())
            self.decisions.append(decision)
            log.warning("autoscale: parallelism %d -> %d: %s", decision.previous, decision.parallelism, decision.reason)
            if self._request_workers is not None:
                self._request(decision)
                if decision.direction == "up" and not self._await_capacity(decision, done):
                    return  # the attempt ended by itself meanwhile: nothing to rescale
            self._pending = decision  # read by the runner's thread: a reference assignment is atomic
            self._stop_attempt()
            return

    def _await_capacity(self, decision: Decision, done: threading.Event) -> bool:
        """Let the running attempt go on until the cluster can hold ``decision``'s workers (``has_capacity``),
        at most ``capacity_wait``; ``False`` when the attempt ended meanwhile."""
        if self._has_capacity is None:
            return True
        deadline = self._clock() + self.config.capacity_wait.total_seconds()
        waited = False
        while True:
            try:
                if self._has_capacity(decision.parallelism):
                    break
            except Exception:  # noqa: BLE001 - cannot tell: go on with the rescale
                log.debug("autoscale: could not read the cluster's resources", exc_info=True)
                break
            if self._clock() >= deadline:
                log.warning("autoscale: the cluster did not grow to parallelism %d's resources within %s; rescaling "
                            "anyway (the new workers wait for placement)", decision.parallelism,
                            self.config.capacity_wait)
                break
            if not waited:
                log.info("autoscale: waiting for the cluster to grow to parallelism %d's resources",
                         decision.parallelism)
                waited = True
            if done.wait(min(0.25, self.config.interval.total_seconds())):
                return False
        return not done.is_set()

    def _request(self, decision: Decision) -> None:
        assert self._request_workers is not None
        try:
            self._request_workers(decision.parallelism if decision.direction == "up" else 0)
        except Exception:  # noqa: BLE001 - the rescale goes on with what the cluster has
            log.warning("autoscale: asking the cluster for resources failed", exc_info=True)
