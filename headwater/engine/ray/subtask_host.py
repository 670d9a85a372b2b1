"""One subtask in a Ray worker: :class:`SubtaskHost` drives a transport-free
:class:`~headwater.engine.runtime.SubtaskRuntime` in the worker's event loop, sends and receives its messages,
and persists and acknowledges its snapshots (steps 3 and 4 of the commit order in
:mod:`headwater.engine.checkpoints.orchestrator`; :class:`~headwater.engine.checkpoints.orchestrator.SubtaskCheckpoints`
hands each snapshot out once).

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
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

from headwater.engine import logs
from headwater.engine.channels import Message
from headwater.engine.checkpoints.orchestrator import SubtaskCheckpoints
from headwater.engine.checkpoints.snapshots import PendingSnapshot, SubtaskRestore, persist
from headwater.engine.checkpoints.storage import CheckpointStorage
from headwater.engine.config import RunConfig
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.actors import ActorHandle, ObjectRef, unwrap
from headwater.engine.ray.coordinator import CoordinatorClient
from headwater.engine.runtime import Outgoing, SubtaskRuntime
from headwater.engine.watchdog import SubtaskActivity

_SOURCE_IDLE_S = 0.005


class SubtaskHost:
    """Runs one :class:`SubtaskRuntime` inside a :class:`~headwater.engine.ray.worker.WorkerActor`'s event loop."""

    def __init__(
        self, plan: PhysicalPlan, stage_id: int, subtask: int, config: RunConfig,
        storage: CheckpointStorage | None = None, restore: SubtaskRestore | None = None,
    ) -> None:
        self.runtime = SubtaskRuntime(plan, stage_id, subtask, config, storage is not None, restore)
        self.snapshots = SubtaskCheckpoints(self.runtime)
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
        self.receivers: dict[int, list[SubtaskHost | ActorHandle]] = {}
        self.inflight: dict[tuple[int, int], deque[ObjectRef]] = defaultdict(deque)
        self.next_seq: dict[tuple[int, int], int] = defaultdict(int)
        self.has_items = asyncio.Event()
        self.space = asyncio.Event()
        self.stop_requested = False
        #: where the subtask waits when it is not inside a call into step code (for activity reports)
        self.waiting = "starting"

    def connect(self, receivers: dict[int, list[SubtaskHost | ActorHandle]], coordinator: CoordinatorClient | None) -> None:
        self.receivers = receivers
        self.coordinator = coordinator

    # -- checkpoints ----------------------------------------------------------------------------------------
    def notify_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: commit the sinks (step 5); from the main loop only."""
        self.runtime.notify_checkpoint_complete(checkpoint_id)
        self.committed.set()

    def _acknowledge_snapshots(self) -> None:
        """Persist snapshots taken by the runtime in a background thread, then acknowledge them (steps 3 and 4).

        A snapshot that could not be written or acknowledged fails the subtask here, at once — not when the
        subtask ends, which an unbounded job never does — as it does on the in-process executor; the
        supervisor then decides whether a restart can cure the cause (a full disk cannot)."""
        for task in self.ack_tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise unwrap(error)
        self.ack_tasks = [task for task in self.ack_tasks if not task.done()]
        for snapshot in self.snapshots.taken():
            self.ack_tasks.append(asyncio.create_task(self._persist_and_ack(snapshot)))

    async def _persist_and_ack(self, snapshot: PendingSnapshot) -> None:
        assert self.storage is not None and self.coordinator is not None
        ack = await asyncio.to_thread(persist, snapshot, self.storage)
        await self.coordinator.ack(ack)

    async def _finish_checkpointing(self) -> None:
        """Report the final snapshot, then wait until every prepared sink output is committed."""
        final = self.snapshots.final()
        assert final is not None and self.storage is not None and self.coordinator is not None
        await asyncio.gather(*self.ack_tasks)
        ack = await asyncio.to_thread(persist, final, self.storage)
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
        # this task's log lines carry the subtask (headwater.engine.logs)
        logs.bind(job=self.plan.flow_name, step=runtime.stage.head, subtask=self.subtask)
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
        by_edge: dict[int, int] = defaultdict(int)
        for edge_id, _, _ in list(self.inbox):
            by_edge[edge_id] += 1
        return self.runtime.metrics(backlog=sum(by_edge.values()), backlog_by_edge=by_edge)

    def activity(self, now: float) -> SubtaskActivity:
        runtime = self.runtime
        if not runtime.finished:
            return runtime.activity(self.waiting, now)
        if runtime.has_uncommitted:  # words for a hang's report: what it still waits for
            return runtime.activity("finished, waiting for the checkpoint that commits its sink output", now)
        return runtime.activity("finished", now)
