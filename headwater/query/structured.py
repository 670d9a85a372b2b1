"""The structured JSON query: select, filter, group-by, aggregates, time range, order and limit, validated
with pydantic (the models are also the Serve app's OpenAPI schema).

Example::

    {"table": "clicks", "filter": [{"column": "country", "op": "in", "value": ["de", "fr"]}],
     "group_by": ["country"], "aggregates": [{"fn": "count"}, {"fn": "sum", "column": "amount", "as": "total"}],
     "time_range": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
     "order_by": [{"column": "total", "descending": true}], "limit": 10}

Execution: the scan is planned by :mod:`headwater.query.planner` with exactly the columns the query needs and
the filter and time range pushed into the tiers; grouping, ordering and the limit run on the Arrow result
(``pyarrow`` grouped aggregation). Invariants: output columns are ``select`` (default: every visible column)
for a plain query, ``group_by`` then the aggregates' names for an aggregate query; masked columns may be
selected (they read as the mask) but not filtered, grouped, aggregated or ordered on, which would reveal them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from headwater.query.errors import QueryError, QueryRefusedError
from headwater.query.planner import ScanPlan, check_columns, execute, plan_scan, table_meta
from headwater.query.views import TableView
from headwater.store import Store

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
#: The most rows one answer carries.
MAX_ROWS = 100_000
Scalar = str | int | float | bool | None
AGGREGATES = {"count": "count", "count_all": "count_all", "count_distinct": "count_distinct", "sum": "sum",
              "mean": "mean", "min": "min", "max": "max"}


class Filter(BaseModel):
    """One predicate; the filter is their conjunction. ``in`` takes a list."""

    model_config = ConfigDict(extra="forbid")
    column: str = Field(pattern=IDENTIFIER)
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in"]
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _list_for_in(self) -> Filter:
        if (self.op == "in") != isinstance(self.value, list):
            raise ValueError("op 'in' takes a list value; the other operators take one value")
        return self


class Aggregate(BaseModel):
    """``fn`` over ``column``; ``count`` without a column counts rows. Named ``as`` (default ``fn_column``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    fn: Literal["count", "count_distinct", "sum", "mean", "min", "max"]
    column: str | None = Field(default=None, pattern=IDENTIFIER)
    name: str | None = Field(default=None, alias="as", pattern=IDENTIFIER)

    @model_validator(mode="after")
    def _column_needed(self) -> Aggregate:
        if self.column is None and self.fn != "count":
            raise ValueError(f"aggregate {self.fn!r} needs a column")
        return self

    @property
    def output(self) -> str:
        return self.name or (self.fn if self.column is None else f"{self.fn}_{self.column}")


class TimeRangeModel(BaseModel):
    """Half-open ``[start, end)`` on the table's time column; either end may be left out."""

    model_config = ConfigDict(extra="forbid")
    start: datetime | None = None
    end: datetime | None = None


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str = Field(pattern=IDENTIFIER)
    descending: bool = False


class Query(BaseModel):
    """A structured query over one table (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    table: str = Field(pattern=IDENTIFIER)
    select: list[str] | None = Field(default=None, max_length=1000)
    filter: list[Filter] = Field(default_factory=list, max_length=100)
    group_by: list[str] = Field(default_factory=list, max_length=100)
    aggregates: list[Aggregate] = Field(default_factory=list, max_length=100)
    time_range: TimeRangeModel | None = None
    order_by: list[Order] = Field(default_factory=list, max_length=100)
    limit: int | None = Field(default=None, ge=0, le=MAX_ROWS)

    @model_validator(mode="after")
    def _consistent(self) -> Query:
        if self.aggregates or self.group_by:
            if self.select is not None and not set(self.select) <= set(self.group_by):
                raise ValueError("with group_by/aggregates, select may only name group_by columns")
            outputs = [*self.group_by, *(a.output for a in self.aggregates)]
            if len(set(outputs)) != len(outputs):
                raise ValueError(f"output columns repeat: {outputs}; name aggregates with 'as'")
            unknown = [o.column for o in self.order_by if o.column not in outputs]
            if unknown:
                raise ValueError(f"order_by {unknown[0]!r} is not an output column ({', '.join(outputs)})")
        return self

    @property
    def aggregated(self) -> bool:
        return bool(self.aggregates or self.group_by)

    def time_tuple(self) -> tuple[datetime | None, datetime | None] | None:
        return None if self.time_range is None else (self.time_range.start, self.time_range.end)


def plan_query(store: Store, query: Query, view: TableView) -> ScanPlan:
    """The scan a query needs: its columns only, its filter and time range pushed down, refusals checked."""
    meta = table_meta(store, query.table)
    reveals = [*query.group_by, *(a.column for a in query.aggregates if a.column),
               *([] if query.aggregated else [o.column for o in query.order_by])]
    check_columns(meta, view, reveals, "used")
    hidden = [c for c in reveals if c in view.masked]
    if hidden:
        raise QueryRefusedError(f"column {hidden[0]!r} of table {meta.name!r} is masked for you; it cannot be "
                                "grouped, aggregated or ordered on")
    if query.aggregated:
        columns = list(dict.fromkeys([*query.group_by, *(a.column for a in query.aggregates if a.column)]))
        if not columns:  # only count(): read the narrowest thing there is, one visible column
            columns = view.visible(meta)[:1]
    else:
        selected = query.select if query.select is not None else view.visible(meta)
        columns = list(dict.fromkeys([*selected, *(o.column for o in query.order_by)]))
    return plan_scan(store, meta, view, columns, [(f.column, f.op, f.value) for f in query.filter],
                     query.time_tuple())


def run_query(store: Store, query: Query, view: TableView, plan: ScanPlan | None = None) -> pa.Table:
    """The query's answer as an Arrow table (``plan``: from :func:`plan_query`, if already made)."""
    plan = plan or plan_query(store, query, view)
    rows = execute(store, plan)
    if query.aggregated:
        specs: list[tuple[Any, str]] = [([], "count_all") if a.column is None else (a.column, AGGREGATES[a.fn])
                                        for a in query.aggregates]
        try:
            grouped = rows.group_by(query.group_by, use_threads=False).aggregate(specs)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise QueryError(f"aggregate does not fit the column's type: {exc}") from None
        produced = [*query.group_by, *(("count_all" if a.column is None else f"{a.column}_{AGGREGATES[a.fn]}")
                                       for a in query.aggregates)]
        output = [*query.group_by, *(a.output for a in query.aggregates)]
        rows = grouped.select(produced).rename_columns(output)
    else:
        output = list(dict.fromkeys(query.select)) if query.select is not None else list(plan.columns)
    if query.order_by:
        order = [(o.column, "descending" if o.descending else "ascending", "at_end") for o in query.order_by]
        rows = rows.take(pc.sort_indices(rows, sort_keys=order))
    rows = rows.select(output)
    limit = MAX_ROWS if query.limit is None else query.limit
    return rows.slice(0, limit)
