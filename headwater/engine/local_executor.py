"""In-process executor: the same physical plan and subtask logic as on Ray, in one thread.

Every subtask's :class:`~headwater.engine.runtime.SubtaskRuntime` lives in this process; messages go through
one FIFO queue, so per-channel order is the send order, as on Ray. Sources are polled round-robin; after
each poll the queue is drained (FIFO), which keeps memory bounded by one source batch's fan-out. With
checkpointing, the coordinator is called directly and snapshots are written synchronously. It is the fast
path for unit tests of pipelines (``headwater.testing.run_local``) and exercises partitioning, fusion,
barriers, end-of-stream and finishing exactly as the Ray executor does.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from headwater.engine.checkpoint_storage import CheckpointMetadata
from headwater.engine.config import RunConfig
from headwater.engine.coordinator import CheckpointCoordinator
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.runtime import Outgoing, SubtaskRuntime
from headwater.engine.snapshots import SubtaskRestore, persist

_IDLE_SLEEP_S = 0.005


class LocalJob:
    """A job run in the calling thread by :meth:`wait` (``stop`` may be called from another thread)."""

    def __init__(
        self, plan: PhysicalPlan, config: RunConfig, coordinator: CheckpointCoordinator | None = None,
        restore: SubtaskRestore | None = None,
    ) -> None:
        self.plan = plan
        self.config = config
        self.coordinator = coordinator
        self._stop = threading.Event()
        self._queue: deque[tuple[SubtaskRuntime, int, int, object]] = deque()
        self._reported: set[tuple[int, int]] = set()
        self.runtimes: dict[tuple[int, int], SubtaskRuntime] = {
            (stage.stage_id, i): SubtaskRuntime(plan, stage.stage_id, i, config, coordinator is not None, restore)
            for stage in plan.stages
            for i in range(stage.parallelism)
        }

    def stop(self, savepoint: bool = False) -> None:
        if savepoint and self.coordinator is not None:
            self.coordinator.final_kind = "savepoint"
        self._stop.set()

    def metrics(self) -> list[SubtaskMetrics]:
        return [rt.metrics(backlog=len(self._queue)) for rt in self.runtimes.values()]

    def _deliver(self, sender: SubtaskRuntime, outgoing: list[Outgoing]) -> None:
        for edge_id, receiver, message in outgoing:
            dst = self.runtimes[(self.plan.edges[edge_id].dst, receiver)]
            self._queue.append((dst, edge_id, sender.subtask, message))

    def _drain(self) -> None:
        while self._queue:
            runtime, edge_id, sender, message = self._queue.popleft()
            self._deliver(runtime, runtime.on_message(edge_id, sender, message))  # type: ignore[arg-type]

    def _done(self, runtimes: list[SubtaskRuntime]) -> bool:
        if not all(rt.finished for rt in runtimes):
            return False
        return self.coordinator is None or self.coordinator.final_completed

    def wait(self, timeout: float | None = None) -> JobResult:
        """Run the job to its end (or until ``stop()``, Ctrl-C or ``timeout`` seconds, which stop gracefully)."""
        started = time.monotonic()
        runtimes = list(self.runtimes.values())
        sources = [rt for rt in runtimes if rt.source_step is not None]
        try:
            for rt in runtimes:
                rt.open()
            while not self._done(runtimes):
                try:
                    if timeout is not None and time.monotonic() - started > timeout:
                        self._stop.set()
                    self._round(runtimes, sources)
                except KeyboardInterrupt:
                    if self._stop.is_set():
                        raise  # a second Ctrl-C (or one during a stop) ends the run at once
                    self._stop.set()  # first Ctrl-C: stop gracefully
        finally:
            for rt in runtimes:
                rt.close()
        result = JobResult.merge(self.plan, time.monotonic() - started, self.metrics(), self._stop.is_set())
        if self.coordinator is not None:
            result.checkpoints = self.coordinator.stats
            result.last_checkpoint = self.coordinator.last_completed
        return result

    def _round(self, runtimes: list[SubtaskRuntime], sources: list[SubtaskRuntime]) -> None:
        if self._stop.is_set():
            for rt in sources:
                rt.request_stop()
        progressed = False
        for rt in sources:
            if not rt.finished:
                outgoing, produced = rt.poll_sources()
                progressed |= produced or rt.finished
                self._deliver(rt, outgoing)
                self._drain()
        now = time.monotonic()
        for rt in runtimes:
            if not rt.finished:
                self._deliver(rt, rt.poll_timers(now))
        self._drain()
        if self.coordinator is not None:
            self._checkpoint_work(runtimes, sources)
        if not progressed and not self._done(runtimes):
            self._sleep_until_due(runtimes, sources)

    def _checkpoint_work(self, runtimes: list[SubtaskRuntime], sources: list[SubtaskRuntime]) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        if coordinator.due() and not self._stop.is_set():
            checkpoint_id = coordinator.begin()
            for rt in sources:
                self._deliver(rt, rt.trigger_checkpoint(checkpoint_id))
            self._drain()
        coordinator.expire()
        for rt in runtimes:
            for snapshot in rt.take_snapshots():
                self._completed(coordinator.ack(persist(snapshot, coordinator.storage)))
            key = (rt.stage.stage_id, rt.subtask)
            if rt.final_snapshot is not None and key not in self._reported:
                self._reported.add(key)
                self._completed(coordinator.report_finished(persist(rt.final_snapshot, coordinator.storage)))

    def _completed(self, metadata: CheckpointMetadata | None) -> None:
        if metadata is not None:
            for rt in self.runtimes.values():
                rt.notify_checkpoint_complete(metadata.checkpoint_id)

    def _sleep_until_due(self, runtimes: list[SubtaskRuntime], sources: list[SubtaskRuntime]) -> None:
        now = time.monotonic()
        candidates = [now + _IDLE_SLEEP_S]
        candidates += [d for d in (rt.next_deadline() for rt in runtimes) if d is not None]
        candidates += [w for w in (rt.next_source_wakeup() for rt in sources if not rt.finished) if w is not None]
        delay = min(candidates) - now
        if delay > 0:
            self._stop.wait(delay)
