"""The registry of running jobs that ``headwater status`` reads: one small JSON file per running job.

Every driver (``hw.run``/``hw.start``, local executor or Ray) writes ``<registry dir>/<job>-<pid>.json`` when
its job starts and rewrites it every :data:`HEARTBEAT_S` with the job's figures (steps, parallelism, rates,
lag, watermark, the last checkpoint); it deletes the file when the job ends. ``headwater status`` lists the
files. The registry directory is ``$HEADWATER_REGISTRY_DIR``, else ``~/.headwater/jobs`` (per user, ``0700``;
independent of the current directory, so a status in any shell sees every job of this user on this machine).

Why files and not a detached Ray actor: the local executor has no Ray to hold an actor; a file needs no Ray
connection (``headwater status`` answers in milliseconds, also when Ray is down), and the drivers of a Ray
cluster's jobs (``ray job submit``) run on its head node, where the files are. A driver on another machine is
seen by a status on that machine (or on all, with a shared ``HEADWATER_REGISTRY_DIR``).

Invariants:
* An entry vanishes when its job ends (the driver deletes it) or its driver dies: a status ignores and deletes
  entries whose process is gone (same host) or whose heartbeat is older than :data:`STALE_S` (any host).
* Entries hold figures and names only (step ids, counts, rates, times): never a record, never a secret. The
  files are ``0600``.
* A rewrite is atomic (temporary file, then rename): a reader never sees half an entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from headwater.engine.metrics import SubtaskMetrics
from headwater.observability.collector import JobSnapshot

log = logging.getLogger("headwater.registry")

HEARTBEAT_S = 2.0
STALE_S = 15.0


def registry_dir() -> Path | None:
    """``$HEADWATER_REGISTRY_DIR`` (``off``: no registry), else ``~/.headwater/jobs``."""
    text = os.environ.get("HEADWATER_REGISTRY_DIR", "").strip()
    if text.lower() in ("off", "none", "false", "no", "0"):
        return None
    return Path(text).expanduser().resolve() if text else Path.home() / ".headwater" / "jobs"


@dataclass
class StepStatus:
    """One step of a running job, summed over its subtasks (rates: rows per second since the last heartbeat)."""

    step: str
    kind: str
    stage: int
    parallelism: int
    rows_in: int
    rows_out: int
    rate_in: float | None = None
    rate_out: float | None = None
    lag_records: int | None = None
    lag_seconds: float | None = None
    watermark_ms: int | None = None  # the lowest of its subtasks' event-time watermarks


@dataclass
class JobStatus:
    """A registry entry (what ``headwater status --json`` prints per job)."""

    job: str
    pid: int
    host: str
    executor: str
    started_at: float
    updated_at: float
    parallelism: int | None
    restarts: int
    metrics_url: str | None
    steps: list[StepStatus] = field(default_factory=list)
    last_checkpoint_id: int | None = None
    last_checkpoint_at: float | None = None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The entry as plain data, with the last checkpoint's age in seconds as of ``now``."""
        data = asdict(self)
        now = time.time() if now is None else now
        data["last_checkpoint_age_s"] = (None if self.last_checkpoint_at is None
                                         else round(max(0.0, now - self.last_checkpoint_at), 3))
        data["uptime_s"] = round(max(0.0, now - self.started_at), 3)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        data = {k: v for k, v in data.items() if k not in ("last_checkpoint_age_s", "uptime_s")}
        steps = [StepStatus(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)


def _steps(snapshot: JobSnapshot, previous: JobStatus | None) -> list[StepStatus]:
    plan = snapshot.plan
    by_step: dict[str, list[SubtaskMetrics]] = {}
    for m in snapshot.subtasks:
        for step_id in plan.stages[m.stage_id].step_ids:
            by_step.setdefault(step_id, []).append(m)
    before = {s.step: s for s in previous.steps} if previous is not None else {}
    elapsed = snapshot.taken_at - previous.updated_at if previous is not None else 0.0
    out = []
    for stage in plan.stages:
        for step_id in stage.step_ids:
            metrics = by_step.get(step_id, [])
            rows_in = sum(m.steps[step_id].rows_in for m in metrics if step_id in m.steps)
            rows_out = sum(m.steps[step_id].rows_out for m in metrics if step_id in m.steps)
            status = StepStatus(step_id, plan.steps[step_id].kind, stage.stage_id, stage.parallelism, rows_in, rows_out)
            old = before.get(step_id)
            if old is not None and elapsed > 0:
                status.rate_in = round(max(0.0, (rows_in - old.rows_in) / elapsed), 3)
                status.rate_out = round(max(0.0, (rows_out - old.rows_out) / elapsed), 3)
            if step_id == stage.head:
                lags = [lag for m in metrics for lag in m.source_lag.values()]
                records = [lag.records for lag in lags if lag.records is not None]
                seconds = [lag.seconds for lag in lags if lag.seconds is not None]
                status.lag_records = sum(records) if records else None
                status.lag_seconds = max(seconds) if seconds else None
            watermarks = [m.watermark_ms for m in metrics if m.watermark_ms is not None]
            status.watermark_ms = min(watermarks) if watermarks and len(watermarks) == len(metrics) else None
            out.append(status)
    return out


def status_of(snapshot: JobSnapshot, previous: JobStatus | None, executor: str, metrics_url: str | None) -> JobStatus:
    """The registry entry of ``snapshot`` (rates from the difference to ``previous``, this driver's last one)."""
    stats = snapshot.checkpoints
    return JobStatus(
        job=snapshot.job, pid=os.getpid(), host=socket.gethostname(), executor=executor,
        started_at=snapshot.started_at, updated_at=snapshot.taken_at, parallelism=snapshot.parallelism,
        restarts=snapshot.restarts, metrics_url=metrics_url, steps=_steps(snapshot, previous),
        last_checkpoint_id=stats.last_completed_id if stats is not None else None,
        last_checkpoint_at=stats.last_completed_at if stats is not None else None,
    )


def _write(path: Path, data: dict[str, Any]) -> None:
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class ClusterReporter(Protocol):
    """Where a registration also reports its entry (the cluster's job list), keyed by the entry's file name."""

    def put(self, key: str, entry: dict[str, Any]) -> None: ...

    def remove(self, key: str) -> None: ...


class JobRegistration:
    """A running job's entry, kept fresh by a daemon thread until :meth:`close` deletes it."""

    def __init__(self, job: str, executor: str, snapshot: Callable[[], JobSnapshot], metrics_url: str | None,
                 directory: Path, cluster: ClusterReporter | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", job)
        self.path = directory / f"{safe}-{os.getpid()}-{secrets.token_hex(3)}.json"
        self._job, self._executor, self._snapshot, self._metrics_url = job, executor, snapshot, metrics_url
        self._last: JobStatus | None = None
        #: also reports each entry to the cluster's job list (headwater.observability.cluster_jobs)
        self._cluster = cluster
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"headwater-registry-{safe}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        """Write the entry now (the thread does it every :data:`HEARTBEAT_S`)."""
        status = status_of(self._snapshot(), self._last, self._executor, self._metrics_url)
        with self._lock:
            if self._closed.is_set():
                return
            entry = status.to_json(status.updated_at)
            _write(self.path, entry)
            if self._cluster is not None:
                self._cluster.put(self.path.name, entry)
            self._last = status

    def _beat(self) -> None:
        while not self._closed.is_set():
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the registry never fails a job; the next beat tries again
                log.debug("writing the job registry entry %s failed", self.path, exc_info=True)
            self._closed.wait(HEARTBEAT_S)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self.path.unlink(missing_ok=True)
            if self._cluster is not None:
                self._cluster.remove(self.path.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_jobs(directory: Path | None = None, now: float | None = None) -> list[JobStatus]:
    """Entries of running jobs, oldest first; entries of ended drivers are deleted (see the module docstring)."""
    directory = directory or registry_dir()
    if directory is None:
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    jobs = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            status = JobStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # vanished between listing and reading, or not ours
        gone = (status.host == host and not _alive(status.pid)) or now - status.updated_at > STALE_S
        if gone:
            path.unlink(missing_ok=True)
            continue
        jobs.append(status)
    return sorted(jobs, key=lambda s: s.started_at)
