"""Idle worker actors kept between jobs of one driver, so the next job starts without new processes.

Starting a worker actor means starting a Ray worker process and importing Headwater into it: 0.4-0.7 s on
this 2-core machine, longer while the processes of the previous job are still exiting. Like the task managers
of a Flink session cluster, the worker processes of a finished job can host the next job's subtasks instead.

What may be pooled, and when (decided by :class:`~headwater.engine.ray.executor.RayJob`):

* only the workers of a job that **ended successfully without checkpointing**. A checkpointed job's
  coordinator sends fire-and-forget notifications between workers; one arriving late in a reused worker
  could commit another job's sink output, so those workers are killed as before. A failed job's workers are
  killed too (one of them may be the cause);
* only workers without CPUs of their own (``map_batches(num_cpus=...)`` workers hold resources);
* a worker is *released* first (its subtasks and their state dropped, the allocator setting stays); a
  worker that does not answer the release in time is killed instead.

Handles belong to one Ray session: after ``ray.shutdown()`` and a new ``ray.init()`` the pool starts empty.
A pooled worker that died meanwhile is noticed when the next job assigns it subtasks; the job then replaces
it with a new worker. ``RunConfig(reuse_workers=False)`` turns pooling off for a job.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from types import ModuleType

from headwater.engine.ray.actors import ActorHandle

#: idle workers kept per pool key; more are killed
MAX_IDLE_WORKERS = 8


class WorkerPool:
    """Idle worker actor handles per key (the options they were created with), for one Ray session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: str | None = None
        self._idle: dict[Hashable, list[ActorHandle]] = {}

    @staticmethod
    def _session_of(ray: ModuleType) -> str | None:
        try:
            return str(ray.get_runtime_context().get_job_id()) if ray.is_initialized() else None
        except Exception:  # noqa: BLE001 - no session: nothing to reuse
            return None

    def take(self, ray: ModuleType, key: Hashable, count: int) -> list[ActorHandle]:
        """Up to ``count`` idle workers created with ``key``; the caller owns them from now on."""
        session = self._session_of(ray)
        with self._lock:
            if session is None or session != self._session:
                self._session, self._idle = session, {}
                return []
            idle = self._idle.get(key, [])
            taken, self._idle[key] = idle[:count], idle[count:]
            return taken

    def give_back(self, ray: ModuleType, key: Hashable, workers: list[ActorHandle]) -> list[ActorHandle]:
        """Keep ``workers`` (released, idle) for the next job; returns those not kept (for the caller to
        kill): over :data:`MAX_IDLE_WORKERS`, or when the Ray session is not the pool's any more."""
        session = self._session_of(ray)
        with self._lock:
            if session is None:
                return list(workers)
            if session != self._session:
                self._session, self._idle = session, {}
            idle = self._idle.setdefault(key, [])
            room = max(0, MAX_IDLE_WORKERS - len(idle))
            idle.extend(workers[:room])
            return list(workers[room:])

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())


#: the driver's pool (Ray sessions are per process)
POOL = WorkerPool()
