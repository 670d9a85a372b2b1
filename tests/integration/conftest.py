"""Fixtures for the real services of ``scripts/services.sh`` (PostgreSQL, Kafka, Prometheus, ...).

Connection settings come from ``scripts/services.env`` (``HEADWATER_PG_DSN``, ``HEADWATER_KAFKA_BOOTSTRAP``,
``HEADWATER_PROMETHEUS_URL``, ``HEADWATER_KINESIS_ENDPOINT``), defaulting to the script's ports. A fixture whose service is not reachable skips
its test with a loud reason, except under CI (``CI=true``), where the test fails instead: CI must start the
services. Each fixture checks reachability once per session and then hands out the connection setting.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, NoReturn
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
