"""The hot tier behind the session's Serve app (real Ray actors, real HTTP): feature look-ups are answered by the
table's hot shards with the same answers as warm, for every role (row filters, masking) and ``as_of``; a killed
shard is restarted by Ray and rebuilt from warm, and the answers stay the same; a TableSink commit reaches the
shards only after it is committed (a prepared, uncommitted checkpoint is never visible).

Runs after test_api.py and test_fuzz.py (file order) and leaves ``clicks`` as it found it: the one key it adds
is erased at the end."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest

from headwater.query import TableView
from headwater.query.features import latest_row
from headwater.store.hot import MISS, HotTier

from .conftest import BASE, CLICKS

pytestmark = [pytest.mark.serve, pytest.mark.http, pytest.mark.ray]
KEYS = [f"u{i}" for i in range(7)] + ["nobody-has-this"]
AS_OF = [None, (BASE + timedelta(days=3)).isoformat(), (BASE + timedelta(days=30)).isoformat()]


def answers(api: Any) -> dict[tuple[str, str, str | None], Any]:
    out = {}
    for role in ("admin", "analyst", "support"):
        with api.client(role) as client:
            for key in KEYS:
                for as_of in AS_OF:
                    response = client.get(f"/features/clicks/{key}", params={"as_of": as_of} if as_of else {})
                    assert response.status_code in (200, 404), response.text
                    out[(role, key, as_of)] = (response.status_code, response.json())
    return out


def test_hot_shards_answer_features_and_a_killed_shard_changes_no_answer(api: Any) -> None:
    import ray

    hot = HotTier(api.store.root)
    with api.client("admin") as client:
        assert client.get("/features/clicks/u1").status_code == 200  # the first look-up makes the shards
    hot.wait_ready("clicks", api.store.table("clicks").data_version)
    meta = api.store.table("clicks")
    for key in KEYS[:-1]:  # the shards themselves hold the answer (not a fall-back to warm)
        found = hot.lookup(meta, (key,), create=False)
        assert isinstance(found, pa.Table), (key, found)
        warm = latest_row(api.store, "clicks", key, TableView.full("clicks"))
        assert found.drop_columns(["_hw_version"]).to_pylist()[0] == warm
    before = answers(api)
    assert {status for status, _ in before.values()} == {200, 404}

    handles = hot.shards("clicks")
    assert handles is not None and len(handles) == 2
    ray.kill(handles[0], no_restart=False)  # Ray restarts it; it rebuilds from warm
    assert answers(api) == before  # while it is down or rebuilding, look-ups read warm
    deadline = time.monotonic() + 60
    while True:
        try:
            hot.wait_ready("clicks", meta.data_version, timeout_s=5)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
    assert answers(api) == before


def test_a_commit_reaches_the_hot_tier_only_once_committed(api: Any) -> None:
    from headwater.sinks import TableSink

    hot = HotTier(api.store.root)
    with api.client("admin") as client:
        client.get("/features/clicks/u1")
    hot.wait_ready("clicks", api.store.table("clicks").data_version)
    sink = TableSink("clicks", key=["user"], time="ts", store=api.store.root)
    part = sink.build_part(0, 1)
    row = {"user": "hot-u", "ts": BASE + timedelta(days=40), "amount": 7, "email": "h@example.com", "region": "eu"}
    try:
        part.write(pa.RecordBatch.from_pylist([row], schema=CLICKS))
        token = part.prepare(1)
        version = api.store.table("clicks").data_version
        with api.client("admin") as client:
            assert client.get("/features/clicks/hot-u").status_code == 404  # prepared is not committed
        assert {s["version"] for s in hot.status("clicks") or []} == {version}
        part.commit(token)
        assert part.last_commit is not None and part.last_commit.data is None  # rows were sent, then dropped
        hot.wait_ready("clicks", version + 1, timeout_s=10)  # the notice, no look-up asked for it
        found = hot.lookup(api.store.table("clicks"), ("hot-u",), create=False)
        assert isinstance(found, pa.Table) and found.column("amount").to_pylist() == [7]
        part.commit(token)  # a replayed commit: nothing new, nothing sent
        with api.client("analyst") as client:
            body = client.get("/features/clicks/hot-u").json()
            assert body["row"]["amount"] == 7 and body["row"]["email"] == "***"
        assert hot.lookup(api.store.table("clicks"), ("hot-u",), create=False) != MISS
    finally:
        part.close()
        api.store.erase("clicks", ["hot-u"], actor="test", reason="test cleanup")
    with api.client("admin") as client:  # erasure is not notified: the shards see the gap and read warm
        assert client.get("/features/clicks/hot-u").status_code == 404
