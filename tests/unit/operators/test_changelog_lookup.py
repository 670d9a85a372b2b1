"""The changelog lookup-join operator against a plain-Python model, its keyed state across snapshots and
rescales, its storage bounds, and its errors.

At the operator level the interleaving of table and probe batches is explicit, so the model is exact: a table
batch applies its rows in order (the last change per key wins), a probe batch sees the table as it is then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.core.operator import OperatorContext
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS, key_group_range, key_groups
from headwater.core.state.store import KEY_GROUP_COLUMN, OperatorStateStore
from headwater.errors import ChangelogError, StateCompatibilityError
from headwater.operators.joins.changelog_lookup import DELETE_OPS, IGNORED_OPS, ChangelogLookupJoinOperator, LatestRows
from headwater.planner.operators import operator_factory
from headwater.testing import TestingSource

G = DEFAULT_MAX_KEY_GROUPS
FAST = settings(max_examples=60, deadline=None)



@dataclass(frozen=True)
class Case:
    """Probe and table schemas keyed by ``on`` / ``table_key`` (types differ where the join normalises them)."""

    probe: pa.Schema
    table: pa.Schema
    on: tuple[str, ...]
    table_key: tuple[str, ...]
    pool: tuple[Any, ...]  # key values (tuples for several columns), None included


CASES = {
    "int": Case(pa.schema([("user_id", pa.int32()), ("seq", pa.int64())]),
                pa.schema([("id", pa.int64()), ("op", pa.string()), ("name", pa.string()), ("score", pa.int64())]),
                ("user_id",), ("id",), (0, 1, -7, 2**20, None)),
    "string": Case(pa.schema([("user", pa.large_string()), ("seq", pa.int64())]),
                   pa.schema([("user", pa.string()), ("op", pa.string()), ("name", pa.string()), ("score", pa.int64())]),
                   ("user",), ("user",), ("a", "b", "", "ünï", None)),
    "multi": Case(pa.schema([("region", pa.string()), ("n", pa.int64()), ("seq", pa.int64())]),
                  pa.schema([("region", pa.string()), ("n", pa.int64()), ("op", pa.string()), ("name", pa.string()),
                             ("score", pa.int64())]),
                  ("region", "n"), ("region", "n"), (("eu", 1), ("eu", 2), ("us", 1), ("us", None), (None, 1))),
}
OPS = ("c", "u", "r", "d", "-U", "+I", "+U", "-D", "DELETE", "insert", "Update", "upsert")


def build(case: Case, how: str = "left", changelog_op: str | None = "op", **options: Any) -> ChangelogLookupJoinOperator:
    flow = hw.Dataflow("unit")
    probe = flow.source("probe", TestingSource([], schema=case.probe))
    table = flow.source("table", TestingSource([], schema=case.table))
    probe.lookup_join(table, on=list(case.on), table_key=list(case.table_key), how=how, changelog_op=changelog_op,
                      step_id="join", **options)
    operator = operator_factory(flow.steps["join"])()
    assert isinstance(operator, ChangelogLookupJoinOperator)
    operator.open(OperatorContext("join", 0, 1))
    return operator


def key_columns(names: tuple[str, ...], key: Any) -> dict[str, Any]:
    return dict(zip(names, key if len(names) > 1 else (key,)))


def key_of(names: tuple[str, ...], row: dict[str, Any]) -> Any:
    return tuple(row[n] for n in names)


def run_model(case: Case, events: list[tuple[str, list[dict[str, Any]]]], how: str) -> list[dict[str, Any]]:
    """Apply table rows one by one; probe rows see the table as it is when their batch comes."""
    table: dict[Any, dict[str, Any]] = {}
    out = []
    for kind, rows in events:
        for row in rows:
            if kind == "table":
                key = key_of(case.table_key, row)
                op = row["op"].lower()
                if None in key or op in IGNORED_OPS:
                    continue
                if op in DELETE_OPS:
                    table.pop(key, None)
                else:
                    table[key] = {"name": row["name"], "score": row["score"]}
            else:
                key = key_of(case.on, row)
                match = None if None in key else table.get(key)
                if match is not None or how == "left":
                    out.append({**row, **(match or {"name": None, "score": None})})
    return out


def run_operator(operator: ChangelogLookupJoinOperator, case: Case,
                 events: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for kind, rows in events:
        schema = case.table if kind == "table" else case.probe
        for batch in operator.process(pa.RecordBatch.from_pylist(rows, schema=schema), 1 if kind == "table" else 0):
            out.extend(batch.to_pylist())
    return out


@st.composite
def event_lists(draw: st.DrawFn, case: Case) -> list[tuple[str, list[dict[str, Any]]]]:
    key = st.sampled_from(case.pool)
    table_row = st.builds(
        lambda k, op, name, score: {**key_columns(case.table_key, k), "op": op, "name": name, "score": score},
        key, st.sampled_from(OPS), st.sampled_from(["x", "y", None]), st.integers(-5, 5))
    seq = iter(range(10_000))
    probe_row = key.map(lambda k: {**key_columns(case.on, k), "seq": next(seq)})
    batch = st.one_of(st.tuples(st.just("table"), st.lists(table_row, min_size=1, max_size=8)),
                      st.tuples(st.just("probe"), st.lists(probe_row, min_size=1, max_size=8)))
    return draw(st.lists(batch, max_size=14))


@pytest.mark.parametrize("how", ["left", "inner"])
@pytest.mark.parametrize("name", sorted(CASES))
@FAST
@given(data=st.data())
def test_operator_matches_the_model(name: str, how: str, data: st.DataObject) -> None:
    case = CASES[name]
    events = data.draw(event_lists(case))
    assert run_operator(build(case, how), case, events) == run_model(case, events, how)


@pytest.mark.parametrize("name", sorted(CASES))
@FAST
@given(data=st.data())
def test_snapshot_restores_every_key_once_at_any_parallelism(name: str, data: st.DataObject) -> None:
    """Restoring one subtask's table into 1, 2 or 3 subtasks: each key's row lands in the subtask owning its
    key group and nowhere else, so lookups after the rescale equal lookups before it."""
    case = CASES[name]
    events = [e for e in data.draw(event_lists(case)) if e[0] == "table"]
    before = build(case)
    run_operator(before, case, events)
    assert before.table is not None
    snapshot = before.table.snapshot()
    probe_keys = [k for k in case.pool if k is not None and (not isinstance(k, tuple) or None not in k)]
    probes = [{**key_columns(case.on, k), "seq": i} for i, k in enumerate(probe_keys)]
    expected = run_operator(before, case, [("probe", probes)])
    for parallelism in (1, 2, 3):
        found: dict[int, dict[str, Any]] = {}
        for subtask in range(parallelism):
            store = OperatorStateStore("join", G, key_group_range(subtask, parallelism, G))
            restored = build(case)
            restored.open(OperatorContext("join", subtask, parallelism, store))
            store.restore({"table": snapshot} if snapshot is not None else {}, {})
            owned = [p for p in probes if key_groups(
                [pa.array([p[c]], case.probe.field(c).type) for c in case.on], G)[0] in store.key_group_range]
            for row in run_operator(restored, case, [("probe", owned)]):
                assert row["seq"] not in found, "a key was restored into two subtasks"
                found[row["seq"]] = row
        assert [found[row["seq"]] for row in expected] == expected


def test_last_change_per_key_within_a_batch_wins() -> None:
    case = CASES["string"]
    operator = build(case)
    rows = [{"user": "a", "op": "c", "name": "first", "score": 1}, {"user": "b", "op": "c", "name": "b", "score": 2},
            {"user": "a", "op": "u", "name": "second", "score": 3}, {"user": "b", "op": "d", "name": None, "score": None},
            {"user": "c", "op": "d", "name": None, "score": None}, {"user": "c", "op": "c", "name": "c", "score": 4},
            {"user": "a", "op": "-U", "name": "stale", "score": 0}]
    out = run_operator(operator, case, [("table", rows), ("probe", [{"user": u, "seq": i} for i, u in enumerate("abcd")])])
    assert [(r["user"], r["name"], r["score"]) for r in out] == [
        ("a", "second", 3), ("b", None, None), ("c", "c", 4), ("d", None, None)]
    assert operator.metrics() == {"table_rows": 2.0, "table_changes": 6.0, "probe_misses": 2.0}


def test_without_a_change_kind_column_every_row_is_an_upsert() -> None:
    case = CASES["int"]
    operator = build(case, changelog_op=None)
    rows = [{"id": 1, "op": "d", "name": "kept", "score": 1}, {"id": 2, "op": "nonsense", "name": "two", "score": 2}]
    out = run_operator(operator, case, [("table", rows), ("probe", [{"user_id": 1, "seq": 0}, {"user_id": 2, "seq": 1}])])
    assert [(r["name"], r["op"]) for r in out] == [("kept", "d"), ("two", "nonsense")]  # op is a plain column here


@pytest.mark.parametrize("bad", ["x", None])
def test_an_unknown_change_kind_fails_naming_the_accepted_ones(bad: str | None) -> None:
    case = CASES["int"]
    operator = build(case)
    rows = [{"id": 1, "op": "c", "name": "a", "score": 1}, {"id": 2, "op": bad, "name": "b", "score": 2}]
    with pytest.raises(ChangelogError, match=r"holds .*no change kind; accepted \(any case\): upserts c, r, u"):
        run_operator(operator, case, [("table", rows)])


def test_columns_and_suffix_shape_the_output() -> None:
    case = Case(pa.schema([("id", pa.int64()), ("name", pa.string())]),
                pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.int64()), ("op", pa.string())]),
                ("id",), ("id",), ())
    operator = build(case, suffix="_user")
    out = run_operator(operator, case, [("table", [{"id": 1, "name": "ann", "score": 5, "op": "c"}]),
                                        ("probe", [{"id": 1, "name": "order-1"}, {"id": 2, "name": "order-2"}])])
    assert out == [{"id": 1, "name": "order-1", "name_user": "ann", "score": 5},
                   {"id": 2, "name": "order-2", "name_user": None, "score": None}]
    only_score = build(case, columns=["score"])
    out = run_operator(only_score, case, [("table", [{"id": 1, "name": "ann", "score": 5, "op": "c"}]),
                                          ("probe", [{"id": 1, "name": "order-1"}])])
    assert out == [{"id": 1, "name": "order-1", "score": 5}]


# -- storage bounds ----------------------------------------------------------------------------------------------
VALUES = pa.schema([("name", pa.string())])


def latest_rows() -> LatestRows:
    return LatestRows(("id",), [pa.int64()], VALUES, G)


def upsert(state: LatestRows, ids: np.ndarray, tag: str) -> None:
    state.apply([pa.array(ids, pa.int64())], pa.table({"name": [f"{tag}-{i}" for i in ids]}, schema=VALUES),
                np.zeros(len(ids), dtype=bool))


def names_of(state: LatestRows, ids: np.ndarray) -> list[Any]:
    return state.take(state.find([pa.array(ids, pa.int64())])).column("name").to_pylist()


def test_superseded_rows_and_deleted_keys_are_compacted_away() -> None:
    state = latest_rows()
    ids = np.arange(1_000)
    for round_ in range(20):
        upsert(state, ids, f"r{round_}")
    assert len(state) == 1_000 and state.stored <= 2 * 1_000 + 4_096 + 1_000
    assert names_of(state, np.array([0, 999, 1_000])) == ["r19-0", "r19-999", None]

    many = np.arange(10_000, 30_000)
    upsert(state, many, "tmp")
    state.apply([pa.array(many, pa.int64())], pa.table({"name": pa.nulls(len(many), pa.string())}),
                np.ones(len(many), dtype=bool))
    assert len(state) == 1_000
    assert len(state.index) <= 2 * 1_000 + 4_096, "deleted keys lost their slots in a compaction"
    assert names_of(state, np.array([10_000, 5])) == [None, "r19-5"]
    snapshot = state.snapshot()
    assert snapshot is not None and snapshot.num_rows == 1_000


def test_many_small_changes_keep_few_chunks() -> None:
    state = latest_rows()
    for i in range(500):
        upsert(state, np.array([i]), "x")
    assert len(state.chunks) <= 10
    positions = state.find([pa.array(np.arange(-1, 501), pa.int64())])
    assert names_of(state, np.arange(-1, 501)) == [None] + [f"x-{i}" for i in range(500)] + [None]
    assert (positions[1:-1] == np.arange(500)).all()


def test_restore_rejects_a_table_with_other_columns() -> None:
    state = latest_rows()
    upsert(state, np.arange(3), "x")
    snapshot = state.snapshot()
    assert snapshot is not None and snapshot.column_names == ["id", "name", KEY_GROUP_COLUMN]
    other = LatestRows(("id",), [pa.int64()], pa.schema([("email", pa.string())]), G)
    with pytest.raises(StateCompatibilityError, match="new step_id"):
        other.restore(snapshot)
