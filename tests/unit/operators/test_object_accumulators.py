"""``hw.top_k`` and ``hw.udaf``: the accumulators (ties, nulls, merging across batches and partials, snapshots)
and their build-time checks. End-to-end runs against DuckDB are in tests/integration/test_top_k_and_udaf.py."""

from __future__ import annotations

import datetime as dt
import pickle
import statistics
import threading
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.aggregations import Aggregation
from headwater.core.operator import OperatorContext
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.core.state.store import OperatorStateStore
from headwater.errors import ConfigError, HeadwaterError, UnknownColumnError, UserCodeError
from headwater.operators.aggregation.accumulators import AccumulatorSet
from headwater.operators.aggregation.aggregate import RunningAggregateOperator
from headwater.operators.windows.window import WindowAggregateOperator
from headwater.testing import TestingSink, TestingSource, run_local, through_checkpoint_files

SCHEMA = pa.schema([("k", pa.string()), ("v", pa.float64()), ("who", pa.string())])



class Median(hw.Aggregator):
    output_type = pa.float64()

    def create(self) -> list:
        return []

    def add(self, acc: list, values: pa.Array) -> list:
        return acc + [v for v in values.drop_null().to_pylist() if v == v]  # without NaN

    def merge(self, acc: list, other: list) -> list:
        return acc + other

    def result(self, acc: list) -> float | None:
        return float(statistics.median(acc)) if acc else None


class Recording(hw.Aggregator):
    """Records every ``add`` call: (values as a list) — to check the vectorised contract."""

    output_type = pa.int64()

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def create(self) -> int:
        return 0

    def add(self, acc: int, values: pa.Array) -> int:
        self.calls.append(values.to_pylist())
        return acc + len(values)

    def merge(self, acc: int, other: int) -> int:
        return acc + other

    def result(self, acc: int) -> int:
        return acc


def operator(aggregations: dict[str, Aggregation], schema: pa.Schema = SCHEMA,
             store: OperatorStateStore | None = None) -> RunningAggregateOperator:
    op = RunningAggregateOperator(("k",), tuple(aggregations.items()), schema)
    op.open(OperatorContext("agg", 0, 1, store))
    return op


def batch(rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def latest(op: RunningAggregateOperator, rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> dict[Any, dict]:
    return {r["k"]: r for b in op.process(batch(rows, schema)) for r in b.to_pylist()}


def rows_of(k: str, values: list[Any], who: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"k": k, "v": v, "who": w} for v, w in zip(values, who or [None] * len(values))]


# -- top_k ----------------------------------------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest_across_batches_largest_first() -> None:
    op = operator({"top": hw.top_k("v", 3), "low": hw.top_k("v", 2, ascending=True)})
    assert latest(op, rows_of("a", [4.0, 1.0]) + rows_of("b", [9.0]))["a"] == {"k": "a", "top": [4.0, 1.0],
                                                                                "low": [1.0, 4.0]}
    out = latest(op, rows_of("a", [7.0, 0.5, 3.0, 2.0]))
    assert out == {"a": {"k": "a", "top": [7.0, 4.0, 3.0], "low": [0.5, 1.0]}}
    out = latest(op, rows_of("a", [8.0]) + rows_of("b", [-1.0, 10.0]))
    assert out["a"]["top"] == [8.0, 7.0, 4.0] and out["b"] == {"k": "b", "top": [10.0, 9.0, -1.0], "low": [-1.0, 9.0]}


def test_top_k_keeps_duplicates_and_breaks_ties_on_by_by_value() -> None:
    op = operator({"top": hw.top_k("v", 3), "who": hw.top_k("who", 3, by="v"),
                   "least": hw.top_k("who", 2, by="v", ascending=True)})
    out = latest(op, rows_of("a", [5.0, 3.0, 5.0, 1.0], ["m", "z", "b", "a"]))
    assert out["a"]["top"] == [5.0, 5.0, 3.0]
    assert out["a"]["who"] == ["m", "b", "z"]  # price 5 twice: "m" > "b" decides, whatever the arrival order
    assert out["a"]["least"] == ["a", "z"]
    out = latest(op, rows_of("a", [5.0, 5.0], ["x", "c"]))
    assert out["a"]["who"] == ["x", "m", "c"] and out["a"]["top"] == [5.0, 5.0, 5.0]


def test_top_k_skips_nulls_and_nan_and_returns_short_or_empty_lists() -> None:
    op = operator({"top": hw.top_k("v", 5), "who": hw.top_k("who", 5, by="v")})
    out = latest(op, rows_of("a", [None, float("nan"), 2.0, None], ["p", "q", None, "s"])
                 + rows_of("empty", [None, float("nan")], ["x", "y"]))
    assert out["a"] == {"k": "a", "top": [2.0], "who": []}  # the only valid price has a null bidder
    assert out["empty"] == {"k": "empty", "top": [], "who": []}
    out = latest(op, rows_of("empty", [1.0], ["z"]))
    assert out["empty"] == {"k": "empty", "top": [1.0], "who": ["z"]}


@pytest.mark.parametrize("kind, values", [
    (pa.timestamp("ns", tz="UTC"), [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (3, 1, 2)]),
    (pa.date32(), [dt.date(2024, 1, d) for d in (3, 1, 2)]),
    (pa.decimal128(6, 2), [Decimal("1.25"), Decimal("-3.00"), Decimal("7.50")]),
    (pa.string(), ["pear", "apple", "zucchini"]),
    (pa.int8(), [3, -128, 127]),
    (pa.bool_(), [False, True, False]),
])
def test_top_k_keeps_the_value_type(kind: pa.DataType, values: list[Any]) -> None:
    schema = pa.schema([("k", pa.string()), ("x", kind)])
    op = operator({"top": hw.top_k("x", 2)}, schema)
    (out,) = op.process(batch([{"k": "a", "x": x} for x in values], schema))
    assert out.schema.field("top").type == pa.list_(kind)
    assert out.to_pylist()[0]["top"] == sorted(values, reverse=True)[:2]


Pair = tuple[str, float | None, str | None]  # (key, price, bidder)


def reference_top(rows: list[Pair], k: int, ascending: bool) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for key in {r[0] for r in rows}:
        prices = sorted((p for kk, p, _ in rows if kk == key and p is not None), reverse=not ascending)
        pairs = sorted(((p, w) for kk, p, w in rows if kk == key and p is not None and w is not None),
                       reverse=not ascending)
        out[key] = {"top": prices[:k], "who": [w for _, w in pairs[:k]]}
    return out


PAIRS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                           st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, -4.0])),
                           st.one_of(st.none(), st.sampled_from(["u", "v", "w", "x"]))), max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows=PAIRS, cuts=st.lists(st.integers(0, 40), max_size=5), k=st.integers(1, 4), ascending=st.booleans())
def test_top_k_equals_sorting_everything_for_any_batching(rows: list[Pair], cuts: list[int], k: int,
                                                          ascending: bool) -> None:
    op = operator({"top": hw.top_k("v", k, ascending=ascending),
                   "who": hw.top_k("who", k, by="v", ascending=ascending)})
    bounds = [0, *sorted({min(c, len(rows)) for c in cuts}), len(rows)]
    got: dict[str, dict] = {}
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            got.update(latest(op, [{"k": kk, "v": p, "who": w} for kk, p, w in rows[a:b]]))
    assert {key: {"top": r["top"], "who": r["who"]} for key, r in got.items()} == reference_top(rows, k, ascending)


@settings(max_examples=40, deadline=None)
@given(rows=PAIRS, split=st.integers(0, 40), k=st.integers(1, 3))
def test_partials_combined_and_merged_pairwise_agree(rows: list[Pair], split: int, k: int) -> None:
    """The three ways partials meet — combining partial rows (panes, pre-aggregation), merging into state, and
    the pairwise merge of sessions — give the same top-k."""
    accumulators = AccumulatorSet((("top", hw.top_k("v", k)), ("who", hw.top_k("who", k, by="v")),
                                   ("med", hw.udaf(Median(), "v"))))
    table = pa.Table.from_batches([batch([{"k": kk, "v": p, "who": w} for kk, p, w in rows])])
    first, second = (accumulators.group(t, ["k"]) for t in (table.slice(0, split), table.slice(split)))
    combined = accumulators.combine(pa.concat_tables([first, second]), ["k"])
    objects = accumulators.object_columns
    as_dicts = {}
    for name, acc in objects.items():
        keys = combined.column("k").to_pylist()
        as_dicts[name] = dict(zip(keys, acc.to_objects(combined.column(name).combine_chunks())))
        pairwise: dict[str, Any] = {}
        for part in (first, second):
            for key, obj in zip(part.column("k").to_pylist(), acc.to_objects(part.column(name).combine_chunks())):
                pairwise[key] = acc.merge_pair(pairwise.get(key), obj)
        if name == "med.udaf":  # lists in merge order: compare as multisets
            assert {key: sorted(v) for key, v in pairwise.items()} == {
                key: sorted(v) for key, v in as_dicts[name].items()}
        else:
            assert pairwise == as_dicts[name]
    expected = reference_top(rows, k, ascending=False)
    assert as_dicts["top.top_k"] == {key: e["top"] for key, e in expected.items()}
    assert {key: v[1] for key, v in as_dicts["who.top_k"].items()} == {
        key: e["who"] for key, e in expected.items()}


# -- udaf -----------------------------------------------------------------------------------------------------------


def test_udaf_add_is_called_once_per_group_per_batch_with_the_values_in_arrival_order() -> None:
    recording = Recording()
    op = operator({"n": hw.udaf(recording, "v")})
    out = latest(op, rows_of("a", [3.0, None, 1.0]) + rows_of("b", [2.0]) + rows_of("a", [7.0]))
    assert sorted(recording.calls, key=len) == [[2.0], [3.0, None, 1.0, 7.0]]  # nulls are passed through
    assert out == {"a": {"k": "a", "n": 4}, "b": {"k": "b", "n": 1}}
    recording.calls.clear()
    assert latest(op, rows_of("a", [1.0, 1.0]))["a"]["n"] == 6
    assert recording.calls == [[1.0, 1.0]]


def test_udaf_over_several_columns_gets_a_record_batch() -> None:
    class Pairs(hw.Aggregator):
        output_type = pa.list_(pa.string())

        def create(self) -> list:
            return []

        def add(self, acc: list, values: pa.RecordBatch) -> list:
            assert isinstance(values, pa.RecordBatch) and values.schema.names == ["who", "v"]
            return acc + [f"{w}:{v}" for w, v in zip(values.column("who").to_pylist(), values.column("v").to_pylist())]

        def merge(self, acc: list, other: list) -> list:
            return acc + other

        def result(self, acc: list) -> list:
            return sorted(acc)

    op = operator({"pairs": hw.udaf(Pairs(), "who", "v")})
    latest(op, rows_of("a", [1.0], ["x"]))
    assert latest(op, rows_of("a", [2.0, None], ["y", "z"]))["a"]["pairs"] == ["x:1.0", "y:2.0", "z:None"]


@pytest.mark.parametrize("method", ["create", "add", "merge", "result"])
def test_udaf_exceptions_become_user_code_errors_naming_the_aggregation(method: str) -> None:
    class Broken(Median):
        def __init__(self) -> None:
            self.armed = method != "create"  # create() also runs once when the spec is built

        def _maybe(self, name: str) -> None:
            if name == method and self.armed:
                raise ZeroDivisionError("broken on purpose")

        def create(self) -> list:
            self._maybe("create")
            return []

        def add(self, acc: list, values: pa.Array) -> list:
            self._maybe("add")
            return super().add(acc, values)

        def merge(self, acc: list, other: list) -> list:
            self._maybe("merge")
            return super().merge(acc, other)

        def result(self, acc: list) -> float | None:
            self._maybe("result")
            return super().result(acc)

    aggregator = Broken()
    spec = hw.udaf(aggregator, "v")
    aggregator.armed = True
    op = operator({"median": spec})
    with pytest.raises(UserCodeError, match=rf"aggregation 'median' \(udaf\(Broken, 'v'\)\): {method}\(\) raised "
                                            "ZeroDivisionError: broken on purpose") as info:
        op.process(batch(rows_of("a", [1.0])))
        op.process(batch(rows_of("a", [2.0])))  # the first merge into stored state
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_udaf_result_of_the_wrong_type_and_unpicklable_accumulators_are_reported() -> None:
    class Wrong(Median):
        def result(self, acc: list) -> Any:
            return "not a number"

    with pytest.raises(UserCodeError, match="result\\(\\) returned 'not a number'.*output_type double"):
        operator({"m": hw.udaf(Wrong(), "v")}).process(batch(rows_of("a", [1.0])))

    class Unpicklable(Median):
        def add(self, acc: list, values: pa.Array) -> Any:
            return threading.Lock()

    with pytest.raises(UserCodeError, match="cannot be pickled.*add\\(\\) and merge\\(\\) must return picklable"):
        operator({"m": hw.udaf(Unpicklable(), "v")}).process(batch(rows_of("a", [1.0])))


def test_a_duck_typed_aggregator_works_without_subclassing() -> None:
    class Total:
        output_type = pa.float64()

        def create(self) -> float:
            return 0.0

        def add(self, acc: float, values: pa.Array) -> float:
            return acc + sum(v for v in values.to_pylist() if v is not None)

        def merge(self, acc: float, other: float) -> float:
            return acc + other

        def result(self, acc: float) -> float:
            return acc

    op = operator({"total": hw.udaf(Total(), "v")})
    latest(op, rows_of("a", [1.5, None]))
    assert latest(op, rows_of("a", [2.0]))["a"]["total"] == 3.5


# -- state: snapshot and restore ------------------------------------------------------------------------------------


def _store() -> OperatorStateStore:
    return OperatorStateStore("agg", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))


AGGREGATIONS = {"top": hw.top_k("v", 2), "who": hw.top_k("who", 2, by="v"), "med": hw.udaf(Median(), "v"),
                "n": hw.count()}
FIRST = rows_of("a", [1.0, 5.0, None], ["p", "q", "r"]) + rows_of("b", [2.0], ["s"])
SECOND = rows_of("a", [3.0, 5.0], ["t", "a"]) + rows_of("c", [float("nan")], ["u"]) + rows_of("b", [9.0], ["v"])


def test_running_aggregate_state_survives_snapshot_and_restore_exactly() -> None:
    live_store = _store()
    live = operator(AGGREGATIONS, store=live_store)
    live.process(batch(FIRST))
    tables, values = live_store.snapshot()
    assert tables["accumulators"].schema.field("med.udaf").type == pa.binary()

    restored_store = _store()
    restored = operator(AGGREGATIONS, store=restored_store)
    restored_store.restore(through_checkpoint_files(tables), values)
    expected = [b.to_pylist() for b in live.process(batch(SECOND))]
    assert [b.to_pylist() for b in restored.process(batch(SECOND))] == expected
    assert {r["k"]: (r["top"], r["who"], r["med"], r["n"]) for r in expected[0]} == {
        "a": ([5.0, 5.0], ["q", "a"], 4.0, 5), "b": ([9.0, 2.0], ["v", "s"], 5.5, 2), "c": ([], [], None, 1)}


@pytest.mark.parametrize("window", [hw.TumblingWindow(seconds=10),
                                    hw.SlidingWindow(size=dt.timedelta(seconds=10), slide=dt.timedelta(seconds=5))])
def test_window_panes_survive_snapshot_and_restore_exactly(window: Any) -> None:
    schema = SCHEMA.append(pa.field("t", pa.int64()))

    def window_operator(store: OperatorStateStore) -> WindowAggregateOperator:
        op = WindowAggregateOperator(("k",), window, tuple(AGGREGATIONS.items()), "t", 0, 0, schema, pa.int64())
        op.open(OperatorContext("w", 0, 1, store))
        return op

    def timed(rows: list[dict[str, Any]], start: int) -> pa.RecordBatch:
        return batch([{**r, "t": start + 1_000 * i} for i, r in enumerate(rows)], schema)

    live_store = _store()
    live = window_operator(live_store)
    live.process(timed(FIRST, 0))
    live.process(timed(SECOND, 6_000))
    tables, values = live_store.snapshot()
    restored_store = _store()
    restored = window_operator(restored_store)
    restored_store.restore(through_checkpoint_files(tables), values)
    more = timed(rows_of("a", [4.0], ["w"]), 9_000)
    expected = [b.to_pylist() for b in live.process(more) + live.finish()]
    got = [b.to_pylist() for b in restored.process(more) + restored.finish()]
    assert got == expected
    first_window = [r for b in expected for r in b if r["k"] == "a" and r["window_start"] == 0]
    assert first_window[0]["top"] == [5.0, 5.0] and first_window[0]["who"] == ["q", "a"]


# -- build-time checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, True, 2.0, "3", None])
def test_top_k_needs_a_positive_integer_k(k: Any) -> None:
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        hw.top_k("v", k)


def _build(**aggregations: Aggregation) -> None:
    flow = hw.Dataflow("build")
    flow.source("in", TestingSource([], schema=SCHEMA)).key_by("k").aggregate(**aggregations)


def test_unknown_and_unorderable_columns_fail_when_the_step_is_added() -> None:
    with pytest.raises(UnknownColumnError, match="top_k\\(\\): unknown column 'price'"):
        _build(top=hw.top_k("price", 3))
    with pytest.raises(UnknownColumnError, match="unknown column 'wo'; did you mean 'who'"):
        _build(top=hw.top_k("v", 3, by="wo"))
    with pytest.raises(UnknownColumnError, match="udaf\\(\\): unknown column 'x'"):
        _build(m=hw.udaf(Median(), "v", "x"))
    nested = pa.schema([("k", pa.string()), ("tags", pa.list_(pa.string()))])
    flow = hw.Dataflow("nested")
    with pytest.raises(ConfigError, match="column 'tags' is list<item: string>, which top_k\\(\\) cannot order"):
        flow.source("in", TestingSource([], schema=nested)).key_by("k").aggregate(top=hw.top_k("tags", 2))


def test_bad_aggregators_fail_where_the_spec_is_made_with_a_hint() -> None:
    class NoMerge(hw.Aggregator):
        output_type = pa.int64()

        def create(self) -> int:
            return 0

        def add(self, acc: int, values: pa.Array) -> int:
            return acc

        def result(self, acc: int) -> int:
            return acc

    class NoType(Median):
        output_type = "float64"  # type: ignore[assignment]

    class LockInside(Median):
        def create(self) -> Any:
            return threading.Lock()

    class FailsToCreate(Median):
        def create(self) -> Any:
            raise RuntimeError("no")

    cases = [
        (lambda: hw.udaf(NoMerge(), "v"), "does not define merge\\(\\)"),
        (lambda: hw.udaf(object(), "v"), "does not define create, add, merge, result"),
        (lambda: hw.udaf(NoType(), "v"), "output_type must be a pyarrow DataType, got 'float64'"),
        (lambda: hw.udaf(Median, "v"), "call it: hw.udaf\\(Median\\(\\), ...\\)"),
        (lambda: hw.udaf(Median()), "needs at least one column"),
        (lambda: hw.udaf(Median(), "v", "v"), "column given twice"),
        (lambda: hw.udaf(LockInside(), "v"), "cannot be pickled"),
        (lambda: hw.udaf(FailsToCreate(), "v"), "create\\(\\) raised RuntimeError: no"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            make()
        assert isinstance(info.value, HeadwaterError)


def test_specs_read_well_and_report_their_columns() -> None:
    spec = hw.top_k("bidder", 3, by="price", ascending=True)
    assert repr(spec) == "top_k('bidder', 3, by='price', ascending=True)"
    assert spec.input_columns == ("bidder", "price")
    assert hw.top_k("v", 2, by="v") == hw.top_k("v", 2)  # ranking a column by itself is plain top_k
    assert repr(hw.udaf(Median(), "v", "who")) == "udaf(Median, 'v', 'who')"
    assert pickle.loads(pickle.dumps(spec)) == spec


# -- through the engine ---------------------------------------------------------------------------------------------


def test_udaf_errors_name_the_step_through_the_engine() -> None:
    class Exploding(Median):
        def add(self, acc: list, values: pa.Array) -> list:
            raise ValueError("price feed is broken")

    flow = hw.Dataflow("boom")
    flow.source("in", TestingSource(rows_of("a", [1.0, 2.0]), schema=SCHEMA)).key_by("k").aggregate(
        step_id="agg", m=hw.udaf(Exploding(), "v")).sink("out", TestingSink())
    message = r"step 'agg'.*aggregation 'm'.*add\(\) raised ValueError: price feed"
    with pytest.raises(UserCodeError, match=message) as info:
        run_local(flow)
    assert info.value.step_id == "agg"


def test_the_running_aggregate_projects_every_column_the_aggregations_read() -> None:
    wide = SCHEMA.append(pa.field("note", pa.string()))
    flow = hw.Dataflow("columns")
    agg = flow.source("in", TestingSource([], schema=wide)).key_by("k").aggregate(
        step_id="agg", who=hw.top_k("who", 1, by="v"), m=hw.udaf(Median(), "v"))
    assert flow.steps[agg.step_id].required_columns() == ("k", "who", "v")
    # max_by's `by` column too (it used to be projected away before the shuffle, failing the run)
    flow = hw.Dataflow("max_by")
    out = TestingSink()
    flow.source("in", TestingSource(rows_of("a", [1.0, 3.0], ["x", "y"]), schema=wide)).key_by("k").aggregate(
        step_id="agg", best=hw.max_by("who", "v")).sink("out", out)
    run_local(flow)
    assert out.latest(["k"]) == {"a": {"k": "a", "best": "y"}}


def test_top_k_and_udaf_share_an_aggregate_with_max_by_and_null_keys() -> None:
    """max_by groups its own way; the object partials are lined up with its groups by key (nulls included)."""
    op = operator({"best": hw.max_by("who", "v"), "top": hw.top_k("v", 2), "med": hw.udaf(Median(), "v")})
    latest(op, [{"k": None, "v": 1.0, "who": "n1"}, *rows_of("b", [4.0, 6.0], ["x", "y"]), *rows_of("a", [2.0], ["p"])])
    out = latest(op, [*rows_of("a", [9.0, 3.0], ["q", "r"]), {"k": None, "v": 0.5, "who": "n2"},
                      *rows_of("c", [None], ["z"])])
    assert out == {
        "a": {"k": "a", "best": "q", "top": [9.0, 3.0], "med": 3.0},
        None: {"k": None, "best": "n1", "top": [1.0, 0.5], "med": 0.75},
        "c": {"k": "c", "best": None, "top": [], "med": None},
    }


def test_top_k_next_to_first_and_last_in_a_sliding_window() -> None:
    """Panes export both kinds of object column (first/last values, top-k lists) and combine them per window."""
    schema = SCHEMA.append(pa.field("t", pa.int64()))
    window = hw.SlidingWindow(size=dt.timedelta(seconds=2), slide=dt.timedelta(seconds=1))
    op = WindowAggregateOperator(("k",), window, (("first", hw.first("who")), ("last", hw.last("who")),
                                                  ("top", hw.top_k("who", 2, by="v"))), "t", 0, 0, schema, pa.int64())
    op.open(OperatorContext("w", 0, 1))
    timed = [(0, 1.0, "x"), (500, 3.0, "y"), (1_200, 2.0, "z"), (1_700, 5.0, "w")]
    op.process(batch([{"k": "a", "v": v, "who": w, "t": t} for t, v, w in timed], schema))
    (out,) = op.finish()
    assert sorted(out.to_pylist(), key=lambda r: r["window_start"]) == [
        {"k": "a", "first": "x", "last": "y", "top": ["y", "x"], "window_start": -1_000, "window_end": 1_000},
        {"k": "a", "first": "x", "last": "w", "top": ["w", "y"], "window_start": 0, "window_end": 2_000},
        {"k": "a", "first": "z", "last": "w", "top": ["w", "z"], "window_start": 1_000, "window_end": 3_000},
    ]
