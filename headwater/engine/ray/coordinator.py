"""The checkpoint coordinator of a Ray job, hosted by its first worker actor, and how subtasks reach it.

:class:`CoordinatorService` is the transport around the
:class:`~headwater.engine.checkpoints.orchestrator.CheckpointOrchestrator` (which owns the lock, the stop and
savepoint flags, the timeout queue and the commit order). Its timer (trigger every interval, abort on timeout:
:meth:`CoordinatorService.run_timer`) runs in the worker's *watch* concurrency group — its own thread and event
loop — so checkpoints time out, and the timeout is reported, even while user code blocks the worker's main
event loop. Acks, final reports and completion notices arrive in the main loop; the orchestrator's work on them
(writing and verifying a completed checkpoint, under its lock) runs in a thread, so that it does not pause the
subtasks of this worker. The lock is never held across an ``await``.

The watch group never *waits* for that lock: the thread completing a checkpoint holds it for the whole metadata
write and the read-back of every state file, which may take longer than the stall timeout, and a blocked watch
loop would stop answering ``activity`` (the driver would end the job). So the timer only tries the lock and
skips a tick while it is held (``try_begin(blocking=False)``, ``expire``); timeouts are handed over in a deque
(:meth:`CoordinatorService.take_expired`); and :meth:`CoordinatorService.prepare_stop` only sets flags.

:class:`CoordinatorEndpoints` is the coordinator's RPC front: the actor methods of the worker hosting it,
through which the other workers and the driver reach it.

Invariant: a completed checkpoint is announced (``notify_complete``) from the main loop only, because that is
where sinks commit (step 5 of the commit order).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats, Expired
from headwater.engine.checkpoints.orchestrator import CheckpointOrchestrator
from headwater.engine.checkpoints.storage import CheckpointMetadata, SubtaskAck
from headwater.engine.ray.actors import ActorHandle

if TYPE_CHECKING:
    from headwater.engine.ray.worker import WorkerActor

log = logging.getLogger("headwater.checkpoint")

SubtaskId = tuple[int, int]  # (stage id, subtask index)

__all__ = ["CoordinatorClient", "CoordinatorEndpoints", "CoordinatorService", "Expired"]


class CoordinatorService:
    """The checkpoint coordinator in a worker: triggers sources on a timer, collects acks, notifies every
    worker when a checkpoint completed (see :class:`CheckpointOrchestrator` for the rules)."""

    def __init__(self, core: CheckpointCoordinator) -> None:
        self.checkpoints = CheckpointOrchestrator(core)
        self.sources: list[tuple[ActorHandle, SubtaskId]] = []
        self.workers: list[ActorHandle] = []
        self.home: WorkerActor | None = None
        self.closed = False

    def connect(self, sources: list[tuple[ActorHandle, SubtaskId]], workers: list[ActorHandle], home: WorkerActor) -> None:
        self.sources, self.workers, self.home = sources, workers, home

    async def run_timer(self) -> None:
        """Trigger due checkpoints and abort timed-out ones until the job is released (watch group's loop)."""
        assert self.home is not None
        while not self.closed:
            await asyncio.sleep(0.02)
            self.checkpoints.expire()
            # while a checkpoint is being completed, the lock is held: try again next tick (module docstring)
            checkpoint_id = self.checkpoints.try_begin(blocking=False)
            if checkpoint_id is None:
                continue
            for worker, (stage_id, subtask) in self.sources:
                host = self.home.hosts.get((stage_id, subtask))
                if host is not None:
                    host.triggers.append(checkpoint_id)  # a deque: safe to append from this thread
                else:
                    worker.trigger_checkpoint.remote(stage_id, subtask, checkpoint_id)

    def take_expired(self) -> list[Expired]:
        """(watch group) The timeouts since the last call; never waits for the lock."""
        return self.checkpoints.take_expired()

    def _notify(self, metadata: CheckpointMetadata | None) -> None:
        if metadata is None:
            return
        assert self.home is not None
        for host in self.home.hosts.values():
            host.notify_complete(metadata.checkpoint_id)
        for worker in self.workers[1:]:
            worker.notify_complete.remote(metadata.checkpoint_id)

    async def ack(self, ack: SubtaskAck) -> None:
        # off the main loop: the ack that completes a checkpoint writes its metadata and reads every state file
        # back to verify it, which must not pause the subtasks hosted here
        self._notify(await asyncio.to_thread(self.checkpoints.ack, ack))

    async def report_finished(self, ack: SubtaskAck) -> None:
        self._notify(await asyncio.to_thread(self.checkpoints.report_finished, ack))

    def prepare_stop(self, savepoint: bool) -> None:
        """(watch group) No new checkpoints; the final one is kept as a savepoint if asked (flags only)."""
        self.checkpoints.prepare_stop(savepoint)

    def result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        return self.checkpoints.result()


class CoordinatorEndpoints:
    """The coordinator's RPC front: the actor methods of the worker that hosts it (worker 0 of a checkpointed
    job), mixed into :class:`~headwater.engine.ray.worker.WorkerActor`. The methods marked "watch group" are
    called in the worker's watch concurrency group."""

    service: CoordinatorService | None

    def _service(self) -> CoordinatorService:
        assert self.service is not None, "this worker does not host the checkpoint coordinator"
        return self.service

    def _expired(self) -> list[Expired]:
        return self.service.take_expired() if self.service is not None else []

    async def coordinate(self) -> None:
        """(watch group) The checkpoint coordinator's timer; runs until the job is released or killed (other
        workers may need checkpoints after this worker's subtasks ended)."""
        await self._service().run_timer()

    async def coordinator_ack(self, ack: SubtaskAck) -> None:
        await self._service().ack(ack)

    async def coordinator_report_finished(self, ack: SubtaskAck) -> None:
        await self._service().report_finished(ack)

    async def coordinator_prepare_stop(self, savepoint: bool) -> None:
        """(watch group)"""
        self._service().prepare_stop(savepoint)

    async def coordinator_stats(self) -> CheckpointStats | None:
        """(watch group) A copy of the checkpoint statistics so far, for metrics; never waits for the lock."""
        return self.service.checkpoints.stats() if self.service is not None else None

    async def coordinator_result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        return self._service().result()


class CoordinatorClient:
    """How a subtask reaches the checkpoint coordinator: a direct call in the worker that hosts it, an actor
    call to that worker from the others."""

    def __init__(self, local: CoordinatorService | None, remote_worker: ActorHandle | None = None) -> None:
        self.local, self.remote_worker = local, remote_worker

    async def ack(self, ack: SubtaskAck) -> None:
        if self.local is not None:
            await self.local.ack(ack)
        else:
            assert self.remote_worker is not None
            await self.remote_worker.coordinator_ack.remote(ack)

    async def report_finished(self, ack: SubtaskAck) -> None:
        if self.local is not None:
            await self.local.report_finished(ack)
        else:
            assert self.remote_worker is not None
            await self.remote_worker.coordinator_report_finished.remote(ack)
