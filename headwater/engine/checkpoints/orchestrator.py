"""One checkpoint orchestration for both executors: trigger → snapshot → persist → ack → complete → notify.

:class:`CheckpointOrchestrator` wraps the transport-free :class:`~headwater.engine.checkpoints.coordinator.CheckpointCoordinator`
with what both executors need around it: the lock that serialises calls into it, the stop and savepoint
flags, the queue of timed-out checkpoints, and the hook that an executor uses to refuse coordinator calls
after it gave up on the job. :class:`SubtaskCheckpoints` is the per-subtask side: it hands out, exactly once
each, the snapshots a :class:`~headwater.engine.runtime.SubtaskRuntime` has taken and its final snapshot.
What is left in each executor is transport: the in-process executor calls all of this directly, in its loop
thread (:mod:`headwater.engine.local_executor`); the Ray executor calls it from the worker hosting the
coordinator, off the event loop (:mod:`headwater.engine.ray.coordinator`), and from the subtasks'
hosts (:mod:`headwater.engine.ray.subtask_host`).

Commit order of checkpoint ``n`` (every step happens after the one before it; the numbers are used in the
executors' docstrings):

1. **Trigger** — :meth:`CheckpointOrchestrator.try_begin` opens ``n`` when it is due (not while stopping); the
   executor asks every running source subtask to record its positions and emit barrier ``n``.
2. **Flush sinks and snapshot** — a subtask aligned on barrier ``n`` has every sink of its chain *prepare*
   (staged output becomes durable, its token is recorded), then copies its state and the prepared, not yet
   committed tokens into a snapshot (:meth:`SubtaskCheckpoints.taken`). A subtask whose input ended does the
   same once, with its final snapshot (:meth:`SubtaskCheckpoints.final`).
3. **Persist** — the executor writes the snapshot's state files (``persist``), outside the lock.
4. **Acknowledge** — :meth:`~CheckpointOrchestrator.ack` (or :meth:`~CheckpointOrchestrator.report_finished`
   for a final snapshot) under the lock. The ack that completes ``n`` writes its metadata and verifies it
   (the moment checkpoint ``n`` exists) and prunes older checkpoints; it returns the metadata.
5. **Commit sinks** — the executor tells every subtask that ``n`` is complete; each commits, in order, the sink
   transactions prepared at or before ``n``. Never under the lock (it is user code), and never for a checkpoint
   that failed verification, timed out (:meth:`~CheckpointOrchestrator.expire`) or was not written.

Invariants:

* The lock is held only around coordinator calls, never around user code (sinks' ``prepare``/``commit``,
  state serialisation) or a wait for another thread.
* :meth:`~CheckpointOrchestrator.expire`, :meth:`~CheckpointOrchestrator.take_expired`,
  :meth:`~CheckpointOrchestrator.prepare_stop` and ``try_begin(blocking=False)`` never *wait* for the lock: a
  completion holds it through the metadata write and the read-back of every state file, which may take
  longer than a stall timeout, and the threads that call these must keep answering (the Ray watch group, the
  in-process watcher). They skip a tick instead (a checkpoint being completed has all its acks: it cannot
  time out then); :meth:`prepare_stop` is two attribute writes.
* ``guard`` (the executor's "has the job been abandoned?" check) runs under the lock before every begin, ack
  and final report, so no checkpoint is begun, acknowledged or completed after the executor gave up on it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Protocol

from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats, Expired
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.snapshots import PendingSnapshot
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck

__all__ = ["CheckpointOrchestrator", "Expired", "Snapshotting", "SubtaskCheckpoints"]


def _no_guard() -> None:
    return None


class CheckpointOrchestrator:
    """The coordinator with its lock, stop/savepoint flags and timeout queue (see the module docstring).

    Thread-safe; transport-free. ``guard`` raises to refuse a coordinator call (see the module docstring)."""

    def __init__(self, core: CheckpointCoordinator, guard: Callable[[], None] = _no_guard) -> None:
        self.core = core
        self.guard = guard
        #: held around every call into :attr:`core` (see the module docstring for who may wait for it)
        self.lock = threading.Lock()
        self.stopping = False
        #: checkpoints that timed out, not yet taken by :meth:`take_expired` (a deque: no lock needed)
        self.expired: deque[Expired] = deque()

    @property
    def storage(self) -> CheckpointStorage:
        return self.core.storage

    # -- 1. trigger -----------------------------------------------------------------------------------------
    def try_begin(self, blocking: bool = True) -> int | None:
        """Open the next checkpoint if one is due and the job is not stopping; its id, else ``None`` (also when
        ``blocking`` is false and the lock is held: try again later)."""
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            self.guard()
            return self.core.begin() if not self.stopping and self.core.due() else None
        finally:
            self.lock.release()

    def expire(self) -> Expired | None:
        """Abort the in-flight checkpoint if it timed out (queued for :meth:`take_expired`, and returned).
        Never waits for the lock: while it is held, nothing expires this time."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            expired = self.core.expire()
        finally:
            self.lock.release()
        if expired is not None:
            self.expired.append(expired)
        return expired

    def take_expired(self) -> list[Expired]:
        """The timeouts since the last call, oldest first; never waits for the lock."""
        taken = []
        while self.expired:
            taken.append(self.expired.popleft())
        return taken

    # -- 4. acknowledge (the result completes the checkpoint: 5. is the caller's) ---------------------------
    def ack(self, ack: SubtaskAck) -> CheckpointMetadata | None:
        """Record a persisted snapshot; the metadata if this completed its checkpoint (then notify the subtasks)."""
        with self.lock:
            self.guard()
            return self.core.ack(ack)

    def report_finished(self, ack: SubtaskAck) -> CheckpointMetadata | None:
        """Record a subtask's persisted final snapshot; the metadata of a checkpoint this completed, if any."""
        with self.lock:
            self.guard()
            return self.core.report_finished(ack)

    # -- the end --------------------------------------------------------------------------------------------
    def prepare_stop(self, savepoint: bool) -> None:
        """No new checkpoints; the final one is kept as a savepoint if asked. Two attribute writes, without the
        lock: a checkpoint begun just before is like one begun just before the stop."""
        if savepoint:
            self.core.final_kind = CheckpointKind.SAVEPOINT
        self.stopping = True

    @property
    def final_completed(self) -> bool:
        """The job's last checkpoint exists (one attribute read, without the lock)."""
        return self.core.final_completed

    def stats(self) -> CheckpointStats:
        """A copy of the statistics so far, without the lock (a completion holding it may be missed until the
        next call): for metrics, which must not wait behind a metadata write."""
        return self.core.stats.copy()

    def result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        """Statistics, the last completed checkpoint, and whether it is the job's final one."""
        with self.lock:
            return self.core.stats, self.core.last_completed, self.core.final_completed


class Snapshotting(Protocol):
    """What :class:`SubtaskCheckpoints` needs of a subtask (a :class:`~headwater.engine.runtime.SubtaskRuntime`)."""

    final_snapshot: PendingSnapshot | None

    def take_snapshots(self) -> list[PendingSnapshot]: ...


class SubtaskCheckpoints:
    """One subtask's snapshots, each handed out exactly once, to be persisted and reported (steps 2–4 of the
    module docstring): :meth:`taken` for checkpoints, :meth:`final` for the final snapshot."""

    def __init__(self, runtime: Snapshotting) -> None:
        self.runtime = runtime
        self.final_taken = False

    def taken(self) -> list[PendingSnapshot]:
        """The snapshots taken since the last call (to :meth:`CheckpointOrchestrator.ack`), oldest first."""
        return self.runtime.take_snapshots()

    def final(self) -> PendingSnapshot | None:
        """The final snapshot, the first time it is asked for after it exists (to
        :meth:`CheckpointOrchestrator.report_finished`); ``None`` before and after."""
        if self.final_taken or self.runtime.final_snapshot is None:
            return None
        self.final_taken = True
        return self.runtime.final_snapshot
