"""Kafka ingestion benchmark: KafkaSource → keyed aggregate → Parquet on Ray, beside a plain consumer loop.

    python benchmarks/kafka_source.py --records 2000000 --parallelism 2 --json
    python benchmarks/kafka_source.py --clients --records 300000 --json     # kafka-python vs confluent-kafka

Needs the broker of ``scripts/services.sh`` (``HEADWATER_KAFKA_BOOTSTRAP``, default 127.0.0.1:19092).

What is measured (one invocation, same topic, same machine):
* A fresh 2-partition topic is filled with ``records`` JSON values of ~100 bytes (``user``, ``item``, ``price``,
  ``ts``, ``note``) by a confluent-kafka producer (fill rate reported, not timed in the figures below).
* ``records_per_second``: records / wall time of ``hw.run`` (Ray started before) of KafkaSource(bounded) →
  ``key_by("user").aggregate(count, sum, max)`` → ParquetSink, checkpoints every second, ``parallelism``
  subtasks. It includes planning, worker start-up, decoding every value into Arrow and the final commit.
* ``reference_records_per_second``: a plain confluent-kafka consumer loop (both partitions assigned, batches of
  10,000 with ``consume()``, touching every value's bytes) reading the same topic in one process.
* ``--clients``: produce and consume rates of kafka-python and confluent-kafka over the same fresh topic, to
  show why the data path uses confluent-kafka (docs/connectors/kafka.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa  # noqa: E402

import headwater as hw  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks import ParquetSink  # noqa: E402
from headwater.sources import KafkaSource  # noqa: E402

BOOTSTRAP = os.environ.get("HEADWATER_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("price", pa.float64()), ("ts", pa.int64()),
                    ("note", pa.string())])


def value(i: int) -> bytes:
    return (b'{"user":%d,"item":%d,"price":%d.%02d,"ts":%d,"note":"%s"}'
            % (i % 10_007, i % 1_000_003, i % 997, i % 100, 1_700_000_000_000 + i, b"x" * 29))


def create_topic(partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"hw-bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # kept referenced until the future resolves
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=30)
    return name


def delete_topic(name: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.delete_topics([name])[name].result(timeout=30)


def fill_confluent(topic: str, records: int, partitions: int) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 1_000_000, "compression.type": "none"})
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value(i), partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 50_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return records / (time.perf_counter() - started)


def consume_confluent(topic: str, records: int, partitions: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = size = 0
    started = time.perf_counter()
    while seen < records:
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error() is None:
                size += len(message.value())
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def fill_kafka_python(topic: str, records: int, partitions: int) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20, batch_size=256 * 1024)
    started = time.perf_counter()
    for i in range(records):
        producer.send(topic, value(i), partition=i % partitions)
    producer.flush(120)
    producer.close()
    return records / (time.perf_counter() - started)


def consume_kafka_python(topic: str, records: int, partitions: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, max_poll_records=10_000)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    seen = size = 0
    started = time.perf_counter()
    while seen < records:
        for batch in consumer.poll(timeout_ms=1000).values():
            for message in batch:
                size += len(message.value)
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def run_headwater(topic: str, records: int, parallelism: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        flow = hw.Dataflow("kafka-ingest")
        (flow.source("events", KafkaSource(BOOTSTRAP, topic, schema=SCHEMA, bounded=True, metadata=()))
         .key_by("user").aggregate(step_id="per_user", events=hw.count(), spent=hw.sum("price"), top=hw.max("price"))
         .sink("out", ParquetSink(Path(tmp, "out"))))
        checkpoint = hw.CheckpointConfig(dir=Path(tmp, "ckpt"), interval=timedelta(seconds=1))
        started = time.perf_counter()
        result = hw.run(flow, parallelism=parallelism, checkpoint=checkpoint)
        elapsed = time.perf_counter() - started
        assert result.rows_out("events") == records, (result.rows_out("events"), records)
    return {"elapsed_s": elapsed, "records_per_second": records / elapsed, "rows_out": result.rows_out("per_user"),
            "latency_p99_ms": result.latency.summary()["p99_ms"]}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--clients", action="store_true", help="compare the two Kafka clients instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "kafka_clients" if args.clients else "kafka_source",
                              "records": args.records, "partitions": args.partitions, "value_bytes": len(value(123456)),
                              "machine": machine()}
    topic = create_topic(args.partitions)
    try:
        if args.clients:
            report["confluent_produce_per_second"] = fill_confluent(topic, args.records, args.partitions)
            report["confluent_consume_per_second"] = consume_confluent(topic, args.records, args.partitions)
            other = create_topic(args.partitions)
            try:
                report["kafka_python_produce_per_second"] = fill_kafka_python(other, args.records, args.partitions)
                report["kafka_python_consume_per_second"] = consume_kafka_python(other, args.records, args.partitions)
            finally:
                delete_topic(other)
            report["produce_ratio"] = report["confluent_produce_per_second"] / report["kafka_python_produce_per_second"]
            report["consume_ratio"] = report["confluent_consume_per_second"] / report["kafka_python_consume_per_second"]
        else:
            report["fill_records_per_second"] = fill_confluent(topic, args.records, args.partitions)
            report["reference_records_per_second"] = consume_confluent(topic, args.records, args.partitions)
            start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1024 * 1024 * 1024,
                            configure_logging=False, log_to_driver=False)
            import ray

            try:
                run_headwater(topic, args.records, args.parallelism)  # warm-up: worker processes, imports
                report.update(run_headwater(topic, args.records, args.parallelism))
            finally:
                ray.shutdown()
            report["parallelism"] = args.parallelism
            report["ratio_vs_reference"] = report["records_per_second"] / report["reference_records_per_second"]
    finally:
        delete_topic(topic)
    if args.json:
        print(json.dumps(report))
    else:
        for key, item in report.items():
            print(f"{key:<34} {item}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
