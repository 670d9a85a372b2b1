"""Pushing a SQL statement's simple WHERE terms into the tiers' scans.

For a single-table SELECT (``FROM t`` with no join, ``t`` not a CTE), the top-level ``WHERE`` conjunction's
terms of the form ``column op constant`` (``= < <= > >=``, either side, and ``column IN (constants)``) become
store predicates, and terms on the table's time column also bound the scan's time range, so tiers and cold
files outside it are never opened. Only literals whose meaning is certain are pushed: integers on integer
columns, strings on string columns, decimals on float columns, and ``TIMESTAMPTZ '...'`` with an explicit
UTC offset on time zone-aware timestamp columns. Masked columns are never pushed (that would filter on the
hidden value).

Invariant: the pushed terms are implied by the WHERE clause (each is one of its conjuncts), and DuckDB still
evaluates the whole clause on what the scan returns, so pushdown can only remove rows the query would drop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from headwater.query.views import TableView
from headwater.store import Predicate, TableMeta, TimeRange

OPS = {"COMPARE_EQUAL": "==", "COMPARE_LESSTHAN": "<", "COMPARE_LESSTHANOREQUALTO": "<=",
       "COMPARE_GREATERTHAN": ">", "COMPARE_GREATERTHANOREQUALTO": ">="}
FLIPPED = {"==": "==", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def single_table(tree: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None] | None:
    """``(table, alias, where)`` of a single-table SELECT, else ``None``."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return None
    node = statements[0].get("node") or {}
    source = node.get("from_table") or {}
    if node.get("type") != "SELECT_NODE" or source.get("type") != "BASE_TABLE":
        return None
    name = str(source.get("table_name"))
    ctes = {str(e.get("key")) for e in (node.get("cte_map") or {}).get("map", ()) if isinstance(e, dict)}
    if name in ctes:
        return None
    return name, str(source.get("alias") or name), node.get("where_clause")


def _column(node: Any, table: str, alias: str) -> str | None:
    if not isinstance(node, dict) or node.get("class") != "COLUMN_REF":
        return None
    names = [str(n) for n in node.get("column_names") or []]
    if len(names) == 1:
        return names[0]
    if len(names) == 2 and names[0] in (table, alias):
        return names[1]
    return None


def _literal(node: Any, kind: pa.DataType) -> tuple[bool, Any]:
    if not isinstance(node, dict):
        return False, None
    if node.get("class") == "CONSTANT":
        literal = node.get("literal") or {}
        text, what = str(literal.get("text")), literal.get("kind")
        if what in ("INTEGER", "BIGINT", "HUGEINT") and pa.types.is_integer(kind):
            return True, int(text)
        if what == "STRING" and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return True, text
        if what in ("NUMERIC", "DECIMAL", "INTEGER") and pa.types.is_floating(kind):
            return True, float(text)
        return False, None
    if node.get("class") == "CAST" and pa.types.is_timestamp(kind) and getattr(kind, "tz", None):
        type_name = str((node.get("type_expr") or {}).get("type_name", "")).upper()
        child = node.get("child") or {}
        literal = child.get("literal") or {}
        if type_name in ("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE") and literal.get("kind") == "STRING":
            try:
                value = datetime.fromisoformat(str(literal.get("text")))
            except ValueError:
                return False, None
            if value.tzinfo is not None:
                return True, value
    return False, None


def pushable(meta: TableMeta, view: TableView, table: str, alias: str,
             where: dict[str, Any] | None) -> tuple[list[Predicate], TimeRange | None]:
    """The store predicates and time range implied by ``where`` (see the module docstring)."""
    if where is None:
        return [], None
    terms = where.get("children", []) if where.get("type") == "CONJUNCTION_AND" else [where]
    visible = set(view.visible(meta))
    predicates: list[Predicate] = []
    start: datetime | None = None
    end: datetime | None = None
    for term in terms:
        if not isinstance(term, dict):
            continue
        found: Predicate | None = None
        if term.get("class") == "COMPARISON" and term.get("type") in OPS:
            op = OPS[str(term["type"])]
            left, right = term.get("left"), term.get("right")
            name = _column(left, table, alias)
            if name is None:
                name, op, right = _column(right, table, alias), FLIPPED[op], left
            if name is not None and name in visible and name not in view.masked:
                ok, value = _literal(right, meta.schema.field(name).type)
                if ok:
                    found = (name, op, value)
        elif term.get("type") == "COMPARE_IN":
            children = term.get("children") or []
            name = _column(children[0], table, alias) if children else None
            if name is not None and name in visible and name not in view.masked:
                kind = meta.schema.field(name).type
                values = [_literal(c, kind) for c in children[1:]]
                if values and all(ok for ok, _ in values):
                    found = (name, "in", [v for _, v in values])
        if found is None:
            continue
        predicates.append(found)
        name, op, value = found
        if name == meta.time and isinstance(value, datetime):
            if op in (">=", ">", "=="):
                start = value if start is None else max(start, value)
            if op in ("<", "<=", "=="):
                bound = value if op == "<" else value + timedelta(microseconds=1)
                end = bound if end is None else min(end, bound)
    return predicates, (start, end) if start is not None or end is not None else None
