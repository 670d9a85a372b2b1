"""The hot shard (the actor's body, run here without Ray) answers feature look-ups exactly as the warm tier does:
hypothesis over commits, ages, the hot window, the row cap, ``as_of`` and row filters; notices are idempotent by
data version; a gap (a change not notified) is a miss until a rebuild; a rebuild from warm gives the same answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Sequence, cast

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.query import TableView
from headwater.query.features import latest_row
from headwater.store import LifecyclePolicy, Store, TableMeta
from headwater.store.hot import ABSENT, MISS, HotConfig, HotShard, HotTier
from headwater.store.hot.tier import split_by_shard
from headwater.testing import commit_rows

SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("v", pa.int64()),
                    ("region", pa.string())])
KEYS = ["a", "b", "c", "d"]


class LocalHot:
    """The HotTier client's look-up, straight into shard bodies (no Ray): what the Serve app calls."""

    def __init__(self, shards: list[HotShard]) -> None:
        self.shards = shards
        self.answered = 0

    def lookup(self, meta: TableMeta, key: Sequence[Any], as_of_us: int | None = None,
               predicates: Sequence[Any] = ()) -> pa.Table | str:
        from headwater.store.hot import shard_of
        from headwater.store.hot.tier import _from_wire

        found = _from_wire(meta, self.shards[shard_of(meta, key, len(self.shards))].lookup_row(
            tuple(key), meta.data_version, as_of_us, list(predicates)))  # the wire form, as over Ray
        self.answered += found != MISS if isinstance(found, str) else 1
        return found


def shards_for(store: Store, count: int, config: HotConfig) -> list[HotShard]:
    shards = [HotShard(store.root, None, "t", i, config) for i in range(count)]
    for shard in shards:
        shard.refresh()
    return shards


def notify(shards: list[HotShard], store: Store, event: Any) -> None:
    for shard, part in zip(shards, split_by_shard(store.table("t"), event.data, len(shards))):
        shard.apply(event.data_version, part)


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    row = st.builds(lambda k, m, v, r: {"k": k, "ts": now - timedelta(minutes=m), "v": v, "region": r},
                    st.sampled_from(KEYS), st.integers(0, 8 * 24 * 60), st.integers(-50, 50),
                    st.sampled_from(["eu", "us", None]))
    return {
        "now": now,
        "commits": draw(st.lists(st.lists(row, min_size=0, max_size=15), min_size=1, max_size=4)),
        "hot_minutes": draw(st.integers(1, 3 * 24 * 60)),
        "max_recent_rows": draw(st.integers(1, 40)),
        "shards": draw(st.integers(1, 3)),
        "lifecycle_after": draw(st.none() | st.integers(0, 3)),
        "as_of": draw(st.lists(st.none() | st.integers(0, 9 * 24 * 60), min_size=1, max_size=3)),
    }


VIEWS = [TableView.full("t"), TableView("t", row_filter=(("region", "==", "eu"),)),
         TableView("t", columns=("k", "v"), masked=frozenset({"v"}), row_filter=(("v", ">=", 0),))]


@given(cases())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_hot_answers_equal_warm_answers(tmp_path: Path, case: dict[str, Any]) -> None:
    store = Store(tmp_path / uuid.uuid4().hex)
    policy = LifecyclePolicy(hot_for=timedelta(minutes=case["hot_minutes"]), warm_for=timedelta(days=4))
    config = HotConfig(shards=case["shards"], max_recent_rows=case["max_recent_rows"])
    shards: list[HotShard] = []
    for index, rows in enumerate(case["commits"]):
        event = commit_rows(store, "t", pa.Table.from_pylist(rows, schema=SCHEMA), key=["k"], time="ts", policy=policy)
        if not shards:
            shards = shards_for(store, case["shards"], config)  # built from warm after the first commit
        elif event is not None:
            notify(shards, store, event)
            notify(shards, store, event)  # a replayed notice changes nothing
        if case["lifecycle_after"] == index:
            store.apply_lifecycle(now=case["now"])  # not notified: the shards miss until rebuilt
            for shard in shards:
                shard.refresh()
    hot = LocalHot(shards)
    for view in VIEWS:
        for key in [*KEYS, "zz"]:
            for minutes in case["as_of"]:
                as_of = None if minutes is None else case["now"] - timedelta(minutes=minutes)
                warm = latest_row(store, "t", key, view, as_of)
                hot_answer = latest_row(store, "t", key, view, as_of, cast(HotTier, hot))
                assert hot_answer == warm, (key, as_of, view)
    # Plain look-ups (no as_of, no row filter) are always answered from memory.
    plain = LocalHot(shards)
    for key in [*KEYS, "zz"]:
        latest_row(store, "t", key, VIEWS[0], None, cast(HotTier, plain))
    assert plain.answered == len(KEYS) + 1


def _table(store: Store, rows: list[dict[str, Any]]) -> Any:
    return commit_rows(store, "t", pa.Table.from_pylist(rows, schema=SCHEMA), key=["k"], time="ts",
                       policy=LifecyclePolicy(hot_for=timedelta(hours=1)))


def test_notices_apply_once_in_order_and_a_gap_is_a_miss_until_rebuilt(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    store = Store(tmp_path)
    _table(store, [{"k": "a", "ts": now, "v": 1, "region": "eu"}])
    shard = shards_for(store, 1, HotConfig(shards=1))[0]
    second = _table(store, [{"k": "a", "ts": now + timedelta(seconds=1), "v": 2, "region": "eu"}])
    assert shard.apply(second.data_version, second.data)
    assert not shard.apply(second.data_version, second.data)  # duplicate
    version = store.table("t").data_version
    found = shard.lookup(("a",), version, None, [])
    assert isinstance(found, pa.Table) and found.column("v").to_pylist() == [2]
    assert shard.lookup(("zz",), version, None, []) == ABSENT
    _table(store, [{"k": "a", "ts": now + timedelta(seconds=2), "v": 3, "region": "eu"}])  # not notified
    assert shard.lookup(("a",), store.table("t").data_version, None, []) == MISS
    shard.refresh()
    found = shard.lookup(("a",), store.table("t").data_version, None, [])
    assert isinstance(found, pa.Table) and found.column("v").to_pylist() == [3]


def test_bounded_memory_row_cap_and_hot_window(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    store = Store(tmp_path)
    rows = [{"k": f"k{i % 5}", "ts": now - timedelta(minutes=i), "v": i, "region": "eu"} for i in range(200)]
    _table(store, rows)
    shard = shards_for(store, 1, HotConfig(shards=1, max_recent_rows=10, max_keys=3))[0]
    status = shard.status()
    assert status["recent_rows"] <= 10 and status["keys"] == 3 and not status["complete"]
    version = store.table("t").data_version
    # A key dropped by the key cap is a miss (read warm), never a wrong "absent".
    assert sum(shard.lookup((f"k{i}",), version, None, []) == MISS for i in range(5)) == 2
    # Rows older than hot_for (1 h) are not held: a row-filtered look-up of an old key misses.
    wide = shards_for(store, 1, HotConfig(shards=1))[0]
    assert wide.status()["recent_rows"] == 60  # minutes 0..59
    assert wide.lookup(("k0",), version, None, [("v", ">=", 100)]) == MISS


def test_config_is_validated() -> None:
    from headwater.errors import ConfigError

    with pytest.raises(ConfigError, match="shards"):
        HotConfig(shards=0)
