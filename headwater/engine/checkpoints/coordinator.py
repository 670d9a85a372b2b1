"""The checkpoint coordinator: decides when checkpoints happen and when they are complete.

Protocol (asynchronous barrier snapshots, as in Flink):

1. :meth:`CheckpointCoordinator.begin` opens checkpoint ``n`` (at most one in flight); the executor asks every
   running source subtask to record its positions and emit barrier ``n`` in-band.
2. Every subtask snapshots when barrier ``n`` has arrived on all of its open inputs (sources: at once), writes
   its state files, and acknowledges with a :class:`SubtaskAck` (:meth:`ack`). A subtask whose input already
   ended reported a final snapshot once (:meth:`report_finished`); it stands in for all later checkpoints.
3. With every subtask's ack in, the coordinator writes the checkpoint metadata atomically — only now does
   checkpoint ``n`` exist — prunes old checkpoints, and the executor tells the sinks to commit up to ``n``.
4. A checkpoint not complete within the timeout is aborted: the state files acknowledged for it are deleted at
   once, and so are those of acks that arrive late for it.
5. Writing the metadata reads it and every state file back and verifies them (see
   :meth:`~headwater.engine.checkpoints.storage.CheckpointStorage.write_metadata`). A checkpoint that fails
   verification is deleted and counts as failed — its sinks are never told to commit — and the job goes on
   with the next one, so a restore never has to fall back past output that was committed. A write error
   (disk full, read-only) deletes the checkpoint's files and fails the job with the ``OSError`` as cause.

The coordinator carries the deployment's checkpoint key when it is pickled (it travels to the worker hosting it
as an actor argument); nothing else that travels to workers does.

The class is transport-free; the Ray executor wraps it in an actor, the in-process executor calls it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple, cast

from headwater.engine.checkpoints.key import CheckpointKey
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig
from headwater.engine.metrics import CHECKPOINT_BOUNDS, BucketHistogram
from headwater.errors import CheckpointCorruptError, CheckpointError

log = logging.getLogger("headwater.checkpoint")


@dataclass
class _Pending:
    checkpoint_id: int
    kind: CheckpointKind
    started: float
    acks: dict[tuple[int, int], SubtaskAck] = field(default_factory=dict)


class Expired(NamedTuple):
    """A checkpoint that timed out and was aborted: plain data (it travels from a Ray worker to the driver)."""

    checkpoint_id: int
    age_s: float  # how long it had been in flight
    missing: list[tuple[int, int]]  # (stage id, subtask) that had not acknowledged it


#: how many recent checkpoints' durations CheckpointStats lists
RECENT_CHECKPOINTS = 1024


@dataclass
class CheckpointStats:
    """Checkpoints of one attempt: how many ended how (``completed``, ``aborted`` on timeout, ``failed``
    verification), the last completed one's duration, size and wall-clock time, and the durations of the last
    :data:`RECENT_CHECKPOINTS` (a job checkpointing every second for a month would otherwise hold, and copy at
    every metrics read, millions; every duration is in the ``durations`` histogram)."""

    completed: int = 0
    aborted: int = 0
    failed: int = 0  # written but failed verification (deleted; sinks not committed for it)
    last_duration_ms: float = 0.0
    last_bytes: int = 0
    durations_ms: list[float] = field(default_factory=list)
    sync_ms_max: list[float] = field(default_factory=list)
    #: the durations again, in the exported buckets (seconds; ``headwater_checkpoint_duration_seconds``)
    durations: BucketHistogram = field(default_factory=lambda: BucketHistogram(CHECKPOINT_BOUNDS))
    last_completed_at: float | None = None  # time.time() when the last checkpoint completed
    last_completed_id: int | None = None  # ... and its id

    def copy(self) -> CheckpointStats:
        """A copy that another thread may read while the coordinator goes on (lists and histogram copied)."""
        return replace(self, durations_ms=list(self.durations_ms), sync_ms_max=list(self.sync_ms_max),
                       durations=self.durations.copy())


class CheckpointCoordinator:
    def __init__(
        self, storage: CheckpointStorage, config: CheckpointConfig, flow_name: str,
        subtasks: list[tuple[int, int]], max_key_groups: int, first_id: int,
    ) -> None:
        self.storage = storage
        self.config = config
        self.flow_name = flow_name
        self.expected = set(subtasks)
        self.max_key_groups = max_key_groups
        self.next_id = first_id
        self.pending: _Pending | None = None
        self.finished: dict[tuple[int, int], SubtaskAck] = {}
        self.last_completed: CheckpointMetadata | None = None
        #: when the last checkpoint was triggered (the start, before the first) and when the last one ended
        self.last_begin = self.last_end = time.monotonic()
        self.stats = CheckpointStats()
        #: the kind of the job's last checkpoint: FINAL, or SAVEPOINT once a stop asked for one
        self.final_kind = CheckpointKind.FINAL
        self.aborted_ids: set[int] = set()
        #: (path, digest) of state files read back and verified already (final snapshots stand in repeatedly)
        self.verified_files: set[tuple[str, str]] = set()

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_key"] = self.storage.key  # the storage pickles without its key (see CheckpointStorage)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        key = cast(CheckpointKey, state.pop("_key"))
        self.__dict__.update(state)
        self.storage.attach_key(key)

    # -- triggering -----------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        """Whether to trigger the next checkpoint: none in flight, ``interval`` since the last trigger and
        ``min_pause`` since the last end (as Flink: a checkpoint taking longer than the interval is followed
        by the next at once, unless ``min_pause`` asks for a gap)."""
        now = time.monotonic() if now is None else now
        return (
            self.pending is None
            and now - self.last_begin >= self.config.interval.total_seconds()
            and now - self.last_end >= self.config.min_pause.total_seconds()
            and not self.all_finished
        )

    def begin(self, kind: CheckpointKind = CheckpointKind.CHECKPOINT) -> int:
        """Open the next checkpoint; returns its id. Only one may be in flight."""
        assert self.pending is None, "a checkpoint is already in flight"
        checkpoint_id = self.next_id
        self.next_id += 1
        self.pending = _Pending(checkpoint_id, kind, time.monotonic())
        self.last_begin = self.pending.started
        for key, final in self.finished.items():
            self.pending.acks[key] = replace(final, checkpoint_id=checkpoint_id)
        return checkpoint_id

    @property
    def all_finished(self) -> bool:
        return set(self.finished) >= self.expected

    # -- acknowledgements -----------------------------------------------------------------------------------
    def ack(self, ack: SubtaskAck) -> CheckpointMetadata | None:
        """Record an ack; returns the metadata if this completed the checkpoint."""
        pending = self.pending
        if pending is None or ack.checkpoint_id != pending.checkpoint_id:
            # late ack of an aborted checkpoint: its files are no checkpoint's (a finished subtask reports its
            # final snapshot through report_finished, never here)
            if ack.checkpoint_id in self.aborted_ids:
                self.storage.delete_state_files(ack)
            return None
        pending.acks[(ack.stage_id, ack.subtask)] = ack
        return self._maybe_complete()

    def report_finished(self, ack: SubtaskAck) -> CheckpointMetadata | None:
        """A subtask's input ended; ``ack`` is its final snapshot. Completes checkpoints that waited for it,
        and, once every subtask finished, the final checkpoint.

        Invariant: once every subtask finished, the final checkpoint is made here — nothing else would begin it
        (:meth:`due` is false from then on, and no report is left to come). That holds also when this report
        completed a pending checkpoint that another subtask had acknowledged with a regular snapshot (a plain
        checkpoint, not the final one): the final one follows at once, and its metadata is returned (telling
        the subtasks that it completed commits everything prepared at or before it, the other one included)."""
        key = (ack.stage_id, ack.subtask)
        self.finished[key] = ack
        completed = None
        if self.pending is not None and key not in self.pending.acks:
            self.pending.acks[key] = replace(ack, checkpoint_id=self.pending.checkpoint_id)
            completed = self._maybe_complete()
        if self.all_finished and self.pending is None and not self.final_completed:
            self.begin(self.final_kind)
            return self._maybe_complete() or completed
        return completed

    def _maybe_complete(self) -> CheckpointMetadata | None:
        pending = self.pending
        assert pending is not None
        if set(pending.acks) < self.expected:
            return None
        acks = sorted(pending.acks.values(), key=lambda a: (a.stage_id, a.subtask))
        # The checkpoint made only of final snapshots is the job's last one: FINAL, or SAVEPOINT when the job
        # was stopped with a savepoint.
        kind = self.final_kind if all(a.finished for a in acks) else CheckpointKind.CHECKPOINT
        metadata = CheckpointMetadata(
            checkpoint_id=pending.checkpoint_id, flow_name=self.flow_name, kind=kind,
            max_key_groups=self.max_key_groups, created_at=time.time(), acks=acks,
        )
        try:
            metadata.directory = self.storage.write_metadata(metadata, self.verified_files)
        except CheckpointCorruptError as exc:
            self._fail(pending, acks, exc)
            return None
        except CheckpointError:
            self.pending = None  # its files are deleted; the job fails with the write error
            self.aborted_ids.add(pending.checkpoint_id)
            raise
        self.storage.prune(self.config.retain)
        duration = (time.monotonic() - pending.started) * 1000
        self.stats.completed += 1
        self.stats.last_duration_ms = duration
        self.stats.last_bytes = metadata.bytes_written
        self.stats.durations_ms.append(duration)
        self.stats.durations.observe(duration / 1000)
        self.stats.last_completed_at = metadata.created_at
        self.stats.last_completed_id = pending.checkpoint_id
        self.stats.sync_ms_max.append(max((a.sync_ms for a in acks), default=0.0))
        for recent in (self.stats.durations_ms, self.stats.sync_ms_max):
            if len(recent) > RECENT_CHECKPOINTS:
                del recent[:len(recent) - RECENT_CHECKPOINTS]
        self.pending = None
        self.last_end = time.monotonic()
        self.last_completed = metadata
        return metadata

    def _fail(self, pending: _Pending, acks: list[SubtaskAck], error: CheckpointCorruptError) -> None:
        """Checkpoint ``pending`` was written but did not verify (its files are deleted already)."""
        self.pending = None
        self.aborted_ids.add(pending.checkpoint_id)
        self.last_end = time.monotonic()
        self.stats.failed += 1
        reused = {f.path for a in acks if a.finished for f in a.state_files}
        if error.path is not None and any(error.path.endswith("/" + p) for p in reused):
            # a finished subtask's final snapshot is damaged: every later checkpoint would include it
            raise CheckpointCorruptError(
                f"checkpoint {pending.checkpoint_id} failed verification in the final snapshot of a finished "
                f"subtask, which every later checkpoint needs: {error}", error.path,
            ) from error
        log.warning("checkpoint %d failed verification and was deleted; its sink output is not committed, the "
                    "next checkpoint covers it: %s", pending.checkpoint_id, error,
                    extra={"job": self.flow_name, "checkpoint_id": pending.checkpoint_id})

    @property
    def final_completed(self) -> bool:
        """The checkpoint holding every subtask's final snapshot exists: the job may end."""
        return self.last_completed is not None and self.last_completed.kind.is_last

    def expire(self, now: float | None = None) -> Expired | None:
        """Abort the in-flight checkpoint if it exceeded the timeout; returns which one, its age and the subtasks
        that had not acknowledged it (what the executors report, see :func:`~headwater.engine.watchdog.log_checkpoint_timeout`)."""
        now = time.monotonic() if now is None else now
        pending = self.pending
        if pending is None or now - pending.started < self.config.timeout.total_seconds():
            return None
        missing = sorted(self.expected - set(pending.acks))
        log.warning("checkpoint %d timed out waiting for subtasks %s; aborted", pending.checkpoint_id, missing,
                    extra={"job": self.flow_name, "checkpoint_id": pending.checkpoint_id})
        self.pending = None
        self.aborted_ids.add(pending.checkpoint_id)
        for ack in pending.acks.values():
            if not ack.finished:  # final snapshots stand in for later checkpoints: kept
                self.storage.delete_state_files(ack)
        self.last_end = now
        self.stats.aborted += 1
        return Expired(pending.checkpoint_id, now - pending.started, missing)
