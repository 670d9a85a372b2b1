"""OpenTelemetry traces of sampled batches, from the source through operators and channels to the sink commit.

A source subtask decides, per batch it reads, whether to trace it (``RunConfig.trace_sample``, a share of
batches; head sampling). A traced batch gets a root span ``headwater.source`` and then one span per thing
that happens to it or to what it becomes:

* ``headwater.process`` per operator of a chain (``headwater.sink.write`` for a sink), each the child of the
  previous one;
* ``headwater.channel`` when a buffer holding (part of) it is sent on an edge, from the moment the rows were
  buffered until the message left: the message then carries that span's context as a W3C ``traceparent``
  string (:attr:`~headwater.engine.channels.DataMessage.trace`), across Ray actors, so the receiving subtask's
  spans continue the same trace as children of it;
* ``headwater.sink.commit`` once the checkpoint covering the write completed and the sink committed it
  (without checkpointing: when the sink commits at its end), the child of the write.

Every span has the attributes ``headwater.job``, ``headwater.step``, ``headwater.subtask`` and
``headwater.checkpoint_id`` (the checkpoint the batch belongs to: the one after the last barrier its subtask
passed). A buffer that concatenates several traced batches carries the first one's context; results that a
watermark, a timer or the end of input release (window results) start no trace of their own.

Invariants:
* An unsampled batch costs one random draw at its source and an ``is None`` check per call: no span object,
  no context, nothing on the wire (``DataMessage.trace`` stays ``None``).
* Spans never hold record values: only step ids, subtask indices, row counts, edge ids and checkpoint ids.
* One tracer provider per process and exporter (not the global one, so a user's own OpenTelemetry setup is
  left alone); ``memory`` keeps spans in this process (a Ray job's workers hand theirs to the driver when they
  end, :func:`take_spans` / :func:`add_spans`), the others export in a background thread.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headwater.engine.config import RunConfig, TraceExporter, otlp_exporter_installed
from headwater.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Span, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanContext

#: attribute names (what dashboards and tests filter on)
JOB, STEP, SUBTASK, CHECKPOINT, ROWS, EDGE, RECEIVER, PARTITION = (
    "headwater.job", "headwater.step", "headwater.subtask", "headwater.checkpoint_id", "headwater.rows",
    "headwater.edge", "headwater.receiver", "headwater.partition",
)
SOURCE_SPAN, PROCESS_SPAN, SINK_WRITE_SPAN, CHANNEL_SPAN, SINK_COMMIT_SPAN = (
    "headwater.source", "headwater.process", "headwater.sink.write", "headwater.channel", "headwater.sink.commit",
)

_lock = threading.Lock()
_providers: dict[str, TracerProvider] = {}
_memory: InMemorySpanExporter | None = None
_collected: list[SpanRecord] = []  # spans other processes handed over (memory exporter)


@dataclass(frozen=True)
class SpanRecord:
    """A finished span as plain data (what the memory exporter gives tests, and what Ray workers ship)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def _provider(exporter: TraceExporter) -> TracerProvider:
    global _memory
    with _lock:
        provider = _providers.get(exporter)
        if provider is not None:
            return provider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "headwater"}))
        if exporter == "memory":
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            _memory = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(_memory))
        elif exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        _providers[exporter] = provider
        return provider


def tracer_provider(exporter: TraceExporter) -> TracerProvider:
    """This process's tracer provider for ``exporter`` (made on first use; one per exporter), for other parts
    of Headwater that trace (the Serve app's requests)."""
    return _provider(exporter)


def _otlp_exporter() -> Any:
    if not otlp_exporter_installed():
        raise ConfigError("trace_exporter='otlp' needs the OTLP exporter package: pip install opentelemetry-exporter-otlp")
    try:  # configured by the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers, protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` header value of ``context`` (version 00, sampled)."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


def parse_traceparent(value: str) -> SpanContext:
    """The remote span context of a W3C ``traceparent`` value (a malformed one raises ``ValueError``)."""
    from opentelemetry.trace import SpanContext, TraceFlags

    version, trace_id, span_id, flags = value.split("-")
    if version != "00" or len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        raise ValueError(f"not a W3C traceparent: {value!r}")
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))


class BatchTracer:
    """The tracing of one subtask: the sampling decision and the spans of traced batches (see the module
    docstring). Parents are passed explicitly as :class:`SpanContext` (no context is attached)."""

    def __init__(self, provider: TracerProvider, ratio: float, job: str, subtask: int) -> None:
        self._tracer = provider.get_tracer("headwater")
        self.ratio = ratio
        self._base = {JOB: job, SUBTASK: subtask}
        self._random = random.Random()

    def sample(self) -> bool:
        """Whether to trace the batch a source just read (one draw; no objects)."""
        return self._random.random() < self.ratio

    def start(self, name: str, parent: SpanContext | None, step: str, checkpoint_id: int,
              start_ns: int | None = None, **attributes: Any) -> Span:
        from opentelemetry.trace import NonRecordingSpan, set_span_in_context

        context = set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        attrs = {**self._base, STEP: step, CHECKPOINT: checkpoint_id, **attributes}
        span = self._tracer.start_span(name, context=context, attributes=attrs, start_time=start_ns)
        return span  # type: ignore[return-value]  # the SDK's tracer makes SDK spans

    def record(self, name: str, parent: SpanContext | None, step: str, checkpoint_id: int, start_ns: int,
               end_ns: int, **attributes: Any) -> SpanContext:
        """A span of something that already happened (from ``start_ns`` to ``end_ns``); its context."""
        span = self.start(name, parent, step, checkpoint_id, start_ns, **attributes)
        span.end(end_ns)
        return span.get_span_context()


class SinkTraces:
    """The traced writes of a subtask's sinks, until their commit: a write belongs to the checkpoint of the
    sink's next ``prepare``, and gets its ``headwater.sink.commit`` span when that checkpoint is committed."""

    def __init__(self, tracer: BatchTracer) -> None:
        self.tracer = tracer
        self.writes: dict[str, list[SpanContext]] = {}  # sink step -> traced writes since its last prepare
        self.pending: dict[int, list[tuple[str, SpanContext]]] = {}  # checkpoint id -> (sink step, write)

    def wrote(self, step_id: str, write: SpanContext) -> None:
        self.writes.setdefault(step_id, []).append(write)

    def prepared(self, step_id: str, checkpoint_id: int) -> None:
        writes = self.writes.pop(step_id, None)
        if writes:
            self.pending.setdefault(checkpoint_id, []).extend((step_id, w) for w in writes)

    def committed(self, step_id: str, checkpoint_id: int, started_ns: int) -> None:
        """Sink ``step_id`` committed what it prepared up to ``checkpoint_id`` (the commit began at
        ``started_ns``): a commit span per traced write it covers."""
        if not self.pending:
            return
        ended_ns = time.time_ns()
        for n in sorted(k for k in self.pending if k <= checkpoint_id):
            writes = self.pending[n]
            for sink_step, write in writes:
                if sink_step == step_id:
                    self.tracer.record(SINK_COMMIT_SPAN, write, sink_step, n, started_ns, ended_ns)
            remaining = [w for w in writes if w[0] != step_id]
            if remaining:
                self.pending[n] = remaining
            else:
                del self.pending[n]


def batch_tracer(config: RunConfig, job: str, subtask: int) -> BatchTracer | None:
    """The tracer of one subtask, or ``None`` when nothing is traced (no exporter, or a sample share of 0)."""
    if config.trace_exporter == "none" or config.trace_sample <= 0:
        return None
    return BatchTracer(_provider(config.trace_exporter), config.trace_sample, job, subtask)


def flush(timeout_ms: int = 5_000) -> None:
    """Export what the background processors still hold (a worker calls it before its job's result returns)."""
    for provider in list(_providers.values()):
        provider.force_flush(timeout_ms)


def _record(span: Any) -> SpanRecord:
    context, parent = span.context, span.parent
    return SpanRecord(
        span.name, f"{context.trace_id:032x}", f"{context.span_id:016x}",
        f"{parent.span_id:016x}" if parent is not None else None, span.start_time or 0, span.end_time or 0,
        dict(span.attributes or {}),
    )


def take_spans() -> list[SpanRecord]:
    """The spans the memory exporter holds in this process (removed from it) as plain data."""
    if _memory is None:
        return []
    with _lock:
        spans = list(_memory.get_finished_spans())
        _memory.clear()
    return [_record(s) for s in spans]


def add_spans(spans: list[SpanRecord]) -> None:
    """Keep spans another process took (a Ray worker's), for :func:`finished_spans` in this one."""
    with _lock:
        _collected.extend(spans)


def finished_spans(clear: bool = False) -> list[SpanRecord]:
    """Every span the memory exporter recorded in this process plus those handed over from Ray workers,
    oldest first (``clear``: forget them afterwards). For tests (``RunConfig(trace_exporter="memory")``)."""
    local = take_spans()
    with _lock:
        _collected.extend(local)
        spans = sorted(_collected, key=lambda s: s.start_ns)
        if clear:
            _collected.clear()
    return spans
