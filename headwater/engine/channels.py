"""What travels on channels, and the sender side of a channel: partitioning and batching.

Messages are either data (:class:`DataMessage`: a batch plus the wall-clock time its oldest row entered the
engine) or in-band control markers (:class:`EndOfStream`; checkpoint barriers and watermarks travel the same
way). In-band means ordered with the data of the same sender, which is what makes the markers meaningful.

An :class:`OutputBuffer` accumulates rows for one receiver and is flushed when it holds ``batch_size`` rows or
its oldest row has waited ``linger`` — so small batches from a slow source still leave quickly, and a fast
source sends large batches (the per-message cost of an actor call is ~1 ms; amortised over 64 k rows it is
negligible).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from headwater.core.state.key_groups import key_groups, owner_of, split_by_receiver
from headwater.engine.plan import Edge
from headwater.engine.tracing import CHANNEL_SPAN, traceparent

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from headwater.engine.tracing import BatchTracer


@dataclass(frozen=True)
class DataMessage:
    batch: pa.RecordBatch
    ingest_ns: int  # time.time_ns() when the oldest row of this batch entered the engine
    #: W3C traceparent of the channel span of a traced batch (headwater.engine.tracing); None when not traced
    trace: str | None = None


@dataclass(frozen=True)
class EndOfStream:
    """The sender has no more data on this channel.

    ``drain=True`` (input exhausted, or a stop without checkpoints): receivers let operators emit what they
    hold (``finish``) once all inputs ended. ``drain=False`` (a stop of a checkpointed job, e.g. for a
    savepoint): operators keep their state for the final snapshot instead, so the job can resume later.
    """

    drain: bool = True


@dataclass(frozen=True)
class Barrier:
    """Checkpoint barrier ``checkpoint_id``: everything the sender sent before it belongs to that checkpoint."""

    checkpoint_id: int


@dataclass(frozen=True)
class Watermark:
    """No event with a time below ``timestamp_ms`` will follow from this sender (``idle``: the sender has no
    data for now and must not hold back its receivers' watermark until it sends a non-idle watermark)."""

    timestamp_ms: int
    idle: bool = False
    origin_ns: int = 0  # wall clock (time.time_ns) when a source computed it; 0 for idle markers


Message = DataMessage | EndOfStream | Barrier | Watermark


class OutputBuffer:
    """Rows waiting to go to one receiver."""

    __slots__ = ("batches", "rows", "deadline", "ingest_ns", "trace", "traced_ns")

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0
        self.deadline = 0.0
        self.ingest_ns = 0
        #: the span context of the first traced batch buffered (and when it was buffered), if any
        self.trace: SpanContext | None = None
        self.traced_ns = 0

    def add(self, batch: pa.RecordBatch, ingest_ns: int, linger: float, trace: SpanContext | None = None) -> None:
        if not self.batches:
            self.deadline = time.monotonic() + linger
            self.ingest_ns = ingest_ns
        else:
            self.ingest_ns = min(self.ingest_ns, ingest_ns)
        if trace is not None and self.trace is None:
            self.trace, self.traced_ns = trace, time.time_ns()
        self.batches.append(batch)
        self.rows += batch.num_rows

    def take(self) -> DataMessage | None:
        if not self.batches:
            return None
        if len(self.batches) == 1:
            batch = self.batches[0]
        else:
            batch = pa.concat_batches(self.batches)
        message = DataMessage(batch, self.ingest_ns)
        self.batches = []
        self.rows = 0
        return message

    def take_traced(self) -> tuple[DataMessage | None, SpanContext | None, int]:
        """:meth:`take`, with the buffered trace context and when it was buffered (then forgotten)."""
        trace, traced_ns = self.trace, self.traced_ns
        self.trace = None
        return self.take(), trace, traced_ns


class EdgeWriter:
    """The sending end of one edge inside one subtask: splits batches by the edge's partitioning and buffers
    them per receiver. Returns ``(receiver, message)`` pairs ready to send."""

    def __init__(
        self, edge: Edge, sender: int, receivers: int, batch_size: int, linger: float, max_key_groups: int
    ) -> None:
        self.edge = edge
        self.sender = sender
        self.receivers = receivers
        self.batch_size = batch_size
        self.linger = linger
        self.max_key_groups = max_key_groups
        self.buffers = [OutputBuffer() for _ in range(receivers)]
        self._next_round_robin = sender % receivers
        self.rows_sent = 0
        self._projected_schema: pa.Schema | None = None
        self._projection: list[int] | None = None
        #: set by the runtime when it traces batches: spans of traced messages, and the checkpoint they belong to
        self.tracer: BatchTracer | None = None
        self.step_id = ""
        self.checkpoint_id = 1

    def _project(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = self.edge.columns
        if columns is None:
            return batch
        if batch.schema is not self._projected_schema:
            self._projected_schema = batch.schema
            indices = [batch.schema.get_field_index(c) for c in columns]
            # A missing column is left to the receiving step, which reports it with its own name.
            self._projection = None if min(indices, default=0) < 0 else indices
        return batch.select(self._projection) if self._projection is not None else batch

    def write(self, batch: pa.RecordBatch, ingest_ns: int, trace: SpanContext | None = None) -> list[tuple[int, Message]]:
        batch = self._project(batch)
        partitioning = self.edge.partitioning
        if partitioning == "forward":
            return self._buffer(self.sender, batch, ingest_ns, trace)
        if partitioning == "round_robin":
            target = self._next_round_robin
            self._next_round_robin = (target + 1) % self.receivers
            return self._buffer(target, batch, ingest_ns, trace)
        if partitioning == "broadcast":
            out: list[tuple[int, Message]] = []
            for receiver in range(self.receivers):
                out.extend(self._buffer(receiver, batch, ingest_ns, trace))
            return out
        columns = [batch.column(k) for k in self.edge.keys]
        owners = owner_of(key_groups(columns, self.max_key_groups), self.receivers, self.max_key_groups)
        out = []
        for receiver, part in enumerate(split_by_receiver(batch, owners, self.receivers)):
            if part is not None:
                out.extend(self._buffer(receiver, part, ingest_ns, trace))
        return out

    def _buffer(
        self, receiver: int, batch: pa.RecordBatch, ingest_ns: int, trace: SpanContext | None
    ) -> list[tuple[int, Message]]:
        buffer = self.buffers[receiver]
        out: list[tuple[int, Message]] = []
        if buffer.batches and not buffer.batches[0].schema.equals(batch.schema):
            out.append((receiver, self._take(receiver)))  # never concatenate mixed schemas
        buffer.add(batch, ingest_ns, self.linger, trace)
        if buffer.rows >= self.batch_size or self.linger == 0:
            out.append((receiver, self._take(receiver)))
        self.rows_sent += batch.num_rows
        return out

    def _take(self, receiver: int) -> DataMessage:
        """The buffer's message; a traced one gets its channel span (buffered -> sent) and carries its context."""
        buffer = self.buffers[receiver]
        if buffer.trace is None:
            message = buffer.take()
            assert message is not None
            return message
        message, parent, traced_ns = buffer.take_traced()
        assert message is not None and self.tracer is not None
        context = self.tracer.record(
            CHANNEL_SPAN, parent, self.step_id, self.checkpoint_id, traced_ns, time.time_ns(),
            **{"headwater.edge": self.edge.edge_id, "headwater.receiver": receiver,
               "headwater.rows": message.batch.num_rows},
        )
        return DataMessage(message.batch, message.ingest_ns, traceparent(context))

    def flush_due(self, now: float) -> list[tuple[int, Message]]:
        """Messages for buffers whose oldest row has waited ``linger``."""
        return [(r, self._take(r)) for r, b in enumerate(self.buffers) if b.batches and b.deadline <= now]

    def flush_all(self) -> list[tuple[int, Message]]:
        return [(r, self._take(r)) for r, b in enumerate(self.buffers) if b.batches]

    def _targets(self) -> range | list[int]:
        return [self.sender] if self.edge.partitioning == "forward" else range(self.receivers)

    def end_of_stream(self, drain: bool = True) -> list[tuple[int, Message]]:
        """Flush everything, then tell every receiver (forward: only ours) that this sender is done."""
        out = self.flush_all()
        out.extend((r, EndOfStream(drain)) for r in self._targets())
        return out

    def watermark(self, timestamp_ms: int, idle: bool = False, origin_ns: int = 0) -> list[tuple[int, Message]]:
        """Flush everything (results released by this watermark go first), then send the watermark."""
        out = self.flush_all()
        out.extend((r, Watermark(timestamp_ms, idle, origin_ns)) for r in self._targets())
        return out

    def barrier(self, checkpoint_id: int) -> list[tuple[int, Message]]:
        """Flush everything, then send barrier ``checkpoint_id`` to every receiver, in-band after the data."""
        out = self.flush_all()
        self.checkpoint_id = checkpoint_id + 1
        out.extend((r, Barrier(checkpoint_id)) for r in self._targets())
        return out

    def next_deadline(self) -> float | None:
        deadlines = [b.deadline for b in self.buffers if b.batches]
        return min(deadlines) if deadlines else None

    def buffered_rows(self) -> int:
        return sum(b.rows for b in self.buffers)
