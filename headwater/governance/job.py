"""What governance records about one run of a job: OpenLineage events (:mod:`headwater.governance.lineage`) and
audit entries (``job_start``, ``job_stop``, ``savepoint``) in the store's audit log.

Invariant: nothing here fails or slows the job. Building the datasets, emitting and auditing are each guarded;
a problem is logged (without secrets) and the job goes on. The runner calls :meth:`JobGovernance.started` once
before the first attempt and :meth:`JobGovernance.ended` once when the run is over (restarts from a checkpoint
are one run).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from headwater.dataflow import Dataflow
from headwater.engine.config import RunConfig
from headwater.errors import StopTimeoutError
from headwater.governance.lineage.columns import column_lineage, column_lineage_facet
from headwater.governance.lineage.datasets import DatasetRef, sink_datasets, source_datasets
from headwater.governance.lineage.events import LineageEmitter, build_event
from headwater.logical import SinkStep, SourceStep
from headwater.store.audit import AuditLog, scrub
from headwater.store.layout import resolve_root

log = logging.getLogger("headwater.governance")


def governance_store(flow: Dataflow, config: RunConfig) -> str:
    """Where this run's lineage and audit go: ``config.store``, else the flow's one TableSink store, else the
    default store (``$HEADWATER_STORE``, else ``.headwater/store``)."""
    if config.store is not None:
        return resolve_root(config.store)
    from headwater.sinks.table import TableSink

    stores = {step.sink.store for step in flow.steps.values()
              if isinstance(step, SinkStep) and isinstance(step.sink, TableSink)}
    return stores.pop() if len(stores) == 1 else resolve_root(None)


def ending(error: BaseException | None) -> str:
    """The OpenLineage terminal state of a run that raised ``error`` (None: COMPLETE)."""
    if error is None:
        return "COMPLETE"
    if isinstance(error, (KeyboardInterrupt, StopTimeoutError)):
        return "ABORT"  # stopped abnormally: in-flight output discarded
    return "FAIL"


class JobGovernance:
    """Lineage and audit of one run (see the module docstring). ``run_id`` is the OpenLineage run id."""

    def __init__(self, flow: Dataflow, config: RunConfig) -> None:
        self.enabled = config.lineage
        self.run_id = str(uuid.uuid4())
        self.job = flow.name
        self.store = ""
        self.inputs: list[tuple[DatasetRef, pa.Schema | None]] = []
        self.outputs: list[tuple[DatasetRef, pa.Schema | None, dict[str, Any] | None]] = []
        self._emitter: LineageEmitter | None = None
        self._started = 0.0
        if not self.enabled:
            return
        try:
            self.store = governance_store(flow, config)
            self._describe(flow)
            self._emitter = LineageEmitter(self.store, self.job, self.run_id, config.lineage_url)
        except Exception as exc:  # noqa: BLE001 - governance never fails the job
            log.warning("job %s: lineage is off for this run: %s", self.job, scrub(str(exc)))
            self.enabled = False
        sources = [s for s in flow.steps.values() if isinstance(s, SourceStep)]
        self.processing = "BATCH" if sources and all(getattr(s.source, "bounded", False) for s in sources) \
            else "STREAMING"

    def _describe(self, flow: Dataflow) -> None:
        by_source: dict[str, list[DatasetRef]] = {}
        for step_id, step in flow.steps.items():
            if isinstance(step, SourceStep):
                by_source[step_id] = source_datasets(step.source, flow.name, step_id)
                single = len(by_source[step_id]) == 1
                self.inputs.extend((ds, step.schema if single else None) for ds in by_source[step_id])
        lineage = column_lineage(flow.steps, by_source)
        for step_id, step in flow.steps.items():
            if isinstance(step, SinkStep):
                schema = step.schema if step.schema is not None else flow.steps[step.inputs[0]].schema
                facet = column_lineage_facet(lineage.get(step_id, {}))
                self.outputs.extend((ds, schema, facet) for ds in sink_datasets(step.sink, flow.name, step_id))
        self.inputs = list(dict.fromkeys(self.inputs))  # a dataset read by two steps is one input

    def _emit(self, state: str, error: BaseException | None = None, facts: dict[str, Any] | None = None) -> None:
        if self._emitter is None:
            return
        event_time = datetime.now(UTC).isoformat()  # when it happened, not when the background thread builds it

        def make() -> Any:
            return build_event(state, self.run_id, self.job, processing=self.processing, inputs=self.inputs,
                               outputs=self.outputs, error=error, run_facts=facts, event_time=event_time)

        self._emitter.emit(make)

    def _audit(self, event: str, **fields: Any) -> None:
        try:
            AuditLog(self.store).append(event, job=self.job, run_id=self.run_id, actor=_actor(), **fields)
        except Exception as exc:  # noqa: BLE001 - the audit of a run never fails the run
            log.warning("job %s: could not audit %s: %s", self.job, event, scrub(str(exc)))

    def started(self, executor: str) -> None:
        if not self.enabled:
            return
        self._started = time.monotonic()
        self._emit("START")
        self._audit("job_start", executor=executor, inputs=[str(d) for d, _ in self.inputs],
                    outputs=[str(d) for d, _, _ in self.outputs])

    def ended(self, result: Any = None, error: BaseException | None = None) -> None:
        """Record the end of the run: ``result`` (a ``JobResult``) or the ``error`` it raised."""
        if not self.enabled:
            return
        state = ending(error)
        facts: dict[str, Any] = {}
        if result is not None:
            facts = {"stopped": bool(result.stopped), "savepoint": result.savepoint_path,
                     "restarts": int(result.restarts)}
        self._emit(state, error, facts or None)
        if result is not None and result.savepoint_path:
            self._audit("savepoint", path=result.savepoint_path)
        self._audit("job_stop", state=state, stopped=facts.get("stopped", False),
                    seconds=round(time.monotonic() - self._started, 3),
                    error=None if error is None else f"{type(error).__name__}: {error}")
        if self._emitter is not None:
            self._emitter.close()


def _actor() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return str(os.getuid())
