"""The checkpoint coordinator: decides when checkpoints happen and when they are complete.

Protocol (asynchronous barrier snapshots, as in Flink):

1. :meth:`CheckpointCoordinator.begin` opens checkpoint ``n`` (at most one in flight); the executor asks every
   running source subtask to record its positions and emit barrier ``n`` in-band.
2. Every subtask snapshots when barrier ``n`` has arrived on all of its open inputs (sources: at once), writes
   its state files, and acknowledges with a :class:`SubtaskAck` (:meth:`ack`). A subtask whose input already
   ended reported a final snapshot once (:meth:`report_finished`); it stands in for all later checkpoints.
3. With every subtask's ack in, the coordinator writes the checkpoint metadata atomically — only now does
   checkpoint ``n`` exist — prunes old checkpoints, and the executor tells the sinks to commit up to ``n``.
4. A checkpoint not complete within the timeout is aborted; late acks for it are ignored.

The class is transport-free; the Ray executor wraps it in an actor, the in-process executor calls it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from headwater.engine.checkpoint_storage import CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig

log = logging.getLogger("headwater.checkpoint")


@dataclass
class _Pending:
    checkpoint_id: int
    kind: str
    started: float
    acks: dict[tuple[int, int], SubtaskAck] = field(default_factory=dict)


@dataclass
class CheckpointStats:
    completed: int = 0
    aborted: int = 0
    last_duration_ms: float = 0.0
    last_bytes: int = 0
    durations_ms: list[float] = field(default_factory=list)
    sync_ms_max: list[float] = field(default_factory=list)


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
        self.last_end = time.monotonic()
        self.stats = CheckpointStats()
        self.final_kind = "final"

    # -- triggering -----------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        pause = max(self.config.interval, self.config.min_pause).total_seconds()
        return self.pending is None and now - self.last_end >= pause and not self.all_finished

    def begin(self, kind: str = "checkpoint") -> int:
        """Open the next checkpoint; returns its id. Only one may be in flight."""
        assert self.pending is None, "a checkpoint is already in flight"
        checkpoint_id = self.next_id
        self.next_id += 1
        self.pending = _Pending(checkpoint_id, kind, time.monotonic())
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
            return None  # late ack of an aborted checkpoint
        pending.acks[(ack.stage_id, ack.subtask)] = ack
        return self._maybe_complete()

    def report_finished(self, ack: SubtaskAck) -> CheckpointMetadata | None:
        """A subtask's input ended; ``ack`` is its final snapshot. Completes checkpoints that waited for it,
        and, once every subtask finished, the final checkpoint."""
        key = (ack.stage_id, ack.subtask)
        self.finished[key] = ack
        if self.pending is not None and key not in self.pending.acks:
            self.pending.acks[key] = replace(ack, checkpoint_id=self.pending.checkpoint_id)
            completed = self._maybe_complete()
            if completed is not None:
                return completed
        if self.all_finished and self.pending is None:
            self.begin(self.final_kind)
            return self._maybe_complete()
        return None

    def _maybe_complete(self) -> CheckpointMetadata | None:
        pending = self.pending
        assert pending is not None
        if set(pending.acks) < self.expected:
            return None
        acks = sorted(pending.acks.values(), key=lambda a: (a.stage_id, a.subtask))
        # The checkpoint made only of final snapshots is the job's last one: "final", or "savepoint" when the
        # job was stopped with a savepoint.
        kind = self.final_kind if all(a.finished for a in acks) else "checkpoint"
        metadata = CheckpointMetadata(
            checkpoint_id=pending.checkpoint_id, flow_name=self.flow_name, kind=kind,
            max_key_groups=self.max_key_groups, created_at=time.time(), acks=acks,
        )
        metadata.directory = self.storage.write_metadata(metadata)
        self.storage.prune(self.config.retain)
        duration = (time.monotonic() - pending.started) * 1000
        self.stats.completed += 1
        self.stats.last_duration_ms = duration
        self.stats.last_bytes = metadata.bytes_written
        self.stats.durations_ms.append(duration)
        self.stats.sync_ms_max.append(max((a.sync_ms for a in acks), default=0.0))
        self.pending = None
        self.last_end = time.monotonic()
        self.last_completed = metadata
        return metadata

    @property
    def final_completed(self) -> bool:
        """The checkpoint holding every subtask's final snapshot exists: the job may end."""
        return self.last_completed is not None and self.last_completed.kind != "checkpoint"

    def expire(self, now: float | None = None) -> int | None:
        """Abort the in-flight checkpoint if it exceeded the timeout; returns its id."""
        now = time.monotonic() if now is None else now
        pending = self.pending
        if pending is None or now - pending.started < self.config.timeout.total_seconds():
            return None
        missing = sorted(self.expected - set(pending.acks))
        log.warning("checkpoint %d timed out waiting for subtasks %s; aborted", pending.checkpoint_id, missing)
        self.pending = None
        self.last_end = now
        self.stats.aborted += 1
        return pending.checkpoint_id
