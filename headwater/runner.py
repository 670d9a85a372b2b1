"""``hw.run`` / ``hw.start``: plan a dataflow and execute it on Ray (default) or in-process."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from types import ModuleType
from typing import TYPE_CHECKING, Any

from headwater.dataflow import Dataflow
from headwater.engine import logs
from headwater.engine.autoscale import AutoscaleConfig
from headwater.engine.autoscale.supervisor import RescalingSupervisor
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, CheckpointStats
from headwater.engine.checkpoints.recovery import run_with_recovery, settle_sinks
from headwater.engine.checkpoints.snapshots import SubtaskRestore
from headwater.engine.checkpoints.storage import CheckpointStorage
from headwater.engine.config import CheckpointConfig, RunConfig
from headwater.engine.job import JobResult
from headwater.engine.leases import JobLeases, LeaseHolder
from headwater.engine.local_executor import LocalJob
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.ownership import check_claims, job_claims
from headwater.engine.plan import PhysicalPlan
from headwater.engine.progress import ProgressDisplay
from headwater.engine.ray.cluster import ray_session, ship_user_code
from headwater.engine.ray.placement import started_here, worker_reservation
from headwater.errors import ConfigError
from headwater.governance.job import JobGovernance
from headwater.governance.schemas import FirstBatchRecorder, JobSchemas, first_batch_schemas
from headwater.logical import SinkStep, SourceStep
from headwater.observability import EXPORTER, JobSnapshot
from headwater.observability.cluster_jobs import ClusterReport, cluster_registry
from headwater.observability.registry import JobRegistration, registry_dir
from headwater.planner import plan

if TYPE_CHECKING:
    from headwater.engine.ray.actors import ActorHandle
    from headwater.engine.ray.executor import RayJob

log = logging.getLogger("headwater.runner")


def make_config(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a headwater RunConfig, got {type(config).__name__}")
    return (config or RunConfig()).with_overrides(**options)


def plan_flow(
    flow: Dataflow, config: RunConfig | None = None, *, checkpoint_dir: str | None = None, **options: Any
) -> PhysicalPlan:
    """The physical plan ``run`` would execute (parallelism defaults to the machine's CPU count)."""
    import os

    config = make_config(config, options)
    default = config.parallelism or (1 if config.executor == "local" else os.cpu_count() or 1)
    return plan(flow, config, default, checkpoint_dir)


def _user_objects(physical: PhysicalPlan) -> list[Any]:
    objects: list[Any] = []
    for step in physical.steps.values():
        for attr in ("fn", "source", "sink"):
            value = getattr(step, attr, None)
            if value is not None:
                objects.append(value)  # functions, classes and instances all name their defining module
    return objects


class RunningJob:
    """Handle of a job: ``stop()`` gracefully (optionally with a savepoint), ``wait()`` for its result.

    With a :class:`CheckpointConfig` the job is supervised: it restores from the latest checkpoint and is
    restarted after recoverable failures (see :mod:`headwater.engine.checkpoints.recovery`).

    Its metrics are served while it runs, and its final figures after it ended, at :attr:`metrics_url`
    (``RunConfig.metrics_port``; :mod:`headwater.observability.exporter`).

    The driver leases the checkpoint directory and every sink's directory (:mod:`headwater.engine.leases`)
    when the job is made, before Ray is started or joined and before anything is settled, and releases them
    when the run ends (after every restart attempt, also on failure, and when Ray fails to start);
    ``hw.start`` raises at once when another run holds one. An
    in-process job abandoned in a hung call (a stall, the stop grace) keeps them until its thread ends
    (:meth:`LocalJob.after_exit`): until then it may still write.
    """

    def __init__(
        self, flow: Dataflow, config: RunConfig, checkpoint: CheckpointConfig | None = None,
        autoscale: AutoscaleConfig | None = None,
    ) -> None:
        if checkpoint is not None and not isinstance(checkpoint, CheckpointConfig):
            raise ConfigError(f"checkpoint must be a headwater CheckpointConfig, got {type(checkpoint).__name__}")
        config = _check_autoscale(autoscale, config, checkpoint)
        logs.configure(config.log_format)
        self.flow = flow
        self.config = config
        self.checkpoint = checkpoint
        self.autoscale = autoscale
        self._supervisor: RescalingSupervisor | None = None
        self._rescales_started = 0  # attempts started for a rescale, which are not restarts
        self._requested = False  # a resource request to Ray's autoscaler stands (dropped when the job ends)
        self._exit = ExitStack()
        self._ray: ModuleType | None = None
        self._attempt: LocalJob | RayJob | None = None
        self._attempts = 0
        self._stop: tuple[bool] | None = None  # (savepoint,) once stop() was called
        self._result: JobResult | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # time.monotonic() at which a run with a timeout stops
        self._started_at = time.time()
        self._final: JobResult | None = None
        #: where this job's Prometheus metrics are served (None: RunConfig.metrics_port is None)
        self.metrics_url: str | None = None
        self._registration: JobRegistration | None = None
        checkpoint_dir = checkpoint.uri if checkpoint is not None else None
        # The claims depend on the dataflow only: validate it and take the leases before Ray starts, so a run
        # refused for a directory in use fails at once, not after a cluster start-up (and releases on failure).
        flow.validate()
        self._governance = JobGovernance(flow, config)  # lineage events and audit entries; never raises
        claims = job_claims(flow.steps, checkpoint_dir)
        check_claims(claims)  # an overlap is a conflict to report as such, not this process "holding" the lease
        self.holder = LeaseHolder.this_process(flow.name)
        #: the job's subjects in the schema registry and the versions recorded (None: RunConfig.schema_registry off)
        self.schemas: JobSchemas | None = None
        try:
            self._exit.enter_context(JobLeases(claims, self.holder))
            if config.schema_registry is not None:  # build time: before Ray starts, before any worker
                self.schemas = JobSchemas.at_start(flow, config.schema_registry)
            if config.executor == "local":
                self.plan = plan_flow(flow, config, checkpoint_dir=checkpoint_dir)
            else:
                self._ray = self._exit.enter_context(ray_session(config))
                parallelism = config.parallelism or max(1, int(self._ray.cluster_resources().get("CPU", 1)))
                self.plan = plan(flow, config, parallelism, checkpoint_dir)
                ship_user_code(_user_objects(self.plan))
            if config.metrics_port is not None:
                self.metrics_url = EXPORTER.serve(config.metrics_host, config.metrics_port)
                endpoint = (config.metrics_host, config.metrics_port)
                label = EXPORTER.register(self.plan.flow_name, self.metrics_snapshot, endpoint)
                self._exit.callback(lambda: EXPORTER.finish(label, self._final_snapshot()))
            directory = registry_dir()  # what `headwater status` lists (headwater.observability.registry)
            self._registration = None if directory is None else JobRegistration(
                self.plan.flow_name, config.executor, self.metrics_snapshot, self.metrics_url, directory,
                _cluster_report(self._ray))
            if self._registration is not None:
                self._exit.callback(self._registration.close)
        except BaseException:
            self._exit.close()
            raise

    def _start_attempt(self, restore: SubtaskRestore | None, first_id: int) -> LocalJob | RayJob:
        coordinator = None
        if self.checkpoint is not None:
            subtasks = [(s.stage_id, i) for s in self.plan.stages for i in range(s.parallelism)]
            coordinator = CheckpointCoordinator(
                CheckpointStorage(self.checkpoint.uri), self.checkpoint, self.plan.flow_name, subtasks,
                self.plan.max_key_groups, first_id,
            )
        if self.config.executor == "local":
            attempt: LocalJob | RayJob = LocalJob(self.plan, self.config, coordinator, restore)
        else:
            from headwater.engine.ray.executor import RayJob

            assert self._ray is not None
            progress = ProgressDisplay(self.plan) if self.config.progress else None
            attempt = RayJob(self.plan, self.config, self._ray, on_progress=progress, coordinator=coordinator,
                             restore=restore, deadline=self._deadline)
        self._attempt = attempt
        self._attempts += 1
        if self._stop is not None:
            attempt.stop(*self._stop)
        elif self._supervisor is not None and self._supervisor.rescaling:
            attempt.stop(False)  # a restart while a rescale stops the job: it stops too
        return attempt

    def _wait(self, timeout: float | None) -> JobResult:
        with logs.log_scope(job=self.plan.flow_name):
            return self._wait_in_scope(timeout)

    def _wait_in_scope(self, timeout: float | None) -> JobResult:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        if self._registration is not None:
            self._registration.start()
        self._governance.started(self.config.executor)
        recorder = FirstBatchRecorder(self.schemas, self.plan, self.metrics).start() if self.schemas else None
        try:
            if self.checkpoint is not None and self.autoscale is not None:
                result = self._run_scaled(self.checkpoint, self.autoscale, timeout)
            elif self.checkpoint is not None:
                result = run_with_recovery(self.plan, self.checkpoint, self._start_attempt, timeout)
            else:
                result = self._run_once(timeout)
            self._final = result
            if recorder is not None:
                recorder.stop()
            if self.schemas is not None:
                self.schemas.after_run(first_batch_schemas(self.plan, result.subtasks))
        except BaseException as exc:
            self._governance.ended(error=exc)
            raise
        else:
            self._governance.ended(result)
            return result
        finally:
            if recorder is not None:
                recorder.stop()
            if isinstance(self._attempt, LocalJob):
                self._attempt.after_exit(self._exit.close)  # an abandoned job's thread may still write
            else:
                self._exit.close()

    def _run_scaled(self, checkpoint: CheckpointConfig, autoscale: AutoscaleConfig, timeout: float | None) -> JobResult:
        """Run in segments: each ends by itself, by the user's stop, or by a rescale (a stop with a checkpoint),
        after which the next segment runs the dataflow planned at the new parallelism from that checkpoint."""
        started = time.monotonic()
        assert self.config.parallelism is not None  # set by _check_autoscale
        current = self.config.parallelism

        def run_segment(parallelism: int) -> JobResult:
            nonlocal current
            if parallelism != current:
                self._rescales_started += 1
                self.plan = plan(self.flow, self.config, parallelism, checkpoint.uri)
                if self.config.executor != "local":
                    ship_user_code(_user_objects(self.plan))
                current = parallelism
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            return run_with_recovery(self.plan, checkpoint, self._start_attempt, remaining)

        def stop_attempt() -> None:
            if self._attempt is not None:
                self._attempt.stop(False)

        sources = [step_id for step_id, step in self.plan.steps.items() if isinstance(step, SourceStep)]
        self._supervisor = RescalingSupervisor(
            autoscale, current, sources, self.metrics, stop_attempt, lambda: self._stop is not None,
            self._request_workers if autoscale.request_resources and self._ray is not None else None,
            has_capacity=self._has_capacity if self._ray is not None else None,
        )
        try:
            return self._supervisor.run(run_segment)
        finally:
            if self._requested:
                self._request_workers(0)

    def _has_capacity(self, slots: int) -> bool:
        """Whether the cluster's resources (used or not: the running attempt frees its own when it stops) hold
        ``slots`` shared workers' reservations. Steps with their own ``num_cpus`` are not counted."""
        assert self._ray is not None
        bundle = worker_reservation(self.config, self._ray)
        total = self._ray.cluster_resources()
        return all(float(total.get(name, 0.0)) >= amount * slots for name, amount in bundle.items())

    def _request_workers(self, slots: int) -> None:
        """Ask Ray's autoscaler for the resources of ``slots`` worker slots ahead of a restart, each what one
        shared worker reserves (``RunConfig.worker_cpus``/``worker_resources``; nothing to ask for when workers
        reserve nothing); ``0`` drops the request, so that idle nodes can go. Ray's request is for the
        cluster's total, replacing the previous one."""
        from ray.autoscaler.sdk import request_resources

        assert self._ray is not None
        bundle = worker_reservation(self.config, self._ray)
        if slots and not bundle:
            return
        if not slots and not self._requested:
            return
        request_resources(bundles=[dict(bundle) for _ in range(slots)])
        self._requested = slots > 0

    def _run_once(self, timeout: float | None) -> JobResult:
        """A run without checkpointing: nothing it staged can ever be committed later, so once it ended, also
        after a failure, its sinks' staging is cleaned (with earlier runs' leftovers), while the leases are held."""
        try:
            result = self._start_attempt(None, 1).wait(timeout)
        except BaseException:
            try:
                settle_sinks(self.plan, None)
            except Exception:  # noqa: BLE001 - the run's own failure matters more
                log.warning("job %s: cleaning up staged sink output after the failure failed", self.plan.flow_name,
                            exc_info=True)
            raise
        for step in self.plan.steps.values():
            if isinstance(step, SinkStep):
                step.sink.clean_up(())  # every subtask committed; what is left in staging is earlier runs'
        return result

    def start_in_background(self) -> None:
        def target() -> None:
            try:
                self._result = self._wait(None)
            except BaseException as exc:  # noqa: BLE001 - re-raised by wait()
                self._error = exc

        self._thread = threading.Thread(target=target, name="headwater-job", daemon=True)
        self._thread.start()
        while self._attempt is None and self._thread.is_alive():
            time.sleep(0.01)  # stop() and metrics() need the first attempt

    def stop(self, savepoint: bool = False) -> None:
        """Stop gracefully: sources stop, in-flight data drains, sinks commit. With checkpointing the job is
        suspended with a final checkpoint (``savepoint=True`` keeps it as a savepoint: ``result.savepoint_path``)."""
        if savepoint and self.checkpoint is None:
            raise ConfigError("stop(savepoint=True) needs checkpointing: run with checkpoint=hw.CheckpointConfig(...)")
        self._stop = (savepoint,)
        if self._attempt is not None:
            self._attempt.stop(savepoint)

    def metrics(self) -> list[SubtaskMetrics]:
        return self._attempt.metrics() if self._attempt is not None else []

    def checkpoint_stats(self) -> CheckpointStats | None:
        """A copy of the current attempt's checkpoint statistics (``None`` without checkpointing)."""
        return self._attempt.checkpoint_stats() if self._attempt is not None else None

    def metrics_snapshot(self) -> JobSnapshot:
        """The job's figures now, for the metrics exporter (a Ray job asks its workers, waiting at most 2 s)."""
        attempt = self._attempt
        subtasks: list[SubtaskMetrics] = []
        stats = None
        if attempt is not None:
            subtasks = attempt.metrics() if isinstance(attempt, LocalJob) else attempt.metrics(timeout=2.0)
            stats = attempt.checkpoint_stats() if isinstance(attempt, LocalJob) else attempt.checkpoint_stats(2.0)
        return JobSnapshot(self.plan.flow_name, self.plan, subtasks, stats, self.restarts, True, self._started_at,
                           **self._scaling_figures())

    def _final_snapshot(self) -> JobSnapshot | None:
        """The exact figures of the ended run (``None`` after a failure: the last scraped ones stand)."""
        result = self._final
        if result is None:
            return None
        return JobSnapshot(self.plan.flow_name, self.plan, result.subtasks, result.checkpoints, result.restarts,
                           False, self._started_at, **self._scaling_figures())

    def _scaling_figures(self) -> dict[str, Any]:
        """The job's parallelism now and, when autoscaled, its rescales by direction (for the exporter)."""
        supervisor = self._supervisor
        if supervisor is None:
            return {"parallelism": self.config.parallelism}
        counts = {"up": 0, "down": 0}
        for decision in list(supervisor.decisions):
            counts[decision.direction] += 1
        return {"parallelism": supervisor.parallelism, "rescales": counts}

    @property
    def attempt(self) -> int:
        """How many attempts have started (1 + automatic restarts so far)."""
        return self._attempts

    @property
    def restarts(self) -> int:
        """Automatic restarts from a checkpoint so far (a rescale's new attempt is not one)."""
        return max(0, self._attempts - 1 - self._rescales_started)

    def actors(self) -> dict[tuple[int, int], ActorHandle]:
        """Ray actor handles of the current attempt's subtasks by (stage id, subtask) — for operations and
        chaos testing (``ray.kill`` one to see the job recover). Empty for the in-process executor."""
        return dict(getattr(self._attempt, "actors", {}))

    def wait(self, timeout: float | None = None) -> JobResult:
        if self._thread is None:
            return self._wait(timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _cluster_report(ray: ModuleType | None) -> ClusterReport | None:
    """Reports to the cluster-wide job list when the job runs on a Ray cluster it joined (see
    :mod:`headwater.observability.cluster_jobs`); ``None`` in-process or on a Ray this process started."""
    if ray is None or started_here(ray):
        return None
    try:
        return ClusterReport(cluster_registry(ray, create=True))
    except Exception:  # noqa: BLE001 - the registry never fails a job
        log.debug("the cluster's job registry could not be reached", exc_info=True)
        return None


def _check_autoscale(
    autoscale: AutoscaleConfig | None, config: RunConfig, checkpoint: CheckpointConfig | None
) -> RunConfig:
    """The run's config with the parallelism it starts at when autoscaling (``min_parallelism`` unless set)."""
    if autoscale is None:
        return config
    if not isinstance(autoscale, AutoscaleConfig):
        raise ConfigError(f"autoscale must be a headwater AutoscaleConfig, got {type(autoscale).__name__}")
    if checkpoint is None:
        raise ConfigError("autoscale needs checkpointing: a rescale is a checkpoint and a restore at the new "
                          "parallelism; pass checkpoint=hw.CheckpointConfig(dir=...)")
    if autoscale.max_parallelism > config.max_key_groups:
        raise ConfigError(f"AutoscaleConfig.max_parallelism {autoscale.max_parallelism} exceeds max_key_groups "
                          f"{config.max_key_groups}; lower it or raise RunConfig.max_key_groups")
    if config.parallelism is None:
        return config.with_overrides(parallelism=autoscale.min_parallelism)
    if not autoscale.min_parallelism <= config.parallelism <= autoscale.max_parallelism:
        raise ConfigError(f"parallelism {config.parallelism} is outside AutoscaleConfig's bounds "
                          f"[{autoscale.min_parallelism}, {autoscale.max_parallelism}]; leave it unset to start at "
                          "min_parallelism")
    return config


def start(
    flow: Dataflow, *, config: RunConfig | None = None, checkpoint: CheckpointConfig | None = None,
    autoscale: AutoscaleConfig | None = None, **options: Any,
) -> RunningJob:
    """Start ``flow`` and return at once with a handle (``job.stop()``, ``job.wait()``)."""
    job = RunningJob(flow, make_config(config, options), checkpoint, autoscale)
    job.start_in_background()
    return job


def run(
    flow: Dataflow, *, config: RunConfig | None = None, checkpoint: CheckpointConfig | None = None,
    autoscale: AutoscaleConfig | None = None, timeout: float | None = None, **options: Any,
) -> JobResult:
    """Run ``flow`` to completion and return its :class:`JobResult`.

    Options are :class:`RunConfig` fields (``parallelism=2``, ``batch_size=...``, ``executor="local"``,
    ``progress=True``, ...). Bounded sources end the run by themselves; an unbounded run ends with Ctrl-C
    (graceful: in-flight data drains, sinks commit), ``job.stop()`` on a job from :func:`start`, or
    ``timeout`` seconds (also graceful). Failures raise a :class:`~headwater.errors.HeadwaterError` naming
    the step.

    With ``checkpoint=hw.CheckpointConfig(dir=...)`` the run is exactly-once: state and source positions are
    checkpointed every ``interval``, sinks commit per checkpoint, failures restart from the latest checkpoint,
    and running again with the same ``dir`` resumes where the last run stopped.

    With ``autoscale=hw.AutoscaleConfig(...)`` (needs ``checkpoint``) the run's parallelism follows its lag
    between the config's bounds: a rescale stops the job with a checkpoint and runs it again at the new
    parallelism from there (``result.rescales`` lists the decisions).
    """
    return RunningJob(flow, make_config(config, options), checkpoint, autoscale).wait(timeout)
