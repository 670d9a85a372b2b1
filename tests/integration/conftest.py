"""Fixtures for the real services of ``scripts/services.sh`` (PostgreSQL, Kafka, Prometheus, ...).

Connection settings come from ``scripts/services.env`` (``HEADWATER_PG_DSN``, ``HEADWATER_KAFKA_BOOTSTRAP``,
``HEADWATER_PROMETHEUS_URL``, ``HEADWATER_KINESIS_ENDPOINT``), defaulting to the script's ports. A fixture whose service is not reachable skips
its test with a loud reason, except under CI (``CI=true``), where the test fails instead: CI must start the
services. Each fixture checks reachability once per session and then hands out the connection setting.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, NoReturn
from urllib.parse import urlsplit

import pytest

PG_DSN = os.environ.get("HEADWATER_PG_DSN", "postgresql://postgres@127.0.0.1:54329/headwater")
KAFKA_BOOTSTRAP = os.environ.get("HEADWATER_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
PROMETHEUS_URL = os.environ.get("HEADWATER_PROMETHEUS_URL", "http://127.0.0.1:19090").rstrip("/")
KINESIS_ENDPOINT = os.environ.get("HEADWATER_KINESIS_ENDPOINT", "http://127.0.0.1:19094").rstrip("/")

IN_CI = os.environ.get("CI", "").lower() == "true"


def service_unavailable(what: str) -> NoReturn:
    """Skip loudly, or fail under ``CI=true``."""
    message = (
        f"!!! {what} — SERVICE NOT AVAILABLE: run `scripts/services.sh start` "
        f"(and `source scripts/services.env`) to run this test !!!"
    )
    if IN_CI:
        pytest.fail(f"{message} (CI=true: services are required)", pytrace=False)
    pytest.skip(message)


def require_port(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        service_unavailable(f"{name} is not reachable at {host}:{port} ({exc})")


@pytest.fixture(scope="session")
def unavailable() -> Callable[[str], NoReturn]:
    """:func:`service_unavailable`, for a test that finds a missing prerequisite itself (a client binary)."""
    return service_unavailable


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of the test PostgreSQL (wal_level=logical, wal2json installed)."""
    parts = urlsplit(PG_DSN)
    require_port("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)
    return PG_DSN


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``host:port`` of the test Kafka broker (KRaft, one broker)."""
    host, _, port = KAFKA_BOOTSTRAP.split(",")[0].rpartition(":")
    require_port("Kafka", host or "127.0.0.1", int(port))
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    parts = urlsplit(PROMETHEUS_URL)
    require_port("Prometheus", parts.hostname or "127.0.0.1", parts.port or 9090)
    return PROMETHEUS_URL


@pytest.fixture(scope="session")
def kinesis_endpoint() -> str:
    """The URL of the local Kinesis-compatible server (moto's server mode), to pass as ``endpoint_url``."""
    parts = urlsplit(KINESIS_ENDPOINT)
    require_port("Kinesis (moto server)", parts.hostname or "127.0.0.1", parts.port or 80)
    return KINESIS_ENDPOINT


class PrivateKafka:
    """A Kafka broker of our own (KRaft, broker + controller) on free 127.0.0.1 ports with its own data directory,
    from the jars ``scripts/services.sh`` installs; for tests that stop and restart a broker without touching the
    shared one. ``stop()`` ends it (SIGTERM, SIGKILL after 30 s) keeping its data; ``start()`` brings it back on the
    same ports and data, as a broker restart does."""

    def __init__(self, libs: str, base: str) -> None:
        import base64

        self.libs, self.base = libs, base
        self.port, self.controller_port = _free_port(), _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.config = os.path.join(base, "server.properties")
        self.log_path = os.path.join(base, "kafka.log")
        self.process: subprocess.Popen[bytes] | None = None
        with open(self.config, "w") as f:
            f.write("\n".join([
                "process.roles=broker,controller", "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}", "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={os.path.join(base, 'data')}", "num.partitions=1", "default.replication.factor=1",
                "min.insync.replicas=1", "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=2",
                "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=2", "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1", "group.initial.rebalance.delay.ms=0",
                "num.network.threads=1", "num.io.threads=2", "auto.create.topics.enable=false", ""]))
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=").replace("-", "A")
        subprocess.run([*self._java(), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c",
                        self.config], check=True, capture_output=True, timeout=120)

    def _java(self) -> list[str]:
        return ["java", "-Xmx256m", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", "-Dlog4j2.level=WARN", "-cp", os.path.join(self.libs, "*")]

    def start(self, timeout: float = 90) -> None:
        log = open(self.log_path, "ab")
        # close_fds (the default): the broker never inherits a lock the test run holds
        self.process = subprocess.Popen([*self._java(), "kafka.Kafka", self.config], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private Kafka exited with {self.process.returncode}; see {self.log_path}")
            if _port_open(self.port) and _broker_answers(self.bootstrap):
                return
            time.sleep(0.25)
        raise RuntimeError(f"private Kafka not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _broker_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
        return True
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def _kafka_libs() -> str | None:
    """The broker jars: ``$HEADWATER_KAFKA_LIBS``, this checkout's ``.services/kafka/libs``, or the machine-wide
    copy ``scripts/services.sh`` keeps under ``~/.cache/headwater``."""
    repo = Path(__file__).resolve().parents[2]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headwater"
    candidates = [os.environ.get("HEADWATER_KAFKA_LIBS"), str(repo / ".services" / "kafka" / "libs"),
                  *sorted((str(p) for p in cache.glob("kafka_*")), reverse=True)]
    for candidate in candidates:
        if candidate and any(Path(candidate).glob("kafka_*.jar")):
            return candidate
    return None


@pytest.fixture
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], PrivateKafka]]:
    """``private_kafka()`` starts a broker of the test's own (see :class:`PrivateKafka`); stopped at teardown."""
    started: list[PrivateKafka] = []

    def start() -> PrivateKafka:
        libs = _kafka_libs()
        if libs is None or shutil.which("java") is None:
            service_unavailable("a private Kafka broker needs java and the broker jars of scripts/services.sh "
                                f"(found jars: {libs}, java: {shutil.which('java')})")
        broker = PrivateKafka(libs, str(tmp_path_factory.mktemp("kafka")))
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()
