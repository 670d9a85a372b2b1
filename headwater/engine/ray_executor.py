"""Ray executor: one async actor per subtask, credit-based channels between them.

Channel protocol (sender side, in :meth:`SubtaskActor._send`): every message to a receiver is an actor call
``push(edge, sender, seq, message)``. A sender keeps at most ``channel_credits`` calls in flight per receiver;
when all credits are used it awaits the oldest call. A receiver's ``push`` returns only once its inbox is at
or below its bound, so a slow receiver holds its senders' credits and the backpressure reaches the sources —
memory stays bounded by (credits x senders + inbox bound) batches per receiver, whatever the input size.
Calls are pipelined (never awaited one at a time), which is what makes actor messaging cheap enough.

``seq`` numbers each (edge, sender) stream; the receiver re-orders by it, so the order of data and in-band
markers holds even if Ray runs async calls out of order.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import Any, Callable

from headwater.engine.channels import Message
from headwater.engine.checkpoint_storage import CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.config import RunConfig
from headwater.engine.coordinator import CheckpointCoordinator, CheckpointStats
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.runtime import Outgoing, SubtaskRuntime
from headwater.engine.snapshots import PendingSnapshot, SubtaskRestore, persist
from headwater.errors import HeadwaterError, JobFailedError

_SOURCE_IDLE_S = 0.005


class SubtaskActor:
    """Runs one :class:`SubtaskRuntime`; created by :class:`RayJob` as a Ray actor."""

    def __init__(
        self, plan: PhysicalPlan, stage_id: int, subtask: int, config: RunConfig,
        storage: CheckpointStorage | None = None, restore: SubtaskRestore | None = None,
    ) -> None:
        self.runtime = SubtaskRuntime(plan, stage_id, subtask, config, storage is not None, restore)
        self.storage = storage
        self.coordinator: Any = None
        self.triggers: deque[int] = deque()
        self.ack_tasks: list[asyncio.Task[None]] = []
        self.committed = asyncio.Event()
        self.subtask = subtask
        self.credits = config.channel_credits
        senders = sum(
            1 if e.partitioning == "forward" else plan.stages[e.src].parallelism for e in plan.inputs_of(stage_id)
        )
        self.inbox_limit = max(2, config.channel_credits * max(1, senders) // 2)
        self.inbox: deque[tuple[int, int, Message]] = deque()
        self.expected: dict[tuple[int, int], int] = {}
        self.out_of_order: dict[tuple[int, int], dict[int, Message]] = defaultdict(dict)
        self.receivers: dict[int, list[Any]] = {}
        self.inflight: dict[tuple[int, int], deque[Any]] = defaultdict(deque)
        self.next_seq: dict[tuple[int, int], int] = defaultdict(int)
        self.has_items = asyncio.Event()
        self.space = asyncio.Event()
        self.stop_requested = False

    async def connect(self, receivers: dict[int, list[Any]], coordinator: Any = None) -> None:
        """Receive the handles of the downstream subtasks (per outgoing edge id) and of the checkpoint
        coordinator, and open the operators and source partitions (restoring state), so that no source starts
        before every subtask is ready to take data."""
        self.receivers = receivers
        self.coordinator = coordinator
        self.runtime.open()

    # -- checkpoints ----------------------------------------------------------------------------------------
    async def trigger_checkpoint(self, checkpoint_id: int) -> None:
        self.triggers.append(checkpoint_id)

    async def notify_complete(self, checkpoint_id: int) -> None:
        self.runtime.notify_checkpoint_complete(checkpoint_id)
        self.committed.set()

    def _acknowledge_snapshots(self) -> None:
        """Persist snapshots taken by the runtime in a background thread, then acknowledge them."""
        for snapshot in self.runtime.take_snapshots():
            self.ack_tasks.append(asyncio.create_task(self._persist_and_ack(snapshot)))

    async def _persist_and_ack(self, snapshot: PendingSnapshot) -> None:
        ack = await asyncio.to_thread(persist, snapshot, self.storage)
        await self.coordinator.ack.remote(ack)

    async def _finish_checkpointing(self) -> None:
        """Report the final snapshot, then wait until every prepared sink output is committed."""
        final = self.runtime.final_snapshot
        assert final is not None and self.storage is not None
        await asyncio.gather(*self.ack_tasks)
        ack = await asyncio.to_thread(persist, final, self.storage)
        await self.coordinator.report_finished.remote(ack)
        while self.runtime.has_uncommitted:
            self.committed.clear()
            await self.committed.wait()

    # -- receiving ------------------------------------------------------------------------------------------
    async def push(self, edge_id: int, sender: int, seq: int, message: Message) -> None:
        key = (edge_id, sender)
        expected = self.expected.get(key, 0)
        if seq != expected:
            self.out_of_order[key][seq] = message
            return
        self.inbox.append((edge_id, sender, message))
        expected += 1
        waiting = self.out_of_order.get(key)
        while waiting and expected in waiting:
            self.inbox.append((edge_id, sender, waiting.pop(expected)))
            expected += 1
        self.expected[key] = expected
        self.has_items.set()
        while len(self.inbox) > self.inbox_limit and not self.runtime.finished:
            self.space.clear()
            await self.space.wait()

    # -- sending --------------------------------------------------------------------------------------------
    async def _send(self, outgoing: list[Outgoing]) -> None:
        for edge_id, receiver, message in outgoing:
            key = (edge_id, receiver)
            inflight = self.inflight[key]
            while len(inflight) >= self.credits:
                await inflight.popleft()
            seq = self.next_seq[key]
            self.next_seq[key] = seq + 1
            inflight.append(self.receivers[edge_id][receiver].push.remote(edge_id, self.subtask, seq, message))

    async def _drain_inflight(self) -> None:
        for inflight in self.inflight.values():
            while inflight:
                await inflight.popleft()

    # -- running --------------------------------------------------------------------------------------------
    async def run(self) -> SubtaskMetrics:
        runtime = self.runtime
        try:
            if runtime.source_step is not None:
                await self._run_source()
            else:
                await self._run_operator()
            await self._drain_inflight()
            if self.storage is not None:
                await self._finish_checkpointing()
            await asyncio.gather(*self.ack_tasks)
            return runtime.metrics()
        finally:
            runtime.close()

    async def _run_source(self) -> None:
        runtime = self.runtime
        while not runtime.finished:
            if self.stop_requested:
                runtime.request_stop()
            while self.triggers:
                await self._send(runtime.trigger_checkpoint(self.triggers.popleft()))
            outgoing, produced = runtime.poll_sources()
            await self._send(outgoing)
            await self._send(runtime.poll_timers())
            self._acknowledge_snapshots()
            if produced or runtime.finished:
                await asyncio.sleep(0)  # let stop() and metrics() calls in
                continue
            now = time.monotonic()
            wake = [now + _SOURCE_IDLE_S]
            for hint in (runtime.next_source_wakeup(), runtime.next_deadline()):
                if hint is not None:
                    wake.append(hint)
            await asyncio.sleep(max(0.0, min(wake) - now))

    async def _run_operator(self) -> None:
        runtime = self.runtime
        while not runtime.finished:
            if not self.inbox:
                self.has_items.clear()
                deadline = runtime.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(self.has_items.wait(), timeout)
                except TimeoutError:
                    pass
            if self.inbox:
                edge_id, sender, message = self.inbox.popleft()
                if len(self.inbox) <= self.inbox_limit:
                    self.space.set()
                await self._send(runtime.on_message(edge_id, sender, message))
                self._acknowledge_snapshots()
            await self._send(runtime.poll_timers())
        self.space.set()

    async def stop(self) -> None:
        self.stop_requested = True

    async def metrics(self) -> SubtaskMetrics:
        return self.runtime.metrics(backlog=len(self.inbox))


class CoordinatorActor:
    """The checkpoint coordinator as a Ray actor: triggers sources on a timer, collects acks, notifies."""

    def __init__(self, core: CheckpointCoordinator) -> None:
        self.core = core
        self.sources: list[Any] = []
        self.subtasks: list[Any] = []
        self.stopping = False
        self.loop: asyncio.Task[None] | None = None

    async def start(self, sources: list[Any], subtasks: list[Any]) -> None:
        self.sources, self.subtasks = sources, subtasks
        self.loop = asyncio.create_task(self._trigger_loop())

    async def _trigger_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.core.expire()
            if not self.stopping and self.core.due():
                checkpoint_id = self.core.begin()
                for source in self.sources:
                    source.trigger_checkpoint.remote(checkpoint_id)

    def _notify(self, metadata: CheckpointMetadata | None) -> None:
        if metadata is not None:
            for subtask in self.subtasks:
                subtask.notify_complete.remote(metadata.checkpoint_id)

    async def ack(self, ack: SubtaskAck) -> None:
        self._notify(self.core.ack(ack))

    async def report_finished(self, ack: SubtaskAck) -> None:
        self._notify(self.core.report_finished(ack))

    async def prepare_stop(self, savepoint: bool) -> None:
        """No new checkpoints; the final one is kept as a savepoint if asked."""
        self.stopping = True
        if savepoint:
            self.core.final_kind = "savepoint"

    async def result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        return self.core.stats, self.core.last_completed, self.core.final_completed


def _unwrap(error: BaseException) -> BaseException:
    """The original exception raised inside an actor, if Ray wrapped it."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error


class RayJob:
    """A job whose subtasks run as Ray actors. Construct with an initialised ``ray``; then :meth:`wait`."""

    def __init__(self, plan: PhysicalPlan, config: RunConfig, ray: Any,
                 on_progress: Callable[[list[SubtaskMetrics], float], None] | None = None,
                 coordinator: CheckpointCoordinator | None = None, restore: SubtaskRestore | None = None) -> None:
        self.plan = plan
        self.config = config
        self.ray = ray
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.actors: dict[tuple[int, int], Any] = {}
        self.coordinator: Any = None
        storage = coordinator.storage if coordinator is not None else None
        if coordinator is not None:
            self.coordinator = ray.remote(CoordinatorActor).options(num_cpus=0, max_concurrency=1000).remote(coordinator)
        actor_class = ray.remote(SubtaskActor)
        plan_ref = ray.put(plan)
        restore_ref = ray.put(restore)
        for stage in plan.stages:
            for i in range(stage.parallelism):
                self.actors[(stage.stage_id, i)] = actor_class.options(
                    num_cpus=stage.num_cpus if stage.num_cpus is not None else 0,
                    max_concurrency=1000,
                    name=None,
                ).remote(plan_ref, stage.stage_id, i, config, storage, restore_ref)
        connections = []
        for (stage_id, i), actor in self.actors.items():
            receivers = {
                e.edge_id: [self.actors[(e.dst, j)] for j in range(plan.stages[e.dst].parallelism)]
                for e in plan.outputs_of(stage_id)
            }
            connections.append(actor.connect.remote(receivers, self.coordinator))
        try:
            ray.get(connections)
        except Exception as exc:
            self._kill_all()
            original = _unwrap(exc)
            if isinstance(original, HeadwaterError):
                raise original from None
            raise JobFailedError(f"could not start the job's actors: {type(original).__name__}: {original}") from original
        if self.coordinator is not None:
            sources = [a for (stage_id, _), a in self.actors.items() if plan.is_source(stage_id)]
            ray.get(self.coordinator.start.remote(sources, list(self.actors.values())))
        self.runs = {actor.run.remote(): key for key, actor in self.actors.items()}
        self._stopped = False

    def stop(self, savepoint: bool = False) -> None:
        self._stopped = True
        if self.coordinator is not None:
            self.ray.get(self.coordinator.prepare_stop.remote(savepoint))
        for (stage_id, _), actor in self.actors.items():
            if self.plan.is_source(stage_id):
                actor.stop.remote()

    def metrics(self, timeout: float = 5.0) -> list[SubtaskMetrics]:
        refs = [a.metrics.remote() for a in self.actors.values()]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [self.ray.get(r) for r in ready]

    def wait(self, timeout: float | None = None) -> JobResult:
        ray = self.ray
        pending = list(self.runs)
        finished: list[SubtaskMetrics] = []
        interval = self.config.progress_interval.total_seconds()
        last_progress = time.monotonic()
        interrupted = False
        try:
            while pending:
                try:
                    if timeout is not None and not self._stopped and time.monotonic() - self.started > timeout:
                        self.stop()
                    done, pending = ray.wait(pending, num_returns=1, timeout=min(interval, 0.5))
                    for ref in done:
                        finished.append(self._result_of(ref))
                    if self.on_progress and time.monotonic() - last_progress >= interval:
                        last_progress = time.monotonic()
                        self.on_progress(self.metrics(timeout=interval), last_progress - self.started)
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True
                    self.stop()  # first Ctrl-C stops gracefully; a second one kills the job
            result = JobResult.merge(self.plan, time.monotonic() - self.started, finished, self._stopped)
            if self.coordinator is not None:
                stats, last, final = ray.get(self.coordinator.result.remote())
                if not final:
                    raise JobFailedError("the job ended without its final checkpoint")
                result.checkpoints, result.last_checkpoint = stats, last
            return result
        finally:
            self._kill_all()

    def _result_of(self, ref: Any) -> SubtaskMetrics:
        stage_id, subtask = self.runs[ref]
        try:
            return self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - translated into Headwater's errors below
            original = _unwrap(exc)
            if isinstance(original, HeadwaterError):
                raise original from None
            stage = self.plan.stages[stage_id]
            raise JobFailedError(
                f"subtask failed or died ({type(original).__name__}: {original})",
                step_id=stage.head, subtask=subtask,
            ) from original

    def _kill_all(self) -> None:
        for actor in [*self.actors.values(), *([self.coordinator] if self.coordinator is not None else [])]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                pass
