"""Lineage of real jobs on the in-process executor: a bounded Kafka topic aggregated into a table of the store
and into another topic gives START and COMPLETE with exactly those datasets (named per the OpenLineage
conventions, with schema and column lineage facets); the same job failing gives START and FAIL."""

from __future__ import annotations

import glob
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import UserCodeError
from headwater.governance.lineage.graph import LineageGraph
from headwater.sinks import KafkaSink
from headwater.sources import KafkaSource
from headwater.store.audit import AuditLog

pytestmark = [pytest.mark.kafka, pytest.mark.lineage]
SCHEMA = pa.schema([("user", pa.string()), ("price", pa.int64())])


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[tuple[str, str]]:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    names = (f"hw-lineage-in-{uuid.uuid4().hex[:8]}", f"hw-lineage-out-{uuid.uuid4().hex[:8]}")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for name in names:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(20):
        producer.produce(names[0], json.dumps({"user": f"u{i % 3}", "price": i}).encode())
    assert producer.flush(30) == 0
    yield names
    for name in names:
        admin.delete_topics([name])[name].result(timeout=30)


def job(bootstrap: str, topics: tuple[str, str], store: Path, fail: bool = False) -> hw.Dataflow:
    flow = hw.Dataflow("revenue")
    orders = flow.source("orders", KafkaSource(bootstrap, topics[0], schema=SCHEMA, bounded=True, metadata=()))
    if fail:
        def broken(batch: pa.RecordBatch) -> pa.RecordBatch:
            raise RuntimeError("the enrichment service is down")

        orders = orders.map_batches(broken, output_schema=SCHEMA, step_id="enrich")
    revenue = orders.key_by("user").aggregate(revenue=hw.sum("price"), step_id="by_user", emit="final")
    revenue.sink("table", hw.TableSink("revenue", key=["user"], store=str(store)))
    revenue.select("user", "revenue").sink("topic", KafkaSink(bootstrap, topics[1], key="user"))
    return flow


def events(store: Path) -> list[dict[str, Any]]:
    found = [json.loads(Path(p).read_text()) for p in glob.glob(str(store / "lineage" / "events" / "*.json"))]
    return sorted(found, key=lambda e: e["eventTime"])


def test_a_job_emits_start_and_complete_with_its_datasets(kafka_bootstrap: str, topics: tuple[str, str],
                                                           tmp_path: Path, openlineage: Any) -> None:
    result = hw.run(job(kafka_bootstrap, topics, tmp_path), executor="local", metrics_port=None)
    assert result.rows_in("table") == 3
    start, complete = events(tmp_path)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    host, _, port = kafka_bootstrap.split(",")[0].rpartition(":")
    kafka = f"kafka://{host}:{port}"
    for event in (start, complete):
        openlineage.validate(event)
        assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [(kafka, topics[0])]
        assert sorted((d["namespace"], d["name"]) for d in event["outputs"]) == sorted(
            [(f"headwater://{tmp_path}", "revenue"), (kafka, topics[1])])
    table = next(d for d in complete["outputs"] if d["name"] == "revenue")
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == ["user", "revenue"]
    fields = table["facets"]["columnLineage"]["fields"]
    assert fields["revenue"]["inputFields"] == [{"namespace": kafka, "name": topics[0], "field": "price",
                                                 "transformations": [{"type": "DIRECT", "subtype": "AGGREGATION"}]}]
    graph = LineageGraph.load(str(tmp_path))
    assert [d["name"] for d in graph.lineage(graph.find("revenue"))["upstream"]] == [topics[0]]
    assert [e.event for e in AuditLog(str(tmp_path)).entries()] == ["job_start", "job_stop"]


def test_a_failing_job_emits_fail(kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path,
                                  openlineage: Any) -> None:
    with pytest.raises(UserCodeError, match="enrichment service is down"):
        hw.run(job(kafka_bootstrap, topics, tmp_path, fail=True), executor="local", metrics_port=None)
    start, fail = events(tmp_path)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert "enrichment service is down" in fail["run"]["facets"]["errorMessage"]["message"]
    openlineage.validate(fail)
    [stop] = AuditLog(str(tmp_path)).entries(event="job_stop")
    assert stop.fields["state"] == "FAIL"
