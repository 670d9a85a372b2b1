"""Ending a job's worker actors: kill them, and where it matters wait until they are gone.

``ray.kill`` is asynchronous: the call returns before the process is dead. After a checkpointed attempt fails
that matters, because a worker still alive could complete a checkpoint and commit its sinks after the driver
has chosen the checkpoint to restart from; the restart's replay would then publish the same rows again (seen as
duplicated window results in about 1 run in 10 of
``tests/integration/test_top_k_and_udaf.py::test_restored_top_k_and_udaf_state_gives_a_clean_runs_results``).
So the driver confirms the deaths (:func:`await_death`) before it restores, and does not restart when it
cannot (``RayJob._kill_all``). A death is what Ray's control service has recorded: a worker cut off from it by
a network partition could still be running; fencing stale attempts by an epoch in the coordinator would close
that too (not built yet).
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import Any

log = logging.getLogger("headwater.ray")

#: A handle of a Ray actor (``ray.actor.ActorHandle``) and a Ray object reference (``ray.ObjectRef``): Ray ships
#: no type information, so both are ``Any`` to the type checker; the names say what the value is.
ActorHandle = Any
ObjectRef = Any


def kill_actors(ray: ModuleType, actors: list[ActorHandle]) -> None:
    """``ray.kill`` each actor without restart (already dead ones are skipped)."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass


def await_death(ray: ModuleType, actors: list[ActorHandle], timeout: float = 10.0) -> bool:
    """Return once every actor is confirmed dead (a call on it fails), or after ``timeout`` with a warning;
    True when all were confirmed."""
    alive = list(actors)
    deadline = time.monotonic() + timeout
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
    if alive:
        log.warning("%d worker(s) of the failed attempt were not confirmed dead within %g s", len(alive), timeout)
    return not alive


def unwrap(error: BaseException) -> BaseException:
    """The original exception raised inside an actor, if Ray wrapped it."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error
