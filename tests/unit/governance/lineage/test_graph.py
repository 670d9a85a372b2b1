"""The lineage graph read back from stored events: upstream and downstream, transitively, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import headwater as hw
from headwater.governance.job import JobGovernance
from headwater.governance.lineage.graph import AmbiguousDatasetError, DatasetNotFoundError, LineageGraph
from headwater.sinks import ParquetSink
from headwater.sources import KafkaSource, ParquetSource

pytestmark = pytest.mark.lineage
SCHEMA = pa.schema([("user", pa.string()), ("price", pa.int64())])


def record(flow: hw.Dataflow, store: Path, fail: bool = False) -> None:
    """Emit a run's events as the runner does (no data moves: the lineage of a job is its plan's)."""
    governance = JobGovernance(flow, hw.RunConfig(metrics_port=None, store=str(store)))
    governance.started("local")
    governance.ended(error=RuntimeError("boom") if fail else None)


def pipeline(tmp_path: Path) -> Path:
    """topic orders → job ingest → dir stage/ → job daily → dir daily/ → job export → table exports (the store)."""
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    for name in ("stage", "daily"):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"user": ["a"], "price": [1]}), tmp_path / name / "part-0.parquet")
    ingest = hw.Dataflow("ingest")
    ingest.source("orders", KafkaSource("k:9092", "orders", schema=SCHEMA)).sink("out", ParquetSink(str(tmp_path / "stage")))
    daily = hw.Dataflow("daily")
    daily.source("stage", ParquetSource(str(tmp_path / "stage"))).sink("out", ParquetSink(str(tmp_path / "daily")))
    export = hw.Dataflow("export")
    export.source("daily", ParquetSource(str(tmp_path / "daily"))).sink(
        "out", hw.TableSink("exports", key=["user"], store=str(store)))
    record(ingest, store)
    record(daily, store)
    record(export, store, fail=True)
    return store


def test_upstream_and_downstream_are_transitive(tmp_path: Path) -> None:
    store = pipeline(tmp_path)
    graph = LineageGraph.load(str(store))
    exports = graph.lineage(graph.find("exports"))
    assert [(d["name"], d["depth"], d["via"]) for d in exports["upstream"]] == [
        (str(tmp_path / "daily"), 1, ["export"]), (str(tmp_path / "stage"), 2, ["daily"]), ("orders", 3, ["ingest"])]
    assert exports["downstream"] == []
    orders = graph.lineage(graph.find("orders"))
    assert [(d["name"], d["depth"]) for d in orders["downstream"]] == [
        (str(tmp_path / "stage"), 1), (str(tmp_path / "daily"), 2), ("exports", 3)]
    export_job = next(j for j in exports["jobs"] if j["name"] == "export")
    assert export_job["last_state"] == "FAIL" and export_job["runs"] == 1
    assert {j["name"] for j in orders["jobs"]} == {"ingest", "daily", "export"}


def test_unknown_and_ambiguous_datasets(tmp_path: Path) -> None:
    store = pipeline(tmp_path)
    graph = LineageGraph.load(str(store))
    with pytest.raises(DatasetNotFoundError, match="nope"):
        graph.find("nope")
    other = hw.Dataflow("other")
    other.source("orders", KafkaSource("elsewhere:9092", "orders", schema=SCHEMA)).sink(
        "out", hw.TableSink("other", key=["user"], store=str(store)))
    record(other, store)
    graph = LineageGraph.load(str(store))
    with pytest.raises(AmbiguousDatasetError, match="kafka://elsewhere:9092"):
        graph.find("orders")
    assert graph.find("orders", "kafka://elsewhere:9092").namespace == "kafka://elsewhere:9092"


def test_a_damaged_event_file_is_skipped(tmp_path: Path) -> None:
    store = pipeline(tmp_path)
    (store / "lineage" / "events" / "cut-short.json").write_text('{"eventType": "STA')
    graph = LineageGraph.load(str(store))
    assert graph.unreadable == 1 and graph.find("exports")


def test_the_cli_answers_in_text_and_json(tmp_path: Path) -> None:
    store = pipeline(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = [sys.executable, "-m", "headwater.cli", "lineage"]
    text = subprocess.run([*cli, "exports", "--store", str(store)], capture_output=True, text=True, env=env)
    assert text.returncode == 0 and "kafka://k:9092 orders  (via ingest)" in text.stdout
    as_json = subprocess.run([*cli, "orders", "--store", str(store), "--json"], capture_output=True, text=True,
                             env=env)
    assert json.loads(as_json.stdout)["downstream"][-1]["name"] == "exports"
    missing = subprocess.run([*cli, "nope", "--store", str(store)], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "DatasetNotFoundError" in missing.stderr
