"""Driver side of the deadlines of a Ray job: ask every worker what its subtasks are doing, flag stalls, log
checkpoint timeouts (the rules are in :mod:`headwater.engine.watchdog`).

Each worker answers ``activity`` in its *watch* concurrency group (:data:`WATCH`): its own thread and event
loop, so the answer comes while user code blocks the worker's main loop. The driver never blocks on an
answer: it keeps at most one call in flight per worker and looks at the answers that are ready.
"""

from __future__ import annotations

import time
from types import ModuleType

from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.actors import ActorHandle, ObjectRef
from headwater.engine.watchdog import (
    UNANSWERED_MIN_S,
    SubtaskActivity,
    find_stall,
    log_checkpoint_timeout,
    unanswered,
)

SubtaskId = tuple[int, int]

#: the worker actors' concurrency group for calls that must not wait for the main event loop
WATCH = "watch"
#: calls that may run in the watch group at once (activity, stop, prepare-stop, the coordinator's timer, checkpoint statistics for metrics)
WATCH_CONCURRENCY = 6


class WorkerWatch:
    """Polls ``activity`` of every worker (at most every :attr:`every` seconds) from :meth:`poll`."""

    def __init__(self, ray: ModuleType, plan: PhysicalPlan, workers: list[ActorHandle], assignments: list[list[SubtaskId]],
                 stall_s: float | None) -> None:
        self.ray = ray
        self.plan = plan
        self.workers = workers
        self.assignments = assignments
        self.stall_s = stall_s
        self.every = 1.0 if stall_s is None else max(0.1, min(1.0, stall_s / 4))
        #: the latest answer of each subtask
        self.latest: dict[SubtaskId, SubtaskActivity] = {}
        self._outstanding: dict[int, tuple[ObjectRef, float]] = {}
        self._last_sent: dict[int, float] = {}

    def poll(self) -> None:
        """Collect ready answers, send due calls; raise :class:`~headwater.errors.StepStalledError` when a call
        into step code exceeded the stall timeout, a transient :class:`~headwater.errors.JobFailedError` when a
        worker has not answered for too long."""
        now = time.monotonic()
        refs = [ref for ref, _ in self._outstanding.values()]
        ready = set(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for index, (ref, sent) in list(self._outstanding.items()):
            if ref in ready:
                del self._outstanding[index]
                self._take(ref)
            elif self.stall_s is not None and now - sent > max(self.stall_s, UNANSWERED_MIN_S):
                steps = [(self.plan.stages[s].head, i) for s, i in self.assignments[index]]
                last = [self.latest[key] for key in self.assignments[index] if key in self.latest]
                raise unanswered(steps, now - sent, last)
        for index, worker in enumerate(self.workers):
            if index not in self._outstanding and now - self._last_sent.get(index, 0.0) >= self.every:
                self._outstanding[index] = (worker.activity.options(concurrency_group=WATCH).remote(), now)
                self._last_sent[index] = now
        stalled = find_stall(self.latest.values(), self.stall_s)
        if stalled is not None:
            raise stalled

    def _take(self, ref: ObjectRef) -> None:
        try:
            activities, expired = self.ray.get(ref)
        except Exception:  # noqa: BLE001 - a dead worker: its run() call reports the failure
            return
        for activity in activities:
            self.latest[(activity.stage_id, activity.subtask)] = activity
        for checkpoint_id, age, missing in expired:
            log_checkpoint_timeout(checkpoint_id, age, missing, self.latest)

    def activities(self) -> list[SubtaskActivity]:
        return list(self.latest.values())
