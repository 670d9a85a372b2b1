"""In-process executor: the same physical plan and subtask logic as on Ray, in one thread.

Every subtask's :class:`~headwater.engine.runtime.SubtaskRuntime` lives in this process; messages go through
one FIFO queue, so per-channel order is the send order, as on Ray. Sources are polled round-robin; after
each poll the queue is drained (FIFO), which keeps memory bounded by one source batch's fan-out. With
checkpointing, the :class:`~headwater.engine.checkpoints.orchestrator.CheckpointOrchestrator` is called directly and
snapshots are written synchronously, in the commit order written down there. It is the fast
path for unit tests of pipelines (``headwater.testing.run_local``) and exercises partitioning, fusion,
barriers, end-of-stream and finishing exactly as the Ray executor does.

Deadlines (see :mod:`headwater.engine.watchdog`): the job's loop runs in its own thread, and :meth:`LocalJob.wait`
watches it from the caller's thread, so a call into user code that never returns cannot take the caller with
it. The watcher stops the job at ``timeout``, fails it with :class:`~headwater.errors.StepStalledError` when a
call exceeds ``stall_timeout``, times out in-flight checkpoints (:meth:`CheckpointOrchestrator.expire`, which never
waits for the orchestrator's lock; the loop holds that lock only while it calls the coordinator, never around
user code) and gives up ``stop_grace`` after a stop. Python cannot kill a
thread: a hung call keeps its thread (a daemon) until it returns; the loop then sees that it was abandoned and
exits without running or committing anything more — it checks before every delivery, snapshot write and
coordinator call (the orchestrator's ``guard``, under its lock), so no checkpoint is begun, acknowledged or
completed after the abandonment.

Invariant: until that thread has ended it may still write into the job's directories, so whoever holds their
leases releases them through :meth:`LocalJob.after_exit`, never earlier: a new run on the same directories is
refused meanwhile, naming this process as the holder (which is the truth).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from typing import Any, Callable

from headwater.engine.channels import Message
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats
from headwater.engine.checkpoints.orchestrator import CheckpointOrchestrator, SubtaskCheckpoints
from headwater.engine.checkpoints.snapshots import PendingSnapshot, SubtaskRestore, persist
from headwater.engine.checkpoints.storage import CheckpointMetadata, SubtaskAck
from headwater.engine.config import RunConfig
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.runtime import Outgoing, SubtaskRuntime
from headwater.engine.watchdog import SubtaskActivity, find_stall, log_checkpoint_timeout, stop_timeout
from headwater.errors import JobFailedError

_IDLE_SLEEP_S = 0.005
_WATCH_S = 0.1  # how often the caller's thread looks at the job


class _Abandoned(Exception):
    """The caller gave up on this job (stall, stop grace, second Ctrl-C): the loop thread must end."""


class LocalJob:
    """A job run by :meth:`wait` in a thread of its own, watched from the calling thread (``stop`` may be
    called from any thread)."""

    def __init__(
        self, plan: PhysicalPlan, config: RunConfig, coordinator: CheckpointCoordinator | None = None,
        restore: SubtaskRestore | None = None,
    ) -> None:
        self.plan = plan
        self.config = config
        #: the checkpoint orchestration (None without checkpointing); refuses coordinator calls once abandoned
        self.checkpoints = CheckpointOrchestrator(coordinator, self._check_abandoned) if coordinator is not None else None
        self._stop = threading.Event()
        self._queue: deque[tuple[SubtaskRuntime, int, int, Message]] = deque()
        self._abandoned = False
        self._exited = True  # no thread of the job is running (until wait() starts one)
        self._on_exit: list[Callable[[], None]] = []
        self._exit_lock = threading.Lock()
        self._stop_requested_at: float | None = None
        self._stop_reason = ""
        self.runtimes: dict[tuple[int, int], SubtaskRuntime] = {
            (stage.stage_id, i): SubtaskRuntime(plan, stage.stage_id, i, config, coordinator is not None, restore)
            for stage in plan.stages
            for i in range(stage.parallelism)
        }
        self._snapshots = [(rt, SubtaskCheckpoints(rt)) for rt in self.runtimes.values()]

    def stop(self, savepoint: bool = False, reason: str = "a stop was requested") -> None:
        if self.checkpoints is not None:
            self.checkpoints.prepare_stop(savepoint)
        if self._stop_requested_at is None:
            self._stop_requested_at, self._stop_reason = time.monotonic(), reason
        self._stop.set()

    def activities(self) -> list[SubtaskActivity]:
        now = time.monotonic()
        return [rt.activity("idle (between rounds)", now) for rt in self.runtimes.values()]

    def metrics(self) -> list[SubtaskMetrics]:
        """Every subtask's figures; callable from any thread (the exporter's, while the loop runs)."""
        queued: dict[tuple[int, int], dict[int, int]] = {}
        for runtime, edge_id, _, _ in list(self._queue):
            by_edge = queued.setdefault((runtime.stage.stage_id, runtime.subtask), {})
            by_edge[edge_id] = by_edge.get(edge_id, 0) + 1
        return [rt.metrics(sum(queued.get(key, {}).values()), queued.get(key)) for key, rt in self.runtimes.items()]

    def checkpoint_stats(self) -> CheckpointStats | None:
        """A copy of the checkpoint statistics so far (``None`` without checkpointing)."""
        return self.checkpoints.stats() if self.checkpoints is not None else None

    def after_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the job's thread has ended: now, if it has (or never started); otherwise from
        that thread, as the last thing it does (an abandoned job's thread ends when its hung call returns)."""
        with self._exit_lock:
            if not self._exited:
                self._on_exit.append(callback)
                return
        callback()

    def _check_abandoned(self) -> None:
        if self._abandoned:
            raise _Abandoned()

    def _deliver(self, sender: SubtaskRuntime, outgoing: list[Outgoing]) -> None:
        for edge_id, receiver, message in outgoing:
            dst = self.runtimes[(self.plan.edges[edge_id].dst, receiver)]
            self._queue.append((dst, edge_id, sender.subtask, message))

    def _drain(self) -> None:
        while self._queue:
            self._check_abandoned()
            runtime, edge_id, sender, message = self._queue.popleft()
            self._deliver(runtime, runtime.on_message(edge_id, sender, message))

    def _done(self, runtimes: list[SubtaskRuntime]) -> bool:
        if not all(rt.finished for rt in runtimes):
            return False
        return self.checkpoints is None or self.checkpoints.final_completed

    def wait(self, timeout: float | None = None) -> JobResult:
        """Run the job to its end (or until ``stop()``, Ctrl-C or ``timeout`` seconds, which stop gracefully);
        the deadlines of the module docstring apply."""
        started = time.monotonic()
        outcome: dict[str, Any] = {}
        with self._exit_lock:
            self._exited = False
        # the loop thread runs in a copy of the caller's context: its log lines carry the job (headwater.engine.logs)
        thread = threading.Thread(target=contextvars.copy_context().run, args=(self._thread_main, started, outcome),
                                  name=f"headwater-{self.plan.flow_name}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                try:
                    thread.join(_WATCH_S)
                    if thread.is_alive():
                        self._watch(started, timeout)
                except KeyboardInterrupt:
                    if self._stop.is_set():
                        raise  # a second Ctrl-C (or one during a stop) ends the run at once
                    self.stop(reason="Ctrl-C")  # first Ctrl-C: stop gracefully
        except BaseException:
            self._abandoned = True
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _watch(self, started: float, timeout: float | None) -> None:
        """From the caller's thread: the timeout, stalled steps, checkpoint timeouts and the stop grace."""
        now = time.monotonic()
        if timeout is not None and not self._stop.is_set() and now - started > timeout:
            self.stop(reason=f"the run's timeout of {timeout:g} s")
        activities = self.activities()
        stalled = find_stall(activities, self.config.stall_seconds)
        if stalled is not None:
            raise stalled
        if self.checkpoints is not None and self.checkpoints.expire() is not None:
            by_key = {(a.stage_id, a.subtask): a for a in activities}
            for expired in self.checkpoints.take_expired():
                log_checkpoint_timeout(*expired, by_key)
        if self._stop_requested_at is not None and now - self._stop_requested_at > self.config.stop_grace.total_seconds():
            raise stop_timeout(activities, self.config.stop_grace.total_seconds(), self._stop_reason, killed=False)

    def _thread_main(self, started: float, outcome: dict[str, Any]) -> None:
        try:
            self._run(started, outcome)
        finally:
            with self._exit_lock:
                self._exited = True
                callbacks, self._on_exit = self._on_exit, []
            for callback in callbacks:
                callback()

    def _run(self, started: float, outcome: dict[str, Any]) -> None:
        """The job's loop (in its own thread); its result or error goes to ``outcome``."""
        runtimes = list(self.runtimes.values())
        sources = [rt for rt in runtimes if rt.source_step is not None]
        try:
            for rt in runtimes:
                rt.open()
                self._check_abandoned()
            while not self._done(runtimes):
                self._check_abandoned()
                if self._stop.is_set():
                    for rt in sources:
                        rt.request_stop()
                self._round(runtimes, sources)
        except _Abandoned:
            outcome["error"] = JobFailedError("the job was abandoned by its caller")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            for rt in runtimes:
                rt.close()
        if "error" in outcome:
            return
        result = JobResult.merge(self.plan, time.monotonic() - started, self.metrics(), self._stop.is_set())
        if self.checkpoints is not None:
            result.checkpoints, result.last_checkpoint, _ = self.checkpoints.result()
        outcome["result"] = result

    def _round(self, runtimes: list[SubtaskRuntime], sources: list[SubtaskRuntime]) -> None:
        progressed = False
        for rt in sources:
            if not rt.finished:
                outgoing, produced = rt.poll_sources()
                progressed |= produced or rt.finished
                self._deliver(rt, outgoing)
                self._drain()
        now = time.monotonic()
        for rt in runtimes:
            if not rt.finished:
                self._deliver(rt, rt.poll_timers(now))
        self._drain()
        self._check_abandoned()  # a hung call that returned must not begin or complete a checkpoint
        if self.checkpoints is not None:
            self._checkpoint_work(sources)
        if not progressed and not self._done(runtimes):
            self._sleep_until_due(runtimes, sources)

    def _checkpoint_work(self, sources: list[SubtaskRuntime]) -> None:
        """Steps 1-5 of the commit order (:mod:`headwater.engine.checkpoints.orchestrator`), in this thread."""
        checkpoints = self.checkpoints
        assert checkpoints is not None
        checkpoint_id = checkpoints.try_begin()
        if checkpoint_id is not None:
            for rt in sources:
                self._deliver(rt, rt.trigger_checkpoint(checkpoint_id))
            self._drain()
        for rt, snapshots in self._snapshots:
            for snapshot in snapshots.taken():
                self._completed(checkpoints.ack(self._persist(rt, snapshot)))
            final = snapshots.final()
            if final is not None:
                self._completed(checkpoints.report_finished(self._persist(rt, final)))

    def _persist(self, rt: SubtaskRuntime, snapshot: PendingSnapshot) -> SubtaskAck:
        """Write a snapshot, recorded as the subtask's call (bounded by the checkpoint timeout, not the stall
        timeout: see :data:`headwater.engine.watchdog.EXEMPT`)."""
        assert self.checkpoints is not None
        self._check_abandoned()
        rt.call = (rt.stage.head, persist, (snapshot.checkpoint_id,), time.monotonic())
        try:
            return persist(snapshot, self.checkpoints.storage)
        finally:
            rt.call = None

    def _completed(self, metadata: CheckpointMetadata | None) -> None:
        if metadata is not None:
            self._check_abandoned()  # the next run settles (commits) what the checkpoint covers
            for rt in self.runtimes.values():
                rt.notify_checkpoint_complete(metadata.checkpoint_id)

    def _sleep_until_due(self, runtimes: list[SubtaskRuntime], sources: list[SubtaskRuntime]) -> None:
        now = time.monotonic()
        candidates = [now + _IDLE_SLEEP_S]
        candidates += [d for d in (rt.next_deadline() for rt in runtimes) if d is not None]
        candidates += [w for w in (rt.next_source_wakeup() for rt in sources if not rt.finished) if w is not None]
        delay = min(candidates) - now
        if delay > 0:
            self._stop.wait(delay)
