"""The subtask side of checkpointing: barrier alignment, taking snapshots, restoring, persisting.

* :class:`BarrierAligner` — an operator with several input channels takes its snapshot for checkpoint ``n``
  only when barrier ``n`` arrived on every open channel. A channel that delivered the barrier is *blocked*:
  what it sends next belongs to checkpoint ``n + 1`` and is held back until the snapshot is taken (exactly-once
  alignment). A channel that already ended counts as aligned.
* :class:`PendingSnapshot` — what a subtask captured at a barrier: source positions, *copies* of its operators'
  state tables, the commit tokens of its sinks. Capturing is the only part that stops processing (the
  "synchronous" part); :func:`persist` writes the tables afterwards, in a background thread on Ray.
* :class:`SubtaskRestore` — what a subtask loads when a job starts from a checkpoint.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa

from headwater.core.plain_data import PlainData
from headwater.core.state.store import OperatorStateStore
from headwater.engine.channels import Message
from headwater.engine.checkpoints.metadata import NotPlainDataError, check_plain
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.metrics import LATENCY_BOUNDS, BucketHistogram
from headwater.errors import CheckpointValueError


class BarrierAligner:
    """Tracks barrier arrival per input channel ``(edge_id, sender)`` and holds blocked channels' messages.
    :attr:`alignment` records, per checkpoint, the time from its first barrier to the end of the alignment."""

    def __init__(self) -> None:
        self.checkpoint_id: int | None = None
        self.arrived: set[tuple[int, int]] = set()
        self.held: dict[tuple[int, int], deque[Message]] = {}
        self.alignment = BucketHistogram(LATENCY_BOUNDS)
        self._started = 0.0

    def is_blocked(self, channel: tuple[int, int]) -> bool:
        return channel in self.arrived

    def hold(self, channel: tuple[int, int], message: Message) -> None:
        self.held.setdefault(channel, deque()).append(message)

    def barrier(self, channel: tuple[int, int], checkpoint_id: int) -> None:
        if self.checkpoint_id is None:
            self.checkpoint_id = checkpoint_id
            self._started = time.perf_counter()
        elif checkpoint_id != self.checkpoint_id:
            raise RuntimeError(
                f"barrier {checkpoint_id} arrived while aligning checkpoint {self.checkpoint_id} on {channel}"
            )
        self.arrived.add(channel)

    def aligned(self, open_channels: set[tuple[int, int]]) -> bool:
        return self.checkpoint_id is not None and open_channels <= self.arrived

    def release(self) -> list[tuple[tuple[int, int], Message]]:
        """End the alignment; returns the held messages in per-channel order, to be handled now."""
        released = [(channel, m) for channel, queue in self.held.items() for m in queue]
        self.alignment.observe(time.perf_counter() - self._started)
        self.checkpoint_id = None
        self.arrived = set()
        self.held = {}
        return released


@dataclass
class PendingSnapshot:
    checkpoint_id: int
    stage_id: int
    subtask: int
    parallelism: int
    key_group_range: range
    source_positions: dict[str, dict[str, PlainData]]
    tables: dict[str, dict[str, pa.Table]]
    values: dict[str, dict[str, bytes]]
    sink_tokens: dict[str, list[tuple[int, PlainData]]]
    finished: bool
    sync_ms: float
    drained: bool = False
    watermarks: dict[str, int] = field(default_factory=dict)


def capture(
    checkpoint_id: int, stage_id: int, subtask: int, parallelism: int, key_group_range: range,
    source_positions: dict[str, dict[str, PlainData]], stores: dict[str, OperatorStateStore],
    sink_tokens: dict[str, list[tuple[int, PlainData]]], finished: bool, started: float, drained: bool = False,
    watermarks: dict[str, int] | None = None,
) -> PendingSnapshot:
    tables: dict[str, dict[str, pa.Table]] = {}
    values: dict[str, dict[str, bytes]] = {}
    for step_id, store in stores.items():
        if store.is_empty:
            continue
        step_tables, step_values = store.snapshot()
        if step_tables:
            tables[step_id] = step_tables
        if step_values:
            values[step_id] = step_values
    return PendingSnapshot(
        checkpoint_id, stage_id, subtask, parallelism, key_group_range, source_positions, tables, values,
        {k: list(v) for k, v in sink_tokens.items()}, finished, (time.perf_counter() - started) * 1000, drained,
        dict(watermarks or {}),
    )


def persist(snapshot: PendingSnapshot, storage: CheckpointStorage) -> SubtaskAck:
    """Write the snapshot's state tables; return the acknowledgement describing them. Positions and sink tokens
    that checkpoint metadata cannot hold (not plain data) fail here, in the subtask, naming the step."""
    started = time.perf_counter()
    probe = SubtaskAck(snapshot.checkpoint_id, snapshot.stage_id, snapshot.subtask, snapshot.parallelism,
                       source_positions=snapshot.source_positions, sink_tokens=snapshot.sink_tokens)
    try:
        check_plain(probe)
    except NotPlainDataError as exc:
        raise CheckpointValueError(f"checkpoint {snapshot.checkpoint_id}: {exc}", step_id=exc.step_id,
                                   subtask=snapshot.subtask, transient=False) from None
    files = []
    for step_id, tables in snapshot.tables.items():
        for name, table in tables.items():
            files.append(storage.write_state(
                snapshot.checkpoint_id, step_id, name, snapshot.stage_id, snapshot.subtask, table,
                snapshot.key_group_range,
            ))
    return SubtaskAck(
        checkpoint_id=snapshot.checkpoint_id, stage_id=snapshot.stage_id, subtask=snapshot.subtask,
        parallelism=snapshot.parallelism, source_positions=snapshot.source_positions, state_files=files,
        values=snapshot.values, sink_tokens=snapshot.sink_tokens, finished=snapshot.finished,
        drained=snapshot.drained, watermarks=snapshot.watermarks,
        bytes_written=sum(f.size for f in files), sync_ms=snapshot.sync_ms,
        async_ms=(time.perf_counter() - started) * 1000,
    )


@dataclass
class SubtaskRestore:
    """A checkpoint to start from, as one subtask sees it."""

    storage: CheckpointStorage
    metadata: CheckpointMetadata
    positions: dict[str, dict[str, PlainData]] = field(default_factory=dict)

    @classmethod
    def of(cls, storage: CheckpointStorage, metadata: CheckpointMetadata) -> SubtaskRestore:
        return cls(storage, metadata, metadata.source_positions())

    @property
    def checkpoint_id(self) -> int:
        return self.metadata.checkpoint_id

    @property
    def drained(self) -> bool:
        """The checkpoint was taken after the job's input ended and operators emitted what they held: its
        operators must not emit it again."""
        return bool(self.metadata.acks) and all(a.drained for a in self.metadata.acks)

    def position(self, step_id: str, part: str) -> PlainData:
        return self.positions.get(step_id, {}).get(part)

    def watermark(self, step_ids: tuple[str, ...], subtask: int, parallelism: int) -> int | None:
        """The event-time watermark a subtask running ``step_ids`` resumes from (``None``: none recorded).

        At the same parallelism it is the one this subtask had at the checkpoint. After a rescale it is the
        minimum over the old subtasks: a record on time for any of them stays on time, and every window
        below it had fired in all of them, so restoring it re-emits nothing."""
        candidates: list[int] = []
        for step_id in step_ids:
            recorded = [(a, a.watermarks[step_id]) for a in self.metadata.acks
                        if step_id in getattr(a, "watermarks", {})]
            same = [w for a, w in recorded if a.subtask == subtask and a.parallelism == parallelism]
            if same:
                candidates.append(same[0])
            elif recorded:
                candidates.append(min(w for _, w in recorded))
        return min(candidates) if candidates else None

    def restore_store(self, store: OperatorStateStore, subtask: int, parallelism: int) -> None:
        """Load into ``store`` the rows of its key groups from every state file of its step."""
        wanted = store.key_group_range
        by_name: dict[str, list[pa.Table]] = {}
        for state_file in self.metadata.state_files(store.step_id):
            start, stop = state_file.key_group_range
            if stop <= wanted.start or start >= wanted.stop:
                continue  # the file's writer owned none of our key groups
            by_name.setdefault(state_file.state_name, []).append(self.storage.read_state(self.metadata, state_file))
        tables = {name: pa.concat_tables(parts) for name, parts in by_name.items()}
        values: dict[str, bytes] = {}
        for ack in self.metadata.acks:
            if ack.subtask == subtask and ack.parallelism == parallelism and store.step_id in ack.values:
                values = ack.values[store.step_id]
        store.restore(tables, values)
