"""Run configuration: one frozen, validated object per concern.

:class:`RunConfig` says how a dataflow runs (parallelism, batching, channels, where Ray and state live).
Every field is checked when the object is made, so a bad value fails before any actor starts, with a message
that names the field and says what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.errors import ConfigError

Executor = Literal["ray", "local"]


#: the port a job's metrics are served on when neither ``RunConfig.metrics_port`` nor ``HEADWATER_METRICS_PORT`` says
#: otherwise; when it is taken (another driver on this machine has it), an ephemeral port is used instead
DEFAULT_METRICS_PORT = 9249
_METRICS_OFF = ("off", "none", "false", "no", "disabled")


def default_metrics_port() -> int | None:
    """``$HEADWATER_METRICS_PORT`` (a port, ``0`` for an ephemeral one, ``off`` for none), else
    :data:`DEFAULT_METRICS_PORT`."""
    text = os.environ.get("HEADWATER_METRICS_PORT", "").strip().lower()
    if not text:
        return DEFAULT_METRICS_PORT
    if text in _METRICS_OFF:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"HEADWATER_METRICS_PORT must be a port number, 0 (an ephemeral port) or 'off', got {text!r}"
        ) from None


def default_metrics_host() -> str:
    """``$HEADWATER_METRICS_HOST`` or ``127.0.0.1``."""
    return os.environ.get("HEADWATER_METRICS_HOST", "").strip() or "127.0.0.1"


def default_ray_dashboard() -> bool:
    """``$HEADWATER_RAY_DASHBOARD`` (``0``/``off`` turns it off), else on."""
    return os.environ.get("HEADWATER_RAY_DASHBOARD", "").strip().lower() not in ("0", *_METRICS_OFF)


#: the share of source batches traced when neither ``RunConfig.trace_sample`` nor ``HEADWATER_TRACE_SAMPLE`` says
#: otherwise (1 in 100: at 64 k-row batches a few traces a second at millions of rows/s, and no measurable cost)
DEFAULT_TRACE_SAMPLE = 0.01
TraceExporter = Literal["none", "otlp", "console", "memory"]
TRACE_EXPORTERS: tuple[TraceExporter, ...] = ("none", "otlp", "console", "memory")
LogFormat = Literal["json", "text"]


def default_trace_sample() -> float:
    """``$HEADWATER_TRACE_SAMPLE`` (a share between 0 and 1), else :data:`DEFAULT_TRACE_SAMPLE`."""
    text = os.environ.get("HEADWATER_TRACE_SAMPLE", "").strip()
    if not text:
        return DEFAULT_TRACE_SAMPLE
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"HEADWATER_TRACE_SAMPLE must be a share between 0 and 1 (e.g. 0.01), got {text!r}") from None


def default_trace_exporter() -> TraceExporter:
    """``$HEADWATER_TRACE_EXPORTER``; else ``otlp`` when an OTLP endpoint is configured the OpenTelemetry way
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); else ``none``."""
    text = os.environ.get("HEADWATER_TRACE_EXPORTER", "").strip().lower()
    if text:
        return text  # type: ignore[return-value]  # checked by RunConfig.__post_init__
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "none"


def default_log_format() -> LogFormat:
    """``$HEADWATER_LOG_FORMAT`` (``json`` or ``text``), else ``json``."""
    text = os.environ.get("HEADWATER_LOG_FORMAT", "").strip().lower()
    return text or "json"  # type: ignore[return-value]  # checked by RunConfig.__post_init__


def otlp_exporter_installed() -> bool:
    """Whether ``opentelemetry-exporter-otlp`` (its HTTP or gRPC trace exporter) can be imported."""
    import importlib.util

    for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                 "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:
            continue
    return False
def default_lineage_url() -> str | None:
    """``$OPENLINEAGE_URL`` (the OpenLineage client's own variable), else none."""
    return os.environ.get("OPENLINEAGE_URL", "").strip() or None


def default_lineage() -> bool:
    """``$HEADWATER_LINEAGE`` (``0``/``off`` turns lineage events and the job audit entries off), else on."""
    return os.environ.get("HEADWATER_LINEAGE", "").strip().lower() not in ("0", *_METRICS_OFF)


SCHEMA_REGISTRY_ENV = "HEADWATER_SCHEMA_REGISTRY"
REGISTRY_FILE = "registry.db"


def default_schema_registry() -> str | None:
    """``$HEADWATER_SCHEMA_REGISTRY`` (a SQLAlchemy URL or a SQLite file path; ``off`` for none), else
    ``<store>/registry.db`` in the table store (``$HEADWATER_STORE``, else ``.headwater/store``)."""
    text = os.environ.get(SCHEMA_REGISTRY_ENV, "").strip()
    if text.lower() in _METRICS_OFF:
        return None
    if text:
        return text
    from headwater.store.layout import resolve_root

    return os.path.join(resolve_root(None), REGISTRY_FILE)


def default_keep_local_ray() -> bool:
    """``$HEADWATER_KEEP_LOCAL_RAY`` (``0``/``off``: a local Ray per run), else on."""
    return os.environ.get("HEADWATER_KEEP_LOCAL_RAY", "").strip().lower() not in ("0", *_METRICS_OFF)


#: how long the kept local Ray waits without a connected driver before it stops itself
DEFAULT_LOCAL_RAY_IDLE_TIMEOUT = timedelta(minutes=10)


def default_local_ray_idle_timeout() -> timedelta:
    """``$HEADWATER_LOCAL_RAY_IDLE_TIMEOUT`` (seconds), else :data:`DEFAULT_LOCAL_RAY_IDLE_TIMEOUT`."""
    text = os.environ.get("HEADWATER_LOCAL_RAY_IDLE_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_LOCAL_RAY_IDLE_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"HEADWATER_LOCAL_RAY_IDLE_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ConfigError(f"HEADWATER_LOCAL_RAY_IDLE_TIMEOUT must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def default_state_dir() -> Path:
    """``$HEADWATER_STATE_DIR`` or ``.headwater/`` under the current directory."""
    return Path(os.environ.get("HEADWATER_STATE_DIR", ".headwater")).resolve()


@dataclass(frozen=True)
class RunConfig:
    r"""How a dataflow runs.

    Attributes:
        parallelism: default number of subtasks per step (sources use at most one per partition); ``None``
            means the number of CPUs Ray reports (or the machine's, for the in-process executor: 1).
        batch_size: an output buffer is sent on as soon as it holds this many rows.
        linger: ... or once its oldest row has waited this long, whichever comes first.
        channel_credits: batches a sender may have in flight to one receiver before it waits (backpressure).
        max_key_groups: number of key groups keyed state is split into; fixes the maximum parallelism of
            keyed steps and must stay the same for the life of a job's state.
        executor: ``"ray"`` (actors, the default) or ``"local"`` (in-process, same plan, for tests).
        ray_address: join this Ray cluster; default ``$RAY_ADDRESS``, else start a local one.
        num_cpus / object_store_memory: resources of a local Ray started by Headwater.
        worker_cpus: CPUs each worker actor reserves from Ray (a job has one worker per slot, as many slots as
            its widest step's parallelism; steps with their own ``num_cpus`` get dedicated workers that reserve
            that instead). ``None`` (the default) chooses by where the job runs: ``1`` on a cluster the driver
            joined (``ray_address``), so that a job wanting more subtasks than the cluster has CPUs creates
            pending demand that Ray's autoscaler answers with nodes; ``0`` on a Ray this process started (the
            embedded default: nothing can add a node there, and a parallelism above the machine's cores
            time-shares them as before). Fractions are allowed (``0.5``: two workers per CPU).
        worker_resources: custom Ray resources each worker actor also reserves (e.g. ``{"stream_slot": 1}``)
            to keep workers on the node types that offer them (see cluster/cluster.yaml).
        state_dir: where Ray's temp files (and later checkpoints) live by default.
        progress: print a live rows/s and backlog display while running.
        progress_interval: how often the progress display refreshes.
        watermark_interval: how often a source subtask sends its watermark when it advanced (0: after every
            batch, which makes event-time tests deterministic).
        tune_allocator: worker actors set glibc's mmap/trim thresholds so batch-sized temporaries stay on the
            heap instead of being mapped and faulted in again for every batch (see
            :mod:`headwater.engine.ray.allocator`); the in-process executor never changes them.
        reuse_workers: after a job without checkpointing ends successfully, keep its worker processes for the
            driver's next job instead of starting new ones (see :mod:`headwater.engine.ray.worker_pool`).
        stall_timeout: a step *stalls* when one call into its code (processing one batch, a watermark or a
            timer, reading one batch from a source partition, opening, finishing, a sink's prepare or commit)
            has not returned for this long; the job then fails with
            :class:`~headwater.errors.StepStalledError` naming the step and what it was doing. Waiting is not
            stalling: a source with no new input, a sender held back by backpressure, a subtask waiting for
            input or for a checkpoint to complete are never flagged, however long they wait; checkpoint state
            writes are bounded by ``CheckpointConfig.timeout`` instead. ``None`` turns the check off. Raise it
            for steps whose single calls may legitimately run long (e.g. loading a large model in ``open``).
            See docs/operations.md, "A job reports a stalled step".
        stop_grace: how long a stopped job (``timeout`` reached, ``job.stop()``, Ctrl-C) may take to drain,
            commit and end; after it, its workers are killed and the run raises
            :class:`~headwater.errors.StopTimeoutError` naming the busy steps. The in-process executor cannot
            kill a thread: it returns control (raising the same error) and leaves the hung thread behind.
        metrics_port: serve the job's Prometheus metrics on ``http://<metrics_host>:<port>/metrics`` (jobs of
            one driver process asking for the same address share a server; see :mod:`headwater.observability`). Default
            ``$HEADWATER_METRICS_PORT``, else 9249 (taken already: an ephemeral port); ``0`` picks an
            ephemeral port (the job's ``metrics_url`` tells which); ``None`` serves none.
        ray_dashboard: a local Ray started by Headwater runs Ray's dashboard on ``127.0.0.1`` (its URL is
            printed at start; it costs a few seconds of start-up and ~200 MiB). Default
            ``$HEADWATER_RAY_DASHBOARD`` (``0``/``off``), else on. A joined cluster's dashboard is its operator's.
        schema_registry: where the job's schemas are checked and recorded when it starts (docs/governance.md,
            "Schemas"): a SQLAlchemy URL (``postgresql://user@host/db`` on a cluster; the password belongs in
            ``PGPASSWORD`` or ``~/.pgpass``, not the URL) or a SQLite file path. Default
            ``$HEADWATER_SCHEMA_REGISTRY``, else ``<store>/registry.db`` in the table store; ``None`` (or the
            variable set to ``off``) checks and records nothing. Not shown in the config's repr.
        keep_local_ray: a run that would start a local Ray joins the *kept* local Ray instead, starting it if
            none runs (:mod:`headwater.engine.ray.kept`): later runs on this machine start in about a second
            instead of 5-10 s. It lets in only callers with the token, stops itself after
            ``local_ray_idle_timeout`` without a connected driver, and ``headwater local stop`` stops it at
            once. Default ``$HEADWATER_KEEP_LOCAL_RAY`` (``0``/``off``: a local Ray per run, stopped when the
            run ends), else on.
        local_ray_idle_timeout: how long the kept local Ray runs without a connected driver before it stops
            itself; the value of the run that starts it applies. Default ``$HEADWATER_LOCAL_RAY_IDLE_TIMEOUT``
            (seconds), else 10 minutes.
        metrics_host: the address that server binds: default ``$HEADWATER_METRICS_HOST``, else ``127.0.0.1``
            (set ``0.0.0.0`` only where the network in front of it is trusted).
        trace_exporter: where OpenTelemetry spans of sampled batches go (see :mod:`headwater.engine.tracing`):
            ``"otlp"`` (needs ``opentelemetry-exporter-otlp``; configured by the standard ``OTEL_EXPORTER_OTLP_*``
            variables), ``"console"`` (stdout), ``"memory"`` (kept in the process, for tests:
            ``headwater.engine.tracing.finished_spans()``), ``"none"`` (no spans at all). Default
            ``$HEADWATER_TRACE_EXPORTER``, else ``"otlp"`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
            ``..._TRACES_ENDPOINT``) is set, else ``"none"``.
        trace_sample: the share of source batches traced (0 to 1; each traced batch's spans follow it to the
            sink's commit). Default ``$HEADWATER_TRACE_SAMPLE``, else 0.01. Unsampled batches create no spans.
        log_format: ``"json"`` (one JSON object per line, the default) or ``"text"`` (for a terminal); default
            ``$HEADWATER_LOG_FORMAT``. See :mod:`headwater.engine.logs`.
        store: the Headwater store whose lineage events (``<store>/lineage/events/``) and audit log record this
            run. ``None``: the store of the flow's ``TableSink``\ s when they all write one, else
            ``$HEADWATER_STORE``, else ``.headwater/store`` (docs/governance.md).
        lineage: emit OpenLineage events (START and COMPLETE/FAIL/ABORT) and audit the run's start and end; default
            ``$HEADWATER_LINEAGE`` (``0``/``off``), else on. Emission never fails or slows the job.
        lineage_url: also send the events to this OpenLineage collector (e.g. Marquez, ``http://host:5000``) over
            HTTP; default ``$OPENLINEAGE_URL``, else only the file transport into the store.
    """

    parallelism: int | None = None
    batch_size: int = 65_536
    linger: timedelta = timedelta(milliseconds=20)
    channel_credits: int = 4
    max_key_groups: int = DEFAULT_MAX_KEY_GROUPS
    executor: Executor = "ray"
    ray_address: str | None = None
    num_cpus: int | None = None
    worker_cpus: float | None = None
    worker_resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 512 * 1024 * 1024
    state_dir: Path | None = None
    progress: bool = False
    progress_interval: timedelta = timedelta(seconds=1)
    watermark_interval: timedelta = timedelta(milliseconds=20)
    tune_allocator: bool = True
    reuse_workers: bool = True
    stall_timeout: timedelta | None = timedelta(minutes=5)
    stop_grace: timedelta = timedelta(seconds=10)
    metrics_port: int | None = field(default_factory=default_metrics_port)
    metrics_host: str = field(default_factory=default_metrics_host)
    ray_dashboard: bool = field(default_factory=default_ray_dashboard)
    trace_exporter: TraceExporter = field(default_factory=default_trace_exporter)
    trace_sample: float = field(default_factory=default_trace_sample)
    log_format: LogFormat = field(default_factory=default_log_format)
    store: str | None = None
    lineage: bool = field(default_factory=default_lineage)
    lineage_url: str | None = field(default_factory=default_lineage_url)
    schema_registry: str | None = field(default_factory=default_schema_registry, repr=False)
    keep_local_ray: bool = field(default_factory=default_keep_local_ray)
    local_ray_idle_timeout: timedelta = field(default_factory=default_local_ray_idle_timeout)

    def __post_init__(self) -> None:
        if self.schema_registry is not None and (not isinstance(self.schema_registry, str)
                                                 or not self.schema_registry.strip()):
            raise ConfigError("schema_registry must be a SQLAlchemy URL, a SQLite file path or None (off), got "
                              f"{type(self.schema_registry).__name__}")
        if self.parallelism is not None and (
            not isinstance(self.parallelism, int) or isinstance(self.parallelism, bool) or self.parallelism < 1
        ):
            raise ConfigError(f"parallelism must be a positive integer or None, got {self.parallelism!r}")
        if self.parallelism is not None and self.parallelism > self.max_key_groups:
            raise ConfigError(
                f"parallelism {self.parallelism} exceeds max_key_groups {self.max_key_groups}: raise "
                "max_key_groups (keyed state is split into that many groups) or lower the parallelism"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive number of rows, got {self.batch_size!r}")
        if not isinstance(self.linger, timedelta) or self.linger < timedelta(0):
            raise ConfigError(f"linger must be a non-negative datetime.timedelta, got {self.linger!r}")
        if not isinstance(self.watermark_interval, timedelta) or self.watermark_interval < timedelta(0):
            raise ConfigError(f"watermark_interval must be a non-negative datetime.timedelta, got {self.watermark_interval!r}")
        if self.stall_timeout is not None and (
            not isinstance(self.stall_timeout, timedelta) or self.stall_timeout <= timedelta(0)
        ):
            raise ConfigError(
                f"stall_timeout must be a positive datetime.timedelta (e.g. timedelta(minutes=5)) or None to turn "
                f"the check off, got {self.stall_timeout!r}"
            )
        if not isinstance(self.stop_grace, timedelta) or self.stop_grace <= timedelta(0):
            raise ConfigError(f"stop_grace must be a positive datetime.timedelta, got {self.stop_grace!r}")
        if not isinstance(self.local_ray_idle_timeout, timedelta) or self.local_ray_idle_timeout <= timedelta(0):
            raise ConfigError(f"local_ray_idle_timeout must be a positive datetime.timedelta, got "
                              f"{self.local_ray_idle_timeout!r}")
        if self.lineage_url is not None and (
            not isinstance(self.lineage_url, str) or not self.lineage_url.startswith(("http://", "https://"))
        ):
            raise ConfigError(f"lineage_url must be an http:// or https:// URL of an OpenLineage collector (e.g. "
                              f"'http://localhost:5000'), got one starting {str(self.lineage_url)[:8]!r}")
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise ConfigError(f"store must be a directory path or None, got {self.store!r}")
        for flag in ("tune_allocator", "reuse_workers", "ray_dashboard", "lineage", "keep_local_ray"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if not isinstance(self.channel_credits, int) or self.channel_credits < 1:
            raise ConfigError(f"channel_credits must be at least 1, got {self.channel_credits!r}")
        if not isinstance(self.max_key_groups, int) or not 1 <= self.max_key_groups <= 32_768:
            raise ConfigError(f"max_key_groups must be between 1 and 32768, got {self.max_key_groups!r}")
        if self.executor not in ("ray", "local"):
            raise ConfigError(f"executor must be 'ray' or 'local', got {self.executor!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be at least 1, got {self.num_cpus!r}")
        if self.worker_cpus is not None and (
            isinstance(self.worker_cpus, bool) or not isinstance(self.worker_cpus, (int, float))
            or not 0 <= self.worker_cpus <= 1024
        ):
            raise ConfigError(f"worker_cpus must be a number of CPUs >= 0 (fractions allowed) or None to choose by "
                              f"where the job runs, got {self.worker_cpus!r}")
        if not isinstance(self.worker_resources, dict) or not all(
            isinstance(k, str) and k and k not in ("CPU", "GPU", "memory", "object_store_memory")
            and not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
            for k, v in self.worker_resources.items()
        ):
            raise ConfigError(
                "worker_resources must map custom Ray resource names to positive amounts, e.g. {'stream_slot': 1} "
                f"(CPUs are worker_cpus; GPU, memory and object_store_memory are not per-worker settings), got "
                f"{self.worker_resources!r}"
            )
        if self.metrics_port is not None and (
            not isinstance(self.metrics_port, int) or isinstance(self.metrics_port, bool)
            or not 0 <= self.metrics_port <= 65_535
        ):
            raise ConfigError(
                f"metrics_port must be a port number (0: an ephemeral one) or None (no metrics server), got "
                f"{self.metrics_port!r}"
            )
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise ConfigError(f"metrics_host must be an address such as '127.0.0.1', got {self.metrics_host!r}")
        if self.trace_exporter not in TRACE_EXPORTERS:
            raise ConfigError(
                f"trace_exporter must be one of {', '.join(TRACE_EXPORTERS)} (or $HEADWATER_TRACE_EXPORTER), got "
                f"{self.trace_exporter!r}"
            )
        if self.trace_exporter == "otlp" and not otlp_exporter_installed():
            raise ConfigError(
                "trace_exporter='otlp' needs the OTLP exporter package: pip install opentelemetry-exporter-otlp "
                "(or choose trace_exporter 'console', 'memory' or 'none')"
            )
        if (not isinstance(self.trace_sample, (int, float)) or isinstance(self.trace_sample, bool)
                or not 0.0 <= self.trace_sample <= 1.0):
            raise ConfigError(
                f"trace_sample must be a share of batches between 0 and 1 (e.g. 0.01), got {self.trace_sample!r}"
            )
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format must be 'json' or 'text' (or $HEADWATER_LOG_FORMAT), got {self.log_format!r}")
        if self.object_store_memory < 78 * 1024 * 1024:
            raise ConfigError("object_store_memory must be at least 78 MiB (Ray's minimum)")

    @property
    def linger_seconds(self) -> float:
        return self.linger.total_seconds()

    @property
    def stall_seconds(self) -> float | None:
        return None if self.stall_timeout is None else self.stall_timeout.total_seconds()

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir).resolve() if self.state_dir is not None else default_state_dir()

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A copy with ``overrides`` applied (unknown names fail with the list of valid ones)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown run option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        for name in ("linger", "stall_timeout", "stop_grace", "local_ray_idle_timeout"):  # plain seconds are accepted as options
            value = overrides.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                overrides[name] = timedelta(seconds=value)
        return replace(self, **overrides)


@dataclass(frozen=True)
class CheckpointConfig:
    """Exactly-once checkpointing of a job (see docs/exactly-once.md).

    Attributes:
        dir: where checkpoints live: a local path or any ``pyarrow.fs`` URI (``s3://bucket/prefix``). Running a
            job again with the same ``dir`` resumes from its latest complete checkpoint.
        interval: time between the triggers of two checkpoints (the first one this long after the start); a
            checkpoint that takes longer is followed by the next at once (unless ``min_pause`` asks for a gap).
        retain: complete checkpoints kept (older ones are deleted; savepoints are never deleted).
        min_pause: minimum time between the end of one checkpoint and the next trigger (0: none), so that a
            job whose checkpoints take about ``interval`` still spends time on its input.
        timeout: a checkpoint not complete after this long is aborted (the job keeps running).
        max_restarts: automatic restarts from the latest checkpoint after *transient* failures in a row before
            the run fails (deterministic failures — bad data, schema mismatches, configuration, a full or
            read-only disk — are never restarted; see :mod:`headwater.engine.failures`).
        restart_delay: pause before the first restart; it doubles with each further restart in a row ...
        max_restart_delay: ... up to this cap (each pause is shortened by a random jitter of up to 10 %).
        restart_reset_after: an attempt that ran this long and completed a checkpoint was healthy: the next
            failure starts a new row (pause ``restart_delay`` again, ``max_restarts`` available again).
        restore_from: start from this checkpoint or savepoint directory instead of the latest one in ``dir``.
        allow_non_restored_state: when restoring, drop state of steps the dataflow no longer has instead of
            refusing to start.
    """

    dir: str | Path
    interval: timedelta = timedelta(seconds=5)
    retain: int = 3
    min_pause: timedelta = timedelta(0)
    timeout: timedelta = timedelta(minutes=2)
    max_restarts: int = 5
    restart_delay: timedelta = timedelta(milliseconds=200)
    max_restart_delay: timedelta = timedelta(seconds=30)
    restart_reset_after: timedelta = timedelta(minutes=10)
    restore_from: str | Path | None = None
    allow_non_restored_state: bool = False

    def __post_init__(self) -> None:
        if not str(self.dir):
            raise ConfigError("CheckpointConfig.dir must name a directory or a pyarrow.fs URI")
        for name in ("interval", "min_pause", "timeout", "restart_delay", "max_restart_delay", "restart_reset_after"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise ConfigError(f"CheckpointConfig.{name} must be a non-negative datetime.timedelta, got {value!r}")
        if self.interval <= timedelta(0):
            raise ConfigError("CheckpointConfig.interval must be positive (e.g. timedelta(seconds=5))")
        if self.timeout <= timedelta(0):
            raise ConfigError("CheckpointConfig.timeout must be positive")
        if not isinstance(self.retain, int) or self.retain < 1:
            raise ConfigError(f"CheckpointConfig.retain must keep at least 1 checkpoint, got {self.retain!r}")
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"CheckpointConfig.max_restarts must be >= 0, got {self.max_restarts!r}")
        if self.max_restart_delay < self.restart_delay:
            raise ConfigError(
                f"CheckpointConfig.max_restart_delay ({self.max_restart_delay}) is below restart_delay "
                f"({self.restart_delay}); raise max_restart_delay or lower restart_delay"
            )

    @property
    def uri(self) -> str:
        text = str(self.dir)
        return text if "://" in text else str(Path(text).resolve())
