"""Aggregation specs: ``hw.count()``, ``hw.sum("price")``, ``hw.min``, ``hw.max``, ``hw.mean``, ``hw.first``,
``hw.last``, ``hw.count_distinct``.

A spec says *what* to compute; the keyed aggregate operator decides how (vectorised partial aggregation of
each batch with Arrow's grouped aggregation, merged into per-key accumulators).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from headwater.errors import ConfigError, UnknownColumnError
from headwater.expressions import _unknown_column_message

AggKind = Literal["count", "sum", "min", "max", "mean", "first", "last", "count_distinct", "max_by"]


@dataclass(frozen=True)
class Aggregation:
    """One aggregate over one column (``column=None`` only for ``count()``: count rows)."""

    kind: AggKind
    column: str | None = None
    by: str | None = None  # max_by: the column whose maximum selects the row

    def output_type(self, schema: pa.Schema, where: str) -> pa.DataType:
        """Check the spec against the input schema; return the result type."""
        if self.column is None:
            return pa.int64()
        index = schema.get_field_index(self.column)
        if index < 0:
            raise UnknownColumnError(f"{where}: {self.kind}(): {_unknown_column_message(self.column, schema.names)}")
        value_type = schema.field(index).type
        if self.kind == "max_by":
            assert self.by is not None
            if schema.get_field_index(self.by) < 0:
                raise UnknownColumnError(f"{where}: max_by(): {_unknown_column_message(self.by, schema.names)}")
            return value_type
        if self.kind in ("count", "count_distinct"):
            return pa.int64()
        if self.kind in ("first", "last"):
            return value_type
        numeric = pa.types.is_integer(value_type) or pa.types.is_floating(value_type)
        temporal = pa.types.is_timestamp(value_type) or pa.types.is_date(value_type)
        if self.kind in ("min", "max") and (numeric or temporal):
            return value_type
        if not numeric:
            raise ConfigError(
                f"{where}: {self.kind}({self.column!r}) needs a numeric column, but {self.column!r} is "
                f"{value_type}; cast it first (hw.col({self.column!r}).cast('float64')) or use count()"
            )
        if self.kind == "sum":
            return pa.int64() if pa.types.is_integer(value_type) else pa.float64()
        if self.kind == "mean":
            return pa.float64()
        return value_type

    def __repr__(self) -> str:
        if self.kind == "max_by":
            return f"max_by({self.column!r}, {self.by!r})"
        return f"{self.kind}({self.column!r})" if self.column is not None else f"{self.kind}()"


def _column(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"hw.{kind}() takes a column name, got {name!r}")
    return name


def count(column: str | None = None) -> Aggregation:
    """Number of rows (``count()``), or of non-null values of ``column``."""
    return Aggregation("count", None if column is None else _column(column, "count"))


def sum(column: str) -> Aggregation:  # noqa: A001 - the DSL name users expect
    """Sum of the non-null values (null when a key has none)."""
    return Aggregation("sum", _column(column, "sum"))


def min(column: str) -> Aggregation:  # noqa: A001
    """Smallest non-null value."""
    return Aggregation("min", _column(column, "min"))


def max(column: str) -> Aggregation:  # noqa: A001
    """Largest non-null value."""
    return Aggregation("max", _column(column, "max"))


def mean(column: str) -> Aggregation:
    """Arithmetic mean of the non-null values."""
    return Aggregation("mean", _column(column, "mean"))


def first(column: str) -> Aggregation:
    """The first non-null value in arrival order (any type)."""
    return Aggregation("first", _column(column, "first"))


def last(column: str) -> Aggregation:
    """The last non-null value in arrival order (any type)."""
    return Aggregation("last", _column(column, "last"))


def count_distinct(column: str) -> Aggregation:
    """Number of distinct non-null values (exact; keeps the set of values per key)."""
    return Aggregation("count_distinct", _column(column, "count_distinct"))


def max_by(column: str, by: str) -> Aggregation:
    """The value of ``column`` in a row where ``by`` is largest (any one of them on ties).

    Cannot be combined with ``first``/``last`` in the same ``aggregate`` (both depend on row order)."""
    return Aggregation("max_by", _column(column, "max_by"), _column(by, "max_by"))
