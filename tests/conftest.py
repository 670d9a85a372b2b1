"""Shared fixtures: one Ray cluster for the whole session, and a runner that executes a dataflow both
in-process and on Ray so the same test proves both executors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import headwater as hw
from headwater.engine.job import JobResult

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A run that starts Ray in a test (or in a program a test starts) gets a Ray of its own, stopped when it ends:
# no kept local Ray outlives the tests, and none is needed. The kept Ray's own tests opt in explicitly.
os.environ["HEADWATER_KEEP_LOCAL_RAY"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _temporary_directories_under_pytest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """TestingSource/TestingSink make temporary directories; keep them under pytest's (cleaned) base."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tempfile.tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _default_store_under_pytest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every run records lineage events and audit entries in its store (by default ``$HEADWATER_STORE``): keep the
    tests' out of the working tree."""
    if os.environ.get("HEADWATER_STORE"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADWATER_STORE", str(tmp_path_factory.mktemp("default-store")))
        yield


@pytest.fixture(autouse=True)
def _no_schema_registry_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests' jobs check and record no schemas (``HEADWATER_SCHEMA_REGISTRY=off``) unless the test points the
    registry somewhere itself (the governance tests do): tests reuse dataflow and step names with other schemas,
    even within one test (hypothesis examples), which a registry rightly refuses."""
    if "HEADWATER_SCHEMA_REGISTRY" not in os.environ:
        monkeypatch.setenv("HEADWATER_SCHEMA_REGISTRY", "off")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Ray with explicit CPUs and a capped object store, shared by every test and shut down at the end.

    Started as Headwater starts one (token authentication on, reaper), so the tests run as users do."""
    import ray

    from headwater.engine.ray.cluster import start_local_ray

    local = None
    if not ray.is_initialized():
        local = start_local_ray(
            num_cpus=2,
            object_store_memory=300 * 1024 * 1024,
            temp_dir=tmp_path_factory.mktemp("ray"),
            configure_logging=False,
            log_to_driver=True,
        )
    yield ray
    if local is not None:
        local.shutdown()
    else:
        ray.shutdown()


Runner = Callable[..., JobResult]


@pytest.fixture(params=["local", "ray"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """``runner(flow, **options)``: run with the in-process executor, then (second param) on Ray."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        request.node.add_marker(pytest.mark.ray)

        def run_on_ray(flow: hw.Dataflow, **options: Any) -> JobResult:
            return hw.run(flow, executor="ray", **options)

        return run_on_ray

    def run_local(flow: hw.Dataflow, **options: Any) -> JobResult:
        return hw.run(flow, executor="local", **options)

    return run_local


# -- OpenLineage events ---------------------------------------------------------------------------------------------
#: where the OpenLineage spec's JSON schema files are (OpenLineage.json and facets/*.json, Apache-2.0, from
#: github.com/OpenLineage/OpenLineage spec/): $OPENLINEAGE_SPEC_DIR, else shared/openlineage-spec beside the repo
OPENLINEAGE_SPEC_DIR = Path(os.environ.get("OPENLINEAGE_SPEC_DIR")
                            or Path(__file__).resolve().parents[1].parent / "shared" / "openlineage-spec")
#: the shape every run event must have whatever the spec files' presence (the spec's required fields)
RUN_EVENT_SHAPE: dict[str, Any] = {
    "type": "object",
    "required": ["eventTime", "eventType", "producer", "schemaURL", "run", "job", "inputs", "outputs"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "format": "uuid"}, "facets": {"$ref": "#/$defs/facets"}}},
        "job": {"type": "object", "required": ["namespace", "name"], "properties": {"facets": {"$ref": "#/$defs/facets"}}},
        "inputs": {"type": "array", "items": {"$ref": "#/$defs/dataset"}},
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/dataset"}},
    },
    "$defs": {
        "facets": {"type": "object", "additionalProperties": {"type": "object", "required": ["_producer", "_schemaURL"]}},
        "dataset": {"type": "object", "required": ["namespace", "name"],
                    "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                                   "facets": {"allOf": [{"$ref": "#/$defs/facets"}, {"$ref": "#/$defs/dataset_facets"}]}}},
        # the two dataset facets Headwater emits, as the spec's SchemaDatasetFacet and ColumnLineageDatasetFacet
        # (1-2-0) define their required parts
        "dataset_facets": {"type": "object", "properties": {
            "schema": {"type": "object", "required": ["fields"], "properties": {"fields": {
                "type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}}}},
            "columnLineage": {"type": "object", "required": ["fields"], "properties": {"fields": {
                "type": "object", "additionalProperties": {
                    "type": "object", "required": ["inputFields"], "properties": {"inputFields": {
                        "type": "array", "items": {
                            "type": "object", "required": ["namespace", "name", "field"],
                            "properties": {"transformations": {"type": "array", "items": {
                                "type": "object", "required": ["type"],
                                "properties": {"type": {"enum": ["DIRECT", "INDIRECT"]}}}}}}}}}}}},
        }},
    },
}


class OpenLineageValidator:
    """``validate(event)``: the event has the run event's shape and, when the spec's files are at
    :data:`OPENLINEAGE_SPEC_DIR` (``full``), validates against ``OpenLineage.json`` and each facet against its own
    schema (facets whose schema is not a spec file must be Headwater's own)."""

    def __init__(self, spec_dir: Path) -> None:
        import json

        from referencing import Registry, Resource

        self.ids: set[str] = set()
        self.registry: Any = None
        files = [spec_dir / "OpenLineage.json", *sorted((spec_dir / "facets").glob("*.json"))]
        self.full = all(f.is_file() for f in files[:1])
        if self.full:
            resources = []
            for path in files:
                document = json.loads(path.read_text())
                self.ids.add(document["$id"])
                resources.append((document["$id"], Resource.from_contents(document)))
            self.registry = Registry().with_resources(resources)

    def validate(self, event: dict[str, Any]) -> None:
        import jsonschema

        jsonschema.Draft202012Validator(RUN_EVENT_SHAPE, format_checker=jsonschema.FormatChecker()).validate(event)
        if not self.full:
            return
        main = next(i for i in self.ids if i.endswith("/OpenLineage.json"))
        jsonschema.Draft202012Validator({"$ref": main}, registry=self.registry).validate(event)
        holders = [event["run"], event["job"], *event["inputs"], *event["outputs"]]
        for holder in holders:
            for name, facet in (holder.get("facets") or {}).items():
                base = facet["_schemaURL"].partition("#")[0]
                if base in self.ids:
                    jsonschema.Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=self.registry).validate(facet)
                else:
                    assert name == "headwater_run", f"facet {name!r} has a schema that is not a spec file: {base}"


@pytest.fixture(scope="session")
def openlineage() -> OpenLineageValidator:
    return OpenLineageValidator(OPENLINEAGE_SPEC_DIR)
