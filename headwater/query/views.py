"""``TableView``: what one caller may see of one table, the only input the query layer takes from access control.

Invariants: a view never widens a table. ``columns`` (``None``: every column, including ones added later) is
the visible projection; ``masked`` columns are visible but their non-null values are replaced by
:data:`MASK` *after* the scan, so no masked value reaches DuckDB or a result; ``row_filter`` is a conjunction
of store predicates pushed into every tier's scan, so rows outside it are never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.store import Predicate, TableMeta

#: What a masked value reads as (masked columns become strings; nulls stay null).
MASK = "***"


@dataclass(frozen=True)
class TableView:
    table: str
    columns: tuple[str, ...] | None = None
    masked: frozenset[str] = frozenset()
    row_filter: tuple[Predicate, ...] = ()

    @classmethod
    def full(cls, table: str) -> TableView:
        """Everything of ``table``: the admin's view."""
        return cls(table)

    def visible(self, meta: TableMeta) -> list[str]:
        """The columns of ``meta`` this view shows, in table order (granted columns the table lacks are skipped)."""
        if self.columns is None:
            return list(meta.schema.names)
        wanted = set(self.columns)
        return [c for c in meta.schema.names if c in wanted]

    def fingerprint(self) -> str:
        """A stable digest of the view (part of result-cache keys: two roles never share an entry)."""
        document = {"t": self.table, "c": None if self.columns is None else sorted(self.columns),
                    "m": sorted(self.masked), "f": [list(p) for p in self.row_filter]}
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mask(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """``table`` with each of ``columns`` (those present) replaced by :data:`MASK` where not null."""
    for name in columns:
        if name not in table.column_names:
            continue
        index = table.column_names.index(name)
        original = table.column(index)
        masked = pc.if_else(pc.is_null(original), pa.scalar(None, pa.string()), pa.scalar(MASK, pa.string()))
        table = table.set_column(index, pa.field(name, pa.string()), masked)
    return table
