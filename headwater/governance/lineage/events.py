"""OpenLineage run events of a job, and their emission through the openlineage-python client.

A run emits ``START`` when it begins and one terminal event when it ends: ``COMPLETE`` (it ended by itself, or was
stopped gracefully: drained and committed), ``FAIL`` (it raised) or ``ABORT`` (stopped abnormally: a second Ctrl-C
or a stop that outlived ``stop_grace``, whose in-flight output was discarded; the spec's "stopped abnormally").
Every event carries the job's input and output datasets with a ``schema`` facet where the schema is known and,
on outputs, a ``columnLineage`` facet where the plan knows it (:mod:`.columns`).

Transports: the file transport always, one JSON file per event under ``<store>/lineage/events/`` (what
``headwater lineage`` and ``GET /lineage/{dataset}`` read); the HTTP transport too when a collector URL is
configured (``RunConfig.lineage_url``, default ``$OPENLINEAGE_URL``; ``$OPENLINEAGE_ENDPOINT`` and
``$OPENLINEAGE_API_KEY`` as the client reads them). Invariant: emission never fails or slows the job. Events go
to a background thread; errors are logged (without secrets) and dropped; the job waits at most
``FLUSH_TIMEOUT`` seconds at its end for the queue to drain.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import traceback
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from headwater.governance.lineage.datasets import DatasetRef, strip_credentials
from headwater.store.audit import scrub

log = logging.getLogger("headwater.lineage")

LINEAGE_DIR = "lineage"
EVENTS_DIR = "events"
PRODUCER = "https://github.com/headwater/headwater"
JOB_NAMESPACE_ENV = "OPENLINEAGE_NAMESPACE"
FLUSH_TIMEOUT = 5.0
HTTP_TIMEOUT = 5.0


def events_dir(store_root: str) -> str:
    return os.path.join(store_root, LINEAGE_DIR, EVENTS_DIR)


def job_namespace() -> str:
    return os.environ.get(JOB_NAMESPACE_ENV) or "headwater"


def schema_fields(schema: pa.Schema | None) -> list[Any] | None:
    from openlineage.client.facet_v2 import schema_dataset

    if schema is None:
        return None
    return [schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]


def _dataset_facets(schema: pa.Schema | None) -> dict[str, Any]:
    from openlineage.client.facet_v2 import schema_dataset

    fields = schema_fields(schema)
    return {} if fields is None else {"schema": schema_dataset.SchemaDatasetFacet(fields=fields)}


def build_event(
    event_type: str, run_id: str, job_name: str, *, processing: str,
    inputs: list[tuple[DatasetRef, pa.Schema | None]],
    outputs: list[tuple[DatasetRef, pa.Schema | None, dict[str, Any] | None]],
    error: BaseException | None = None, run_facts: dict[str, Any] | None = None, event_time: str | None = None,
) -> Any:
    """One ``openlineage.client.event_v2.RunEvent`` (``outputs``: dataset, schema, columnLineage ``fields``)."""
    from openlineage.client import event_v2
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        error_message_run,
        job_type_job,
        processing_engine_run,
    )

    run_facets: dict[str, Any] = {"processing_engine": processing_engine_run.ProcessingEngineRunFacet(
        version=_headwater_version(), name="headwater", openlineageAdapterVersion=_client_version())}
    if error is not None:
        text = scrub(strip_credentials_in(f"{type(error).__name__}: {error}"))
        stack = scrub(strip_credentials_in("".join(traceback.format_exception(error))[-8000:]))
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=text, programmingLanguage="python", stackTrace=stack)
    out = []
    for ds, schema, lineage in outputs:
        facets = _dataset_facets(schema)
        if lineage:
            facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(fields={
                name: column_lineage_dataset.Fields(inputFields=[
                    column_lineage_dataset.InputField(
                        namespace=f["namespace"], name=f["name"], field=f["field"],
                        transformations=[column_lineage_dataset.Transformation(**t) for t in f["transformations"]])
                    for f in value["inputFields"]])
                for name, value in lineage.items()})
        out.append(event_v2.OutputDataset(namespace=ds.namespace, name=ds.name, facets=facets))
    job_facets: dict[str, Any] = {"jobType": job_type_job.JobTypeJobFacet(processingType=processing, integration="HEADWATER",
                                                          jobType="JOB")}
    if run_facts:
        run_facets["headwater_run"] = _HeadwaterRunFacet(run_facts)
    event = event_v2.RunEvent(
        eventType=event_v2.RunState[event_type], eventTime=event_time or datetime.now(UTC).isoformat(),
        run=event_v2.Run(runId=run_id, facets=run_facets),
        job=event_v2.Job(namespace=job_namespace(), name=job_name, facets=job_facets),
        inputs=[event_v2.InputDataset(namespace=d.namespace, name=d.name, facets=_dataset_facets(s)) for d, s in inputs],
        outputs=out, producer=PRODUCER)
    return event


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")


def strip_credentials_in(text: str) -> str:
    """Every URL in ``text`` without its user info and query string."""
    return _URL.sub(lambda m: strip_credentials(m.group(0)), text)


def _headwater_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headwater")
    except PackageNotFoundError:
        return "unknown"


def _client_version() -> str:
    from openlineage.client.constants import __version__

    return str(__version__)


_FACET_CLASS: list[Any] = []


def _HeadwaterRunFacet(facts: dict[str, Any]) -> Any:  # noqa: N802 - reads like the facet class it makes
    """A custom run facet (``headwater_run``): how the run ended (``stopped``, ``savepoint``, ``restarts``)."""
    if not _FACET_CLASS:
        import attr
        from openlineage.client.generated.base import RunFacet

        @attr.define
        class HeadwaterRunFacet(RunFacet):
            stopped: bool = False
            savepoint: str | None = None
            restarts: int = 0

            @staticmethod
            def _get_schema() -> str:
                return PRODUCER + "/blob/main/docs/governance.md#lineage"

        _FACET_CLASS.append(HeadwaterRunFacet)
    return _FACET_CLASS[0](**facts, producer=PRODUCER)


class LineageEmitter:
    """Sends a job's events to its transports from one background thread (see the module docstring)."""

    def __init__(self, store_root: str, job_name: str, run_id: str, url: str | None) -> None:
        self.directory = events_dir(store_root)
        self.url = url
        self._queue: queue.Queue[Any] = queue.Queue()
        self._clients: list[tuple[str, Any]] = []
        self._thread: threading.Thread | None = None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name)[:80]
        self._prefix = os.path.join(self.directory, f"{safe}-{run_id}")

    def _make_clients(self) -> None:
        from openlineage.client import OpenLineageClient
        from openlineage.client.transport.file import FileConfig, FileTransport

        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            self._clients.append(("file", OpenLineageClient(
                transport=FileTransport(FileConfig(log_file_path=self._prefix, append=False)))))
        except Exception as exc:  # noqa: BLE001 - lineage never fails the job
            log.warning("lineage: cannot write events to %s: %s", self.directory, exc)
        if self.url:
            try:
                from openlineage.client.transport.http import (
                    ApiKeyTokenProvider,
                    HttpConfig,
                    HttpTransport,
                    TokenProvider,
                )

                key = os.environ.get("OPENLINEAGE_API_KEY")
                auth = ApiKeyTokenProvider({"api_key": key}) if key else TokenProvider({})
                config = HttpConfig(url=self.url, endpoint=os.environ.get("OPENLINEAGE_ENDPOINT") or "api/v1/lineage",
                                    timeout=HTTP_TIMEOUT, auth=auth, retry={"total": 2, "backoff_factor": 0.2,
                                                                            "status_forcelist": [500, 502, 503, 504]})
                self._clients.append(("http", OpenLineageClient(transport=HttpTransport(config))))
            except Exception as exc:  # noqa: BLE001
                log.warning("lineage: cannot use the collector at %s: %s", strip_credentials(self.url),
                            scrub(str(exc)))

    def emit(self, event: Any) -> None:
        """Queue ``event`` (or a function making it, called in the background thread, so that importing and
        building cost the job nothing); never raises, never blocks."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="headwater-lineage", daemon=True)
            self._thread.start()
        self._queue.put(event)

    def _drain(self) -> None:
        self._make_clients()
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                event = item() if callable(item) else item
            except Exception as exc:  # noqa: BLE001 - lineage never fails the job
                log.warning("lineage: could not build an event: %s", scrub(strip_credentials_in(str(exc))))
                continue
            for kind, client in self._clients:
                try:
                    client.emit(event)
                except Exception as exc:  # noqa: BLE001 - lineage never fails the job
                    where = self.directory if kind == "file" else strip_credentials(self.url or "")
                    log.warning("lineage: could not emit the %s event to %s: %s", event.eventType.value, where,
                                scrub(strip_credentials_in(str(exc))))

    def close(self, timeout: float | None = None) -> bool:
        """Let the queued events go out, waiting at most ``timeout`` s (default :data:`FLUSH_TIMEOUT`); True when
        all went."""
        if self._thread is None:
            return True
        timeout = FLUSH_TIMEOUT if timeout is None else timeout
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("lineage: events still being sent after %.1fs; the job goes on without waiting", timeout)
            return False
        return True
