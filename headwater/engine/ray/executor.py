"""Ray executor: subtasks hosted by worker actors (slot sharing), credit-based channels between workers.

Placement (:func:`~headwater.engine.ray.placement.place_subtasks`): like Flink's slot sharing, the job gets one worker actor per *slot*, as
many slots as the widest stage's parallelism, and every slot hosts at most one subtask of each stage. A stage
that asks for its own CPUs (``map_batches(num_cpus=...)``) gets a dedicated worker per subtask instead. So a
four-stage job at parallelism 2 runs in two processes, not eight: fewer processes to start, no context
switching between them on a small machine, and a message between two subtasks of one worker is a function
call — no serialisation, no object store.

Channel protocol between workers (sender side, :meth:`SubtaskHost._send`): every message to a remote receiver
travels in an actor call ``push(stage, subtask, edge, sender, seq, messages)``. A sender keeps at most
``channel_credits`` calls in flight per receiver; when all credits are used it awaits the oldest call. A
receiver's ``push`` returns only once its inbox is at or below its bound, so a slow receiver holds its
senders' credits and the backpressure reaches the sources — memory stays bounded by (credits x senders +
inbox bound) batches per receiver, whatever the input size. A receiver in the same worker is pushed to
directly, awaiting the same inbox bound.

``seq`` numbers the calls of each (edge, sender) stream (consecutive messages of one poll to one receiver travel
in one call); the receiver re-orders by it, so the order of data and in-band
markers holds even if Ray runs async calls out of order.

Deadlines: each worker answers ``activity``, ``stop`` and the coordinator's stop and timer in its *watch*
concurrency group (its own thread and event loop, :mod:`headwater.engine.ray.watch`), so they work while user
code blocks the main loop. :meth:`RayJob.wait` polls ``activity`` and fails the job when a step stalls
(``RunConfig.stall_timeout``); a stop that has not ended the job within ``RunConfig.stop_grace`` kills the
workers and raises :class:`~headwater.errors.StopTimeoutError`. Every wait of the driver on a worker is
bounded, so the driver never hangs on a blocked worker — nor on one Ray cannot place
(:class:`~headwater.engine.ray.placement.PlacementWait`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import Any, Callable

from headwater.engine.channels import Message
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats
from headwater.engine.checkpoints.snapshots import PendingSnapshot, SubtaskRestore, persist
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.config import RunConfig
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.actors import await_death, kill_actors
from headwater.engine.ray.allocator import keep_batches_on_heap
from headwater.engine.ray.coordinator import CoordinatorClient, CoordinatorService, Expired
from headwater.engine.ray.placement import PLACEMENT_POLL_S, PlacementWait, place_subtasks
from headwater.engine.ray.watch import WATCH, WATCH_CONCURRENCY, WorkerWatch
from headwater.engine.ray.worker_pool import POOL
from headwater.engine.runtime import Outgoing, SubtaskRuntime
from headwater.engine.watchdog import SubtaskActivity, stop_timeout
from headwater.errors import HeadwaterError, JobFailedError

_SOURCE_IDLE_S = 0.005

SubtaskId = tuple[int, int]  # (stage id, subtask index)


class SubtaskHost:
    """Runs one :class:`SubtaskRuntime` inside a :class:`WorkerActor`'s event loop."""

    def __init__(
        self, plan: PhysicalPlan, stage_id: int, subtask: int, config: RunConfig,
        storage: CheckpointStorage | None = None, restore: SubtaskRestore | None = None,
    ) -> None:
        self.runtime = SubtaskRuntime(plan, stage_id, subtask, config, storage is not None, restore)
        self.plan = plan
        self.stage_id = stage_id
        self.storage = storage
        self.coordinator: CoordinatorClient | None = None
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
        self.out_of_order: dict[tuple[int, int], dict[int, list[Message]]] = defaultdict(dict)
        # per outgoing edge, per receiver subtask: a local SubtaskHost, or the remote worker's actor handle
        self.receivers: dict[int, list[SubtaskHost | Any]] = {}
        self.inflight: dict[tuple[int, int], deque[Any]] = defaultdict(deque)
        self.next_seq: dict[tuple[int, int], int] = defaultdict(int)
        self.has_items = asyncio.Event()
        self.space = asyncio.Event()
        self.stop_requested = False
        #: where the subtask waits when it is not inside a call into step code (for activity reports)
        self.waiting = "starting"

    def connect(self, receivers: dict[int, list[SubtaskHost | Any]], coordinator: CoordinatorClient | None) -> None:
        self.receivers = receivers
        self.coordinator = coordinator

    # -- checkpoints ----------------------------------------------------------------------------------------
    def notify_complete(self, checkpoint_id: int) -> None:
        self.runtime.notify_checkpoint_complete(checkpoint_id)
        self.committed.set()

    def _acknowledge_snapshots(self) -> None:
        """Persist snapshots taken by the runtime in a background thread, then acknowledge them.

        A snapshot that could not be written or acknowledged fails the subtask here, at once — not when the
        subtask ends, which an unbounded job never does — as it does on the in-process executor; the
        supervisor then decides whether a restart can cure the cause (a full disk cannot)."""
        for task in self.ack_tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise _unwrap(task.exception())  # type: ignore[arg-type]
        self.ack_tasks = [task for task in self.ack_tasks if not task.done()]
        for snapshot in self.runtime.take_snapshots():
            self.ack_tasks.append(asyncio.create_task(self._persist_and_ack(snapshot)))

    async def _persist_and_ack(self, snapshot: PendingSnapshot) -> None:
        ack = await asyncio.to_thread(persist, snapshot, self.storage)
        assert self.coordinator is not None
        await self.coordinator.ack(ack)

    async def _finish_checkpointing(self) -> None:
        """Report the final snapshot, then wait until every prepared sink output is committed."""
        final = self.runtime.final_snapshot
        assert final is not None and self.storage is not None
        await asyncio.gather(*self.ack_tasks)
        ack = await asyncio.to_thread(persist, final, self.storage)
        assert self.coordinator is not None
        await self.coordinator.report_finished(ack)
        self.waiting = "waiting for its checkpoint to complete (to commit its output)"
        while self.runtime.has_uncommitted:
            self.committed.clear()
            await self.committed.wait()

    # -- receiving ------------------------------------------------------------------------------------------
    async def push(self, edge_id: int, sender: int, seq: int, messages: list[Message]) -> None:
        """Take ``messages``, numbered ``seq``, ``seq + 1``, ... on the channel ``(edge_id, sender)``.

        Calls may arrive out of order (Ray does not order calls from one actor's concurrent tasks); they are
        delivered to the inbox in sequence. Returns once the inbox has room (backpressure on the sender)."""
        key = (edge_id, sender)
        expected = self.expected.get(key, 0)
        if seq != expected:
            self.out_of_order[key][seq] = messages
            return
        self.inbox.extend((edge_id, sender, message) for message in messages)
        expected += 1
        waiting = self.out_of_order.get(key)
        while waiting and expected in waiting:
            self.inbox.extend((edge_id, sender, message) for message in waiting.pop(expected))
            expected += 1
        self.expected[key] = expected
        self.has_items.set()
        while len(self.inbox) > self.inbox_limit and not self.runtime.finished:
            self.space.clear()
            await self.space.wait()

    # -- sending --------------------------------------------------------------------------------------------
    async def _send(self, outgoing: list[Outgoing]) -> None:
        """Deliver ``outgoing`` in order; consecutive messages to one receiver travel as one call (a poll's
        data and the watermark after it are one Ray call, not two). Sequence numbers count calls."""
        i = 0
        while i < len(outgoing):
            edge_id, receiver, message = outgoing[i]
            messages = [message]
            i += 1
            while i < len(outgoing) and outgoing[i][0] == edge_id and outgoing[i][1] == receiver:
                messages.append(outgoing[i][2])
                i += 1
            key = (edge_id, receiver)
            seq = self.next_seq[key]
            self.next_seq[key] = seq + 1
            target = self.receivers[edge_id][receiver]
            if isinstance(target, SubtaskHost):
                if len(target.inbox) > target.inbox_limit:
                    self.waiting = "waiting for room downstream (backpressure)"
                await target.push(edge_id, self.subtask, seq, messages)
                self.waiting = "between calls"
                continue
            inflight = self.inflight[key]
            while len(inflight) >= self.credits:
                self.waiting = "waiting for credits downstream (backpressure)"
                await inflight.popleft()
                self.waiting = "between calls"
            dst = self.plan.edges[edge_id].dst
            inflight.append(target.push.remote(dst, receiver, edge_id, self.subtask, seq, messages))

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
                await asyncio.sleep(0)  # let the worker's other subtasks, stop() and metrics() calls in
                continue
            self.waiting = "waiting for its source partitions to have data"
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
                self.waiting = "waiting for input"
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
                await asyncio.sleep(0)  # local pushes never suspend: give the worker's other subtasks a turn
            await self._send(runtime.poll_timers())
        self.space.set()

    def metrics(self) -> SubtaskMetrics:
        return self.runtime.metrics(backlog=len(self.inbox))

    def activity(self, now: float) -> SubtaskActivity:
        return self.runtime.activity("finished" if self.runtime.finished else self.waiting, now)


class WorkerActor:
    """One process of the job: hosts the subtasks :func:`place_subtasks` gave it, in one event loop. The first
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
        self.hosts = {(s, i): SubtaskHost(plan, s, i, config, storage, restore) for s, i in subtasks}
        self.plan = plan
        self.service = CoordinatorService(coordinator) if coordinator is not None else None

    async def release(self) -> None:
        """The job ended (every ``run`` returned): drop its subtasks and coordinator, keep the process for
        another job (see :mod:`headwater.engine.ray.worker_pool`)."""
        if self.service is not None:
            self.service.closed = True
        self.hosts, self.plan, self.service = {}, None, None

    async def connect(self, placement: dict[SubtaskId, int], workers: list[Any], checkpointing: bool) -> None:
        """Learn where every subtask runs (worker index per subtask, and the workers' handles), then open
        the hosted operators and source partitions (restoring state), so that no source starts before every
        subtask is ready to take data. The coordinator, when checkpointing, lives in worker 0."""
        plan = self.plan
        assert plan is not None, "assign() was not called"
        client = CoordinatorClient(self.service, workers[0]) if checkpointing else None
        for (stage_id, _), host in self.hosts.items():
            receivers: dict[int, list[SubtaskHost | Any]] = {}
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
        return list(await asyncio.gather(*(host.run() for host in self.hosts.values())))

    # -- the watch group: its own thread and event loop (see headwater.engine.ray.watch) --------------------
    async def stop(self) -> None:
        """(watch group) Ask every hosted subtask to stop; a flag the subtasks read between calls."""
        for host in list(self.hosts.values()):
            host.stop_requested = True

    async def activity(self) -> tuple[list[SubtaskActivity], list[Expired]]:
        """(watch group) What each hosted subtask is doing, and checkpoints that timed out since the last call."""
        now = time.monotonic()
        activities = [host.activity(now) for host in list(self.hosts.values())]
        return activities, self.service.take_expired() if self.service is not None else []

    async def coordinate(self) -> None:
        """(watch group) The checkpoint coordinator's timer; runs until the job is released or killed (other
        workers may need checkpoints after this worker's subtasks ended)."""
        await self._service().run_timer()

    async def metrics(self) -> list[SubtaskMetrics]:
        return [host.metrics() for host in self.hosts.values()]

    # -- the coordinator's endpoints (worker 0 of a checkpointed job) ---------------------------------------
    def _service(self) -> CoordinatorService:
        assert self.service is not None, "this worker does not host the checkpoint coordinator"
        return self.service

    async def coordinator_ack(self, ack: SubtaskAck) -> None:
        await self._service().ack(ack)

    async def coordinator_report_finished(self, ack: SubtaskAck) -> None:
        await self._service().report_finished(ack)

    async def coordinator_prepare_stop(self, savepoint: bool) -> None:
        """(watch group)"""
        self._service().prepare_stop(savepoint)

    async def coordinator_result(self) -> tuple[CheckpointStats, CheckpointMetadata | None, bool]:
        return self._service().result()


def _as_raised(error: HeadwaterError) -> HeadwaterError:
    """``error`` ready to be raised in the driver in place of Ray's wrapper. Its own ``__cause__`` (e.g. the
    ``OSError`` of a full disk) is kept, as :func:`headwater.engine.failures.classify` decides from it;
    ``raise error from None`` would erase it. Only the wrapper (the context) is hidden."""
    error.__suppress_context__ = True
    return error


def _unwrap(error: BaseException) -> BaseException:
    """The original exception raised inside an actor, if Ray wrapped it."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error


class RayJob:
    """A job whose subtasks run in Ray worker actors. Construct with an initialised ``ray``; then :meth:`wait`."""

    def __init__(self, plan: PhysicalPlan, config: RunConfig, ray: Any,
                 on_progress: Callable[[list[SubtaskMetrics], float], None] | None = None,
                 coordinator: CheckpointCoordinator | None = None, restore: SubtaskRestore | None = None,
                 deadline: float | None = None) -> None:
        """``deadline`` (a ``time.monotonic()`` value) bounds the start-up too: at it the job is stopped, and
        ``stop_grace`` later, if the workers still have not opened their steps, killed."""
        self.plan = plan
        self.config = config
        self.ray = ray
        self.on_progress = on_progress
        self.started = time.monotonic()
        storage = coordinator.storage if coordinator is not None else None
        self.checkpointing = coordinator is not None
        self.worker_class = ray.remote(concurrency_groups={WATCH: WATCH_CONCURRENCY})(WorkerActor)
        self.pool_key = ("shared", config.tune_allocator)
        #: workers go back to the pool after a successful run (see headwater.engine.ray.worker_pool)
        self.reusable = config.reuse_workers and coordinator is None
        self._released = False
        self._stopped = False
        self._stop_requested_at: float | None = None
        self._stop_reason = "a stop was requested"
        self.grace_s = config.stop_grace.total_seconds()
        self.timer: Any = None
        plan_ref = ray.put(plan)
        restore_ref = ray.put(restore)
        self.assignments = place_subtasks(plan)
        cpus = [plan.stages[subtasks[0][0]].num_cpus if len(subtasks) == 1 else None for subtasks in self.assignments]
        #: which workers hold no CPUs of their own (only those are pooled)
        self.shared = [not c for c in cpus]
        pooled = POOL.take(ray, self.pool_key, sum(self.shared)) if config.reuse_workers else []
        self.workers: list[Any] = []
        from_pool: set[int] = set()
        placement: dict[SubtaskId, int] = {}
        for index, subtasks in enumerate(self.assignments):
            if self.shared[index] and pooled:
                self.workers.append(pooled.pop())
                from_pool.add(index)
            else:
                self.workers.append(self._new_worker(cpus[index]))
            placement.update({subtask: index for subtask in subtasks})
        try:
            self._assign([(plan_ref, subtasks, config, storage, restore_ref, coordinator if index == 0 else None)
                          for index, subtasks in enumerate(self.assignments)], from_pool,
                         PlacementWait(ray, plan, self.assignments, cpus, deadline))
            #: the worker actor hosting each (stage id, subtask)
            self.actors: dict[SubtaskId, Any] = {key: self.workers[i] for key, i in sorted(placement.items())}
            self.watch = WorkerWatch(ray, plan, self.workers, self.assignments, config.stall_seconds)
            self._await_connected([w.connect.remote(placement, self.workers, self.checkpointing) for w in self.workers],
                                  deadline)
        except Exception as exc:  # noqa: BLE001 - translated into Headwater's errors below
            self._kill_all()
            original = _unwrap(exc)
            if isinstance(original, HeadwaterError):
                raise _as_raised(original)  # noqa: B904 - keeps the error's own __cause__ (see _as_raised)
            raise JobFailedError(f"could not start the job's actors: {type(original).__name__}: {original}") from original
        if self.checkpointing:  # None until the steps are open: the timer triggers sources
            self.timer = self.workers[0].coordinate.options(concurrency_group=WATCH).remote()
        self.runs = {worker.run.remote(): index for index, worker in enumerate(self.workers)}

    def _await_connected(self, refs: list[Any], deadline: float | None) -> None:
        """Wait for every worker to open its steps, watching for stalls (a constructor that never returns) and
        for the run's deadline."""
        pending = refs
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=len(pending), timeout=0.25)
            self.ray.get(ready)
            if deadline is not None and not self._stopped and time.monotonic() > deadline:
                self.stop(reason="the run's timeout (while its steps were opening)")
            self._check_deadlines()

    def _new_worker(self, cpus: float | None) -> Any:
        return self.worker_class.options(num_cpus=cpus or 0, max_concurrency=1000).remote(self.config.tune_allocator)

    def _assign(self, arguments: list[tuple[Any, ...]], from_pool: set[int], placement: PlacementWait) -> None:
        """Give every worker its subtasks, waiting (bounded by ``placement``) for Ray to place them. A pooled
        worker that died while idle is replaced by a new one."""
        pending = {w.assign.remote(*args): i for i, (w, args) in enumerate(zip(self.workers, arguments))}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=PLACEMENT_POLL_S)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    self.ray.get(ref)
                except self.ray.exceptions.RayActorError:
                    if index not in from_pool:
                        raise
                    from_pool.discard(index)
                    self.workers[index] = self._new_worker(None)
                    pending[self.workers[index].assign.remote(*arguments[index])] = index
            placement.check(sorted(pending.values()))

    def stop(self, savepoint: bool = False, reason: str = "a stop was requested") -> None:
        """Stop gracefully; from now on the job has ``stop_grace`` to end (see :meth:`_check_deadlines`)."""
        if self._released:
            return
        self._stopped = True
        if self._stop_requested_at is None:
            self._stop_requested_at, self._stop_reason = time.monotonic(), reason
        if self.checkpointing:
            ref = self.workers[0].coordinator_prepare_stop.options(concurrency_group=WATCH).remote(savepoint)
            try:
                self.ray.get(ref, timeout=self.grace_s)
            except self.ray.exceptions.GetTimeoutError:
                pass  # worker 0 does not answer at all: the stop grace ends the job
        for worker in self.workers:
            worker.stop.options(concurrency_group=WATCH).remote()

    def _check_deadlines(self) -> None:
        """Raise if a step stalled, or if a stop has not ended the job within the grace (the caller's
        ``finally`` kills the workers)."""
        self.watch.poll()
        if self.timer is not None and self.ray.wait([self.timer], timeout=0)[0]:
            self.ray.get(self.timer)  # the coordinator's timer never returns while the job runs: raise its error
            raise JobFailedError("the checkpoint coordinator's timer ended while the job was running")
        if self._stop_requested_at is not None and time.monotonic() - self._stop_requested_at > self.grace_s:
            raise stop_timeout(self.watch.activities(), self.grace_s, self._stop_reason, killed=True)

    def metrics(self, timeout: float = 5.0) -> list[SubtaskMetrics]:
        refs = [w.metrics.remote() for w in self.workers]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [m for r in ready for m in self.ray.get(r)]

    def wait(self, timeout: float | None = None) -> JobResult:
        ray = self.ray
        pending = list(self.runs)
        finished: list[SubtaskMetrics] = []
        interval = self.config.progress_interval.total_seconds()
        last_progress = time.monotonic()
        interrupted = succeeded = False
        try:
            while pending:
                try:
                    if timeout is not None and not self._stopped and time.monotonic() - self.started > timeout:
                        self.stop(reason=f"the run's timeout of {timeout:g} s")
                    done, pending = ray.wait(pending, num_returns=1, timeout=min(interval, 0.25))
                    for ref in done:
                        finished.extend(self._result_of(ref))
                    if pending:
                        self._check_deadlines()
                    if self.on_progress and time.monotonic() - last_progress >= interval:
                        last_progress = time.monotonic()
                        self.on_progress(self.metrics(timeout=interval), last_progress - self.started)
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True
                    self.stop(reason="Ctrl-C")  # first Ctrl-C stops gracefully; a second one kills the job
            result = JobResult.merge(self.plan, time.monotonic() - self.started, finished, self._stopped)
            if self.checkpointing:
                try:
                    stats, last, final = ray.get(self.workers[0].coordinator_result.remote(), timeout=self.grace_s)
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
                    raise JobFailedError(
                        f"the checkpoint coordinator did not report the job's final checkpoint within "
                        f"{self.grace_s:g} s ({type(exc).__name__})"
                    ) from exc
                if not final:
                    raise JobFailedError("the job ended without its final checkpoint")
                result.checkpoints, result.last_checkpoint = stats, last
            succeeded = True
            return result
        finally:
            if succeeded and self.reusable:
                self._release_all()
            else:
                self._kill_all(confirm=self.checkpointing and not succeeded)

    def _result_of(self, ref: Any) -> list[SubtaskMetrics]:
        hosted = self.assignments[self.runs[ref]]
        try:
            return self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - translated into Headwater's errors below
            original = _unwrap(exc)
            if isinstance(original, HeadwaterError):
                raise _as_raised(original)  # noqa: B904 - keeps the error's own __cause__ (see _as_raised)
            stage_id, subtask = hosted[0]
            steps = ", ".join(dict.fromkeys(self.plan.stages[s].head for s, _ in hosted))
            raise JobFailedError(
                f"the worker hosting step(s) {steps} failed or died ({type(original).__name__}: {original})",
                step_id=self.plan.stages[stage_id].head, subtask=subtask,
            ) from original

    def _release_all(self) -> None:
        """Return the shared workers of a finished job to the pool (released first); kill the others."""
        self._released = True
        shared = [w for w, ok in zip(self.workers, self.shared) if ok]
        try:
            self.ray.get([w.release.remote() for w in shared], timeout=5)
        except Exception:  # noqa: BLE001 - a worker that cannot release is not reused
            self._kill(self.workers)
            return
        self._kill([w for w, ok in zip(self.workers, self.shared) if not ok])
        self._kill(POOL.give_back(self.ray, self.pool_key, shared))

    def _kill_all(self, confirm: bool = False) -> None:
        """Kill every worker. With ``confirm`` (a checkpointed attempt that failed), return only once they are
        gone (:func:`~headwater.engine.ray.actors.await_death`)."""
        self._released = True
        kill_actors(self.ray, self.workers)
        if confirm and not await_death(self.ray, self.workers, timeout=30.0):
            raise JobFailedError(
                "the workers of the failed attempt could not be confirmed gone within 30 s, so the job is not "
                "restarted (a worker still alive could commit output that the restart would publish again). "
                "Check that Ray's nodes are reachable (`ray status`), then run the job again: it resumes from its "
                "latest checkpoint", transient=False,
            )

    def _kill(self, workers: list[Any]) -> None:
        kill_actors(self.ray, workers)
