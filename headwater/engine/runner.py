"""``hw.run`` / ``hw.start``: plan a dataflow and execute it on Ray (default) or in-process."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from headwater.dataflow import Dataflow
from headwater.engine.config import RunConfig
from headwater.engine.job import JobResult
from headwater.engine.local_executor import LocalJob
from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.engine.planner import plan
from headwater.engine.progress import ProgressDisplay
from headwater.engine.ray_cluster import ray_session, ship_user_code
from headwater.errors import ConfigError


def make_config(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a headwater RunConfig, got {type(config).__name__}")
    return (config or RunConfig()).with_overrides(**options)


def plan_flow(flow: Dataflow, config: RunConfig | None = None, **options: Any) -> PhysicalPlan:
    """The physical plan ``run`` would execute (parallelism defaults to the machine's CPU count)."""
    import os

    config = make_config(config, options)
    default = config.parallelism or (1 if config.executor == "local" else os.cpu_count() or 1)
    return plan(flow, config, default)


def _user_objects(physical: PhysicalPlan) -> list[Any]:
    objects: list[Any] = []
    for step in physical.steps.values():
        for attr in ("fn", "source", "sink"):
            value = getattr(step, attr, None)
            if value is not None:
                objects.append(value)  # functions, classes and instances all name their defining module
    return objects


class RunningJob:
    """Handle returned by :func:`start`: ``stop()`` gracefully, ``wait()`` for the :class:`JobResult`."""

    def __init__(self, flow: Dataflow, config: RunConfig) -> None:
        self.config = config
        self._exit = ExitStack()
        self._job: Any
        if config.executor == "local":
            self.plan = plan_flow(flow, config)
            self._job = LocalJob(self.plan, config)
            self._result: JobResult | None = None
            self._error: BaseException | None = None
            self._thread: threading.Thread | None = None
            return
        ray = self._exit.enter_context(ray_session(config))
        try:
            parallelism = config.parallelism or max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.plan = plan(flow, config, parallelism)
            ship_user_code(_user_objects(self.plan))
            progress = ProgressDisplay(self.plan) if config.progress else None
            from headwater.engine.ray_executor import RayJob

            self._job = RayJob(self.plan, config, ray, on_progress=progress)
        except BaseException:
            self._exit.close()
            raise
        self._thread = None

    def start_in_background(self) -> None:
        """Local executor only: run in a thread so that ``stop()`` can be called from the caller."""
        def target() -> None:
            try:
                self._result = self._job.wait()
            except BaseException as exc:  # re-raised by wait()
                self._error = exc

        self._thread = threading.Thread(target=target, name="headwater-local-job", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._job.stop()

    def metrics(self) -> list[SubtaskMetrics]:
        return self._job.metrics()

    def wait(self, timeout: float | None = None) -> JobResult:
        try:
            if self._thread is not None:
                self._thread.join()
                if self._error is not None:
                    raise self._error
                assert self._result is not None
                return self._result
            return self._job.wait(timeout)
        finally:
            self._exit.close()


def start(flow: Dataflow, *, config: RunConfig | None = None, **options: Any) -> RunningJob:
    """Start ``flow`` and return at once with a handle (``job.stop()``, ``job.wait()``)."""
    job = RunningJob(flow, make_config(config, options))
    if job.config.executor == "local":
        job.start_in_background()
    return job


def run(flow: Dataflow, *, config: RunConfig | None = None, timeout: float | None = None, **options: Any) -> JobResult:
    """Run ``flow`` to completion and return its :class:`JobResult`.

    Options are :class:`RunConfig` fields (``parallelism=2``, ``batch_size=...``, ``executor="local"``,
    ``progress=True``, ...). Bounded sources end the run by themselves; an unbounded run ends with Ctrl-C
    (graceful: in-flight data drains, sinks commit), ``job.stop()`` on a job from :func:`start`, or
    ``timeout`` seconds (also graceful). Failures raise a :class:`~headwater.errors.HeadwaterError` naming
    the step.
    """
    return RunningJob(flow, make_config(config, options)).wait(timeout)
