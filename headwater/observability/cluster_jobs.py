"""The cluster-wide list of running jobs: a detached actor on a Ray cluster that drivers anywhere report to.

The job registry files (:mod:`headwater.observability.registry`) show the jobs of the machine ``headwater status``
runs on. On a cluster a driver may run on any machine that joined it (a notebook, a scheduler's worker, the head
for ``ray job submit``), so every driver whose job runs on a cluster it *joined* (``RunConfig.ray_address`` or
``$RAY_ADDRESS``; the kept local Ray too) also sends each heartbeat's entry to the actor ``headwater_jobs`` in
the Ray namespace ``headwater`` (detached, no CPUs; made by the first such job, found by the later ones), and
removes it when the job ends. ``headwater status --address ADDR`` (or with ``$RAY_ADDRESS`` set) asks that actor
as well as reading the files.

Invariants: an entry is the same document as the file's (figures and names only, never a record or a secret);
the actor keeps an entry only while heartbeats come (an entry whose last heartbeat is older than
:data:`~headwater.observability.registry.STALE_S` by the actor's clock is dropped, so a driver that died without
removing its entry vanishes); a report to the actor is fire-and-forget and never fails or slows the job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from headwater.observability.registry import STALE_S, JobStatus

log = logging.getLogger("headwater.registry")

ACTOR_NAME = "headwater_jobs"
NAMESPACE = "headwater"


class ClusterJobs:
    """The actor's state: entries by registration key, each with the actor's time of its last heartbeat."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = (time.time(), entry)

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)

    def list(self) -> list[dict[str, Any]]:
        now = time.time()
        for key in [k for k, (at, _) in self.entries.items() if now - at > STALE_S]:
            del self.entries[key]
        return [entry for _, entry in self.entries.values()]


def cluster_registry(ray: Any, *, create: bool) -> Any | None:
    """The cluster's ``headwater_jobs`` actor (made when ``create`` and missing), or ``None``."""
    if create:
        remote = ray.remote(num_cpus=0, max_restarts=-1)(ClusterJobs)
        return remote.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:  # no job reported to this cluster yet
        return None


class ClusterReport:
    """A driver's reports to the actor: :meth:`put` each heartbeat, :meth:`remove` at the end (never raise)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def put(self, key: str, entry: dict[str, Any]) -> None:
        try:
            self.actor.put.remote(key, entry)
        except Exception:  # noqa: BLE001 - the registry never fails a job
            log.debug("reporting job %s to the cluster's registry failed", key, exc_info=True)

    def remove(self, key: str) -> None:
        try:
            self.actor.remove.remote(key)
        except Exception:  # noqa: BLE001 - the entry then goes stale and is dropped
            log.debug("removing job %s from the cluster's registry failed", key, exc_info=True)


def cluster_jobs(ray: Any, timeout_s: float = 10.0) -> list[JobStatus]:
    """The running jobs the connected cluster's actor knows (``[]`` when no job ever reported to it)."""
    actor = cluster_registry(ray, create=False)
    if actor is None:
        return []
    return [JobStatus.from_json(entry) for entry in ray.get(actor.list.remote(), timeout=timeout_s)]
