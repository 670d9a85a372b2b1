"""Request metrics of the Serve app: latency, status codes and result-cache lookups, exported through Ray.

The app runs as Ray Serve replicas, possibly several on several nodes, so its figures are recorded with
``ray.util.metrics``: Ray's metrics agent on every node exports what that node's replicas recorded, on the
node's metrics port, for the same Prometheus that scrapes Ray (``cluster/prometheus/prometheus.yml``; Ray writes
the targets to ``<ray temp dir>/prom_metrics_service_discovery.json``) and its dashboard. A ``/metrics`` route in
the app itself would show one replica per scrape. Ray puts ``ray_`` before every name it exports:

* ``ray_headwater_serve_requests_total{route, method, status}``: requests answered (``route`` is the route's
  template, ``/features/{table}/{key}``, never the path a caller sent: keys never become labels);
* ``ray_headwater_serve_request_duration_seconds{route, method, status}``: their latency (histogram);
* ``ray_headwater_serve_cache_lookups_total{outcome}``: result-cache lookups, ``hit`` or ``miss``.

Ray Serve's own series (``ray_serve_num_http_requests_total``, ``ray_serve_http_request_latency_ms``, ...) come on
the same port. Outside Ray (the app in-process, in tests) the recording calls do nothing.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = "headwater_serve_requests"
DURATION = "headwater_serve_request_duration_seconds"
CACHE = "headwater_serve_cache_lookups"
#: seconds: a feature look-up answers in milliseconds, a SQL query over cold data in seconds
DURATION_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
UNMATCHED = "unmatched"


class ServeMetrics:
    """The app's metrics (one set per replica process; Ray sums nothing, Prometheus does)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        tags = ("route", "method", "status")
        self.requests = Counter(REQUESTS, description="Requests the Serve app answered", tag_keys=tags)
        self.duration = Histogram(DURATION, description="Latency of the Serve app's requests (seconds)",
                                  boundaries=DURATION_BOUNDS, tag_keys=tags)
        self.cache = Counter(CACHE, description="Result-cache lookups of the Serve app", tag_keys=("outcome",))

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        tags = {"route": route, "method": method, "status": str(status)}
        self.requests.inc(1.0, tags=tags)
        self.duration.observe(seconds, tags=tags)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.inc(1.0, tags={"outcome": "hit" if hit else "miss"})


def route_of(scope: Scope) -> str:
    """The template of the route that answered (bounded), or ``unmatched``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetricsMiddleware:
    """Times every HTTP request from its arrival to the end of its response and records it with its status."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ServeMetrics]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _typed(sending))
        finally:
            self.metrics().request(route_of(scope), str(scope.get("method", "")), status[0],
                                   time.perf_counter() - started)


def _typed(fn: Callable[[Message], Awaitable[None]]) -> Send:
    return fn
