"""A worker actor: one process of a Ray job, hosting the subtasks placement gave it.

Slot sharing (:func:`~headwater.engine.ray.placement.place_subtasks`): like Flink's, the job gets one worker
actor per *slot*, as many slots as the widest stage's parallelism, and every slot hosts at most one subtask of
each stage (a :class:`~headwater.engine.ray.subtask_host.SubtaskHost` each, all in the worker's one event loop).
A stage that asks for its own CPUs (``map_batches(num_cpus=...)``) gets a dedicated worker per subtask instead.
So a four-stage job at parallelism 2 runs in two processes, not eight, and a message between two subtasks of
one worker is a function call — no serialisation, no object store.

The first worker of a checkpointed job also hosts the checkpoint coordinator; its RPC front (the
``coordinate`` and ``coordinator_*`` methods) is :class:`~headwater.engine.ray.coordinator.CoordinatorEndpoints`,
mixed in. ``stop``, ``activity`` and the coordinator's timer and stop run in the *watch* concurrency group
(:mod:`headwater.engine.ray.watch`), so they answer while user code blocks the main loop.
"""

from __future__ import annotations

import asyncio
import time

from headwater.engine import logs, tracing
from headwater.engine.channels import Message
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator
from headwater.engine.checkpoints.snapshots import SubtaskRestore
from headwater.engine.checkpoints.storage import CheckpointStorage
from headwater.engine.config import RunConfig
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.actors import ActorHandle
from headwater.engine.ray.allocator import keep_batches_on_heap
from headwater.engine.ray.coordinator import CoordinatorClient, CoordinatorEndpoints, CoordinatorService, Expired
from headwater.engine.ray.subtask_host import SubtaskHost
from headwater.engine.watchdog import SubtaskActivity

SubtaskId = tuple[int, int]  # (stage id, subtask index)


class WorkerActor(CoordinatorEndpoints):
    """One process of the job: hosts the subtasks :func:`~headwater.engine.ray.placement.place_subtasks` gave it, in one event loop. The first
    worker of a checkpointed job also hosts the checkpoint coordinator (:class:`CoordinatorService`): a job
    attempt lives and dies with all its workers, so the coordinator needs no process of its own."""

    def __init__(self, tune_allocator: bool = True) -> None:
        if tune_allocator:
            keep_batches_on_heap()
        self.hosts: dict[SubtaskId, SubtaskHost] = {}
        self.plan: PhysicalPlan | None = None
        self.service: CoordinatorService | None = None

    async def assign(self, plan: PhysicalPlan, subtasks: list[SubtaskId], config: RunConfig,
                     storage: CheckpointStorage | None = None, restore: SubtaskRestore | None = None,
                     coordinator: CheckpointCoordinator | None = None) -> None:
        """Host ``subtasks`` of ``plan`` (a new worker, or one released by a finished job)."""
        logs.configure(config.log_format, own_process=True)  # this process is Headwater's: its lines, its format
        self.hosts = {(s, i): SubtaskHost(plan, s, i, config, storage, restore) for s, i in subtasks}
        self.plan = plan
        self.service = CoordinatorService(coordinator) if coordinator is not None else None

    async def release(self) -> None:
        """The job ended (every ``run`` returned): drop its subtasks and coordinator, keep the process for
        another job (see :mod:`headwater.engine.ray.worker_pool`)."""
        if self.service is not None:
            self.service.closed = True
        self.hosts, self.plan, self.service = {}, None, None

    async def connect(self, placement: dict[SubtaskId, int], workers: list[ActorHandle], checkpointing: bool) -> None:
        """Learn where every subtask runs (worker index per subtask, and the workers' handles), then open
        the hosted operators and source partitions (restoring state), so that no source starts before every
        subtask is ready to take data. The coordinator, when checkpointing, lives in worker 0."""
        plan = self.plan
        assert plan is not None, "assign() was not called"
        client = CoordinatorClient(self.service, workers[0]) if checkpointing else None
        for (stage_id, _), host in self.hosts.items():
            receivers: dict[int, list[SubtaskHost | ActorHandle]] = {}
            for edge in plan.outputs_of(stage_id):
                receivers[edge.edge_id] = [
                    self.hosts.get((edge.dst, j)) or workers[placement[(edge.dst, j)]]
                    for j in range(plan.stages[edge.dst].parallelism)
                ]
            host.connect(receivers, client)
        for host in self.hosts.values():
            host.runtime.open()
        if self.service is not None:
            sources = [(workers[i], key) for key, i in placement.items() if plan.is_source(key[0])]
            self.service.connect(sources, workers, self)

    async def push(self, stage_id: int, subtask: int, edge_id: int, sender: int, seq: int,
                   messages: list[Message]) -> None:
        await self.hosts[(stage_id, subtask)].push(edge_id, sender, seq, messages)

    async def trigger_checkpoint(self, stage_id: int, subtask: int, checkpoint_id: int) -> None:
        self.hosts[(stage_id, subtask)].triggers.append(checkpoint_id)

    async def notify_complete(self, checkpoint_id: int) -> None:
        for host in self.hosts.values():
            host.notify_complete(checkpoint_id)

    async def run(self) -> list[SubtaskMetrics]:
        """Run every hosted subtask to its end; the first failure is raised (the driver then stops the job)."""
        results = list(await asyncio.gather(*(host.run() for host in self.hosts.values())))
        tracing.flush()  # spans of the job's last traced batches leave before the driver may kill this process
        return results

    async def take_spans(self) -> list[tracing.SpanRecord]:
        """The spans this process recorded with the memory exporter (``RunConfig.trace_exporter="memory"``), as
        plain data for the driver; removed here."""
        return tracing.take_spans()

    # -- the watch group: its own thread and event loop (see headwater.engine.ray.watch) --------------------
    async def stop(self) -> None:
        """(watch group) Ask every hosted subtask to stop; a flag the subtasks read between calls."""
        for host in list(self.hosts.values()):
            host.stop_requested = True

    async def activity(self) -> tuple[list[SubtaskActivity], list[Expired]]:
        """(watch group) What each hosted subtask is doing, and checkpoints that timed out since the last call."""
        now = time.monotonic()
        activities = [host.activity(now) for host in list(self.hosts.values())]
        return activities, self._expired()

    async def metrics(self) -> list[SubtaskMetrics]:
        return [host.metrics() for host in self.hosts.values()]
