"""Dead letters of a KafkaSource, stored as Parquet, replayed after a schema fix: every record arrives once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import headwater as hw
from headwater import dlq
from headwater.sinks import ParquetSink
from headwater.sources import KafkaSource

pytestmark = pytest.mark.kafka


def _flow(bootstrap: str, topic: str, amount: pa.DataType, out: Path) -> hw.Dataflow:
    schema = pa.schema([pa.field("order", pa.int64(), nullable=False), pa.field("amount", amount)])
    flow = hw.Dataflow("orders")
    orders = flow.source("orders", KafkaSource(bootstrap, topic, schema=schema, bounded=True))
    orders.select("order", "offset").sink("out", ParquetSink(out / "out"))
    orders.dead_letters().sink("dlq", ParquetSink(out / "dlq"))
    return flow


def test_replay_after_a_schema_fix_delivers_each_dead_letter_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"hw-dlq-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i in range(40):
            amount = i + 0.5 if i % 4 == 0 else i  # every fourth amount is fractional: wrong for int64
            producer.produce(topic, json.dumps({"order": i, "amount": amount}).encode(), key=b"k%d" % i)
        producer.produce(topic, b"not json at all")
        assert producer.flush(30) == 0

        hw.run(_flow(kafka_bootstrap, topic, pa.int64(), tmp_path), executor="local")
        out = ds.dataset(tmp_path / "out", format="parquet", ignore_prefixes=["_"])
        assert sorted(out.to_table().column("order").to_pylist()) == [i for i in range(40) if i % 4]
        summary = dlq.summarize(tmp_path / "dlq").to_pylist()
        assert {(r["reason"], r["count"]) for r in summary} == {("wrong_type", 10), ("bad_format", 1)}

        fixed = _flow(kafka_bootstrap, topic, pa.float64(), tmp_path)
        for _ in range(2):  # the second replay finds nothing new to replay
            dlq.replay(fixed, "orders", tmp_path / "dlq", executor="local")
            table = ds.dataset(tmp_path / "out", format="parquet", ignore_prefixes=["_"]).to_table()
            assert sorted(table.column("order").to_pylist()) == list(range(40))
            assert sorted(table.column("offset").to_pylist()) == list(range(40))  # metadata kept from the letters
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
