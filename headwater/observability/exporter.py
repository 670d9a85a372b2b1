"""The Prometheus endpoint of a driver process: ``http://127.0.0.1:<port>/metrics`` for every job it runs.

Why one exporter in the driver, fed by the engine's own metrics path, and not ``ray.util.metrics`` (the reasons
are in docs/operations.md, "Metrics"): the figures already exist as plain counters in every subtask
(:class:`~headwater.engine.metrics.SubtaskMetrics`); the driver reaches every worker on every node through
actor calls; and it asks for them only when scraped, so an unscraped job pays nothing but the counting.

How it works:
* :data:`EXPORTER` is the process's one :class:`MetricsExporter`. A job *registers* a callable that returns a
  :class:`~headwater.observability.collector.JobSnapshot`; at every scrape the exporter calls it (a Ray job
  asks its workers then) and renders the families of :mod:`headwater.observability.definitions`.
* A job that ended leaves its final snapshot (exact: the subtasks' final figures) with ``headwater_job_up 0``,
  until a job of the same name replaces it; at most :data:`RETAINED` ended jobs are kept.
* :meth:`MetricsExporter.serve` starts an HTTP server (a daemon thread, for the life of the process) per
  address asked for; later jobs asking for the same address share it. A server shows the jobs registered for
  it only, so a process serving on two ports never shows a job twice. The default port, when taken by another
  process, falls back to an ephemeral one (logged); an explicitly configured port that is taken fails the job
  before it starts (:class:`~headwater.errors.ConfigError`).

Security: binds ``127.0.0.1`` unless configured; serves figures only (step ids, partition names, counts) — no
record data, no configuration values, no secrets.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import start_http_server

from headwater.engine.config import DEFAULT_METRICS_PORT
from headwater.errors import ConfigError
from headwater.observability.collector import JobSnapshot, families, merge

log = logging.getLogger("headwater.metrics")

#: ended jobs whose last figures stay scrapeable (oldest dropped first)
RETAINED = 32

SnapshotFn = Callable[[], JobSnapshot]


Endpoint = tuple[str, int]  # (host, port asked for)


class _Job:
    def __init__(self, label: str, snapshot: SnapshotFn, endpoint: Endpoint | None) -> None:
        self.label = label
        self.snapshot_fn: SnapshotFn | None = snapshot
        self.endpoint = endpoint
        self.last: JobSnapshot | None = None


class _EndpointCollector:
    """prometheus_client's collector protocol for one server: the jobs registered for its endpoint."""

    def __init__(self, exporter: MetricsExporter, endpoint: Endpoint | None) -> None:
        self.exporter, self.endpoint = exporter, endpoint

    def collect(self) -> Iterable[Metric]:
        return families(self.exporter.snapshots(self.endpoint))


class MetricsExporter:
    """The registry of a process's jobs and the HTTP servers that expose them (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Job] = {}
        self._ended: OrderedDict[str, tuple[Endpoint | None, JobSnapshot]] = OrderedDict()
        self._servers: dict[Endpoint, tuple[object, str]] = {}  # endpoint -> (server, url)
        #: every job, whatever its endpoint (for tests and embedding)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EndpointCollector(self, None))

    # -- jobs -----------------------------------------------------------------------------------------------
    def register(self, name: str, snapshot: SnapshotFn, endpoint: Endpoint | None = None) -> str:
        """Expose a running job on the server of ``endpoint`` (``(host, port)`` as given to :meth:`serve`);
        returns its ``job`` label (``name``, or ``name#2``... while another running job of this process has that
        name)."""
        with self._lock:
            label, n = name, 1
            while label in self._running:
                n += 1
                label = f"{name}#{n}"
            self._running[label] = _Job(label, snapshot, endpoint)
            self._ended.pop(label, None)
            return label

    def finish(self, label: str, final: JobSnapshot | None = None) -> None:
        """The job ended: keep ``final`` (or its last scraped figures) as its last figures, marked not running."""
        with self._lock:
            job = self._running.pop(label, None)
            last = final if final is not None else job.last if job is not None else None
            if job is None or last is None:
                return
            self._ended[label] = (job.endpoint, replace(last, job=label, running=False))
            self._ended.move_to_end(label)
            while len(self._ended) > RETAINED:
                self._ended.popitem(last=False)

    def snapshots(self, endpoint: Endpoint | None = None) -> list[JobSnapshot]:
        """Fresh figures of the running jobs (a job that cannot answer keeps its previous ones) and the last
        figures of ended ones: those registered for ``endpoint``, or all of them."""
        with self._lock:
            running = [j for j in self._running.values() if endpoint is None or j.endpoint == endpoint]
            ended = [s for e, s in self._ended.values() if endpoint is None or e == endpoint]
        out = []
        for job in running:
            fn = job.snapshot_fn
            try:
                fresh = replace(fn(), job=job.label) if fn is not None else None
            except Exception:  # noqa: BLE001 - a scrape never fails because one job could not answer
                log.debug("metrics of job %s could not be read; serving its previous figures", job.label,
                          exc_info=True)
                fresh = None
            if fresh is not None:
                job.last = merge(job.last, fresh)
            if job.last is not None:
                out.append(job.last)
        return out + ended

    # -- servers --------------------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> str:
        """Serve this process's metrics on ``host:port`` (``0``: an ephemeral port) and return the URL; a server
        already started for the same address is shared."""
        with self._lock:
            known = self._servers.get((host, port))
            if known is not None:
                return known[1]
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_EndpointCollector(self, (host, port)))
            try:
                server, _ = start_http_server(port, addr=host, registry=registry)
            except OSError as exc:
                if port != DEFAULT_METRICS_PORT:
                    raise ConfigError(
                        f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another "
                        f"metrics_port (0: an ephemeral one) or None for no metrics server"
                    ) from exc
                server, _ = start_http_server(0, addr=host, registry=registry)
                log.warning("metrics port %d on %s is taken (%s); serving on port %d instead", port, host,
                            exc.strerror or exc, server.server_port)
            shown = f"[{host}]" if ":" in host else host
            url = f"http://{shown}:{server.server_port}/metrics"
            self._servers[(host, port)] = (server, url)
            log.info("headwater metrics at %s", url)
            return url


EXPORTER = MetricsExporter()

