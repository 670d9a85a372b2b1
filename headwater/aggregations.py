"""Aggregation specs: ``hw.count()``, ``hw.sum("price")``, ``hw.min``, ``hw.max``, ``hw.mean``, ``hw.first``,
``hw.last``, ``hw.count_distinct``, ``hw.max_by``, ``hw.top_k`` and user-defined ``hw.udaf(aggregator, col)``.

A spec says *what* to compute; the keyed aggregate operator decides how (vectorised partial aggregation of
each batch with Arrow's grouped aggregation, merged into per-key accumulators). Specs are checked where they
are made (``top_k(k=0)``, an aggregator without ``merge``) and against the input schema when the step is added
to a dataflow (unknown or unorderable columns): both raise a :class:`~headwater.errors.ConfigError` family
error before anything runs.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from headwater.errors import ConfigError, UnknownColumnError, unknown_column_message

Emit = Literal["updates", "final"]
"""When a running aggregate emits: every update of a key, or only its final value at the end of input."""

AggKind = Literal["count", "sum", "min", "max", "mean", "first", "last", "count_distinct", "max_by", "top_k", "udaf"]


@dataclass(frozen=True)
class Aggregation:
    """One aggregate over one column (``column=None`` only for ``count()``: count rows)."""

    kind: AggKind
    column: str | None = None
    by: str | None = None  # max_by: the column whose maximum selects the row; top_k: the column that ranks rows
    k: int | None = None  # top_k: how many values to keep
    ascending: bool = False  # top_k: keep the smallest instead of the largest
    aggregator: Any = field(default=None, hash=False)  # udaf: the user's Aggregator
    columns: tuple[str, ...] = ()  # udaf: every column passed to add() (``column`` is the first)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Every input column the aggregate reads."""
        names = [self.column, self.by, *self.columns]
        return tuple(dict.fromkeys(n for n in names if n is not None))

    def output_type(self, schema: pa.Schema, where: str) -> pa.DataType:
        """Check the spec against the input schema; return the result type."""
        if self.column is None:
            return pa.int64()
        for name in self.input_columns:
            if schema.get_field_index(name) < 0:
                raise UnknownColumnError(f"{where}: {self.kind}(): {unknown_column_message(name, schema.names)}")
        value_type = schema.field(self.column).type
        if self.kind == "max_by":
            return value_type
        if self.kind == "udaf":
            return self.aggregator.output_type
        if self.kind == "top_k":
            for name in self.input_columns:
                kind = schema.field(name).type
                if not _orderable(kind):
                    raise ConfigError(
                        f"{where}: {self!r}: column {name!r} is {kind}, which top_k() cannot order; it ranks "
                        "numbers, strings, binary, booleans and temporal values (cast the column first, e.g. "
                        f"hw.col({name!r}).cast('float64'))"
                    )
            return pa.list_(value_type)
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
        if self.kind == "top_k":
            options = (f", by={self.by!r}" if self.by else "") + (", ascending=True" if self.ascending else "")
            return f"top_k({self.column!r}, {self.k}{options})"
        if self.kind == "udaf":
            return f"udaf({type(self.aggregator).__name__}, {', '.join(map(repr, self.columns))})"
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


def _orderable(kind: pa.DataType) -> bool:
    """Types Arrow sorts (``top_k`` ranks with ``pc.sort_indices``)."""
    return (pa.types.is_integer(kind) or pa.types.is_float32(kind) or pa.types.is_float64(kind)
            or pa.types.is_decimal(kind) or pa.types.is_boolean(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind)
            or pa.types.is_duration(kind))


def top_k(column: str, k: int, *, by: str | None = None, ascending: bool = False) -> Aggregation:
    """The ``k`` largest values of ``column`` per key (and window), largest first, as a list.

    With ``by``, the values of ``column`` from the ``k`` rows where ``by`` is largest, ordered by ``by``:
    ``hw.top_k("bidder", 3, by="price")`` gives the bidders of the three highest bids. ``ascending=True``
    keeps the smallest instead, smallest first.

    * Ties are broken by value: rows are ranked by ``(by, column)``, both descending (both ascending with
      ``ascending=True``). The result therefore depends only on the set of rows, never on their arrival
      order, batching or parallelism; equal values are all kept (``[5, 5, 3]``), as ``ORDER BY .. LIMIT k``.
    * Rows where ``column`` (or ``by``) is null or NaN are skipped. A key with fewer than ``k`` such rows gets
      a shorter list; a key with none, an empty list.
    * Result type ``list<type of column>``. Both columns must be orderable: numbers, strings, binary,
      booleans, timestamps, dates, times or durations.

    State per key is at most ``k`` values (and ``by`` values): ``top_k`` costs O(k) per key, whatever the input.
    """
    _column(column, "top_k")
    if by is not None:
        _column(by, "top_k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"hw.top_k({column!r}, k={k!r}): k must be a positive integer (how many values to keep)")
    if not isinstance(ascending, bool):
        raise ConfigError(f"hw.top_k({column!r}, ...): ascending must be True or False, got {ascending!r}")
    return Aggregation("top_k", column, None if by == column else by, k=k, ascending=ascending)


class Aggregator:
    """Base class of user-defined aggregations: subclass it, then aggregate with ``hw.udaf(instance, "col")``.

    Example — the median of each key's values::

        class Median(hw.Aggregator):
            output_type = pa.float64()

            def create(self):
                return []                              # the accumulator: any picklable value

            def add(self, acc, values):                # values: this group's pa.Array of one batch
                return acc + values.drop_null().to_pylist()

            def merge(self, acc, other):
                return acc + other

            def result(self, acc):
                return statistics.median(acc) if acc else None

        stream.key_by("auction").aggregate(median=hw.udaf(Median(), "price"))

    The contract the engine relies on:

    * ``create()`` returns a new, empty accumulator. Accumulators go into checkpoints and travel between
      workers: they must be picklable with :mod:`pickle` (numbers, lists, dicts, numpy arrays, instances of
      module-level classes — not lambdas or open files).
    * ``add(acc, values)`` folds one batch's values of one group into ``acc`` and returns the accumulator (the
      same object, changed, or a new one). It is called once per group per batch — never per row — with a
      ``pa.Array`` holding that group's values in arrival order (nulls included), or a ``pa.RecordBatch``
      when ``udaf`` was given several columns. The engine calls ``add`` on a fresh ``create()`` accumulator
      and merges the result into the stored one.
    * ``merge(acc, other)`` returns the accumulator of both inputs' values. The engine merges per batch, across
      the panes of a sliding window, across sessions and across the workers of a local pre-aggregation, in no
      guaranteed order: ``merge`` must be associative and commutative for results not to depend on batching.
    * ``result(acc)`` returns the output value (a Python value of ``output_type``, or ``None``). It may be
      called again as more values arrive, so it must not change ``acc``.
    * ``output_type`` is the ``pyarrow.DataType`` of the results.

    The aggregator object itself holds no per-key state (subtasks of one process share it); keep everything in
    the accumulator. An exception raised by any method fails the run with
    :class:`~headwater.errors.UserCodeError` naming the step and the aggregation.
    """

    output_type: pa.DataType

    def create(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, values: pa.Array | pa.RecordBatch) -> Any:
        raise NotImplementedError

    def merge(self, acc: Any, other: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        raise NotImplementedError


_AGGREGATOR_METHODS = ("create", "add", "merge", "result")


def udaf(aggregator: Aggregator, *columns: str) -> Aggregation:
    """A user-defined aggregate of ``columns`` (see :class:`Aggregator`): ``hw.udaf(Median(), "price")``.

    With one column ``add`` receives a ``pa.Array``; with several (``hw.udaf(WeightedMean(), "price",
    "qty")``) a ``pa.RecordBatch`` of those columns. Any object with ``create``/``add``/``merge``/``result``
    and an ``output_type`` works; subclassing :class:`Aggregator` documents the contract.
    """
    name = type(aggregator).__name__
    if isinstance(aggregator, type):
        raise ConfigError(f"hw.udaf() takes an aggregator instance, got the class {aggregator.__name__}; "
                          f"call it: hw.udaf({aggregator.__name__}(), ...)")
    missing = [m for m in _AGGREGATOR_METHODS if not callable(getattr(aggregator, m, None))
               or (isinstance(aggregator, Aggregator) and getattr(type(aggregator), m) is getattr(Aggregator, m))]
    if missing:
        raise ConfigError(f"hw.udaf({name}): the aggregator does not define {', '.join(missing)}(); an aggregator "
                          "needs create(), add(acc, values), merge(acc, other) and result(acc)")
    output_type = getattr(aggregator, "output_type", None)
    if not isinstance(output_type, pa.DataType):
        raise ConfigError(f"hw.udaf({name}): output_type must be a pyarrow DataType, got {output_type!r}; set it "
                          "on the class, e.g. output_type = pa.float64()")
    if not columns:
        raise ConfigError(f"hw.udaf({name}) needs at least one column: hw.udaf({name}(), 'price')")
    for column in columns:
        _column(column, "udaf")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"hw.udaf({name}): column given twice in {columns}")
    try:
        empty = aggregator.create()
    except Exception as exc:
        raise ConfigError(f"hw.udaf({name}): create() raised {type(exc).__name__}: {exc}") from exc
    try:
        pickle.dumps(empty, protocol=5)
    except Exception as exc:
        raise ConfigError(
            f"hw.udaf({name}): the accumulator create() returns ({type(empty).__name__}) cannot be pickled "
            f"({exc}); accumulators are stored in checkpoints, so use numbers, lists, dicts, numpy arrays or "
            "instances of module-level classes"
        ) from exc
    return Aggregation("udaf", columns[0], aggregator=aggregator, columns=tuple(columns))
