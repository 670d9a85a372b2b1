"""OpenTelemetry spans of the Serve app's requests: one ``headwater.serve.request`` span per traced request.

A request is traced when it carries a sampled W3C ``traceparent`` header (its span then continues the caller's
trace as a child of the caller's span: a client, or a pipeline step enriching from ``/features``, sees its
request in its own trace), or else with the app's sampling share (``AppConfig.trace_sample``; head sampling,
like the engine's batches). Spans go to the exporter of ``AppConfig.trace_exporter`` (the engine's choices:
``otlp``, ``console``, ``memory``, ``none``; see :mod:`headwater.engine.tracing`).

Attributes: ``http.request.method``, ``http.route`` (the route's template, never the concrete path: keys are
data), ``http.response.status_code``, ``headwater.serve.tables`` and ``headwater.rows`` (from the request's
audit record). Invariants: a span never holds a token, a key, query text or a
value; a malformed ``traceparent`` is ignored (the request is answered as any other, never a 5xx); an
untraced request costs one random draw and a header lookup.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.engine.config import TraceExporter
from headwater.engine.tracing import ROWS, parse_traceparent, tracer_provider
from headwater.serve.metrics import route_of

REQUEST_SPAN = "headwater.serve.request"
TABLES = "headwater.serve.tables"


def _incoming(scope: Scope) -> Any | None:
    """The sampled remote parent of the request's ``traceparent`` header, or ``None``."""
    for name, value in scope.get("headers") or ():
        if name == b"traceparent":
            try:
                context = parse_traceparent(value.decode("latin-1").strip())
            except (ValueError, UnicodeDecodeError):
                return None
            return context if context.trace_flags.sampled and context.trace_id and context.span_id else None
    return None


class RequestTracingMiddleware:
    """Wraps the app (inside the metrics middleware, outside the audit one) and records a span per traced
    request (see the module docstring)."""

    def __init__(self, app: ASGIApp, exporter: TraceExporter, sample: float,
                 draw: Callable[[], float] = random.random) -> None:
        self.app, self.sample, self.draw = app, sample, draw
        self.tracer = tracer_provider(exporter).get_tracer("headwater.serve")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = _incoming(scope)
        if parent is None and not (self.sample > 0 and self.draw() < self.sample):
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        started = time.time_ns()
        try:
            await self.app(scope, receive, sending)
        finally:
            audit = (scope.get("state") or {}).get("audit") or {}
            attributes: dict[str, Any] = {"http.request.method": str(scope.get("method", "")),
                                          "http.route": route_of(scope), "http.response.status_code": status[0]}
            if audit.get("tables"):
                attributes[TABLES] = [str(t) for t in audit["tables"]]
            if isinstance(audit.get("rows"), int):
                attributes[ROWS] = audit["rows"]
            span = self.tracer.start_span(REQUEST_SPAN, context=context, kind=SpanKind.SERVER,
                                          attributes=attributes, start_time=started)
            span.end()
