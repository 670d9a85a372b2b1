"""The window operator fed by local pre-aggregation (``merge_partials``): buffered partials, panes that close
without entering state, and snapshots taken while partials wait — all must give exactly what the operator
gives when it aggregates the raw rows itself."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.core.operator import OperatorContext
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.core.state.store import OperatorStateStore
from headwater.operators.windows import window as window_module
from headwater.operators.windows.window import WindowAggregateOperator, WindowPartialOperator
from headwater.testing import through_checkpoint_files

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64()), ("t", pa.int64())])
SIMPLE = {"n": hw.count(), "total": hw.sum("v"), "low": hw.min("v"), "high": hw.max("v"), "avg": hw.mean("v"),
          "first": hw.first("v"), "last": hw.last("v"), "kinds": hw.count_distinct("v")}
MAX_BY = {"high": hw.max("v"), "at": hw.max_by("t", "v"), "n": hw.count()}
TOP_K = {"top": hw.top_k("v", 2), "n": hw.count(), "last": hw.last("v")}
WINDOWS = [hw.TumblingWindow(seconds=2), hw.SlidingWindow(size=dt.timedelta(seconds=3), slide=dt.timedelta(seconds=1))]

ROWS = st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(-5, 5)), st.integers(0, 12_000)),
                min_size=1, max_size=80)


def _store() -> OperatorStateStore:
    return OperatorStateStore("w", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))


def _operator(window: Any, aggregations: dict[str, Any], keyed: bool, merge_partials: bool,
              store: OperatorStateStore | None = None, lateness: int = 0) -> WindowAggregateOperator:
    op = WindowAggregateOperator(("k",) if keyed else (), window, tuple(aggregations.items()), "t", 0, lateness,
                                 SCHEMA, pa.int64(), merge_partials=merge_partials)
    op.open(OperatorContext("w", 0, 1, store or _store()))
    return op


def _rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return sorted((r for b in batches for r in b.to_pylist()), key=lambda r: (r["window_start"], r.get("k", 0)))


@pytest.mark.parametrize("window", WINDOWS, ids=["tumbling", "sliding"])
@pytest.mark.parametrize("aggregations", [SIMPLE, MAX_BY, TOP_K], ids=["simple", "max_by", "top_k"])
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "global"])
@settings(max_examples=30, deadline=None)
@given(rows=ROWS, cuts=st.lists(st.integers(0, 80), max_size=6), buffer_rows=st.sampled_from([1, 3, 65_536]),
       snapshot_at=st.one_of(st.none(), st.integers(0, 6)), lag=st.integers(0, 3_000), ordered=st.booleans(),
       lateness=st.sampled_from([0, 1_000, 4_000]))
def test_pre_aggregated_input_gives_the_raw_rows_results(
    window: Any, aggregations: dict[str, Any], keyed: bool, rows: list[tuple[int, int | None, int]],
    cuts: list[int], buffer_rows: int, snapshot_at: int | None, lag: int, ordered: bool, lateness: int,
) -> None:
    """Rows in batches (in time order, or as generated: late ones are then dropped or update fired windows
    within ``lateness``); after each batch the watermark moves to ``lag`` ms behind the latest time seen.
    Every emission must be equal (late records go to the raw operator's side output and are dropped from
    pre-aggregated input: neither is part of the compared output)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(window_module, "PARTIAL_BUFFER_ROWS", buffer_rows)
        _compare(window, aggregations, keyed, sorted(rows, key=lambda r: r[2]) if ordered else rows, cuts,
                 snapshot_at, lag, lateness)


def _compare(window: Any, aggregations: dict[str, Any], keyed: bool, rows: list[tuple[int, int | None, int]],
             cuts: list[int], snapshot_at: int | None, lag: int, lateness: int) -> None:
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    batches = [pa.record_batch([pa.array([r[i] for r in rows[a:b]], pa.int64()) for i in range(3)], schema=SCHEMA)
               for a, b in zip(bounds, bounds[1:]) if b > a]
    raw = _operator(window, aggregations, keyed, merge_partials=False, lateness=lateness)
    merged_store = _store()
    merged = _operator(window, aggregations, keyed, merge_partials=True, store=merged_store, lateness=lateness)
    partial = WindowPartialOperator(("k",) if keyed else (), window, tuple(aggregations.items()), "t", 0, SCHEMA)
    latest = -1
    for i, batch in enumerate(batches):
        if i == snapshot_at:  # restart from a snapshot taken while partials may be buffered
            tables, values = merged_store.snapshot()
            merged_store = _store()
            merged = _operator(window, aggregations, keyed, merge_partials=True, store=merged_store,
                               lateness=lateness)
            merged_store.restore(through_checkpoint_files(tables), values)
            if latest >= 0:  # the runtime hands a restored operator the checkpoint's watermark: nothing fires
                assert merged.on_watermark(latest - lag) == []
        expected = raw.process(batch)
        got = [out for part in partial.process(batch) for out in merged.process(part)]
        assert _rows(got) == _rows(expected)
        latest = max(latest, *batch.column("t").to_pylist())
        mark = latest - lag
        assert _rows(merged.on_watermark(mark)) == _rows(raw.on_watermark(mark))
    assert _rows(merged.finish()) == _rows(raw.finish())


def test_a_snapshot_holds_buffered_partials() -> None:
    store = _store()
    op = _operator(WINDOWS[0], SIMPLE, keyed=True, merge_partials=True, store=store)
    partial = WindowPartialOperator(("k",), WINDOWS[0], tuple(SIMPLE.items()), "t", 0, SCHEMA)
    batch = pa.record_batch([pa.array([1, 1, 2]), pa.array([5, 7, 1]), pa.array([10, 20, 30])], schema=SCHEMA)
    for part in partial.process(batch):
        assert op.process(part) == []
    assert op._pending  # buffered, not in the panes yet
    tables, values = store.snapshot()
    assert not op._pending and tables["panes"].num_rows == 2
    restored_store = _store()
    restored = _operator(WINDOWS[0], SIMPLE, keyed=True, merge_partials=True, store=restored_store)
    restored_store.restore(through_checkpoint_files(tables), values)
    rows = _rows(restored.finish())
    assert [(r["k"], r["n"], r["total"], r["first"], r["last"]) for r in rows] == [(1, 2, 12, 5, 7), (2, 1, 1, 1, 1)]


@pytest.mark.parametrize("merge_partials", [False, True], ids=["raw", "pre-aggregated"])
def test_first_and_last_of_a_window_whose_values_are_all_null_are_null(merge_partials: bool) -> None:
    # Regression: the integer first/last columns went through numpy as NaN and the result could not be built.
    op = _operator(WINDOWS[0], SIMPLE, keyed=True, merge_partials=merge_partials)
    batch = pa.record_batch([pa.array([3]), pa.array([None], pa.int64()), pa.array([0])], schema=SCHEMA)
    inputs = WindowPartialOperator(("k",), WINDOWS[0], tuple(SIMPLE.items()), "t", 0, SCHEMA).process(batch) \
        if merge_partials else [batch]
    for part in inputs:
        op.process(part)
    [row] = _rows(op.finish())
    assert (row["n"], row["first"], row["last"], row["total"], row["kinds"]) == (1, None, None, None, 0)
