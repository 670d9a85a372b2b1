"""Planning a read of one table: which tiers can hold the time range, and what is pushed into each.

A :class:`ScanPlan` is plain data: the table's data version it was planned on, the columns to read (the query's
needs, inside the caller's view), the predicates (the query's filter plus the view's row filter, as store
predicates) and the time range. Tier selection uses the manifest's per-tier and per-file time bounds
(:func:`headwater.store.scan.plan_tiers`): a tier or cold file that cannot hold a row of the range is never
opened. Execution goes through :meth:`headwater.store.Store.scan`, which pushes projection and predicates into
LanceDB and ``pyarrow.dataset``; so a plan gives the same rows whichever tiers hold them.

Invariant: the view's row filter is always part of ``predicates`` and columns outside the view are never
read; masking happens after the scan (:func:`headwater.query.views.mask`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Sequence

import pyarrow as pa

from headwater.errors import ConfigError, TableNotFoundError
from headwater.query.errors import QueryError, QueryRefusedError
from headwater.query.views import TableView, mask
from headwater.store import Predicate, Store, TableMeta, TimeRange
from headwater.store.scan import plan_tiers


@dataclass(frozen=True)
class ScanPlan:
    table: str
    data_version: int
    columns: tuple[str, ...]
    predicates: tuple[Predicate, ...]
    time_range: TimeRange | None
    masked: tuple[str, ...]
    tiers: dict[str, int] = field(default_factory=dict)  # tier → cold files / 1 for warm, only those opened

    def describe(self) -> dict[str, Any]:
        return {"table": self.table, "data_version": self.data_version, "columns": list(self.columns),
                "filter": [list(p) for p in self.predicates], "tiers": dict(self.tiers),
                "time_range": None if self.time_range is None else [
                    None if t is None else t.isoformat() for t in self.time_range]}


def table_meta(store: Store, name: str) -> TableMeta:
    try:
        return store.table(name)
    except TableNotFoundError:
        raise QueryError(f"there is no table {name!r} (tables: {', '.join(store.tables()) or 'none'})") from None
    except ConfigError as exc:
        raise QueryError(str(exc)) from None


def check_columns(meta: TableMeta, view: TableView, names: Sequence[str], what: str) -> None:
    """Every one of ``names`` is a visible column (QueryRefusedError for a hidden one, QueryError for none)."""
    visible = view.visible(meta)
    for name in names:
        if name in visible:
            continue
        if name in meta.schema.names:
            raise QueryRefusedError(f"column {name!r} of table {meta.name!r} is not granted to you ({what})")
        hint = difflib.get_close_matches(name, visible, n=1)
        raise QueryError(f"table {meta.name!r} has no column {name!r} ({what})"
                         + (f"; did you mean {hint[0]!r}?" if hint else f"; columns: {', '.join(visible)}"))


def coerce(meta: TableMeta, column: str, value: Any) -> Any:
    """A JSON value as a value of ``column``: ISO 8601 strings for timestamp and date columns."""
    kind = meta.schema.field(column).type
    if isinstance(value, list):
        return [coerce(meta, column, v) for v in value]
    if isinstance(value, str) and pa.types.is_timestamp(kind):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise QueryError(f"column {column!r} is a timestamp; {value!r} is not ISO 8601") from None
    if isinstance(value, str) and pa.types.is_date(kind):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise QueryError(f"column {column!r} is a date; {value!r} is not ISO 8601 (YYYY-MM-DD)") from None
    return value


def plan_scan(store: Store, meta: TableMeta, view: TableView, columns: Sequence[str] | None,
              filter: Sequence[Predicate] = (), time_range: TimeRange | None = None) -> ScanPlan:
    """Plan reading ``columns`` (default: every visible one) of ``meta`` under ``view``."""
    visible = view.visible(meta)
    wanted = list(dict.fromkeys(columns)) if columns is not None else visible
    check_columns(meta, view, wanted, "selected")
    user_filter = [(c, op, coerce(meta, c, v)) for c, op, v in filter]
    check_columns(meta, view, [c for c, _, _ in user_filter], "filtered on")
    hidden = [c for c, _, _ in user_filter if c in view.masked]
    if hidden:
        raise QueryRefusedError(f"column {hidden[0]!r} of table {meta.name!r} is masked for you; it cannot be "
                                "filtered on")
    if time_range is not None and meta.time is None:
        raise QueryError(f"table {meta.name!r} has no time column, so it takes no time_range")
    warm, files = plan_tiers(meta, time_range)
    tiers = {**({"warm": 1} if warm else {}), **({"cold": len(files)} if files else {})}
    return ScanPlan(meta.name, meta.data_version, tuple(wanted), tuple(user_filter) + tuple(view.row_filter),
                    time_range, tuple(c for c in wanted if c in view.masked), tiers)


def execute(store: Store, plan: ScanPlan, *, dictionary_strings: bool = False) -> pa.Table:
    """The plan's rows (masked columns masked); store-level mistakes (a value of the wrong type) are QueryErrors.
    ``dictionary_strings``: string columns dictionary-encoded (for DuckDB, see Store.scan)."""
    try:
        rows = store.scan(plan.table, list(plan.columns), plan.time_range, list(plan.predicates),
                          dictionary_strings=dictionary_strings)
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    return mask(rows, plan.masked)
