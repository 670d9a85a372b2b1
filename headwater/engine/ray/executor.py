"""Ray executor: :class:`RayJob`, the driver's side of a job whose subtasks run in worker actors.

The job places its subtasks on worker actors (:mod:`headwater.engine.ray.worker`, slot sharing; each subtask a
:class:`~headwater.engine.ray.subtask_host.SubtaskHost`, with credit-based channels between workers), hands
worker 0 the checkpoint coordinator (:mod:`headwater.engine.ray.coordinator`), starts its timer, and waits.

Deadlines: each worker answers ``activity``, ``stop`` and the coordinator's stop and timer in its *watch*
concurrency group (its own thread and event loop, :mod:`headwater.engine.ray.watch`), so they work while user
code blocks the main loop. :meth:`RayJob.wait` polls ``activity`` and fails the job when a step stalls
(``RunConfig.stall_timeout``); a stop that has not ended the job within ``RunConfig.stop_grace`` kills the
workers and raises :class:`~headwater.errors.StopTimeoutError`. Every wait of the driver on a worker is
bounded, so the driver never hangs on a blocked worker — nor on one Ray cannot place
(:class:`~headwater.engine.ray.placement.PlacementWait`).
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Callable

from headwater.engine import tracing
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats
from headwater.engine.checkpoints.snapshots import SubtaskRestore
from headwater.engine.config import RunConfig
from headwater.engine.job import JobResult
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.ray.actors import ActorHandle, ObjectRef, await_death, kill_actors, unwrap
from headwater.engine.ray.placement import PLACEMENT_POLL_S, PlacementWait, place_subtasks, worker_reservation
from headwater.engine.ray.watch import WATCH, WATCH_CONCURRENCY, WorkerWatch
from headwater.engine.ray.worker import WorkerActor
from headwater.engine.ray.worker_pool import POOL
from headwater.engine.watchdog import stop_timeout
from headwater.errors import HeadwaterError, JobFailedError

__all__ = ["RayJob", "WorkerActor", "place_subtasks"]

SubtaskId = tuple[int, int]  # (stage id, subtask index)


def _as_raised(error: HeadwaterError) -> HeadwaterError:
    """``error`` ready to be raised in the driver in place of Ray's wrapper. Its own ``__cause__`` (e.g. the
    ``OSError`` of a full disk) is kept, as :func:`headwater.engine.failures.classify` decides from it;
    ``raise error from None`` would erase it. Only the wrapper (the context) is hidden."""
    error.__suppress_context__ = True
    return error


class RayJob:
    """A job whose subtasks run in Ray worker actors. Construct with an initialised ``ray``; then :meth:`wait`."""

    def __init__(self, plan: PhysicalPlan, config: RunConfig, ray: ModuleType,
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
        #: what each shared worker reserves (RunConfig.worker_cpus / worker_resources)
        self.reservation = worker_reservation(config, ray)
        self.pool_key = ("shared", config.tune_allocator, tuple(sorted(self.reservation.items())))
        #: workers go back to the pool after a successful run (see headwater.engine.ray.worker_pool)
        self.reusable = config.reuse_workers and coordinator is None
        self._released = False
        self._stopped = False
        self._stop_requested_at: float | None = None
        self._stop_reason = "a stop was requested"
        self.grace_s = config.stop_grace.total_seconds()
        self.timer: ObjectRef | None = None
        plan_ref = ray.put(plan)
        restore_ref = ray.put(restore)
        self.assignments = place_subtasks(plan)
        own = [plan.stages[subtasks[0][0]].num_cpus if len(subtasks) == 1 else None for subtasks in self.assignments]
        #: which workers are slots shared by the job's steps (only those are pooled); the others are dedicated
        #: to one subtask of a step with its own num_cpus
        self.shared = [c is None for c in own]
        cpus = [self.reservation.get("CPU", 0.0) if c is None else c for c in own]
        pooled = POOL.take(ray, self.pool_key, sum(self.shared)) if config.reuse_workers else []
        self.workers: list[ActorHandle] = []
        from_pool: set[int] = set()
        placement: dict[SubtaskId, int] = {}
        for index, subtasks in enumerate(self.assignments):
            if self.shared[index] and pooled:
                self.workers.append(pooled.pop())
                from_pool.add(index)
            else:
                self.workers.append(self._new_worker(own[index]))
            placement.update({subtask: index for subtask in subtasks})
        try:
            self._assign([(plan_ref, subtasks, config, storage, restore_ref, coordinator if index == 0 else None)
                          for index, subtasks in enumerate(self.assignments)], from_pool,
                         PlacementWait(ray, plan, self.assignments, cpus, deadline,
                                       {k: v for k, v in self.reservation.items() if k != "CPU"}))
            #: the worker actor hosting each (stage id, subtask)
            self.actors: dict[SubtaskId, ActorHandle] = {key: self.workers[i] for key, i in sorted(placement.items())}
            self.watch = WorkerWatch(ray, plan, self.workers, self.assignments, config.stall_seconds)
            self._await_connected([w.connect.remote(placement, self.workers, self.checkpointing) for w in self.workers],
                                  deadline)
        except Exception as exc:  # noqa: BLE001 - translated into Headwater's errors below
            self._kill_all()
            original = unwrap(exc)
            if isinstance(original, HeadwaterError):
                raise _as_raised(original)  # noqa: B904 - keeps the error's own __cause__ (see _as_raised)
            raise JobFailedError(f"could not start the job's actors: {type(original).__name__}: {original}") from original
        if self.checkpointing:  # None until the steps are open: the timer triggers sources
            self.timer = self.workers[0].coordinate.options(concurrency_group=WATCH).remote()
        self.runs = {worker.run.remote(): index for index, worker in enumerate(self.workers)}

    def _await_connected(self, refs: list[ObjectRef], deadline: float | None) -> None:
        """Wait for every worker to open its steps, watching for stalls (a constructor that never returns) and
        for the run's deadline."""
        pending = refs
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=len(pending), timeout=0.25)
            self.ray.get(ready)
            if deadline is not None and not self._stopped and time.monotonic() > deadline:
                self.stop(reason="the run's timeout (while its steps were opening)")
            self._check_deadlines()

    def _new_worker(self, own_cpus: float | None) -> ActorHandle:
        """A worker actor reserving ``own_cpus`` (a step's own ``num_cpus``), or the shared reservation."""
        custom = {k: v for k, v in self.reservation.items() if k != "CPU"}
        cpus = self.reservation.get("CPU", 0.0) if own_cpus is None else own_cpus
        return self.worker_class.options(num_cpus=cpus, resources=custom or None, max_concurrency=1000).remote(
            self.config.tune_allocator)

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
        """The figures of every subtask whose worker answered within ``timeout`` (those of a worker that did
        not are left out, not waited for)."""
        refs = [w.metrics.remote() for w in self.workers]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [m for r in ready for m in self.ray.get(r)]

    def checkpoint_stats(self, timeout: float = 5.0) -> CheckpointStats | None:
        """A copy of the coordinator's statistics so far (``None`` without checkpointing or without an answer
        within ``timeout``); answered in worker 0's watch group, so a blocked main loop does not delay it."""
        if not self.checkpointing or self._released:
            return None
        ref = self.workers[0].coordinator_stats.options(concurrency_group=WATCH).remote()
        try:
            return self.ray.get(ref, timeout=timeout)
        except (self.ray.exceptions.GetTimeoutError, self.ray.exceptions.RayActorError):
            return None

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
            if self.config.trace_exporter == "memory":  # tests read every process's spans in the driver
                for spans in ray.get([w.take_spans.remote() for w in self.workers], timeout=self.grace_s):
                    tracing.add_spans(spans)
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

    def _result_of(self, ref: ObjectRef) -> list[SubtaskMetrics]:
        hosted = self.assignments[self.runs[ref]]
        try:
            return self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - translated into Headwater's errors below
            original = unwrap(exc)
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

    def _kill(self, workers: list[ActorHandle]) -> None:
        kill_actors(self.ray, workers)
