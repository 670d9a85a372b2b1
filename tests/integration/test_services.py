"""The real services started by ``scripts/services.sh start``, checked the way Headwater's code uses them.

Connection settings and the skip-loudly / fail-under-CI rule come from the fixtures of
``tests/integration/conftest.py`` (``pg_dsn``, ``kafka_bootstrap``, ``prometheus_url``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
import uuid
from typing import Callable, NoReturn

import pytest

# ---- PostgreSQL ----------------------------------------------------------------------------------------


def _psql_binary() -> str | None:
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    return candidates[-1] if candidates else None


class _Psql:
    """Runs SQL through the ``psql`` client (psycopg2 is not a dependency of the project)."""

    def __init__(self, binary: str, dsn: str) -> None:
        self.binary = binary
        self.dsn = dsn

    def __call__(self, sql: str) -> list[str]:
        env = dict(os.environ, PGCONNECT_TIMEOUT="5")
        proc = subprocess.run(
            [self.binary, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if proc.returncode != 0:
            raise AssertionError(f"psql failed ({proc.returncode}) for {sql!r}: {proc.stderr.strip()}")
        return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.postgres
def test_postgres_logical_replication_with_wal2json(pg_dsn: str, unavailable: Callable[[str], NoReturn]) -> None:
    binary = _psql_binary()
    if binary is None:
        unavailable("the psql client is not installed")
    psql = _Psql(binary, pg_dsn)

    assert psql("SHOW wal_level") == ["logical"]
    assert int(psql("SHOW max_replication_slots")[0]) >= 2

    suffix = uuid.uuid4().hex[:10]
    table, slot = f"hw_services_probe_{suffix}", f"hw_services_probe_{suffix}"
    try:
        psql(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL)")
        created = psql(f"SELECT slot_name FROM pg_create_logical_replication_slot('{slot}', 'wal2json')")
        assert created == [slot]
        psql(f"INSERT INTO {table} VALUES (1, 'alpha'), (2, 'beta'); UPDATE {table} SET name = 'gamma' WHERE id = 2")

        rows = psql(
            f"SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL, "
            f"'format-version', '2', 'include-transaction', 'false', 'add-tables', 'public.{table}')"
        )
        changes = [json.loads(row) for row in rows]
        assert [c["action"] for c in changes] == ["I", "I", "U"], changes
        assert all(c["table"] == table and c["schema"] == "public" for c in changes)
        first = {col["name"]: col["value"] for col in changes[0]["columns"]}
        assert first == {"id": 1, "name": "alpha"}
        updated = {col["name"]: col["value"] for col in changes[2]["columns"]}
        assert updated == {"id": 2, "name": "gamma"}

        # the slot was advanced: the same changes are not delivered twice
        again = psql(f"SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL, 'format-version', '2')")
        assert again == []
    finally:
        psql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'; "
            f"DROP TABLE IF EXISTS {table}"
        )


# ---- Kafka ---------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_kafka_two_partition_topic_round_trip(kafka_bootstrap: str) -> None:
    """With confluent-kafka, the one Kafka client Headwater uses (docs/connectors/kafka.md)."""

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"hw-services-probe-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)
    try:
        delivered: list[tuple[int, int]] = []
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
        for i in range(10):
            producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 2,
                             on_delivery=lambda err, msg: delivered.append((msg.partition(), msg.offset()))
                             if err is None else None)
        assert producer.flush(15) == 0
        assert {p for p, _ in delivered} == {0, 1} and len(delivered) == 10

        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{topic}-group",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        received: list[tuple[int, int, bytes, bytes]] = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 60
            while len(received) < 10 and time.monotonic() < deadline:
                for message in consumer.consume(num_messages=10, timeout=1.0):
                    if message.error() is None:
                        received.append((message.partition(), message.offset(), message.key(), message.value()))
            consumer.commit(asynchronous=False)
            assert {tp.partition for tp in consumer.assignment()} == {0, 1}
        finally:
            consumer.close()

        assert len(received) == 10, received
        assert sorted(value for _, _, _, value in received) == sorted(f"v{i}".encode() for i in range(10))
        for partition, _, key, value in received:
            i = int(value[1:])
            assert partition == i % 2 and key == f"k{i}".encode()
        for partition in (0, 1):  # offsets within a partition arrive in order
            offsets = [offset for p, offset, _, _ in received if p == partition]
            assert offsets == sorted(offsets) == list(range(5))
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


# ---- Prometheus ----------------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_prometheus_ready_and_buildinfo(prometheus_url: str) -> None:

    import httpx

    with httpx.Client(base_url=prometheus_url, timeout=10) as client:
        ready = client.get("/-/ready")
        assert ready.status_code == 200, ready.text

        info = client.get("/api/v1/status/buildinfo")
        assert info.status_code == 200, info.text
        body = info.json()
        assert body["status"] == "success"
        major = int(body["data"]["version"].split(".")[0])
        assert major >= 2, body
