"""One Serve app for the whole session, on the session's Ray (tests/conftest.py ``ray_cluster``), over a store
with a table spread over warm and cold, three roles and a token each. Starting Serve takes seconds, so it
starts once; tests must not change the store's grants (they would leak into other tests)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import httpx
import pyarrow as pa
import pytest

from headwater.access import Grant, Policy, PolicyStore, Role, TokenStore
from headwater.store import LifecyclePolicy, Store
from headwater.testing import commit_rows

BASE = datetime(2026, 1, 1, tzinfo=UTC)
CLICKS = pa.schema([("user", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("amount", pa.int64()),
                    ("email", pa.string()), ("region", pa.string())])
ROLES = ("admin", "analyst", "support", "nobody")


def click_rows() -> list[dict[str, Any]]:
    return [{"user": f"u{i % 7}", "ts": BASE + timedelta(hours=7 * i), "amount": i, "email": f"user{i % 7}@example.com",
             "region": "eu" if i % 3 else "us"} for i in range(120)]


@dataclass(frozen=True)
class Api:
    url: str
    store: Store
    tokens: dict[str, str]

    def client(self, role: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _grants(policy: Policy) -> None:
    policy.pii["clicks"] = ["email"]
    policy.roles["analyst"] = Role(description="dashboards: EU rows, email masked", grants={
        "clicks": Grant(columns=["user", "ts", "amount", "email"], row_filter=[("region", "==", "eu")])})
    policy.roles["support"] = Role(description="sees emails", grants={"clicks": Grant(columns="*", unmask=["email"])})
    policy.roles["nobody"] = Role(description="no grants")


def build_store(root: Path) -> tuple[Store, dict[str, str]]:
    store = Store(root)
    commit_rows(store, "clicks", click_rows(), CLICKS, key=["user"], time="ts",
                policy=LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=20)))
    store.apply_lifecycle(now=BASE + timedelta(days=35))  # older rows move to cold
    commit_rows(store, "salaries", [{"name": "ann", "salary": 100}], key=["name"])
    PolicyStore(store.root).change(_grants)
    tokens = TokenStore(store.root)
    return store, {role: tokens.create(role)[1] for role in ROLES}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def api(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from ray import serve

    from headwater.serve import ServeConfig, start

    store, tokens = build_store(tmp_path_factory.mktemp("serve-store"))
    tiers = store.rows_per_tier("clicks")
    assert tiers["warm"] and tiers["cold"], tiers
    # No CPUs reserved: the session's later tests get the whole (2-CPU) cluster while this app stays up.
    url = start(ServeConfig(store=store.root, port=_free_port(), max_replicas=1, replica_cpus=0))
    try:
        yield Api(url, store, tokens)
    finally:
        serve.shutdown()
        from headwater.store.hot import HotTier

        hot = HotTier(store.root)
        for table in store.tables():  # the detached hot shards the app made outlive it: end them
            hot.drop(table)
