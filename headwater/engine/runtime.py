"""The logic of one subtask, free of any transport: both executors drive it.

A :class:`SubtaskRuntime` owns the fused chain of operators of one stage for one subtask, its source
partitions (for a source stage), and an :class:`~headwater.engine.channels.EdgeWriter` per outgoing edge. The
executor feeds it messages (:meth:`on_message`), polls sources (:meth:`poll_sources`) and timers
(:meth:`poll_timers`); every call returns the ``(edge_id, receiver, message)`` triples to deliver, in order.

Invariants:
* Messages from one sender on one edge are handled in the order they were sent.
* The chain finishes (operators' ``finish``, sinks commit) exactly once, after the end of stream of every
  sender on every input edge — or, for a source stage, after every partition ended or a stop was requested.
  Only then is end of stream sent downstream.
* :attr:`SubtaskRuntime.call` is the call into step code running right now (``None`` between calls); it is set
  and restored around every such call, so a watcher in another thread can tell what the subtask is doing and
  for how long (see :mod:`headwater.engine.watchdog`).
* A failure in operator or source code surfaces as a :class:`~headwater.errors.RuntimeFailure` naming the
  step and subtask; user exceptions become :class:`~headwater.errors.UserCodeError` with the original as
  ``__cause__``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, TypeVar, TypeVarTuple

import pyarrow as pa

from headwater.core.arrays import same_columns
from headwater.core.dead_letters import dead_letter_batch
from headwater.core.event_time import MIN_WATERMARK, InputWatermarks, SourceWatermarks
from headwater.core.operator import Operator, OperatorContext
from headwater.core.plain_data import PlainData
from headwater.core.ports import DEAD_LETTER_PORT, LATE_PORT, MAIN_PORT
from headwater.core.quality import QualityCounts
from headwater.core.state.key_groups import key_group_range
from headwater.core.state.store import OperatorStateStore
from headwater.engine import logs
from headwater.engine.channels import Barrier, DataMessage, EdgeWriter, EndOfStream, Message, Watermark
from headwater.engine.checkpoints.snapshots import BarrierAligner, PendingSnapshot, SubtaskRestore, capture
from headwater.engine.config import RunConfig
from headwater.engine.metrics import LatencyHistogram, StepCounters, SubtaskMetrics, peak_rss_mb
from headwater.engine.plan import PhysicalPlan
from headwater.engine.sink_operator import SinkOperator
from headwater.engine.tracing import (
    PROCESS_SPAN,
    SINK_WRITE_SPAN,
    SOURCE_SPAN,
    SinkTraces,
    batch_tracer,
    parse_traceparent,
)
from headwater.engine.watchdog import Call, SubtaskActivity, activity_of
from headwater.errors import (
    BuildError,
    CheckpointError,
    HeadwaterError,
    RuntimeFailure,
    SchemaMismatchError,
    UserCodeError,
)
from headwater.logical import SinkStep, SourceStep
from headwater.sources.base import SourceLag, SourcePartition

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

Outgoing = tuple[int, int, Message]


def _located(error: BaseException, step_id: str, subtask: int) -> HeadwaterError:
    """Attach the step and subtask to ``error`` (wrapping user exceptions in :class:`UserCodeError`)."""
    if isinstance(error, RuntimeFailure):
        if error.step_id is not None:
            return error
        located = type(error)(error.message, step_id=step_id, subtask=subtask)
    elif isinstance(error, (BuildError, CheckpointError)):
        return error  # configuration and checkpoint problems keep their own type
    elif isinstance(error, HeadwaterError):
        located = UserCodeError(str(error), step_id=step_id, subtask=subtask)
    else:
        located = UserCodeError(f"{type(error).__name__}: {error}", step_id=step_id, subtask=subtask)
    located.__cause__ = error
    return located


class SubtaskRuntime:
    """One subtask of one stage (see the module docstring)."""

    def __init__(
        self, plan: PhysicalPlan, stage_id: int, subtask: int, config: RunConfig,
        checkpointing: bool = False, restore: SubtaskRestore | None = None,
    ) -> None:
        self.plan = plan
        self.stage = plan.stages[stage_id]
        self.subtask = subtask
        self.config = config
        head = plan.steps[self.stage.head]
        self.source_step: SourceStep | None = head if isinstance(head, SourceStep) else None
        operator_steps = self.stage.step_ids[1:] if self.source_step else self.stage.step_ids
        self.operators: list[tuple[str, Operator]] = [(s, plan.operators[s]()) for s in operator_steps]
        self.counters = {step_id: StepCounters() for step_id in self.stage.step_ids}
        #: the call into step code in progress (read by watchers in other threads; see the module docstring)
        self.call: Call | None = None
        self._kinds = {step_id: plan.steps[step_id].kind for step_id in self.stage.step_ids}
        # Latency is measured where rows reach the sink: from their ingest time (a source read them) or, for
        # results released by a watermark, from when the source computed that watermark.
        self.latency = LatencyHistogram() if isinstance(plan.steps[self.stage.tail], SinkStep) else None
        self.sink_position = len(operator_steps) - 1
        self.writers = [
            EdgeWriter(edge, subtask, plan.stages[edge.dst].parallelism, config.batch_size,
                       config.linger_seconds, plan.max_key_groups)
            for edge in plan.outputs_of(stage_id)
        ]
        self.main_writers = [w for w in self.writers if w.edge.src_port == MAIN_PORT]
        #: writers of side outputs by (step of the chain, port) (see headwater.core.ports)
        self.side_writers: dict[tuple[str, str], list[EdgeWriter]] = {}
        for writer in self.writers:
            if writer.edge.src_port != MAIN_PORT:
                key = (writer.edge.src_step or self.stage.tail, writer.edge.src_port)
                self.side_writers.setdefault(key, []).append(writer)
        self.pending_ends: set[tuple[int, int]] = set()
        self.input_index: dict[int, int] = {}
        for edge in plan.inputs_of(stage_id):
            self.input_index[edge.edge_id] = edge.input_index
            senders = [subtask] if edge.partitioning == "forward" else range(plan.stages[edge.src].parallelism)
            self.pending_ends.update((edge.edge_id, s) for s in senders)
        self.partitions: list[tuple[str, SourcePartition]] = []
        self._source_schema: pa.Schema | None = self.source_step.schema if self.source_step else None
        self._observed_schema: bytes | None = None
        self._source_columns: list[str] | None = None  # columns to keep when the source cannot project
        self._next_partition = 0
        self._stop_requested = False
        self._drain_on_end = True
        self.finished = False
        self.closed = False
        self.state_stores: dict[str, OperatorStateStore] = {}
        # -- checkpointing (see headwater.engine.checkpoints.snapshots) --
        self.checkpointing = checkpointing
        self.restore = restore
        self.aligner = BarrierAligner()
        self.last_checkpoint_id = restore.checkpoint_id if restore is not None else 0
        self.snapshots: list[PendingSnapshot] = []  # taken, to be persisted and acknowledged by the executor
        self.final_snapshot: PendingSnapshot | None = None
        self.sinks = [(step_id, op) for step_id, op in self.operators if isinstance(op, SinkOperator)]
        self.ended_parts: dict[str, PlainData] = {}
        #: positions of the live source partitions at each checkpoint not yet known complete (for the
        #: partitions' on_checkpoint_complete hook)
        self._live_positions: dict[int, dict[str, PlainData]] = {}
        self.key_groups = key_group_range(subtask, self.stage.parallelism, plan.max_key_groups)
        # -- tracing of sampled batches (see headwater.engine.tracing) --
        self.tracer = batch_tracer(config, plan.flow_name, subtask)
        for writer in self.writers:
            writer.tracer = self.tracer
            writer.step_id = writer.edge.src_step or self.stage.tail
            writer.checkpoint_id = self.last_checkpoint_id + 1
        self.sink_traces = SinkTraces(self.tracer) if self.tracer is not None else None
        # -- event time (see headwater.core.event_time) --
        self.input_watermarks = InputWatermarks(set(self.pending_ends))
        self.watermark = MIN_WATERMARK
        self.source_watermarks: SourceWatermarks | None = None
        if self.source_step is not None and self.source_step.time_column is not None:
            self.source_watermarks = SourceWatermarks(
                plan.parts_for(stage_id, subtask), self.source_step.time_column,
                self.source_step.out_of_orderness_ms, self.source_step.idle_timeout_ms,
            )
        self._next_watermark_check = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------------
    def open(self) -> None:
        for step_id, operator in self.operators:
            operator.step_id = step_id
            store = OperatorStateStore(step_id, self.plan.max_key_groups, self.key_groups)
            self.state_stores[step_id] = store
            self._guard(step_id, operator.open, OperatorContext(step_id, self.subtask, self.stage.parallelism, store))
            if self.restore is not None:
                self._guard(step_id, self.restore.restore_store, store, self.subtask, self.stage.parallelism)
        if self.restore is not None:
            self._restore_watermark()
        if self.source_step is not None:
            step_id = self.source_step.step_id
            source = self.source_step.source
            columns = self.plan.source_columns.get(step_id)
            if columns is not None:
                # projection pushdown: the source reads only what the pipeline needs, or we drop the rest
                projected = self._guard(step_id, source.project, columns)
                self._source_columns = None if projected is not None else list(columns)
                source = projected if projected is not None else source
                assert self._source_schema is not None
                self._source_schema = pa.schema([self._source_schema.field(c) for c in columns])
            for part in self.plan.parts_for(self.stage.stage_id, self.subtask):
                position = self.restore.position(step_id, part) if self.restore is not None else None
                partition = self._guard(step_id, source.build_part, part, position)
                self.partitions.append((part, partition))
                if self.restore is not None and position is not None:
                    # the restored checkpoint is complete: what it covers is never needed again
                    self._guard(step_id, partition.on_checkpoint_complete, self.restore.checkpoint_id, position)

    def _restore_watermark(self) -> None:
        """Resume event time where the checkpoint left it, so that records late before a failure are late
        after it too (and fired windows are not opened again). The snapshot was taken after the operators
        handled this watermark, so handing it to them again must release nothing."""
        assert self.restore is not None
        floor = self.restore.watermark(tuple(s for s, _ in self.operators), self.subtask, self.stage.parallelism)
        if floor is None:
            return
        self.watermark = floor
        self.input_watermarks.current = max(self.input_watermarks.current, floor)
        for step_id, operator in self.operators:
            released = self._guard(step_id, operator.on_watermark, floor)
            if any(b.num_rows for b in released):
                raise CheckpointError(
                    f"step {step_id!r} released {sum(b.num_rows for b in released)} rows when given the "
                    f"checkpoint's watermark {floor} again; its on_watermark() must be idempotent"
                )

    def close(self) -> None:
        self.closed = True
        if not self.finished:
            for _, sink in self.sinks:
                try:
                    sink.abort()  # a failed run's staged sink output is discarded
                except Exception:  # noqa: BLE001 - cleanup must not hide the failure
                    pass
        for _, operator in self.operators:
            operator.close()
        for _, partition in self.partitions:
            try:
                partition.close()
            except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
                pass

    def _guard(self, step_id: str, fn: Callable[[*Ts], R], *args: *Ts) -> R:
        outer = self.call
        self.call = (step_id, fn, args, time.monotonic())
        scope = logs.enter(step=step_id, subtask=self.subtask)  # lines logged by step code name the step
        try:
            return fn(*args)
        except Exception as exc:
            raise _located(exc, step_id, self.subtask) from exc
        finally:
            self.call = outer
            logs.leave(scope)

    def activity(self, waiting: str = "idle", now: float | None = None) -> SubtaskActivity:
        """What this subtask is doing: its current call into step code, or ``waiting`` (the executor's words
        for where it waits). Safe to call from another thread."""
        return activity_of(self.stage.stage_id, self.subtask, self.stage.head, self._kinds, self.call, waiting,
                           time.monotonic() if now is None else now)

    # -- data path ------------------------------------------------------------------------------------------
    def on_message(self, edge_id: int, sender: int, message: Message) -> list[Outgoing]:
        channel = (edge_id, sender)
        if self.aligner.is_blocked(channel):
            self.aligner.hold(channel, message)
            return []
        if isinstance(message, DataMessage):
            trace = None
            if message.trace is not None and self.tracer is not None:
                trace = parse_traceparent(message.trace)
            return self._process(message.batch, message.ingest_ns, self.input_index[edge_id], trace=trace)
        if isinstance(message, Barrier):
            self.aligner.barrier(channel, message.checkpoint_id)
            return self._complete_alignment()
        if isinstance(message, Watermark):
            advanced = self.input_watermarks.update(channel, message.timestamp_ms, message.idle)
            return self._advance_watermark(advanced, message.origin_ns) if advanced is not None else []
        if isinstance(message, EndOfStream):
            self.pending_ends.discard(channel)
            self._drain_on_end = self._drain_on_end and message.drain
            out = self._complete_alignment() if self.aligner.checkpoint_id is not None else []
            advanced = self.input_watermarks.ended(channel)
            if advanced is not None and self.pending_ends:
                out.extend(self._advance_watermark(advanced))
            if not self.pending_ends and not self.finished:
                out.extend(self._finish(self._drain_on_end))
            return out
        raise TypeError(f"unknown message {message!r}")

    def _complete_alignment(self) -> list[Outgoing]:
        """If barrier n arrived on every open input: snapshot, forward the barrier, replay held messages."""
        if not self.aligner.aligned(self.pending_ends):
            return []
        checkpoint_id = self.aligner.checkpoint_id
        assert checkpoint_id is not None
        out = self._snapshot_and_forward(checkpoint_id)
        for (edge_id, sender), message in self.aligner.release():
            out.extend(self.on_message(edge_id, sender, message))
        return out

    def _process(
        self, batch: pa.RecordBatch, ingest_ns: int, input_index: int, start: int = 0,
        trace: SpanContext | None = None,
    ) -> list[Outgoing]:
        """``batch`` through the chain from ``start`` on, then to the writers. ``trace``: the span context of a
        traced batch (each operator's span continues it); ``None`` for the unsampled ones, which cost nothing."""
        if trace is not None:  # a traced batch: lines logged while it is handled carry its trace id
            with logs.log_scope(trace_id=f"{trace.trace_id:032x}"):
                return self._process_batch(batch, ingest_ns, input_index, start, trace)
        return self._process_batch(batch, ingest_ns, input_index, start, None)

    def _process_batch(
        self, batch: pa.RecordBatch, ingest_ns: int, input_index: int, start: int, trace: SpanContext | None,
    ) -> list[Outgoing]:
        batches = [batch]
        side: list[Outgoing] = []
        for position in range(start, len(self.operators)):
            step_id, operator = self.operators[position]
            counters = self.counters[step_id]
            produced: list[pa.RecordBatch] = []
            if self.latency is not None and position == self.sink_position:
                now_ns = time.time_ns()
                for b in batches:
                    self.latency.record((now_ns - ingest_ns) / 1e6, b.num_rows)
            span = None
            if trace is not None:
                assert self.tracer is not None
                is_sink = isinstance(operator, SinkOperator)
                span = self.tracer.start(SINK_WRITE_SPAN if is_sink else PROCESS_SPAN, trace, step_id,
                                         self.last_checkpoint_id + 1, **{"headwater.rows": sum(b.num_rows for b in batches)})
            for b in batches:
                counters.rows_in += b.num_rows
                counters.batches_in += 1
                counters.bytes_in += b.nbytes
                started = time.perf_counter()
                produced.extend(self._guard(step_id, operator.process, b, input_index if position == 0 else 0))
                counters.processing.observe(time.perf_counter() - started)
            if span is not None:
                span.end()
                trace = span.get_span_context()
                if self.sink_traces is not None and isinstance(operator, SinkOperator):
                    self.sink_traces.wrote(step_id, trace)
            for b in produced:
                counters.count_out(b.num_rows, b.nbytes)
            side.extend(self._side_output(position, ingest_ns))
            batches = produced
            if not batches:
                break
        return side + self._emit(batches, ingest_ns, trace)

    def _side_output(self, position: int, ingest_ns: int) -> list[Outgoing]:
        """Route the side outputs of the operator at ``position`` of the chain to the edges of their ports (any
        step of a chain may have its side ports read, see the planner's fusion rule); ports nobody reads are
        discarded."""
        step_id, operator = self.operators[position]
        taken = operator.take_side_outputs()
        if LATE_PORT in taken:
            self.counters[step_id].late += sum(b.num_rows for b in taken[LATE_PORT])
        if not taken:
            return []
        out: list[Outgoing] = []
        for port, batches in taken.items():
            for writer in self.side_writers.get((step_id, port), ()):
                for b in batches:
                    out.extend((writer.edge.edge_id, r, m) for r, m in self._guard(step_id, writer.write, b, ingest_ns))
        return out

    def _advance_watermark(self, watermark: int, origin_ns: int = 0) -> list[Outgoing]:
        """Event time moved to ``watermark``: operators emit what it completes (down the chain), then the
        watermark goes downstream after those results.

        ``origin_ns`` is when a source computed this watermark (0: now, here). The results it releases carry
        it as their ingest time, so the sink's latency of window results is "watermark passed the window's
        end at the source -> result written"."""
        self.watermark = watermark
        out: list[Outgoing] = []
        origin_ns = origin_ns or time.time_ns()
        for position, (step_id, operator) in enumerate(self.operators):
            for b in self._guard(step_id, operator.on_watermark, watermark):
                self.counters[step_id].count_out(b.num_rows, b.nbytes)
                out.extend(self._continue_from(position + 1, b, origin_ns))
            out.extend(self._side_output(position, origin_ns))
        for writer in self.writers:
            out.extend((writer.edge.edge_id, r, m) for r, m in writer.watermark(watermark, origin_ns=origin_ns))
        return out

    def _source_watermark(self, force: bool = False) -> list[Outgoing]:
        """Sources: every ``watermark_interval``, send the partitions' combined watermark when it moved (or
        went idle)."""
        if self.source_watermarks is None:
            return []
        now = time.monotonic()
        if not force and now < self._next_watermark_check:
            return []
        self._next_watermark_check = now + self.config.watermark_interval.total_seconds()
        polled = self.source_watermarks.poll(now)
        if polled is None:
            return []
        watermark, idle = polled
        if idle:
            out: list[Outgoing] = []
            for writer in self.writers:
                out.extend((writer.edge.edge_id, r, m) for r, m in writer.watermark(watermark, idle=True))
            return out
        return self._advance_watermark(watermark)

    def _emit(self, batches: list[pa.RecordBatch], ingest_ns: int, trace: SpanContext | None = None) -> list[Outgoing]:
        out: list[Outgoing] = []
        for b in batches:
            for writer in self.main_writers:
                # Partitioning hashes key columns: a bad key type is reported as the producing step's error.
                sent = self._guard(self.stage.tail, writer.write, b, ingest_ns, trace)
                out.extend((writer.edge.edge_id, r, m) for r, m in sent)
        return out

    def _finish(self, drain: bool = True) -> list[Outgoing]:
        """All inputs ended. With ``drain``, each operator emits what it holds (passed down the chain). Sinks
        prepare; without checkpointing they commit at once, with it their tokens wait for the checkpoint
        that holds this subtask's final snapshot. Then end of stream goes downstream."""
        out: list[Outgoing] = []
        now_ns = time.time_ns()
        already_drained = self.restore is not None and self.restore.drained
        drain_operators = drain and not already_drained  # restored after a drained end: it was emitted already
        for position, (step_id, operator) in enumerate(self.operators):
            if isinstance(operator, SinkOperator):
                continue
            held = self._guard(step_id, operator.finish) if drain_operators else []
            for b in held:
                self.counters[step_id].count_out(b.num_rows, b.nbytes)
                out.extend(self._continue_from(position + 1, b, now_ns))
            out.extend(self._side_output(position, now_ns))
        final_id = self.last_checkpoint_id + 1
        for step_id, sink in self.sinks:
            self._guard(step_id, sink.prepare, final_id)
            if self.sink_traces is not None:
                self.sink_traces.prepared(step_id, final_id)
            if not self.checkpointing:
                started_ns = time.time_ns()
                self._guard(step_id, sink.commit, final_id)
                if self.sink_traces is not None:
                    self.sink_traces.committed(step_id, final_id, started_ns)
        if self.checkpointing:
            self.final_snapshot = self._capture(final_id, finished=True, drained=drain or already_drained)
        for writer in self.writers:
            out.extend((writer.edge.edge_id, r, m) for r, m in writer.end_of_stream(drain))
        self.finished = True
        return out

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _capture(self, checkpoint_id: int, finished: bool, drained: bool = False) -> PendingSnapshot:
        started = time.perf_counter()
        positions: dict[str, dict[str, PlainData]] = {}
        if self.source_step is not None:
            live = {part: self._guard(self.source_step.step_id, partition.snapshot) for part, partition in self.partitions}
            self._live_positions[checkpoint_id] = live
            positions[self.source_step.step_id] = {**self.ended_parts, **live}
        watermarks = {} if self.watermark == MIN_WATERMARK else {s: self.watermark for s, _ in self.operators}
        return capture(
            checkpoint_id, self.stage.stage_id, self.subtask, self.stage.parallelism, self.key_groups, positions,
            self.state_stores, self.uncommitted, finished, started, drained, watermarks,
        )

    def _snapshot_and_forward(self, checkpoint_id: int) -> list[Outgoing]:
        for step_id, sink in self.sinks:
            self._guard(step_id, sink.prepare, checkpoint_id)
            if self.sink_traces is not None:
                self.sink_traces.prepared(step_id, checkpoint_id)
        self.snapshots.append(self._capture(checkpoint_id, finished=False))
        self.last_checkpoint_id = checkpoint_id
        out: list[Outgoing] = []
        for writer in self.writers:
            out.extend((writer.edge.edge_id, r, m) for r, m in writer.barrier(checkpoint_id))
        return out

    def trigger_checkpoint(self, checkpoint_id: int) -> list[Outgoing]:
        """Source subtasks: record positions, snapshot fused operators, emit barrier ``checkpoint_id``.
        A finished subtask ignores triggers: its final snapshot stands in for it."""
        assert self.source_step is not None, "only source subtasks are triggered"
        if self.finished:
            return []
        return self._snapshot_and_forward(checkpoint_id)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` exists: publish sink output prepared at or before it (in order).

        After :meth:`close` (a failed subtask whose worker still hears of checkpoints) nothing is committed: the
        partitions are closed, and the next attempt commits what the checkpoint covers when it settles the sinks
        (:func:`~headwater.engine.checkpoints.recovery.settle_sinks`)."""
        if self.closed:
            return
        for step_id, sink in self.sinks:
            started_ns = time.time_ns()
            self._guard(step_id, sink.commit_through, checkpoint_id)
            if self.sink_traces is not None:
                self.sink_traces.committed(step_id, checkpoint_id, started_ns)
        covered = [n for n in self._live_positions if n <= checkpoint_id]
        if covered and self.source_step is not None:
            positions = self._live_positions[max(covered)]
            for n in covered:
                del self._live_positions[n]
            for part, partition in self.partitions:
                if part in positions:
                    self._guard(self.source_step.step_id, partition.on_checkpoint_complete, checkpoint_id, positions[part])

    @property
    def uncommitted(self) -> dict[str, list[tuple[int, PlainData]]]:
        """Per sink step, ``(checkpoint id, token)`` prepared and not yet committed, oldest first."""
        return {step_id: sink.pending for step_id, sink in self.sinks}

    @property
    def has_uncommitted(self) -> bool:
        return any(sink.pending for _, sink in self.sinks)

    def take_snapshots(self) -> list[PendingSnapshot]:
        taken, self.snapshots = self.snapshots, []
        return taken

    def _continue_from(self, position: int, batch: pa.RecordBatch, ingest_ns: int) -> list[Outgoing]:
        if position >= len(self.operators):
            return self._emit([batch], ingest_ns)
        return self._process(batch, ingest_ns, 0, start=position)

    # -- sources --------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful stop: sources stop reading; what is in flight drains; sinks commit."""
        self._stop_requested = True

    def poll_sources(self) -> tuple[list[Outgoing], bool]:
        """Read one batch from the next partition that has one. Returns (messages, whether data was read)."""
        assert self.source_step is not None
        if self.finished:
            return [], False
        if self._stop_requested or not self.partitions:
            # A stop of a checkpointed job suspends (state kept for the final snapshot); otherwise it drains.
            return self._finish(drain=not (self._stop_requested and self.checkpointing)), False
        step_id = self.source_step.step_id
        for _ in range(len(self.partitions)):
            index = self._next_partition % len(self.partitions)
            self._next_partition = index + 1
            part, partition = self.partitions[index]
            self.call = (step_id, partition.next_batch, (part,), time.monotonic())
            started = time.perf_counter()
            try:
                batch = partition.next_batch()
            except StopIteration:
                self.call = None
                self.ended_parts[part] = self._guard(step_id, partition.snapshot)
                partition.close()
                del self.partitions[index]
                if self.source_watermarks is not None:
                    self.source_watermarks.ended(part)
                if not self.partitions:
                    return self._finish(), False
                continue
            except Exception as exc:
                self.call = None
                raise _located(exc, step_id, self.subtask) from exc
            self.call = None
            dead = self._dead_letters(partition)
            if batch is None or batch.num_rows == 0:
                if dead:
                    return dead + self._source_watermark(), True
                continue
            if self._source_columns is not None:
                batch = self._select_source_columns(batch, part)
            self._check_source_schema(batch, part)
            counters = self.counters[step_id]
            counters.processing.observe(time.perf_counter() - started)
            counters.count_out(batch.num_rows, batch.nbytes)
            if self.source_watermarks is not None:
                self._guard(step_id, self.source_watermarks.observe, part, batch)
            trace = None
            if self.tracer is not None and self.tracer.sample():
                read_ns = time.time_ns()
                trace = self.tracer.record(
                    SOURCE_SPAN, None, step_id, self.last_checkpoint_id + 1,
                    read_ns - int((time.perf_counter() - started) * 1e9), read_ns,
                    **{"headwater.partition": part, "headwater.rows": batch.num_rows},
                )
            return dead + self._process(batch, time.time_ns(), 0, trace=trace) + self._source_watermark(), True
        return self._source_watermark(), False

    def _dead_letters(self, partition: SourcePartition) -> list[Outgoing]:
        """The records ``partition`` could not convert, as rows of the source step's dead-letter port; they are
        counted (``StepCounters.dead_letters``), and dropped when nobody reads the port."""
        assert self.source_step is not None
        step_id = self.source_step.step_id
        letters = self._guard(step_id, partition.take_dead_letters)
        if not letters:
            return []
        self.counters[step_id].dead_letters += len(letters)
        writers = self.side_writers.get((step_id, DEAD_LETTER_PORT), [])
        if not writers:
            return []
        batch = dead_letter_batch(step_id, letters)
        now_ns = time.time_ns()
        out: list[Outgoing] = []
        for writer in writers:
            out.extend((writer.edge.edge_id, r, m) for r, m in self._guard(step_id, writer.write, batch, now_ns))
        return out

    def _select_source_columns(self, batch: pa.RecordBatch, part: str) -> pa.RecordBatch:
        assert self._source_columns is not None
        missing = [c for c in self._source_columns if batch.schema.get_field_index(c) < 0]
        if missing:
            self._check_source_schema(batch, part)  # raises, naming the schemas
        return batch.select(self._source_columns)

    def _check_source_schema(self, batch: pa.RecordBatch, part: str) -> None:
        if self._source_schema is None:
            self._source_schema = batch.schema
        elif not same_columns(batch.schema, self._source_schema):
            assert self.source_step is not None
            raise SchemaMismatchError(
                f"partition {part!r} yielded a batch with schema {batch.schema} but the source's schema is "
                f"{self._source_schema}; every batch of a source must have the same columns and types",
                step_id=self.source_step.step_id, subtask=self.subtask,
            )

    def next_source_wakeup(self) -> float | None:
        """Earliest ``time.monotonic()`` at which a partition expects data (``None``: unknown)."""
        hints = [p.next_awake() for _, p in self.partitions]
        known = [h for h in hints if h is not None]
        return min(known) if known and len(known) == len(hints) else None

    # -- timers ---------------------------------------------------------------------------------------------
    def poll_timers(self, now: float | None = None) -> list[Outgoing]:
        """Fire operators' processing-time timers that are due, then flush output buffers whose linger time
        has passed."""
        now = time.monotonic() if now is None else now
        out: list[Outgoing] = []
        if not self.finished:
            now_ns = time.time_ns()
            for position, (step_id, operator) in enumerate(self.operators):
                due = operator.next_timer()
                if due is not None and due <= now:
                    for b in self._guard(step_id, operator.on_processing_time, now):
                        self.counters[step_id].count_out(b.num_rows, b.nbytes)
                        out.extend(self._continue_from(position + 1, b, now_ns))
        for writer in self.writers:
            out.extend((writer.edge.edge_id, r, m) for r, m in writer.flush_due(now))
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (w.next_deadline() for w in self.writers) if d is not None]
        if not self.finished:
            deadlines += [t for t in (op.next_timer() for _, op in self.operators) if t is not None]
        return min(deadlines) if deadlines else None

    # -- figures --------------------------------------------------------------------------------------------
    def metrics(self, backlog: int = 0, backlog_by_edge: dict[int, int] | None = None) -> SubtaskMetrics:
        """A copy of this subtask's figures (safe to call from another thread: it only reads)."""
        buffered = {w.edge.edge_id: w.buffered_rows() for w in self.writers}
        return SubtaskMetrics(
            stage_id=self.stage.stage_id,
            subtask=self.subtask,
            steps={k: v.copy() for k, v in self.counters.items()},
            backlog=backlog,
            buffered_rows=sum(buffered.values()),
            latency=self.latency.copy() if self.latency is not None else None,
            operator={step_id: op.metrics() for step_id, op in self.operators},
            peak_rss_mb=peak_rss_mb(),
            pid=os.getpid(),
            source_lag=self._source_lag(),
            backlog_by_edge=dict(backlog_by_edge or {}),
            buffered_by_edge=buffered,
            watermark_ms=None if self.watermark == MIN_WATERMARK else self.watermark,
            alignment=self.aligner.alignment.copy() if self.input_index else None,
            quality={step_id: {name: QualityCounts(c.checked, c.passed, c.failed) for name, c in counts.items()}
                     for step_id, op in self.operators if (counts := op.quality())},
            source_schema=self._observed_source_schema(),
        )

    def _observed_source_schema(self) -> bytes | None:
        """The first batch's schema of a source that declared none (IPC bytes, computed once)."""
        if self.source_step is None or self.source_step.schema is not None or self._source_schema is None:
            return None
        if self._observed_schema is None:
            self._observed_schema = self._source_schema.serialize().to_pybytes()
        return self._observed_schema

    def _source_lag(self) -> dict[str, SourceLag]:
        if self.source_step is None:
            return {}
        lags: dict[str, SourceLag] = {}
        for part, partition in list(self.partitions):
            try:  # not through _guard: metrics may be read from another thread, and a figure never fails a job
                lag = partition.lag()
            except Exception:  # noqa: BLE001 - a partition that cannot tell reports no lag
                lag = None
            if lag is not None:
                lags[part] = lag
        return lags
