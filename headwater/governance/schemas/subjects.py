"""Which subjects a dataflow has, and when their schemas are checked and recorded.

Subjects (names are ``<kind>:<name>``):

- ``source:<flow>.<step>``: each source step's output;
- ``stream:<flow>.<step>``: each step output that has an explicit ``step_id`` (steps with generated ids such as
  ``filter_1`` are renumbered when the dataflow changes, so versioning them would report false changes);
- ``table:<table>``: each table a :class:`~headwater.TableSink` writes (one subject per table, shared by every
  dataflow writing it).

When (:class:`JobSchemas`):

- **At job start, before any worker starts** (build time): every subject whose schema the planner knows (a
  source with ``schema()``, each step derived from known schemas, a TableSink's input) is checked against its
  subject's latest version under its mode, all of them first, so a failing job registers nothing; then each is
  registered (idempotently). An incompatible one raises :class:`~headwater.errors.SchemaCompatibilityError`.
  A TableSink whose input schema is unknown records the table's current schema from the store, when the table
  exists.
- **At the first batch** (:class:`FirstBatchRecorder`, while the job runs): a source without ``schema()`` records
  the schema of the first batch its subtasks read (:attr:`SubtaskMetrics.source_schema`), seen in the job's
  metrics within about a second of that batch. The data is moving by then, so an incompatible schema cannot
  fail the build: it is logged as an error and not recorded.
- **When the run ends** (also a stopped run, not a failed one): a source whose first batch came too late for
  the recorder is recorded the same way, and a TableSink whose input schema was unknown records the schema of
  the committed table. Streams downstream of an unknown schema (after ``map_batches`` without
  ``output_schema``) are not recorded at all.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyarrow as pa

from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan
from headwater.errors import HeadwaterError, SchemaCompatibilityError, StoreError
from headwater.governance.schemas.registry import SchemaRegistry, incompatibility_message
from headwater.logical import SinkStep, SourceStep
from headwater.logical.graph import LogicalGraph
from headwater.sinks.table import TableSink

__all__ = ["FirstBatchRecorder", "JobSchemas", "Subject", "first_batch_schemas", "flow_subjects"]

log = logging.getLogger("headwater.governance.schemas")


@dataclass(frozen=True)
class Subject:
    """One subject of a dataflow: its name, its schema when known at build time, and where it comes from."""

    name: str
    schema: pa.Schema | None
    step_id: str
    table: TableSink | None = None  # for table subjects


def flow_subjects(flow: LogicalGraph) -> list[Subject]:
    """The subjects of ``flow`` in step order (see the module docstring)."""
    generated: set[str] = getattr(flow, "generated_ids", set())
    subjects: list[Subject] = []
    for step_id, step in flow.steps.items():
        if isinstance(step, SourceStep):
            subjects.append(Subject(f"source:{flow.name}.{step_id}", step.schema, step_id))
        elif isinstance(step, SinkStep):
            if isinstance(step.sink, TableSink):
                upstream = flow.steps[step.inputs[0]]
                subjects.append(Subject(f"table:{step.sink.table}", upstream.schema, step_id, step.sink))
        elif step_id not in generated and step.schema is not None:
            subjects.append(Subject(f"stream:{flow.name}.{step_id}", step.schema, step_id))
    return subjects


def _table_schema(sink: TableSink) -> pa.Schema | None:
    """The schema of the table in the store (``None``: no such table yet)."""
    from headwater.store.layout import META_FILE, read_json, table_dir
    from headwater.store.metadata import TableMeta

    path = os.path.join(table_dir(sink.store, sink.table), META_FILE)
    try:
        data = read_json(path)
        return None if data is None else TableMeta.from_json(data, path).schema
    except StoreError as exc:
        log.warning("schema registry: cannot read table %r's schema: %s", sink.table, exc)
        return None


@dataclass
class JobSchemas:
    """The schema registry's part in one job: :meth:`at_start` before workers start, :meth:`after_run` at the end."""

    registry_url: str
    flow_name: str
    subjects: list[Subject]
    #: subject → version recorded for this job
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def at_start(cls, flow: LogicalGraph, registry_url: str) -> JobSchemas:
        """Check every subject known at build time, then register them; raises SchemaCompatibilityError (all
        incompatible subjects in one message) before anything is written."""
        job = cls(registry_url, flow.name, flow_subjects(flow))
        known: list[tuple[str, pa.Schema]] = []
        for subject in job.subjects:
            schema = subject.schema
            if schema is None and subject.table is not None:
                schema = _table_schema(subject.table)
            if schema is not None:
                known.append((subject.name, schema))
        if not known:
            return job
        with SchemaRegistry(registry_url) as registry:
            failures = []
            for name, schema in known:
                problems = registry.check(name, schema)
                if problems:
                    versions = registry.versions(name)
                    failures.append(incompatibility_message(name, versions[-1].version, registry.mode(name), problems,
                                                           registry.display_url))
            if failures:
                raise SchemaCompatibilityError(
                    f"dataflow {flow.name!r}: {len(failures)} schema(s) break their subject's compatibility mode in "
                    f"the schema registry ({registry.display_url}); nothing was recorded:\n"
                    + "\n".join(f"  - {failure}" for failure in failures))
            for name, schema in known:
                job.versions[name] = registry.register(name, schema, registered_by=flow.name)
        log.debug("dataflow %s: schemas %s", flow.name, job.versions)
        return job

    def unrecorded_sources(self) -> list[str]:
        """Source steps whose schema only the run can tell and that are not recorded yet."""
        return [s.step_id for s in self.subjects
                if s.schema is None and s.table is None and s.name not in self.versions]

    def record_sources(self, source_schemas: dict[str, pa.Schema]) -> None:
        """Record the first-batch schemas of sources without ``schema()`` not recorded yet (idempotent; never
        raises: a problem is logged)."""
        self._record([(s.name, source_schemas[s.step_id]) for s in self.subjects
                      if s.schema is None and s.table is None and s.name not in self.versions
                      and s.step_id in source_schemas])

    def after_run(self, source_schemas: dict[str, pa.Schema]) -> None:
        """Record what only the run could tell: ``source_schemas`` (source step → the schema its first batch had)
        for sources without ``schema()`` not recorded while it ran, and the committed schema of tables whose
        input schema was unknown. Never raises: the run's data has landed; a problem is logged."""
        self.record_sources(source_schemas)
        late: list[tuple[str, pa.Schema]] = []
        for subject in self.subjects:
            if subject.schema is None and subject.table is not None:
                schema = _table_schema(subject.table)
                if schema is not None:
                    late.append((subject.name, schema))
        self._record(late)

    def _record(self, late: list[tuple[str, pa.Schema]]) -> None:
        if not late:
            return
        try:
            with SchemaRegistry(self.registry_url) as registry:
                for name, schema in late:
                    try:
                        self.versions[name] = registry.register(name, schema, registered_by=self.flow_name)
                    except SchemaCompatibilityError as exc:
                        log.error("dataflow %s: the schema seen at run time was not recorded: %s", self.flow_name, exc)
        except HeadwaterError as exc:
            log.error("dataflow %s: could not record run-time schemas: %s", self.flow_name, exc)


def first_batch_schemas(physical: PhysicalPlan, subtasks: Sequence[SubtaskMetrics]) -> dict[str, pa.Schema]:
    """Source step → the schema of its first batch, for sources that declared none (from the subtasks' figures)."""
    schemas: dict[str, pa.Schema] = {}
    stages = {stage.stage_id: stage for stage in physical.stages}
    for m in subtasks:
        stage = stages.get(m.stage_id)
        if m.source_schema is not None and stage is not None and stage.step_ids[0] not in schemas:
            schemas[stage.step_ids[0]] = pa.ipc.read_schema(pa.py_buffer(m.source_schema))
    return schemas


class FirstBatchRecorder:
    """While a job runs, records each schema-less source's first-batch schema as soon as the job's metrics show
    it (every ``interval_s``), and stops once every such source is recorded or the job ends (:meth:`stop`)."""

    def __init__(self, schemas: JobSchemas, physical: PhysicalPlan, metrics: Callable[[], list[SubtaskMetrics]],
                 interval_s: float = 1.0) -> None:
        self.schemas, self.physical, self.metrics, self.interval_s = schemas, physical, metrics, interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headwater-schemas", daemon=True)

    def start(self) -> FirstBatchRecorder:
        if self.schemas.unrecorded_sources():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s) and self.schemas.unrecorded_sources():
            try:
                seen = first_batch_schemas(self.physical, self.metrics())
            except Exception:  # noqa: BLE001 - between attempts the job answers nothing: look again later
                continue
            if seen:
                self.schemas.record_sources(seen)
