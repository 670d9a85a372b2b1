"""Run events: START and a terminal event per run through the file transport (and HTTP to a real local collector
endpoint), valid OpenLineage, no secrets, and emission that never fails or slows the job."""

from __future__ import annotations

import glob
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import StopTimeoutError, UserCodeError
from headwater.governance.job import ending
from headwater.sources import KafkaSource
from headwater.sources.testing import TestingSource
from headwater.store.audit import AuditLog

pytestmark = pytest.mark.lineage
SCHEMA = pa.schema([("user", pa.string()), ("price", pa.int64())])
ROWS = [{"user": "a", "price": 1}, {"user": "b", "price": 2}, {"user": "a", "price": 3}]


def flow_into(store: Path, fail: bool = False) -> hw.Dataflow:
    flow = hw.Dataflow("orders-job")
    orders = flow.source("orders", TestingSource(ROWS, schema=SCHEMA))

    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("cannot reach postgresql://app:hunter2@db.internal:5432/shop")

    if fail:
        orders = orders.map_batches(explode, output_schema=SCHEMA, step_id="explode")
    totals = orders.key_by("user").aggregate(total=hw.sum("price"), step_id="totals", emit="final")
    totals.sink("out", hw.TableSink("totals", key=["user"], store=str(store)))
    return flow


def events(store: Path) -> list[dict[str, Any]]:
    found = [json.loads(Path(p).read_text()) for p in glob.glob(str(store / "lineage" / "events" / "*.json"))]
    return sorted(found, key=lambda e: e["eventTime"])


def test_a_run_emits_start_and_complete_with_its_datasets(tmp_path: Path, openlineage: Any) -> None:
    hw.run(flow_into(tmp_path), executor="local", metrics_port=None)
    start, complete = events(tmp_path)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert start["job"] == complete["job"] and start["job"]["name"] == "orders-job"
    assert start["job"]["namespace"] == "headwater"
    [source] = complete["inputs"]
    assert (source["namespace"], source["name"]) == ("inmemory://", "orders-job.orders")
    assert [f["name"] for f in source["facets"]["schema"]["fields"]] == ["user", "price"]
    [out] = complete["outputs"]
    assert (out["namespace"], out["name"]) == (f"headwater://{tmp_path}", "totals")
    assert [(f["name"], f["type"]) for f in out["facets"]["schema"]["fields"]] == [("user", "string"),
                                                                                   ("total", "int64")]
    lineage = out["facets"]["columnLineage"]["fields"]
    assert lineage["total"]["inputFields"][0]["field"] == "price"
    assert lineage["total"]["inputFields"][0]["transformations"] == [{"type": "DIRECT", "subtype": "AGGREGATION"}]
    assert complete["run"]["facets"]["headwater_run"]["stopped"] is False
    for event in (start, complete):
        openlineage.validate(event)
    entries = AuditLog(str(tmp_path)).entries()
    assert [e.event for e in entries] == ["job_start", "job_stop"]
    assert entries[1].fields["state"] == "COMPLETE" and entries[0].fields["run_id"] == start["run"]["runId"]


def test_events_validate_against_the_openlineage_json_schema(tmp_path: Path, openlineage: Any) -> None:
    if not openlineage.full:
        pytest.skip("!!! the OpenLineage spec's JSON schema files are not at $OPENLINEAGE_SPEC_DIR or "
                    "shared/openlineage-spec (OpenLineage.json, facets/*.json): only the run-event shape was checked !!!")
    hw.run(flow_into(tmp_path), executor="local", metrics_port=None)
    with pytest.raises(UserCodeError):
        hw.run(flow_into(tmp_path / "failed", fail=True), executor="local", metrics_port=None)
    found = events(tmp_path) + events(tmp_path / "failed")
    assert [e["eventType"] for e in found] == ["START", "COMPLETE", "START", "FAIL"]
    for event in found:
        openlineage.validate(event)
    broken = {**found[0], "eventType": "FINISHED"}
    with pytest.raises(Exception, match="FINISHED"):
        openlineage.validate(broken)


def test_a_failed_run_emits_fail_with_its_error_and_no_secret(tmp_path: Path, openlineage: Any) -> None:
    with pytest.raises(UserCodeError):
        hw.run(flow_into(tmp_path, fail=True), executor="local", metrics_port=None)
    start, fail = events(tmp_path)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    message = fail["run"]["facets"]["errorMessage"]["message"]
    assert "UserCodeError" in message and "explode" in message and "db.internal" in message
    text = json.dumps(fail)
    assert "hunter2" not in text and "app:" not in text
    openlineage.validate(fail)
    stop = AuditLog(str(tmp_path)).entries(event="job_stop")[-1]
    assert stop.fields["state"] == "FAIL" and "hunter2" not in json.dumps(stop.to_json())


def test_a_stop_that_discards_output_is_abort() -> None:
    assert ending(None) == "COMPLETE"
    assert ending(KeyboardInterrupt()) == "ABORT"
    assert ending(StopTimeoutError("step 'x' was busy")) == "ABORT"
    assert ending(ValueError("x")) == "FAIL"


def test_kafka_credentials_never_reach_an_event(tmp_path: Path) -> None:
    from headwater.governance.job import JobGovernance

    flow = hw.Dataflow("kafka-job")
    source = KafkaSource("broker.internal:9093", "orders", schema=SCHEMA, security_protocol="SASL_SSL",
                         sasl_mechanism="PLAIN", sasl_username="app", sasl_password="hunter2")
    flow.source("orders", source).sink("out", hw.TableSink("t", key=["user"], store=str(tmp_path)))
    governance = JobGovernance(flow, hw.RunConfig(metrics_port=None))
    governance.started("local")
    governance.ended(error=RuntimeError("SASL auth failed for kafka://app:hunter2@broker.internal:9093"))
    found = events(tmp_path)
    assert [e["eventType"] for e in found] == ["START", "FAIL"]
    assert found[0]["inputs"][0]["namespace"] == "kafka://broker.internal:9093"
    assert "hunter2" not in json.dumps(found) and b"hunter2" not in b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))


def test_lineage_can_be_turned_off(tmp_path: Path) -> None:
    hw.run(flow_into(tmp_path), executor="local", metrics_port=None, lineage=False)
    assert events(tmp_path) == [] and AuditLog(str(tmp_path)).entries() == []


class Collector:
    """A real HTTP endpoint on 127.0.0.1 that records what is POSTed to it (as a collector like Marquez would)."""

    def __init__(self, status: int = 201, delay: float = 0.0) -> None:
        self.posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay)
                outer.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


@pytest.mark.http
def test_events_go_to_an_http_collector_too(tmp_path: Path, collector: Collector, openlineage: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "collector-key")
    hw.run(flow_into(tmp_path), executor="local", metrics_port=None, lineage_url=collector.url)
    assert [(path, body["eventType"]) for path, _, body in collector.posts] == [
        ("/api/v1/lineage", "START"), ("/api/v1/lineage", "COMPLETE")]
    headers = {k.lower(): v for k, v in collector.posts[0][1].items()}
    assert headers["authorization"] == "Bearer collector-key"
    assert [e["run"]["runId"] for e in events(tmp_path)] == [b["run"]["runId"] for _, _, b in collector.posts]
    for _, _, body in collector.posts:
        openlineage.validate(body)


@pytest.mark.http
def test_the_url_comes_from_openlineage_url(tmp_path: Path, collector: Collector,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_URL", collector.url)
    hw.run(flow_into(tmp_path), executor="local", metrics_port=None)
    assert [b["eventType"] for _, _, b in collector.posts] == ["START", "COMPLETE"]


@pytest.mark.http
def test_a_failing_or_missing_collector_never_fails_or_slows_the_job(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with Collector(status=500) as failing:
        started = time.monotonic()
        result = hw.run(flow_into(tmp_path / "a"), executor="local", metrics_port=None,
                        lineage_url=failing.url.replace("http://", "http://user:secret-pw@"))
        assert result.rows_in("out") == 2 and time.monotonic() - started < 15
    with caplog.at_level(logging.WARNING, logger="headwater.lineage"):
        hw.run(flow_into(tmp_path / "b"), executor="local", metrics_port=None, lineage_url="http://127.0.0.1:9")
    assert len(events(tmp_path / "a")) == 2 and len(events(tmp_path / "b")) == 2  # the file transport still wrote
    assert "could not emit" in caplog.text and "secret-pw" not in caplog.text


def test_a_slow_collector_does_not_hold_the_job_beyond_the_flush_timeout(tmp_path: Path) -> None:
    from headwater.governance.lineage import events as module

    with Collector(delay=30.0) as slow:
        old = module.FLUSH_TIMEOUT
        module.FLUSH_TIMEOUT = 0.5
        try:
            started = time.monotonic()
            hw.run(flow_into(tmp_path), executor="local", metrics_port=None, lineage_url=slow.url)
            assert time.monotonic() - started < 10
        finally:
            module.FLUSH_TIMEOUT = old


def test_a_bad_collector_url_is_a_config_error() -> None:
    from headwater.errors import ConfigError

    with pytest.raises(ConfigError, match="lineage_url"):
        hw.RunConfig(lineage_url="ftp://user:pw@x")
