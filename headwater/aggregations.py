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
from enum import StrEnum
from typing import Any, Callable, Literal

import pyarrow as pa

from headwater.errors import ConfigError, UnknownColumnError, unknown_column_message

Emit = Literal["updates", "final"]
"""When a running aggregate emits: every update of a key, or only its final value at the end of input."""

class AggregationKind(StrEnum):
    """What an :class:`Aggregation` computes. Each kind's facts are defined once, in :data:`KIND_FACTS` (here,
    at the spec level) and in the accumulator registry of :mod:`headwater.operators.aggregation.accumulators`
    (how it is computed); nothing else dispatches on the kind. The values are the DSL names (``hw.count``...)."""

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    MEAN = "mean"
    FIRST = "first"
    LAST = "last"
    COUNT_DISTINCT = "count_distinct"
    MAX_BY = "max_by"
    TOP_K = "top_k"
    UDAF = "udaf"


@dataclass(frozen=True)
class Aggregation:
    """One aggregate over one column (``column=None`` only for ``count()``: count rows)."""

    kind: AggregationKind
    column: str | None = None
    by: str | None = None  # max_by: the column whose maximum selects the row; top_k: the column that ranks rows
    k: int | None = None  # top_k: how many values to keep
    ascending: bool = False  # top_k: keep the smallest instead of the largest
    aggregator: Any = field(default=None, hash=False)  # udaf: the user's Aggregator (any object with its methods)
    columns: tuple[str, ...] = ()  # udaf: every column passed to add() (``column`` is the first)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", AggregationKind(self.kind))
        except ValueError:
            raise ConfigError(f"unknown aggregation kind {self.kind!r}; use one of "
                              f"{', '.join(k.value for k in AggregationKind)}") from None

    @property
    def facts(self) -> KindFacts:
        return KIND_FACTS[self.kind]

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
        return self.facts.output_type(self, schema, schema.field(self.column).type, where)

    def __repr__(self) -> str:
        describe = self.facts.describe
        if describe is not None:
            return describe(self)
        return f"{self.kind}({self.column!r})" if self.column is not None else f"{self.kind}()"


# -- the facts of each kind ---------------------------------------------------------------------------------
def _same(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    return value_type


def _int64(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    return pa.int64()


def _numeric(agg: Aggregation, value_type: pa.DataType, where: str) -> None:
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise ConfigError(
            f"{where}: {agg.kind}({agg.column!r}) needs a numeric column, but {agg.column!r} is "
            f"{value_type}; cast it first (hw.col({agg.column!r}).cast('float64')) or use count()"
        )


def _extreme(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    if not (pa.types.is_timestamp(value_type) or pa.types.is_date(value_type)):
        _numeric(agg, value_type, where)
    return value_type


def _sum(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    _numeric(agg, value_type, where)
    return pa.int64() if pa.types.is_integer(value_type) else pa.float64()


def _mean(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    _numeric(agg, value_type, where)
    return pa.float64()


def _top_k(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    for name in agg.input_columns:
        kind = schema.field(name).type
        if not _orderable(kind):
            raise ConfigError(
                f"{where}: {agg!r}: column {name!r} is {kind}, which top_k() cannot order; it ranks "
                "numbers, strings, binary, booleans and temporal values (cast the column first, e.g. "
                f"hw.col({name!r}).cast('float64'))"
            )
    return pa.list_(value_type)


def _udaf(agg: Aggregation, schema: pa.Schema, value_type: pa.DataType, where: str) -> pa.DataType:
    output: pa.DataType = agg.aggregator.output_type
    return output


def _describe_top_k(agg: Aggregation) -> str:
    options = (f", by={agg.by!r}" if agg.by else "") + (", ascending=True" if agg.ascending else "")
    return f"top_k({agg.column!r}, {agg.k}{options})"


@dataclass(frozen=True)
class KindFacts:
    """What the spec layer knows about a kind (how it is accumulated lives with the operators)."""

    #: checks the input column's type and gives the result type: (spec, schema, column type, where) -> type
    output_type: Callable[[Aggregation, pa.Schema, pa.DataType, str], pa.DataType]
    #: accumulated per key as Python objects (top_k, udaf) rather than in typed state columns
    holds_objects: bool = False
    #: a custom repr (``None``: ``kind(column)``)
    describe: Callable[[Aggregation], str] | None = None


KIND_FACTS: dict[AggregationKind, KindFacts] = {
    AggregationKind.COUNT: KindFacts(_int64),
    AggregationKind.SUM: KindFacts(_sum),
    AggregationKind.MIN: KindFacts(_extreme),
    AggregationKind.MAX: KindFacts(_extreme),
    AggregationKind.MEAN: KindFacts(_mean),
    AggregationKind.FIRST: KindFacts(_same),
    AggregationKind.LAST: KindFacts(_same),
    AggregationKind.COUNT_DISTINCT: KindFacts(_int64),
    AggregationKind.MAX_BY: KindFacts(_same, describe=lambda a: f"max_by({a.column!r}, {a.by!r})"),
    AggregationKind.TOP_K: KindFacts(_top_k, holds_objects=True, describe=_describe_top_k),
    AggregationKind.UDAF: KindFacts(
        _udaf, holds_objects=True,
        describe=lambda a: f"udaf({type(a.aggregator).__name__}, {', '.join(map(repr, a.columns))})"),
}
assert set(KIND_FACTS) == set(AggregationKind), "every aggregation kind needs its facts"


def _column(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"hw.{kind}() takes a column name, got {name!r}")
    return name


def count(column: str | None = None) -> Aggregation:
    """Number of rows (``count()``), or of non-null values of ``column``."""
    return Aggregation(AggregationKind.COUNT, None if column is None else _column(column, "count"))


def sum(column: str) -> Aggregation:  # noqa: A001 - the DSL name users expect
    """Sum of the non-null values (null when a key has none)."""
    return Aggregation(AggregationKind.SUM, _column(column, "sum"))


def min(column: str) -> Aggregation:  # noqa: A001
    """Smallest non-null value."""
    return Aggregation(AggregationKind.MIN, _column(column, "min"))


def max(column: str) -> Aggregation:  # noqa: A001
    """Largest non-null value."""
    return Aggregation(AggregationKind.MAX, _column(column, "max"))


def mean(column: str) -> Aggregation:
    """Arithmetic mean of the non-null values."""
    return Aggregation(AggregationKind.MEAN, _column(column, "mean"))


def first(column: str) -> Aggregation:
    """The first non-null value in arrival order (any type)."""
    return Aggregation(AggregationKind.FIRST, _column(column, "first"))


def last(column: str) -> Aggregation:
    """The last non-null value in arrival order (any type)."""
    return Aggregation(AggregationKind.LAST, _column(column, "last"))


def count_distinct(column: str) -> Aggregation:
    """Number of distinct non-null values (exact; keeps the set of values per key)."""
    return Aggregation(AggregationKind.COUNT_DISTINCT, _column(column, "count_distinct"))


def max_by(column: str, by: str) -> Aggregation:
    """The value of ``column`` in a row where ``by`` is largest (any one of them on ties).

    Cannot be combined with ``first``/``last`` in the same ``aggregate`` (both depend on row order)."""
    return Aggregation(AggregationKind.MAX_BY, _column(column, "max_by"), _column(by, "max_by"))


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
    return Aggregation(AggregationKind.TOP_K, column, None if by == column else by, k=k, ascending=ascending)


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
    return Aggregation(AggregationKind.UDAF, columns[0], aggregator=aggregator, columns=tuple(columns))
