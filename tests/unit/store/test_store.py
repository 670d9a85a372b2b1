"""The store: scans across tiers equal one table of all rows; lifecycle moves lose nothing; retention deletes
exactly what is past it; erasure removes exactly the key everywhere; a change killed at any point leaves no
trace and completes when run again; commits replay as no-ops; schema evolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.errors import ConfigError, SchemaEvolutionError
from headwater.store import LifecyclePolicy, Store
from headwater.store import table as table_module
from headwater.store.audit import AuditLog
from headwater.store.table import Transaction

BASE = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("v", pa.int64())])
POLICY = LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=3), retain_for=timedelta(days=20))
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])


def commit(store: Store, name: str, rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA, *,
           key: list[str] | None = None, time: str | None = "ts", policy: LifecyclePolicy | None = POLICY,
           tag: str = "") -> Any:
    """Stage ``rows`` as an Arrow IPC file and commit it, as a TableSink partition would."""
    staging = Path(store.directory(name)) / "_staging" / "unchecked"
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"commit-{len(os.listdir(staging)):06d}-0000-{os.urandom(8).hex()}{tag}.arrow"
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(path), "wb") as out, pa.ipc.new_stream(out, schema) as writer:
        writer.write_table(table)
    with Transaction(store.root, name) as tx:
        if tx.meta is None:
            tx.create(schema, key if key is not None else ["k"], time, policy)
        return tx.commit_staged([str(path)]), str(path)


def rows_of(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(sorted(r.items())) for r in table.to_pylist())


def reference(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.select(columns) if columns else table


@st.composite
def datasets(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """A few commits of rows with random keys, values and ages (0–30 days before the lifecycle's "now")."""
    row = st.builds(lambda k, h, v: {"k": k, "ts": BASE + timedelta(hours=h), "v": v},
                    st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 30 * 24), st.integers(-100, 100))
    return draw(st.lists(st.lists(row, min_size=1, max_size=25), min_size=1, max_size=4))


def test_policies_are_validated() -> None:
    with pytest.raises(ConfigError, match="warm_for"):
        LifecyclePolicy(hot_for=timedelta(days=2), warm_for=timedelta(days=1))
    with pytest.raises(ConfigError, match="retain_for"):
        LifecyclePolicy(warm_for=timedelta(days=7), retain_for=timedelta(days=1))
    with pytest.raises(ConfigError, match="positive"):
        LifecyclePolicy(hot_for=timedelta(0))


@FEW
@given(commits=datasets(), age=st.integers(0, 35), start=st.integers(-2, 32), length=st.integers(0, 40),
       key=st.sampled_from([None, "a", "c"]))
def test_a_scan_across_tiers_equals_the_same_query_over_all_rows(
    tmp_path_factory: pytest.TempPathFactory, commits: list[list[dict[str, Any]]], age: int, start: int,
    length: int, key: str | None,
) -> None:
    store = Store(tmp_path_factory.mktemp("store"))
    for rows in commits:
        commit(store, "t", rows, policy=LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=3)))
    everything = [r for rows in commits for r in rows]
    report = store.apply_lifecycle(now=BASE + timedelta(days=age))  # moves rows older than age - 3 days
    cut = BASE + timedelta(days=age - 3)
    assert report.tables[0].moved_to_cold == sum(1 for r in everything if r["ts"] < cut)
    assert store.rows_per_tier("t") == {"warm": sum(1 for r in everything if r["ts"] >= cut),
                                        "cold": sum(1 for r in everything if r["ts"] < cut)}
    lo, hi = BASE + timedelta(days=start), BASE + timedelta(days=start + length)
    filters = [("k", "==", key)] if key else None
    got = store.scan("t", ["k", "v", "ts"], time_range=(lo, hi), filter=filters)
    want = [r for r in everything if lo <= r["ts"] < hi and (key is None or r["k"] == key)]
    assert rows_of(got) == rows_of(reference(want, ["k", "v", "ts"]))
    assert rows_of(store.scan("t")) == rows_of(reference(everything))  # the move lost and duplicated nothing


def test_a_range_outside_a_tier_does_not_open_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE + timedelta(days=d), "v": d} for d in range(10)])
    store.apply_lifecycle(now=BASE + timedelta(days=8))  # days 0..4 cold, 5..9 warm
    from headwater.store import cold, warm

    opened: list[str] = []
    real_warm, real_cold = warm.WarmTier.read, cold.read
    monkeypatch.setattr(warm.WarmTier, "read", lambda self, *a, **k: (opened.append("warm"), real_warm(self, *a, **k))[1])
    monkeypatch.setattr(cold, "read", lambda *a, **k: (opened.append(f"cold:{len(a[1])}"), real_cold(*a, **k))[1])
    assert store.scan("t", ["v"], time_range=(BASE, BASE + timedelta(days=2))).column("v").to_pylist() == [0, 1]
    assert opened == ["cold:2"]  # only the two day files that can hold the range
    opened.clear()
    assert sorted(store.scan("t", ["v"], time_range=(BASE + timedelta(days=6), None)).column("v").to_pylist()) == \
        [6, 7, 8, 9]
    assert opened == ["warm"]


@FEW
@given(commits=datasets(), age=st.integers(0, 40))
def test_retention_deletes_exactly_what_is_past_it(
    tmp_path_factory: pytest.TempPathFactory, commits: list[list[dict[str, Any]]], age: int
) -> None:
    store = Store(tmp_path_factory.mktemp("store"))
    for rows in commits:
        commit(store, "t", rows)
    everything = [r for rows in commits for r in rows]
    store.apply_lifecycle(now=BASE + timedelta(days=age // 2))  # some rows cold first, so both tiers expire
    now = BASE + timedelta(days=age)
    store.apply_lifecycle(now=now)
    kept = [r for r in everything if r["ts"] >= now - POLICY.retain_for]  # type: ignore[operator]
    assert rows_of(store.scan("t")) == rows_of(reference(kept))
    meta = store.table("t")
    assert all(f.rows > 0 for f in meta.cold)
    assert sorted(p.name for p in Path(store.directory("t"), "cold").rglob("*.parquet")) == \
        sorted(os.path.basename(f.path) for f in meta.cold)  # replaced files are gone


@FEW
@given(commits=datasets(), age=st.integers(0, 30), erased=st.sets(st.sampled_from(["a", "b", "c", "x"]), max_size=2))
def test_erasure_removes_exactly_the_key_from_every_tier(
    tmp_path_factory: pytest.TempPathFactory, commits: list[list[dict[str, Any]]], age: int, erased: set[str]
) -> None:
    store = Store(tmp_path_factory.mktemp("store"))
    for rows in commits:
        commit(store, "t", rows)
    store.apply_lifecycle(now=BASE + timedelta(days=age))
    everything = [r for rows in commits for r in rows if r["ts"] >= BASE + timedelta(days=age) - POLICY.retain_for]
    report = store.erase("t", sorted(erased), actor="dpo", reason="art. 17 request")
    assert report.warm_rows + report.cold_rows == sum(1 for r in everything if r["k"] in erased)
    assert rows_of(store.scan("t")) == rows_of(reference([r for r in everything if r["k"] not in erased]))
    for key in erased:
        assert store.latest("t", key) is None
    log = AuditLog(store.root).entries(event="erase")
    assert [e.fields["status"] for e in log[-2:]] == ["started", "completed"]
    assert log[-1].fields["actor"] == "dpo" and AuditLog(store.root).verify().ok


def test_the_audit_log_records_digests_not_keys(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "alice@example.com", "ts": BASE, "v": 1}])
    store.erase("t", ["alice@example.com"], actor="dpo")
    [*_, done] = AuditLog(store.root).entries(event="erase")
    assert "alice" not in json.dumps(done.to_json()) and done.fields["warm_rows"] == 1
    assert b"alice" not in b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))


def test_latest_prefers_the_newest_row_in_any_tier(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE + timedelta(days=5), "v": 5}, {"k": "b", "ts": BASE, "v": 0}])
    store.apply_lifecycle(now=BASE + timedelta(days=9))  # both rows cold
    commit(store, "t", [{"k": "a", "ts": BASE + timedelta(days=1), "v": 1}])  # a late, older row lands in warm
    assert store.latest("t", "a") == {"k": "a", "ts": BASE + timedelta(days=5), "v": 5}
    commit(store, "t", [{"k": "a", "ts": BASE + timedelta(days=5), "v": 55}])  # same time, later commit wins
    assert store.latest("t", "a")["v"] == 55  # type: ignore[index]
    assert store.latest("t", "b")["v"] == 0  # type: ignore[index]
    assert store.latest("t", "zzz") is None


def test_a_replayed_commit_is_a_no_op(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = [{"k": "a", "ts": BASE, "v": 1}]
    event, path = commit(store, "t", rows)
    assert event.data_version == 1 and not os.path.exists(path)
    with Transaction(store.root, "t") as tx:
        assert tx.commit_staged([path]) is None  # file gone: done before
    assert store.table("t").data_version == 1 and store.scan("t").num_rows == 1


@pytest.mark.parametrize("point", ["commit.before_warm", "commit.before_meta", "commit.after_meta"])
def test_a_commit_killed_anywhere_applies_exactly_once_when_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE, "v": 0}])
    staging = Path(store.directory("t")) / "_staging" / "unchecked"
    path = staging / "commit-000009-0000-feedfacefeedface.arrow"
    table = pa.Table.from_pylist([{"k": "b", "ts": BASE, "v": 1}, {"k": "c", "ts": BASE, "v": 2}], schema=SCHEMA)
    with pa.OSFile(str(path), "wb") as out, pa.ipc.new_stream(out, SCHEMA) as writer:
        writer.write_table(table)

    def crash(at: str) -> None:
        if at == point:
            raise RuntimeError(f"killed at {at}")

    monkeypatch.setattr(table_module, "_crash_point", crash)
    with pytest.raises(RuntimeError, match="killed"), Transaction(store.root, "t") as tx:
        tx.commit_staged([str(path)])
    monkeypatch.undo()
    committed = point == "commit.after_meta"
    assert store.scan("t").num_rows == (3 if committed else 1)  # invisible unless table.json was written
    with Transaction(store.root, "t") as tx:
        tx.commit_staged([str(path)])  # the replay after the restart
    assert sorted(store.scan("t").column("v").to_pylist()) == [0, 1, 2]
    assert store.table("t").data_version == 2


@pytest.mark.parametrize("point", ["move.cold_written", "move.warm_deleted", "move.meta_written"])
def test_a_lifecycle_move_killed_in_the_middle_completes_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    store = Store(tmp_path)
    rows = [{"k": "abcd"[d % 4], "ts": BASE + timedelta(hours=12 * d), "v": d} for d in range(30)]
    commit(store, "t", rows)

    def crash(at: str) -> None:
        if at == point:
            raise RuntimeError(f"killed at {at}")

    monkeypatch.setattr(table_module, "_crash_point", crash)
    now = BASE + timedelta(days=12)
    with pytest.raises(RuntimeError, match="killed"):
        store.apply_lifecycle(now=now)
    monkeypatch.undo()
    assert rows_of(store.scan("t")) == rows_of(reference(rows))  # nothing lost or doubled meanwhile
    store.apply_lifecycle(now=now)
    assert rows_of(store.scan("t")) == rows_of(reference(rows))
    cut = now - POLICY.warm_for  # type: ignore[operator]
    assert store.rows_per_tier("t") == {"warm": sum(r["ts"] >= cut for r in rows), "cold": sum(r["ts"] < cut for r in rows)}
    listed = {os.path.basename(f.path) for f in store.table("t").cold}
    assert {p.name for p in Path(store.directory("t"), "cold").rglob("*.parquet")} == listed  # no orphans


KILL_SCRIPT = """
import os, sys
from datetime import datetime, timedelta, timezone
from headwater.store import Store, table
def crash(at):
    if at == sys.argv[2]:
        os._exit(9)  # as a SIGKILL would: no clean-up, no lock release but the kernel's
table._crash_point = crash
Store(sys.argv[1]).apply_lifecycle(now=datetime(2026, 1, 13, tzinfo=timezone.utc))
"""


def test_a_lifecycle_process_killed_mid_move_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = [{"k": "abcd"[d % 4], "ts": BASE + timedelta(hours=12 * d), "v": d} for d in range(30)]
    commit(store, "t", rows)
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), "move.warm_deleted"], timeout=120)
    assert done.returncode == 9
    assert rows_of(store.scan("t")) == rows_of(reference(rows))
    store.apply_lifecycle(now=datetime(2026, 1, 13, tzinfo=UTC))
    assert rows_of(store.scan("t")) == rows_of(reference(rows)) and store.rows_per_tier("t")["cold"] > 0


def test_added_columns_are_accepted_and_older_rows_read_null(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE, "v": 1}])
    store.apply_lifecycle(now=BASE + timedelta(days=5))  # the old row goes cold, without the new column
    wider = SCHEMA.append(pa.field("score", pa.float64()))
    commit(store, "t", [{"k": "b", "ts": BASE + timedelta(days=4), "v": 2, "score": 0.5}], wider)
    got = {r["k"]: r["score"] for r in store.scan("t", ["k", "score"]).to_pylist()}
    assert got == {"a": None, "b": 0.5}
    assert store.table("t").schema.names == ["k", "ts", "v", "score"]
    assert store.scan("t", ["k"], filter=[("score", ">", 0.1)]).column("k").to_pylist() == ["b"]


@pytest.mark.parametrize("schema, message", [
    (pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC"))]), "missing"),
    (pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("v", pa.string())]), "v: int64 -> string"),
])
def test_other_schema_changes_are_refused(tmp_path: Path, schema: pa.Schema, message: str) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE, "v": 1}])
    with pytest.raises(SchemaEvolutionError, match=message):
        commit(store, "t", [{"k": "b", "ts": BASE}], schema)
    assert store.scan("t").num_rows == 1


def test_a_bad_filter_says_what_to_fix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit(store, "t", [{"k": "a", "ts": BASE, "v": 1}])
    with pytest.raises(ConfigError, match="did you mean 'v'"):
        store.scan("t", filter=[("vv", "==", 1)])
    with pytest.raises(ConfigError, match="operator"):
        store.scan("t", filter=[("v", "~", 1)])
    with pytest.raises(ConfigError, match="not a value of column 'v'"):
        store.scan("t", filter=[("v", "==", "one")])
    assert store.scan("t", ["v"], filter=[("v", "in", [1, 2]), ("k", "!=", "b")]).column("v").to_pylist() == [1]


def test_compaction_keeps_rows_and_data_version(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(5):
        commit(store, "t", [{"k": "abc"[i % 3], "ts": BASE + timedelta(hours=i), "v": i}])
    before = store.table("t")
    store.compact("t")
    after = store.table("t")
    assert after.data_version == before.data_version and after.warm.version > before.warm.version
    assert set(after.warm.indexed) == {"k", "ts"}
    assert sorted(store.scan("t").column("v").to_pylist()) == [0, 1, 2, 3, 4]
    assert pc.sum(store.scan("t", ["v"]).column("v")).as_py() == 10


def test_a_table_without_time_stays_warm_and_refuses_ages(tmp_path: Path) -> None:
    store = Store(tmp_path)
    schema = pa.schema([("k", pa.string()), ("v", pa.int64())])
    commit(store, "u", [{"k": "a", "v": 1}], schema, time=None, policy=None)
    commit(store, "u", [{"k": "a", "v": 2}], schema, time=None, policy=None)
    store.apply_lifecycle(now=BASE + timedelta(days=1000))
    assert store.rows_per_tier("u") == {"warm": 2, "cold": 0}
    assert store.latest("u", "a") == {"k": "a", "v": 2}  # the later commit
    with pytest.raises(ConfigError, match="no time column"):
        store.set_policy("u", LifecyclePolicy())
    with pytest.raises(ConfigError, match="time_range"):
        store.scan("u", time_range=(BASE, None))
