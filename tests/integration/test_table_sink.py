"""TableSink end to end: ABORTs and a killed worker lose and duplicate nothing, on both executors; the same
checks as ParquetSink's (tests/integration/test_exactly_once.py)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import ConfigError
from headwater.store import Store
from headwater.testing import TestingSource

ABORT, PAUSE = TestingSource.ABORT, TestingSource.PAUSE
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("v", pa.int64())])


def flow(items: list[list[Any]], store: Path, batch_size: int = 3) -> hw.Dataflow:
    f = hw.Dataflow("tables")
    (f.source("in", TestingSource(partitions=items, batch_size=batch_size, schema=SCHEMA))
     .filter(hw.col("v") % 3 != 0)
     .sink("out", hw.TableSink("events", key=["k"], time="ts", store=store)))
    return f


def rows(n: int, part: int) -> list[dict[str, Any]]:
    return [{"k": f"k{i % 5}", "ts": BASE + timedelta(minutes=i), "v": i} for i in range(part, n, 2)]


def as_multiset(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(sorted(r.items())) for r in table.to_pylist())


def expected(parts: list[list[dict[str, Any]]]) -> Counter[tuple[Any, ...]]:
    return as_multiset(pa.Table.from_pylist([r for p in parts for r in p if r["v"] % 3 != 0], schema=SCHEMA))


def checkpointing(directory: Path, **options: Any) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, **{"interval": timedelta(milliseconds=10),
                                                 "restart_delay": timedelta(0), **options})


def assert_staging_clean(store: Path) -> None:
    left = [p.name for p in (store / "tables" / "events" / "_staging").rglob("*") if p.is_file() and p.name != "_owner"]
    assert left == [], f"staged files left behind: {left}"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_aborts_with_a_table_sink_commit_every_row_once(tmp_path_factory: pytest.TempPathFactory,
                                                       data: st.DataObject) -> None:
    base = tmp_path_factory.mktemp("table")
    parts = [rows(60, 0), rows(60, 1)]
    items: list[list[Any]] = [list(p) for p in parts]
    aborts = data.draw(st.integers(1, 3))
    for _ in range(aborts):
        part = data.draw(st.integers(0, 1))
        at = data.draw(st.integers(0, len(items[part])))
        items[part][at:at] = [PAUSE(0.02), ABORT()]
    result = hw.run(flow(items, base / "store"), executor="local", parallelism=2, checkpoint=checkpointing(base / "chk"))
    assert result.restarts == aborts
    store = Store(base / "store")
    assert as_multiset(store.scan("events")) == expected(parts)
    meta = store.table("events")
    assert meta.data_version >= 1 and meta.key == ("k",) and meta.time == "ts"
    assert_staging_clean(base / "store")


def test_a_rerun_of_a_finished_job_adds_nothing(tmp_path: Path) -> None:
    parts = [rows(30, 0), rows(30, 1)]
    config = checkpointing(tmp_path / "chk")
    hw.run(flow([list(p) for p in parts], tmp_path / "store"), executor="local", parallelism=2, checkpoint=config)
    version = Store(tmp_path / "store").table("events").data_version
    hw.run(flow([list(p) for p in parts], tmp_path / "store"), executor="local", parallelism=2, checkpoint=config)
    store = Store(tmp_path / "store")
    assert as_multiset(store.scan("events")) == expected(parts)
    assert store.table("events").data_version == version


def test_the_store_comes_from_the_environment_and_schemas_are_checked_at_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_STORE", str(tmp_path / "env-store"))
    sink = hw.TableSink("events", key=["k"], time="ts")
    assert sink.store == str(tmp_path / "env-store")
    f = hw.Dataflow("env")
    f.source("in", TestingSource(rows(10, 0), schema=SCHEMA)).sink("out", sink)
    hw.run(f, executor="local")
    assert Store().table("events").data_version == 1
    with pytest.raises(ConfigError, match="not in the input"):
        hw.Dataflow("bad").source("in", TestingSource([], schema=SCHEMA)).sink(
            "out", hw.TableSink("other", key=["user"]))
    narrower = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC"))])
    with pytest.raises(ConfigError, match="v missing"):
        hw.Dataflow("narrow").source("in", TestingSource([], schema=narrower)).sink(
            "out", hw.TableSink("events", key=["k"], time="ts"))
    with pytest.raises(ConfigError, match="key and time column cannot change"):
        hw.Dataflow("rekey").source("in", TestingSource([], schema=SCHEMA)).sink(
            "out", hw.TableSink("events", key=["v"], time="ts"))


@pytest.mark.ray
@pytest.mark.chaos
def test_aborts_with_a_table_sink_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    parts = [rows(200, 0), rows(200, 1)]
    items = [parts[0][:30] + [PAUSE(0.5), ABORT()] + parts[0][30:], parts[1][:60] + [PAUSE(0.8), ABORT()] + parts[1][60:]]
    result = hw.run(flow(items, tmp_path / "store", batch_size=5), executor="ray", parallelism=2,
                    checkpoint=checkpointing(tmp_path / "chk"))
    assert result.restarts >= 1
    assert as_multiset(Store(tmp_path / "store").scan("events")) == expected(parts)
    assert_staging_clean(tmp_path / "store")


@pytest.mark.ray
@pytest.mark.chaos
def test_a_killed_worker_with_a_table_sink_loses_and_duplicates_nothing(ray_cluster: Any, tmp_path: Path) -> None:
    import ray

    parts = [rows(1_200, 0), rows(1_200, 1)]
    paced = [[x for r in p for x in (r, PAUSE(0.004))] for p in parts]  # ~2.5 s per partition: time for a kill
    job = hw.start(flow(paced, tmp_path / "store", batch_size=20), executor="ray", parallelism=2,
                   checkpoint=checkpointing(tmp_path / "chk", interval=timedelta(milliseconds=200), max_restarts=5))
    deadline = time.monotonic() + 60
    killed = False
    while not killed and time.monotonic() < deadline:
        time.sleep(0.8)
        actors = job.actors()
        store = Store(tmp_path / "store")
        if actors and "events" in store.tables():  # something is committed already
            ray.kill(actors[sorted(actors)[-1]], no_restart=True)
            killed = True
    result = job.wait()
    assert killed and result.restarts >= 1
    assert as_multiset(Store(tmp_path / "store").scan("events")) == expected(parts)
    assert_staging_clean(tmp_path / "store")
