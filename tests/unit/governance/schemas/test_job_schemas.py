"""The registry in a job's life: subjects checked and recorded when ``hw.run`` starts (an incompatible change
fails before any worker runs), schemas only the run knows recorded at its first batch (or when it ends), and the switch to turn it off."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import ConfigError, SchemaCompatibilityError
from headwater.governance.schemas import SchemaRegistry, flow_subjects
from headwater.sources.base import Source, SourcePartition
from headwater.testing import TestingSink, TestingSource


def _flow(schema: pa.Schema, rows: list[dict[str, object]], sink: TestingSink, *, declare: bool = True,
          table: tuple[str, str] | None = None) -> hw.Dataflow:
    flow = hw.Dataflow("shop")
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    orders = flow.source("orders", TestingSource([batch], schema=schema if declare else None))
    kept = orders.filter(hw.col("id") > 0)  # a generated id: not a subject
    kept.select("id", "price", step_id="priced").sink("out", sink)
    if table is not None:
        kept.sink("stored", hw.TableSink(table[1], key="id", store=table[0]))
    return flow


V1 = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.int64())])
ROWS = [{"id": 1, "price": 10}, {"id": 2, "price": 20}]


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "registry.db")
    monkeypatch.setenv("HEADWATER_SCHEMA_REGISTRY", path)
    return path


def test_a_job_records_its_subjects_once_per_schema(url: str, tmp_path: Path) -> None:
    sink = TestingSink()
    store = str(tmp_path / "store")
    for _ in range(2):
        hw.run(_flow(V1, ROWS, sink, table=(store, "orders")), executor="local")
    registry = SchemaRegistry(url)
    assert [(s, v) for s, _, v in registry.subjects()] == [
        ("source:shop.orders", 1), ("stream:shop.priced", 1), ("table:orders", 1)]
    assert registry.get("table:orders").schema == V1
    assert registry.get("stream:shop.priced").registered_by == "shop"


def test_an_incompatible_change_fails_the_build_before_any_worker_runs(url: str) -> None:
    hw.run(_flow(V1, ROWS, TestingSink()), executor="local")
    changed = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.string())])
    sink = TestingSink()
    with pytest.raises(SchemaCompatibilityError) as caught:
        hw.run(_flow(changed, [{"id": 1, "price": "ten"}], sink), executor="local")
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert "dataflow 'shop': 2 schema(s) break" in message and "nothing was recorded" in message
    assert "subject 'source:shop.orders' (backward compatibility)" in message
    assert "subject 'stream:shop.priced'" in message
    assert "field 'price': type changed int64 → string" in message
    assert "headwater schemas mode source:shop.orders none" in message
    assert sink.rows() == []  # no worker ran: nothing reached the sink
    assert [v for _, _, v in SchemaRegistry(url).subjects()] == [1, 1]


def test_the_fix_the_message_names_works(url: str) -> None:
    hw.run(_flow(V1, ROWS, TestingSink()), executor="local")
    required = V1.append(pa.field("currency", pa.string(), nullable=False))
    rows = [{**r, "currency": "EUR"} for r in ROWS]
    with pytest.raises(SchemaCompatibilityError, match="field 'currency': added as required"):
        hw.run(_flow(required, rows, TestingSink()), executor="local")
    nullable = V1.append(pa.field("currency", pa.string()))  # fix 1: make it nullable
    hw.run(_flow(nullable, rows, TestingSink()), executor="local")
    assert SchemaRegistry(url).get("source:shop.orders").version == 2
    registry = SchemaRegistry(url)
    registry.set_mode("source:shop.orders", "none")  # fix 3: set the mode
    with pytest.raises(SchemaCompatibilityError, match="stream:shop.priced"):  # the other subject still checks
        hw.run(_flow(V1.set(1, pa.field("price", pa.string())), [{"id": 1, "price": "x"}], TestingSink()),
               executor="local")


def test_sources_without_a_schema_are_recorded_from_their_first_batch(url: str, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    flow = _flow(V1, ROWS, TestingSink(), declare=False, table=(store, "late"))
    assert [(s.name, s.schema) for s in flow_subjects(flow)] == [("source:shop.orders", None), ("table:late", None)]
    hw.run(flow, executor="local")
    registry = SchemaRegistry(url)
    assert registry.get("source:shop.orders").schema == V1  # from the first batch
    assert registry.get("table:late").schema == V1          # from the committed table


class _OneBatchThenIdle(Source):
    """Unbounded, no declared schema: one batch, then nothing, until stopped."""

    bounded = False

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        return _OneBatchPartition()


class _OneBatchPartition(SourcePartition):
    def __init__(self) -> None:
        self.sent = False

    def next_batch(self) -> pa.RecordBatch | None:
        if self.sent:
            time.sleep(0.01)
            return None
        self.sent = True
        return pa.RecordBatch.from_pylist(ROWS, schema=V1)

    def snapshot(self) -> Any:
        return self.sent


def test_a_running_jobs_schema_less_source_is_recorded_at_its_first_batch_not_at_the_end(url: str) -> None:
    flow = hw.Dataflow("shop")
    flow.source("orders", _OneBatchThenIdle()).sink("out", TestingSink())
    job = hw.start(flow, executor="local")
    try:
        registry = SchemaRegistry(url)
        deadline = time.monotonic() + 30
        while "source:shop.orders" not in [s for s, _, _ in registry.subjects()] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registry.get("source:shop.orders").schema == V1, "recorded while the job still runs"
    finally:
        job.stop()
    job.wait(30)


def test_a_run_time_schema_that_breaks_the_mode_is_logged_not_recorded(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    hw.run(_flow(V1, ROWS, TestingSink(), declare=False), executor="local")
    changed = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.string())])
    with caplog.at_level(logging.ERROR, logger="headwater.governance.schemas"):
        hw.run(_flow(changed, [{"id": 1, "price": "x"}], TestingSink(), declare=False), executor="local")
    assert "field 'price': type changed int64 → string" in caplog.text
    assert SchemaRegistry(url).get("source:shop.orders").version == 1


def test_the_registry_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_SCHEMA_REGISTRY", "off")
    assert hw.RunConfig().schema_registry is None
    path = tmp_path / "explicit.db"
    hw.run(_flow(V1, ROWS, TestingSink()), executor="local", schema_registry=str(path))
    assert SchemaRegistry(str(path)).get("source:shop.orders").version == 1
    hw.run(_flow(V1.set(1, pa.field("price", pa.string())), [{"id": 1, "price": "x"}], TestingSink()),
           executor="local")  # off: nothing checked


def test_the_default_registry_lives_in_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_SCHEMA_REGISTRY", raising=False)
    monkeypatch.setenv("HEADWATER_STORE", str(tmp_path / "store"))
    assert hw.RunConfig().schema_registry == str(tmp_path / "store" / "registry.db")
    assert "registry" not in repr(hw.RunConfig())  # a URL may hold a password: not in the repr
    with pytest.raises(ConfigError, match="schema_registry must be"):
        hw.RunConfig(schema_registry="")


def test_on_ray_the_check_fails_before_ray_starts(url: str) -> None:
    import ray

    hw.run(_flow(V1, ROWS, TestingSink()), executor="local")
    before = ray.is_initialized()
    with pytest.raises(SchemaCompatibilityError, match="field 'price'"):
        hw.run(_flow(V1.set(1, pa.field("price", pa.string())), [{"id": 1, "price": "x"}], TestingSink()),
               executor="ray")
    assert ray.is_initialized() == before  # not started (nor joined) for a job refused at build time


def test_first_batch_schemas_reach_the_registry_on_both_executors(url: str, runner: Any) -> None:
    """The first batch's schema travels from the subtask (an actor on Ray) to the driver in its figures."""
    runner(_flow(V1, ROWS, TestingSink(), declare=False))
    assert SchemaRegistry(url).get("source:shop.orders").schema == V1


def test_the_mode_command_in_the_message_names_the_registry(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The fix the message gives is a command that works as printed, against the registry the job used."""
    import shlex

    from headwater.cli import main

    hw.run(_flow(V1, ROWS, TestingSink()), executor="local")
    changed = V1.set(1, pa.field("price", pa.string()))
    with pytest.raises(SchemaCompatibilityError) as caught:
        hw.run(_flow(changed, [{"id": 1, "price": "x"}], TestingSink()), executor="local")
    line = next(part for part in str(caught.value).split("; or set the subject's mode: ")[1:]
                if part.startswith("headwater schemas mode source:"))
    command = shlex.split(line.splitlines()[0])
    assert command[:4] == ["headwater", "schemas", "mode", "source:shop.orders"] and "--registry" in command
    assert main(command[1:]) == 0
    capsys.readouterr()
    with pytest.raises(SchemaCompatibilityError, match="stream:shop.priced"):  # the source is fixed, the step not
        hw.run(_flow(changed, [{"id": 1, "price": "x"}], TestingSink()), executor="local")
    assert SchemaRegistry(url).mode("source:shop.orders").value == "none"
