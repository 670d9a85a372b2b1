"""The checkpoint coordinator of a Ray job, hosted by its first worker actor, and how subtasks reach it.

:class:`CoordinatorService` wraps the transport-free :class:`~headwater.engine.checkpoints.coordinator.CheckpointCoordinator`.
Its timer (trigger every interval, abort on timeout: :meth:`CoordinatorService.run_timer`) runs in the worker's
*watch* concurrency group — its own thread and event loop — so checkpoints time out, and the timeout is
reported, even while user code blocks the worker's main event loop. Acks, final reports and completion
notices arrive in the main loop; the coordinator's work on them (writing and verifying a completed checkpoint)
runs in a thread so that it does not pause the subtasks of this worker. Both threads touch the coordinator only under :attr:`CoordinatorService.lock`,
which is never held across an ``await``.

The watch group never *waits* for that lock: the thread completing a checkpoint holds it for the whole metadata
write and the read-back of every state file, which may take longer than the stall timeout, and a blocked
watch loop would stop answering ``activity`` (the driver would end the job). So the timer only tries the lock
and skips a tick while it is held (a checkpoint being completed has all its acks: it cannot time out then);
timeouts are handed over in a deque (:meth:`take_expired` takes them without the lock); and
:meth:`prepare_stop` only sets flags (single attribute writes), which the timer and the completion read.

Invariant: a completed checkpoint is announced (``notify_complete``) from the main loop only, because that is
where sinks commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats, Expired
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.storage import CheckpointMetadata, SubtaskAck

if TYPE_CHECKING:
    from headwater.engine.ray.executor import WorkerActor

log = logging.getLogger("headwater.checkpoint")

SubtaskId = tuple[int, int]  # (stage id, subtask index)

__all__ = ["CoordinatorClient", "CoordinatorService", "Expired"]


class CoordinatorService:
    """The checkpoint coordinator in a worker: triggers sources on a timer, collects acks, notifies every
    worker when a checkpoint completed (see :class:`CheckpointCoordinator` for the rules)."""

    def __init__(self, core: CheckpointCoordinator) -> None:
        self.core = core
        self.lock = threading.Lock()
        self.sources: list[tuple[Any, SubtaskId]] = []
        self.workers: list[Any] = []
        self.home: WorkerActor | None = None
        self.stopping = False
        self.closed = False
        #: timeouts not yet reported to the driver (taken by :meth:`take_expired`)
        self.expired: deque[Expired] = deque()

    def connect(self, sources: list[tuple[Any, SubtaskId]], workers: list[Any], home: WorkerActor) -> None:
        self.sources, self.workers, self.home = sources, workers, home

    async def run_timer(self) -> None:
        """Trigger due checkpoints and abort timed-out ones until the job is released (watch group's loop)."""
        assert self.home is not None
        while not self.closed:
            await asyncio.sleep(0.02)
            if not self.lock.acquire(blocking=False):
                continue  # a checkpoint is being completed (see the module docstring): try again next tick
            try:
                self._expire()
                checkpoint_id = self.core.begin() if not self.stopping and self.core.due() else None
            finally:
                self.lock.release()
            if checkpoint_id is None:
                continue
            for worker, (stage_id, subtask) in self.sources:
                host = self.home.hosts.get((stage_id, subtask))
                if host is not None:
                    host.triggers.append(checkpoint_id)  # a deque: safe to append from this thread
                else:
                    worker.trigger_checkpoint.remote(stage_id, subtask, checkpoint_id)

    def _expire(self) -> None:
        expired = self.core.expire()
        if expired is not None:
            self.expired.append(expired)

    def take_expired(self) -> list[Expired]:
        """(watch group) The timeouts since the last call; never waits for :attr:`lock`."""
        taken = []
        while self.expired:
            taken.append(self.expired.popleft())
        return taken

    def _notify(self, metadata: CheckpointMetadata | None) -> None:
        if metadata is None:
            return
        assert self.home is not None
        for host in self.home.hosts.values():
            host.notify_complete(metadata.checkpoint_id)
        for worker in self.workers[1:]:
            worker.notify_complete.remote(metadata.checkpoint_id)

    async def ack(self, ack: SubtaskAck) -> None:
        self._notify(await asyncio.to_thread(self._record, self.core.ack, ack))

    async def report_finished(self, ack: SubtaskAck) -> None:
        self._notify(await asyncio.to_thread(self._record, self.core.report_finished, ack))

    def _record(self, method: Callable[[SubtaskAck], CheckpointMetadata | None], ack: SubtaskAck
                ) -> CheckpointMetadata | None:
        """Run ``method`` under the lock, off the main loop: the ack that completes a checkpoint writes its
        metadata and reads every state file back to verify it, which must not pause the subtasks hosted here."""
        with self.lock:
            return method(ack)

    def prepare_stop(self, savepoint: bool) -> None:
        """(watch group) No new checkpoints; the final one is kept as a savepoint if asked. Two attribute writes,
        without :attr:`lock`: a checkpoint the timer began just before is like one begun just before the stop."""
        if savepoint:
            self.core.final_kind = CheckpointKind.SAVEPOINT
        self.stopping = True

    def result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        with self.lock:
            return self.core.stats, self.core.last_completed, self.core.final_completed


class CoordinatorClient:
    """How a subtask reaches the checkpoint coordinator: a direct call in the worker that hosts it, an actor
    call to that worker from the others."""

    def __init__(self, local: CoordinatorService | None, remote_worker: Any = None) -> None:
        self.local, self.remote_worker = local, remote_worker

    async def ack(self, ack: SubtaskAck) -> None:
        if self.local is not None:
            await self.local.ack(ack)
        else:
            await self.remote_worker.coordinator_ack.remote(ack)

    async def report_finished(self, ack: SubtaskAck) -> None:
        if self.local is not None:
            await self.local.report_finished(ack)
        else:
            await self.remote_worker.coordinator_report_finished.remote(ack)
