"""Kafka → Kafka exactly-once latency: KafkaSource → light transform → KafkaSink on Ray, at a steady rate.

    python benchmarks/kafka_to_kafka.py --rate 10000 --duration 30 --interval 1.0 --parallelism 2 --json

Needs the broker of ``scripts/services.sh`` (``HEADWATER_KAFKA_BOOTSTRAP``, default 127.0.0.1:19092).

What is measured (one invocation, same machine, same records):
* A producer thread writes ``rate`` JSON records/s (ticks of 10 ms) to a fresh 2-partition input topic for
  ``warmup + duration`` seconds; each value carries its produce time (``ts_us``, wall clock, microseconds).
* The job (``hw.start`` on a local Ray, checkpoints every ``interval`` s, ``parallelism`` subtasks): KafkaSource
  (unbounded) → ``with_columns(id2=id*2)`` → KafkaSink (json) to a fresh 2-partition output topic.
* ``latency_*``: per record, the time a ``read_committed`` consumer of the output topic first sees it minus its
  ``ts_us`` — source-to-committed, including the wait for the checkpoint and the Kafka transaction. Records of
  the warm-up (job start-up, first checkpoints) are left out.
* ``reference_latency_*``: in the same run, a plain ``read_committed`` consumer of the *input* topic: the same
  records' produce → consume latency without the engine (what Kafka alone costs here).
* ``checkpoint_duration_*``: trigger to completion of the job's checkpoints (the sink's commit comes after).
* ``missing`` / ``duplicates``: measured records never seen / seen more than once on the output topic (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import headwater as hw  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks import KafkaSink  # noqa: E402
from headwater.sources import KafkaSource  # noqa: E402

BOOTSTRAP = os.environ.get("HEADWATER_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
SCHEMA = pa.schema([("id", pa.int64()), ("ts_us", pa.int64()), ("note", pa.string())])


def create_topic(partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"hw-bench-k2k-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=30)
    return name


def delete_topic(name: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.delete_topics([name])[name].result(timeout=30)


def produce(topic: str, rate: int, seconds: float, partitions: int, sent: list[int]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 1, "acks": "all"})
    per_tick = max(1, rate // 100)
    start = time.monotonic()
    i = 0
    tick = 0
    while time.monotonic() - start < seconds:
        now_us = int(time.time() * 1e6)
        for _ in range(per_tick):
            producer.produce(topic, b'{"id":%d,"ts_us":%d,"note":"%s"}' % (i, now_us, b"x" * 40),
                             partition=i % partitions)
            i += 1
        producer.poll(0)
        tick += 1
        pause = start + tick * 0.01 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    producer.flush(30)
    sent.append(i)


def observe(topic: str, partitions: int, stop: threading.Event, seen: dict[int, list[float]]) -> None:
    """Record, per id, the wall-clock latencies (s) at which a read_committed consumer sees it."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"hw-bench-{uuid.uuid4().hex[:6]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10, "fetch.min.bytes": 1})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    try:
        while not stop.is_set():
            for message in consumer.consume(num_messages=10_000, timeout=0.05):
                if message.error() is not None:
                    continue
                now = time.time()
                record = json.loads(message.value())
                seen.setdefault(record["id"], []).append(now - record["ts_us"] / 1e6)
    finally:
        consumer.close()


def percentiles(values: list[float], prefix: str) -> dict[str, float]:
    array = np.asarray(values) * 1000
    return {f"{prefix}p50_ms": float(np.percentile(array, 50)), f"{prefix}p95_ms": float(np.percentile(array, 95)),
            f"{prefix}p99_ms": float(np.percentile(array, 99)), f"{prefix}max_ms": float(array.max())}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=1.0, help="checkpoint interval, seconds")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "kafka_to_kafka", "rate": args.rate, "duration_s": args.duration,
                              "checkpoint_interval_s": args.interval, "parallelism": args.parallelism,
                              "partitions": args.partitions, "machine": machine()}
    source_topic, sink_topic = create_topic(args.partitions), create_topic(args.partitions)
    start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=512 * 1024 * 1024, configure_logging=False,
                    log_to_driver=False)
    import ray

    stop = threading.Event()
    seen: dict[int, list[float]] = {}
    reference: dict[int, list[float]] = {}
    sent: list[int] = []
    try:
        flow = hw.Dataflow("kafka-to-kafka")
        (flow.source("in", KafkaSource(BOOTSTRAP, source_topic, schema=SCHEMA, metadata=(), poll_interval=0.005))
         .with_columns(id2=hw.col("id") * 2)
         .sink("out", KafkaSink(BOOTSTRAP, sink_topic, linger_ms=1)))
        with tempfile.TemporaryDirectory() as checkpoints:
            job = hw.start(flow, executor="ray", parallelism=args.parallelism,
                           checkpoint=hw.CheckpointConfig(dir=checkpoints, interval=timedelta(seconds=args.interval)))
            watchers = [threading.Thread(target=observe, args=(sink_topic, args.partitions, stop, seen)),
                        threading.Thread(target=observe, args=(source_topic, args.partitions, stop, reference))]
            for watcher in watchers:
                watcher.start()
            producer = threading.Thread(target=produce, args=(source_topic, args.rate, args.warmup + args.duration,
                                                              args.partitions, sent))
            producer.start()
            producer.join()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(seen) < sent[0]:
                time.sleep(0.2)
            stop.set()
            for watcher in watchers:
                watcher.join()
            job.stop()
            result = job.wait(120)
        if result.checkpoints is not None and result.checkpoints.durations_ms:
            durations = np.asarray(result.checkpoints.durations_ms)
            report["checkpoints_completed"] = result.checkpoints.completed
            report["checkpoint_duration_p50_ms"] = float(np.percentile(durations, 50))
            report["checkpoint_duration_p99_ms"] = float(np.percentile(durations, 99))
        first = int(args.rate * args.warmup)
        measured = range(first, sent[0])
        report["records_produced"] = sent[0]
        report["records_measured"] = len(measured)
        report["missing"] = sum(1 for i in measured if i not in seen)
        report["duplicates"] = sum(len(seen[i]) - 1 for i in range(sent[0]) if i in seen)
        report.update(percentiles([seen[i][0] for i in measured if i in seen], "latency_"))
        report.update(percentiles([reference[i][0] for i in measured if i in reference], "reference_latency_"))
        report["p99_ratio_vs_reference"] = report["latency_p99_ms"] / report["reference_latency_p99_ms"]
        report["p99_within_1500_ms"] = report["latency_p99_ms"] <= 1500
    finally:
        stop.set()
        ray.shutdown()
        delete_topic(source_topic)
        delete_topic(sink_topic)
    if args.json:
        print(json.dumps(report))
    else:
        for key, item in report.items():
            print(f"{key}: {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
