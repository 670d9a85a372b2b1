"""Ending a job's worker actors: kill them, and where it matters wait until they are gone.

``ray.kill`` is asynchronous: the call returns before the process is dead. After a checkpointed attempt fails
that matters, because a worker still alive could complete a checkpoint and commit its sinks after the driver
has chosen the checkpoint to restart from; the restart's replay would then publish the same rows again (seen as
duplicated window results in about 1 run in 10 of
``tests/integration/test_top_k_and_udaf.py::test_restored_top_k_and_udaf_state_gives_a_clean_runs_results``).
So the driver confirms the deaths (:func:`await_death`) before it restores, and does not restart when it
cannot (``RayJob._kill_all``).

Ray's control service marks a killed actor dead (calls on it fail) before its process has exited: measured
here, the process kept running for 10-20 ms, long enough to open a new staging file after the restart's
clean-up (seen as a leftover in-progress file in about 1 run in 8 of
``tests/integration/test_exactly_once.py::test_aborts_with_a_parquet_sink_on_ray``). So a death counts as
confirmed only once the *process* is gone: on the driver's node, once ``/proc/<pid>`` is gone or a zombie
(no thread of it runs); on another node, once its raylet reported the worker process gone (Ray's worker table)
and :data:`REMOTE_EXIT_GRACE` has passed, since that report can precede the exit by milliseconds. A worker cut
off from Ray by a network partition could still be running; fencing stale attempts by an epoch in the
coordinator would close that too (not built yet).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger("headwater.ray")

#: A handle of a Ray actor (``ray.actor.ActorHandle``) and a Ray object reference (``ray.ObjectRef``): Ray ships
#: no type information, so both are ``Any`` to the type checker; the names say what the value is.
ActorHandle = Any
ObjectRef = Any

#: Seconds to wait after a remote node's raylet reported a killed worker's process gone (see the module docstring).
REMOTE_EXIT_GRACE = 0.25


def kill_actors(ray: ModuleType, actors: list[ActorHandle]) -> None:
    """``ray.kill`` each actor without restart (already dead ones are skipped)."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass


def await_death(ray: ModuleType, actors: list[ActorHandle], timeout: float = 10.0) -> bool:
    """Return once every actor is confirmed dead and its process gone (see the module docstring), or after
    ``timeout`` with a warning; True when all were confirmed."""
    deadline = time.monotonic() + timeout
    processes = [p for p in (_process_of(actor) for actor in actors) if p is not None]
    alive = list(actors)
    while alive and time.monotonic() < deadline:
        probes = {actor.__ray_ready__.remote(): actor for actor in alive}
        ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=0.5)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - RayActorError: the actor is gone
                alive.remove(probes[ref])
        if alive:
            time.sleep(0.02)
    running = _await_exits(ray, processes, deadline)
    if alive or running:
        log.warning("%d worker(s) of the failed attempt were not confirmed dead within %g s", len(alive) + running,
                    timeout)
    return not alive and not running


@dataclass(frozen=True)
class _Process:
    node_id: str
    pid: int


def _process_of(actor: ActorHandle) -> _Process | None:
    """Where the actor's process runs, from Ray's actor table (kept for dead actors); ``None`` if not known."""
    from ray._private import state

    try:
        info = state.actors(actor._actor_id.hex())
        pid, node_id = int(info.get("Pid") or 0), str(info["Address"]["NodeID"])
    except Exception:  # noqa: BLE001 - a private API: without it only the control service's view is checked
        log.debug("no process information for actor %r", actor, exc_info=True)
        return None
    return _Process(node_id, pid) if pid > 0 and node_id else None


def _await_exits(ray: ModuleType, processes: list[_Process], deadline: float) -> int:
    """Wait until each process has exited; return how many were still running at ``deadline``."""
    local = ray.get_runtime_context().get_node_id()
    remote_seen_gone: float | None = None
    while processes:
        remote = [p for p in processes if p.node_id != local]
        gone = {p for p in processes if p.node_id == local and not _running_here(p.pid)}
        if remote:
            reported = _reported_alive(remote)
            if reported is None:  # no worker table: rely on the control service (already checked)
                gone.update(remote)
            else:
                exited = {p for p in remote if p not in reported}
                if exited and remote_seen_gone is None:
                    remote_seen_gone = time.monotonic()
                if remote_seen_gone is not None and time.monotonic() - remote_seen_gone >= REMOTE_EXIT_GRACE:
                    gone.update(exited)
        processes = [p for p in processes if p not in gone]
        if not processes or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return len(processes)


def _running_here(pid: int) -> bool:
    """Whether a process of this node runs (a zombie, exited but not reaped, runs no code)."""
    if not os.path.isdir("/proc/self"):  # no procfs (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[-1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in ("Z", "X")


def _reported_alive(processes: list[_Process]) -> set[_Process] | None:
    """The processes that Ray's worker table still reports alive, or ``None`` when it cannot be read."""
    try:
        from ray._private import state
        from ray.core.generated import gcs_pb2

        table = gcs_pb2.WorkerTableData  # type: ignore[attr-defined]  # generated protobuf code, untyped
        rows = [table.FromString(row) for row in state.state._connect_and_get_accessor().get_worker_table()]
    except Exception:  # noqa: BLE001 - a private API
        log.debug("cannot read Ray's worker table", exc_info=True)
        return None
    alive = {(row.worker_address.node_id.hex(), row.pid) for row in rows if row.is_alive}
    return {p for p in processes if (p.node_id, p.pid) in alive}


def unwrap(error: BaseException) -> BaseException:
    """The original exception raised inside an actor, if Ray wrapped it."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error
