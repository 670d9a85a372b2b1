"""Where a Ray job's subtasks run (:func:`place_subtasks`), and the bounded wait for Ray to place its workers.

Placement: like Flink's slot sharing, the job gets one worker actor per *slot*, as many slots as the widest
stage's parallelism, and every slot hosts at most one subtask of each stage. A stage that asks for its own CPUs
(``map_batches(num_cpus=...)``) gets a dedicated worker per subtask instead.

Waiting for placement (:class:`PlacementWait`): creating an actor returns at once; Ray starts it when a node has
the resources it asked for, and keeps an actor that asks for more CPUs than any node has pending — forever,
unless an autoscaler adds a node big enough. The driver never waits for that without a bound:

* A worker whose request exceeds every node of a cluster *this process started* (the embedded local cluster,
  ``ray.init()`` without an address) fails the job at once with a deterministic
  :class:`~headwater.errors.JobFailedError` naming the step and what it asked for: nothing can add a node to
  that cluster, so a restart would wait the same way.
* On a cluster the driver joined (``ray_address``), an autoscaler may add the node: the driver waits, up to
  the run's deadline, and logs what it is waiting for after :data:`WAITING_LOG_S`.
* At the run's deadline, workers still not placed (the cluster is busy, or no node came) fail the job with a
  JobFailedError naming them and their requests; transient — capacity may come back — though a run whose
  deadline has passed is not restarted (:mod:`headwater.engine.checkpoints.recovery`).
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import Sequence

from headwater.engine.config import RunConfig
from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.cluster import global_node
from headwater.errors import JobFailedError

log = logging.getLogger("headwater.runner")

SubtaskId = tuple[int, int]  # (stage id, subtask index)

#: how often the driver looks at workers that are not placed yet
PLACEMENT_POLL_S = 0.25
#: log what the job is waiting for once its workers have waited this long
WAITING_LOG_S = 10.0


def place_subtasks(plan: PhysicalPlan) -> list[list[SubtaskId]]:
    """The subtasks each worker hosts (see the module docstring); every subtask appears exactly once.

    Shared slots come first. A stage narrower than the slot count goes to the least-loaded slots, so that
    e.g. a parallelism-1 step does not always land next to subtask 0 of everything else."""
    shared = [s for s in plan.stages if s.num_cpus is None]
    slots: list[list[SubtaskId]] = [[] for _ in range(max((s.parallelism for s in shared), default=0))]
    for stage in sorted(shared, key=lambda s: -s.parallelism):
        order = sorted(range(len(slots)), key=lambda k: (len(slots[k]), k))
        for i in range(stage.parallelism):
            slots[order[i]].append((stage.stage_id, i))
    dedicated = [[(s.stage_id, i)] for s in plan.stages if s.num_cpus is not None for i in range(s.parallelism)]
    return slots + dedicated


def worker_reservation(config: RunConfig, ray: ModuleType) -> dict[str, float]:
    """What each shared worker actor reserves from Ray: ``{"CPU": n, **custom}`` per ``RunConfig.worker_cpus``
    and ``worker_resources`` (``worker_cpus=None``: 1 CPU on a joined cluster, none on one started here);
    amounts of 0 are left out, so ``{}`` reserves nothing."""
    cpus = config.worker_cpus if config.worker_cpus is not None else (0.0 if started_here(ray) else 1.0)
    return {**({"CPU": float(cpus)} if cpus else {}), **{k: float(v) for k, v in config.worker_resources.items()}}


def started_here(ray: ModuleType) -> bool:
    """Whether this process started the Ray cluster (``ray.init()`` without an address: a head node of its
    own, with no autoscaler). ``False`` when it joined one, or when Ray does not say."""
    return getattr(global_node(ray), "head", False) is True


class PlacementWait:
    """Checks the workers a job still waits for (see the module docstring); :meth:`check` raises."""

    def __init__(self, ray: ModuleType, plan: PhysicalPlan, assignments: list[list[SubtaskId]], cpus: Sequence[float | None],
                 deadline: float | None, custom: dict[str, float] | None = None) -> None:
        self.ray, self.plan, self.assignments, self.cpus, self.deadline = ray, plan, assignments, cpus, deadline
        #: the custom resources every worker asks for (RunConfig.worker_resources)
        self.custom = dict(custom or {})
        self.started = time.monotonic()
        self._largest: float | None = None
        self._logged = False

    def _describe(self, index: int) -> str:
        stage_id, subtask = self.assignments[index][0]
        cpus = self.cpus[index]
        own = self.plan.stages[stage_id].num_cpus is not None and len(self.assignments[index]) == 1
        setting = f"num_cpus={cpus:g}" if own else f"RunConfig.worker_cpus={cpus:g}"
        what = f"{cpus:g} CPU(s) ({setting})" if cpus else "no CPUs of its own"
        return f"step {self.plan.stages[stage_id].head!r} (subtask {subtask}) asks for {what}"

    def _node_cpus(self) -> list[float]:
        return [float(n.get("Resources", {}).get("CPU", 0.0)) for n in self.ray.nodes() if n.get("Alive")]

    def largest_node_cpus(self) -> float:
        if self._largest is None:
            self._largest = max(self._node_cpus(), default=0.0)
        return self._largest

    def check(self, waiting: list[int]) -> None:
        """``waiting``: indices of the workers whose ``assign`` has not returned yet."""
        if not waiting:
            return
        if self.custom and started_here(self.ray):
            offered: dict[str, float] = {}
            for node in self.ray.nodes():
                if node.get("Alive"):
                    for name, amount in node.get("Resources", {}).items():
                        offered[name] = max(offered.get(name, 0.0), float(amount))
            missing = sorted(name for name, amount in self.custom.items() if offered.get(name, 0.0) < amount)
            if missing:
                first = self.assignments[waiting[0]][0]
                raise JobFailedError(
                    f"the job's workers ask for {', '.join(f'{n}={self.custom[n]:g}' for n in missing)} "
                    f"(RunConfig.worker_resources), which no node of this Ray cluster offers"
                    f"{' enough of' if any(n in offered for n in missing) else ''}. This process started the "
                    "cluster, so no autoscaler can add such a node. Drop worker_resources, or run on a cluster "
                    "whose node types offer them (RunConfig.ray_address)",
                    step_id=self.plan.stages[first[0]].head, subtask=first[1], transient=False,
                )
        dedicated = [i for i in waiting if self.cpus[i]]
        if dedicated and started_here(self.ray):
            largest = self.largest_node_cpus()
            too_big = [i for i in dedicated if (self.cpus[i] or 0.0) > largest]
            if too_big:
                first = self.assignments[too_big[0]][0]
                raise JobFailedError(
                    f"{'; '.join(self._describe(i) for i in too_big)}, but the largest node of this Ray cluster has "
                    f"{largest:g} CPU(s). This process started the cluster, so no autoscaler can add a larger node "
                    "and the worker can never be placed. Lower the step's num_cpus, start the local cluster with "
                    "more CPUs (RunConfig.num_cpus), or run on a cluster with larger nodes (RunConfig.ray_address)",
                    step_id=self.plan.stages[first[0]].head, subtask=first[1], transient=False,
                )
            needed, total = sum(c or 0.0 for c in self.cpus), sum(self._node_cpus())
            if needed > total:
                first = self.assignments[dedicated[0]][0]
                raise JobFailedError(
                    f"the job's workers ask for {needed:g} CPU(s) together ({'; '.join(self._describe(i) for i in dedicated)}"
                    f", ...), but this Ray cluster has {total:g}. This process started the cluster, so no "
                    "autoscaler can add nodes and the job can never be placed. Lower num_cpus or worker_cpus or the "
                    "parallelism, or start the local cluster with more CPUs (RunConfig.num_cpus)",
                    step_id=self.plan.stages[first[0]].head, subtask=first[1], transient=False,
                )
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            first = self.assignments[waiting[0]][0]
            raise JobFailedError(
                f"Ray had not placed the job's workers by the run's deadline (after {now - self.started:.1f} s): "
                f"{'; '.join(self._describe(i) for i in waiting)}; the cluster has "
                f"{self.ray.available_resources().get('CPU', 0.0):g} CPU(s) free",
                step_id=self.plan.stages[first[0]].head, subtask=first[1], transient=True,
            )
        if not self._logged and now - self.started > WAITING_LOG_S:
            self._logged = True
            log.warning("job %s: waiting %.0f s for Ray to place its workers: %s", self.plan.flow_name,
                        now - self.started, "; ".join(self._describe(i) for i in waiting))
