"""The registry's store: versions, idempotent registration, modes, errors, and concurrent writers (threads and
processes) on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.errors import SchemaCompatibilityError, SchemaRegistryError, UnknownSchemaError
from headwater.governance.schemas import Compatibility, SchemaRegistry

ROOT = Path(__file__).resolve().parents[4]
V1 = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])
V2 = V1.append(pa.field("score", pa.float64()))


@pytest.fixture
def registry(tmp_path: Path) -> SchemaRegistry:
    return SchemaRegistry(str(tmp_path / "registry.db"))


def test_the_same_schema_is_the_same_version(registry: SchemaRegistry) -> None:
    assert registry.register("source:f.in", V1, "f") == 1
    assert registry.register("source:f.in", V1.with_metadata({"k": "v"}), "g") == 1  # metadata is not the schema
    assert registry.register("source:f.in", V2, "f") == 2
    assert registry.register("source:f.in", V2) == 2
    versions = registry.versions("source:f.in")
    assert [(v.version, v.schema, v.registered_by) for v in versions] == [(1, V1, "f"), (2, V2, "f")]
    assert registry.get("source:f.in").version == 2 and registry.get("source:f.in", 1).schema == V1
    assert versions[0].registered_at.tzinfo is not None
    assert registry.subjects() == [("source:f.in", Compatibility.BACKWARD, 2)]


def test_going_back_to_an_older_version_is_checked_against_the_latest(registry: SchemaRegistry) -> None:
    registry.register("t", V1)
    registry.register("t", V1.remove(1))  # drop the nullable 'name': backward allows it
    assert registry.register("t", V1) == 1  # 'name' comes back nullable: allowed, and it is version 1 again
    required = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    registry.set_mode("u", "backward")
    registry.register("u", required.append(pa.field("x", pa.int64(), nullable=False)))
    registry.register("u", required)  # removed the required 'x'
    with pytest.raises(SchemaCompatibilityError, match="field 'x': added as required"):
        registry.register("u", required.append(pa.field("x", pa.int64(), nullable=False)))  # back: adds required x


def test_a_mode_set_before_the_first_version_holds(registry: SchemaRegistry) -> None:
    registry.set_mode("table:t", "full")
    assert registry.mode("table:t") is Compatibility.FULL
    assert registry.subjects() == [("table:t", Compatibility.FULL, 0)]
    with pytest.raises(UnknownSchemaError, match="has no versions yet"):
        registry.get("table:t")
    registry.register("table:t", V1)
    with pytest.raises(SchemaCompatibilityError, match=r"\(full compatibility\)"):
        registry.register("table:t", V1.remove(0))  # removing the required 'id' breaks forward
    registry.set_mode("table:t", Compatibility.NONE)
    assert registry.register("table:t", V1.remove(0)) == 2
    assert registry.mode("never-seen") is Compatibility.BACKWARD


def test_unknown_subjects_and_versions_are_clear_errors(registry: SchemaRegistry) -> None:
    registry.register("source:shop.orders", V1)
    with pytest.raises(UnknownSchemaError, match=r"no subject 'source:shop.order'; did you mean 'source:shop.orders'"):
        registry.versions("source:shop.order")
    with pytest.raises(UnknownSchemaError, match=r"has no version 3 \(it has 1..1\)"):
        registry.get("source:shop.orders", 3)


def test_a_bad_url_is_a_registry_error_without_the_password() -> None:
    with pytest.raises(SchemaRegistryError, match="not a SQLAlchemy URL"):
        SchemaRegistry("::not a url://")
    with pytest.raises(SchemaRegistryError) as caught:
        SchemaRegistry("postgresql://user:s3cret@127.0.0.1:1/none")  # nothing listens on port 1
    message = str(caught.value)
    assert "s3cret" not in message and "user:***@127.0.0.1:1" in message
    assert "Connection refused" in message and "The registry cannot be opened: check its URL" in message


def test_threads_registering_one_schema_make_one_version(tmp_path: Path) -> None:
    url = str(tmp_path / "registry.db")
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def register() -> None:
        try:
            registry = SchemaRegistry(url)  # each thread its own engine, as separate drivers would have
            start.wait()
            results.append(registry.register("stream:f.s", V1))
            results.append(registry.register("stream:f.s", V2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results) == [1] * 8 + [2] * 8
    assert [v.version for v in SchemaRegistry(url).versions("stream:f.s")] == [1, 2]


WORKER = textwrap.dedent("""
    import json, sys, time
    import pyarrow as pa
    from headwater.governance.schemas import SchemaRegistry
    url, start = sys.argv[1], float(sys.argv[2])
    registry = SchemaRegistry(url)
    schemas = [pa.schema([pa.field("id", pa.int64())] + [pa.field(f"c{i}", pa.string()) for i in range(n)])
               for n in range(4)]
    while time.time() < start:
        time.sleep(0.001)
    print(json.dumps([registry.register("table:shared", s, "p") for s in schemas]))
""")


def test_processes_registering_at_once_make_no_duplicate_versions(tmp_path: Path) -> None:
    """Four processes race to register the same four (compatible) schemas in order: the unique constraints and
    the retry give each schema exactly one version, 1..4, and every process agrees on them."""
    url = str(tmp_path / "registry.db")
    SchemaRegistry(url).close()  # the tables exist; the race is about versions
    start = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert json.loads(out) == [1, 2, 3, 4]
    versions = SchemaRegistry(url).versions("table:shared")
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert len({v.fingerprint for v in versions}) == 4


def test_a_lost_race_is_retried_from_a_fresh_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministically: another writer registers between this writer's read and its insert. The insert hits
    the unique constraint, and the retry finds the other's version (same schema) or checks against it."""
    url = str(tmp_path / "registry.db")
    mine, other = SchemaRegistry(url), SchemaRegistry(url)
    real = SchemaRegistry._problems
    calls = {"n": 0}

    def racing(self: SchemaRegistry, c: object, subject: str, schema: pa.Schema) -> object:
        found = real(self, c, subject, schema)  # type: ignore[arg-type]
        calls["n"] += 1
        if self is mine and calls["n"] == 1:
            other.register(subject, schema, "other")  # lands after our read, before our insert
        if self is mine and calls["n"] == 3:
            other.register(subject, V2.append(pa.field("late", pa.string())), "other")
        return found

    monkeypatch.setattr(SchemaRegistry, "_problems", racing)
    assert mine.register("s", V1, "mine") == 1  # attempt 1 loses, attempt 2 finds the other's version 1
    assert mine.register("s", V2, "mine") == 3  # attempt 1 loses version 2 to the other's schema; takes 3
    versions = mine.versions("s")
    assert [(v.version, v.registered_by) for v in versions] == [(1, "other"), (2, "other"), (3, "mine")]
