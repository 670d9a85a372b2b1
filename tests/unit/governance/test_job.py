"""The runner's governance hook on both executors: one START and one terminal event per run, a graceful stop
with a savepoint is COMPLETE (stopped, with the savepoint) and audited, and the store the events go to."""

from __future__ import annotations

import glob
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.governance.job import governance_store
from headwater.sinks import NullSink
from headwater.sources import NexmarkSource
from headwater.sources.testing import TestingSource
from headwater.store.audit import AuditLog

pytestmark = pytest.mark.lineage
SCHEMA = pa.schema([("user", pa.string()), ("price", pa.int64())])


def _events(store: Path) -> list[dict[str, Any]]:
    found = [json.loads(Path(p).read_text()) for p in glob.glob(str(store / "lineage" / "events" / "*.json"))]
    return sorted(found, key=lambda e: e["eventTime"])


def test_both_executors_emit_one_start_and_one_complete(runner: Any, tmp_path: Path) -> None:
    flow = hw.Dataflow("both")
    flow.source("in", TestingSource([{"user": "a", "price": 1}] * 5, schema=SCHEMA)).sink("out", NullSink())
    runner(flow, metrics_port=None, store=str(tmp_path))
    assert [e["eventType"] for e in _events(tmp_path)] == ["START", "COMPLETE"]
    assert [e.event for e in AuditLog(str(tmp_path)).entries()] == ["job_start", "job_stop"]


def test_a_stop_with_a_savepoint_is_complete_stopped_and_audited(tmp_path: Path) -> None:
    flow = hw.Dataflow("endless")
    flow.source("bids", NexmarkSource(events=None, rate=2_000, batch_size=100)).sink("out", NullSink())
    checkpoint = hw.CheckpointConfig(dir=str(tmp_path / "ckpt"), interval=timedelta(milliseconds=100))
    job = hw.start(flow, executor="local", metrics_port=None, store=str(tmp_path / "store"), checkpoint=checkpoint)
    time.sleep(0.5)
    job.stop(savepoint=True)
    result = job.wait(30)
    assert result.savepoint_path
    start, complete = _events(tmp_path / "store")
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["job"]["facets"]["jobType"]["processingType"] == "STREAMING"
    facts = complete["run"]["facets"]["headwater_run"]
    assert facts["stopped"] is True and facts["savepoint"] == result.savepoint_path
    log = AuditLog(str(tmp_path / "store"))
    assert [e.event for e in log.entries()] == ["job_start", "savepoint", "job_stop"]
    assert log.entries(event="savepoint")[0].fields["path"] == result.savepoint_path


def test_the_store_is_the_configs_then_the_tablesinks_then_the_default(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_STORE", str(tmp_path / "default"))
    flow = hw.Dataflow("where")
    source = flow.source("in", TestingSource([], schema=SCHEMA))
    source.sink("t", hw.TableSink("t", key=["user"], store=str(tmp_path / "tables")))
    assert governance_store(flow, hw.RunConfig(metrics_port=None)) == str(tmp_path / "tables")
    assert governance_store(flow, hw.RunConfig(metrics_port=None, store=str(tmp_path / "mine"))) == str(tmp_path / "mine")
    source.sink("u", hw.TableSink("u", key=["user"], store=str(tmp_path / "elsewhere")))
    assert governance_store(flow, hw.RunConfig(metrics_port=None)) == str(tmp_path / "default")


def test_a_stop_that_outlives_its_grace_is_abort(tmp_path: Path) -> None:
    from headwater.errors import StopTimeoutError

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(2.0)
        return batch

    flow = hw.Dataflow("hung")
    flow.source("bids", NexmarkSource(events=None, rate=1_000, batch_size=10)).map_batches(
        slow, step_id="slow").sink("out", NullSink())
    job = hw.start(flow, executor="local", metrics_port=None, store=str(tmp_path), stop_grace=0.2)
    time.sleep(0.3)
    job.stop()
    with pytest.raises(StopTimeoutError):
        job.wait(30)
    start, abort = _events(tmp_path)
    assert (start["eventType"], abort["eventType"]) == ("START", "ABORT")
    assert "StopTimeoutError" in abort["run"]["facets"]["errorMessage"]["message"]
    assert AuditLog(str(tmp_path)).entries(event="job_stop")[0].fields["state"] == "ABORT"
