"""The schema registry on the real PostgreSQL of ``scripts/services.sh`` (as on a cluster): versions,
compatibility, concurrent writers from several processes, and a job checked against it at build time.

Each test works in a PostgreSQL schema of its own (``search_path`` in the URL), dropped afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import SchemaCompatibilityError
from headwater.governance.schemas import SchemaRegistry
from headwater.testing import TestingSink, TestingSource

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
V1 = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.int32())])


@pytest.fixture
def pg_registry(pg_dsn: str) -> Iterator[str]:
    """A registry URL on the test PostgreSQL whose tables live in a fresh schema."""
    import sqlalchemy as sa

    name = f"hw_registry_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {name}"))
    url = f"{pg_dsn}?options=-csearch_path%3D{name}"
    try:
        yield url
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
        engine.dispose()


def test_versions_and_compatibility_on_postgresql(pg_registry: str) -> None:
    import sqlalchemy as sa

    with SchemaRegistry(pg_registry) as registry:
        assert registry.register("table:t", V1, "f") == 1
        assert registry.register("table:t", V1) == 1
        v2 = V1.set(1, pa.field("price", pa.int64()))
        assert registry.register("table:t", v2) == 2
        with pytest.raises(SchemaCompatibilityError, match="field 'price': type changed int64 → string"):
            registry.register("table:t", V1.set(1, pa.field("price", pa.string())))
        registry.set_mode("table:t", "full")
        assert [(v.version, v.schema) for v in registry.versions("table:t")] == [(1, V1), (2, v2)]
        assert registry.versions("table:t")[0].registered_at.tzinfo is not None
        assert registry.subjects()[0][1].value == "full"
    engine = sa.create_engine(pg_registry.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as c:  # the tables are where the URL put them, with their unique constraints
        names = {row[0] for row in c.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'headwater_schema_versions'::regclass"))}
    engine.dispose()
    assert {"headwater_schema_version_unique", "headwater_schema_fingerprint_unique"} <= names


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


def test_processes_racing_on_postgresql_make_no_duplicates(pg_registry: str) -> None:
    start = time.time() + 3.0  # every process has connected (and raced to create the tables) by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, pg_registry, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert json.loads(out) == [1, 2, 3, 4]
    with SchemaRegistry(pg_registry) as registry:
        assert [v.version for v in registry.versions("table:shared")] == [1, 2, 3, 4]


def test_a_job_is_checked_against_postgresql_at_build_time(pg_registry: str) -> None:
    def flow(schema: pa.Schema, rows: list[dict[str, object]]) -> hw.Dataflow:
        f = hw.Dataflow("pgshop")
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
        f.source("orders", TestingSource([batch], schema=schema)).sink("out", TestingSink())
        return f

    hw.run(flow(V1, [{"id": 1, "price": 2}]), executor="local", schema_registry=pg_registry)
    with pytest.raises(SchemaCompatibilityError, match="subject 'source:pgshop.orders'.*field 'key': added as required"):
        renamed = pa.schema([pa.field("key", pa.int64(), nullable=False), pa.field("id", pa.int64(), nullable=False)])
        hw.run(flow(renamed, [{"key": 1, "id": 2}]), executor="local", schema_registry=pg_registry)
