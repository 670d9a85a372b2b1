"""Query planning: only the tiers (and cold files) that can hold the time range are opened; the query's
columns and filters, and the view's row filter, are pushed into the scan; masked columns are masked after it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from headwater.query import MASK, Query, QueryError, QueryRefusedError, TableView, plan_scan
from headwater.query.planner import execute
from headwater.query.structured import plan_query, run_query
from headwater.store import Store

from .conftest import NOW


def test_a_recent_range_opens_only_warm_and_an_old_one_only_cold(store: Store) -> None:
    meta = store.table("clicks")
    view = TableView.full("clicks")
    recent = plan_scan(store, meta, view, ["amount"], time_range=(NOW - timedelta(days=3), None))
    assert recent.tiers == {"warm": 1}
    old = plan_scan(store, meta, view, ["amount"], time_range=(NOW - timedelta(days=40), NOW - timedelta(days=30)))
    assert set(old.tiers) == {"cold"} and old.tiers["cold"] < len(meta.cold)
    both = plan_scan(store, meta, view, ["amount"], time_range=(NOW - timedelta(days=15), None))
    assert set(both.tiers) == {"warm", "cold"}
    assert plan_scan(store, meta, view, ["amount"], time_range=(NOW + timedelta(days=1), None)).tiers == {}
    assert sorted(execute(store, recent).column("amount").to_pylist()) == list(range(3))


def test_a_range_that_excludes_a_tier_never_reads_it(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater.store import cold

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cold tier was read")

    monkeypatch.setattr(cold, "read", refuse)
    query = Query.model_validate({"table": "clicks", "aggregates": [{"fn": "count"}],
                                  "time_range": {"start": (NOW - timedelta(days=5)).isoformat()}})
    assert run_query(store, query, TableView.full("clicks")).to_pylist() == [{"count": 5}]


def test_projection_and_filters_are_pushed_down_with_the_row_filter(store: Store) -> None:
    view = TableView("clicks", ("user", "amount", "email"), frozenset({"email"}), (("region", "==", "eu"),))
    query = Query.model_validate({"table": "clicks", "select": ["user", "email"],
                                  "filter": [{"column": "amount", "op": "<", "value": 10}]})
    plan = plan_query(store, query, view)
    assert plan.columns == ("user", "email")
    assert plan.predicates == (("amount", "<", 10), ("region", "==", "eu"))
    assert plan.masked == ("email",)
    answer = run_query(store, query, view)
    assert answer.num_rows == 5 and set(answer.column("email").to_pylist()) == {MASK}


def test_columns_outside_the_view_are_refused_and_unknown_ones_are_errors(store: Store) -> None:
    view = TableView("clicks", ("user", "amount"))
    meta = store.table("clicks")
    with pytest.raises(QueryRefusedError, match="'region' of table 'clicks' is not granted"):
        plan_scan(store, meta, view, ["region"])
    with pytest.raises(QueryError, match="did you mean 'amount'"):
        plan_scan(store, meta, view, ["amont"])
    with pytest.raises(QueryRefusedError, match="filtered on"):
        plan_scan(store, meta, view, ["user"], [("region", "==", "eu")])
    masked = TableView("clicks", None, frozenset({"email"}))
    for body in ({"filter": [{"column": "email", "op": "==", "value": "e1@x"}]}, {"group_by": ["email"]},
                 {"aggregates": [{"fn": "min", "column": "email"}]}, {"order_by": [{"column": "email"}]}):
        with pytest.raises(QueryRefusedError, match="masked"):
            run_query(store, Query.model_validate({"table": "clicks", **body}), masked)


def test_structured_queries_group_order_and_limit(store: Store) -> None:
    query = Query.model_validate({
        "table": "clicks", "group_by": ["user"], "aggregates": [{"fn": "count", "as": "n"},
                                                                {"fn": "max", "column": "amount"}],
        "order_by": [{"column": "max_amount", "descending": True}], "limit": 2})
    assert run_query(store, query, TableView.full("clicks")).to_pylist() == [
        {"user": "u3", "n": 15, "max_amount": 59}, {"user": "u2", "n": 15, "max_amount": 58}]
    ordered = Query.model_validate({"table": "clicks", "select": ["amount"], "order_by": [{"column": "ts"}],
                                    "limit": 3})
    assert run_query(store, ordered, TableView.full("clicks")).to_pylist() == [
        {"amount": 59}, {"amount": 58}, {"amount": 57}]


@pytest.mark.parametrize("body, message", [
    ({"table": "clicks", "aggregates": [{"fn": "sum"}]}, "needs a column"),
    ({"table": "clicks", "filter": [{"column": "amount", "op": "in", "value": 1}]}, "takes a list"),
    ({"table": "clicks", "group_by": ["user"], "select": ["amount"]}, "only name group_by"),
    ({"table": "clicks", "group_by": ["user"], "order_by": [{"column": "amount"}]}, "not an output column"),
    ({"table": "clicks", "limit": -1}, "greater than or equal"),
    ({"table": "clicks", "having": []}, "Extra inputs"),
])
def test_invalid_structured_queries_say_what_is_wrong(body: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Query.model_validate(body)


def test_values_that_do_not_fit_a_column_are_query_errors(store: Store) -> None:
    for value in ("not a number", "2026-13-45"):
        column = "amount" if value == "not a number" else "ts"
        query = Query.model_validate({"table": "clicks", "filter": [{"column": column, "op": "==", "value": value}]})
        with pytest.raises(QueryError):
            run_query(store, query, TableView.full("clicks"))
    with pytest.raises(QueryError, match="no table 'nope'"):
        run_query(store, Query(table="nope"), TableView.full("nope"))
