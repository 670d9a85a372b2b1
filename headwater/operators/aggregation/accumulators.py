"""Vectorised accumulators: partial aggregation of a batch with Arrow, merged into per-key numpy columns.

Both the running keyed aggregate and the window operators keep their aggregates as columns of a
:class:`~headwater.core.state.store.KeyedColumns` (one row per key — or per key and window). For every batch:

1. Arrow's grouped aggregation reduces the batch to one partial row per group (``partials``);
2. :meth:`AccumulatorSet.merge` folds the partials into the state columns at the groups' slots (slots are
   unique within a batch, so fancy indexing is exact);
3. :meth:`AccumulatorSet.results` turns the state at some slots into the output columns.

Numeric aggregates are typed numpy columns. ``first``/``last`` keep values of any type in object columns;
``count_distinct`` keeps a Python set per slot (merged per group, not per row). ``top_k`` and ``udaf`` are
object accumulators (:mod:`headwater.operators.aggregation.object_accumulators`): one Python object per slot and one
partial column per aggregation, computed from each group's rows, which the same ``group_by`` collects.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import KIND_FACTS, Aggregation, AggregationKind
from headwater.core.arrays import as_int64, from_int64, is_integer_like
from headwater.core.state.store import KeyedColumns
from headwater.errors import ConfigError
from headwater.operators.aggregation.object_accumulators import (
    ROW,
    ObjectAccumulator,
    align_rows,
    make_object_accumulator,
    number_rows,
    with_partials,
)

_INT_MIN, _INT_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


class StateColumns(Protocol):
    """What :meth:`AccumulatorSet.results` reads: named state columns (a KeyedColumns, or a table's columns)."""

    @property
    def columns(self) -> dict[str, np.ndarray]: ...


class ColumnDeclarer(Protocol):
    """What :meth:`AccumulatorSet.declare` adds state columns to (a KeyedColumns, or a stand-in)."""

    def add_column(self, name: str, dtype: np.dtype | type, fill: Any) -> None: ...


def _partial_name(column: Any, function: str) -> str:
    return "count_all" if column == [] else f"{column}_{function}"


_CODE = "__group_code"


def _group_codes(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """A dense int64 code per row (0..groups-1), equal exactly for rows with equal keys (nulls are a value
    like any other), numbered in order of first appearance."""
    if len(keys) == 1:
        codes = _run_codes(table.column(keys[0]))
        if codes is not None:
            return codes
    codes = np.zeros(table.num_rows, dtype=np.int64)
    space = 1
    for key in keys:
        column = table.column(key).combine_chunks()
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        space *= max(1, len(encoded.dictionary))
        codes = codes * len(encoded.dictionary) + np.asarray(encoded.indices, dtype=np.int64)
        if space > 4 * max(1, table.num_rows):  # re-number densely before the code space grows too large
            encoded = pc.dictionary_encode(pa.array(codes))
            codes, space = np.asarray(encoded.indices, dtype=np.int64), len(encoded.dictionary)
    if len(keys) > 1 and len(codes):  # combined codes may skip values: renumber the ones in use (O(space))
        used = np.bincount(codes, minlength=space) > 0
        codes = (np.cumsum(used) - 1)[codes]
    return codes


def _run_codes(column: pa.ChunkedArray) -> np.ndarray | None:
    """Codes for an integer (or timestamp) key column without nulls whose equal values are adjacent, as
    event-time panes of ordered input are: one code per run, found in one pass (no hashing). ``None`` when
    the column is not like that (a value comes back after another one)."""
    kind = column.type
    if column.null_count or not (pa.types.is_integer(kind) or pa.types.is_timestamp(kind)) or len(column) == 0:
        return None
    values = np.asarray(as_int64(column.combine_chunks()))
    changes = values[1:] != values[:-1]
    starts = values[np.flatnonzero(changes) + 1]
    if len(starts) and (np.any(starts[1:] <= starts[:-1]) or starts[0] <= values[0]):  # not ascending runs
        return None
    codes = np.empty(len(values), dtype=np.int64)
    codes[0] = 0
    np.cumsum(changes, out=codes[1:])
    return codes


class _Groups:
    """Grouped reductions over dense group codes: ``reduceat`` over runs when equal codes are adjacent (one
    pass, ~10x faster), else numpy's unbuffered ``ufunc.at``."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        self.count = int(codes.max()) + 1 if len(codes) else 0
        self.starts: np.ndarray | None = None
        if len(codes):
            steps = codes[1:] - codes[:-1]
            if not (steps < 0).any():  # ascending dense codes: each group is one run
                self.starts = np.concatenate(([0], np.flatnonzero(steps) + 1))

    def first_rows(self) -> np.ndarray:
        if self.starts is not None:
            return self.starts
        first = np.full(self.count, len(self.codes), dtype=np.int64)
        np.minimum.at(first, self.codes, np.arange(len(self.codes), dtype=np.int64))
        return first

    def sizes(self, valid: np.ndarray | None) -> np.ndarray:
        if valid is None and self.starts is not None:
            return np.diff(self.starts, append=len(self.codes)).astype(np.int64)
        return np.bincount(self.codes if valid is None else self.codes[valid], minlength=self.count).astype(np.int64)

    def reduce(self, ufunc: np.ufunc, values: np.ndarray, identity: Any, valid: np.ndarray | None) -> np.ndarray:
        """``ufunc`` over each group's values (rows where ``valid`` is False skipped; ``identity`` for none)."""
        if valid is None and self.starts is not None:
            return ufunc.reduceat(values, self.starts)
        out = np.full(self.count, identity, dtype=values.dtype)
        ufunc.at(out, self.codes if valid is None else self.codes[valid], values if valid is None else values[valid])
        return out


class AccumulatorSet:
    """The accumulators of a list of ``(output name, Aggregation)`` pairs over one input schema."""

    def __init__(self, aggregations: Sequence[tuple[str, Aggregation]]) -> None:
        self.aggregations = tuple(aggregations)
        self.partials: list[tuple[Any, str]] = []
        self.objects: dict[str, ObjectAccumulator] = {}  # top_k / udaf, by output name
        for out_name, agg in self.aggregations:
            if agg.facts.holds_objects:
                self.objects[out_name] = make_object_accumulator(out_name, agg)
                continue
            needed: list[tuple[Any, str]] = [([], "count_all")] if agg.column is None else [(agg.column, "count")]
            needed += _PARTIALS[agg.kind](agg)
            for pair in needed:
                if pair not in self.partials:
                    self.partials.append(pair)
        self.value_types: dict[str, pa.DataType] = {}
        self.declared = False
        self.sort_by = [agg.by for _, agg in self.aggregations if agg.kind is AggregationKind.MAX_BY and agg.by is not None]
        kinds = {agg.kind for _, agg in self.aggregations}
        if len(set(self.sort_by)) > 1 or (self.sort_by and kinds & {AggregationKind.FIRST, AggregationKind.LAST}):
            raise ConfigError(
                "max_by() needs rows ordered by its `by` column: use one `by` column per aggregate, and no "
                "first()/last() in the same aggregate (split it into two steps)"
            )

    def declare(self, state: ColumnDeclarer, schema: pa.Schema) -> None:
        """Add the state columns (idempotent; restored columns keep their data)."""
        for column, function in self.partials:
            name = _partial_name(column, function)
            if function in ("count", "count_all"):
                state.add_column(name, np.int64, 0)
                continue
            value_type = schema.field(column).type
            self.value_types[column] = value_type
            if function in ("first", "last", "distinct"):
                state.add_column(name, object, None)
                continue
            floating = pa.types.is_floating(value_type)
            dtype = np.float64 if floating else np.int64
            if function == "sum":
                state.add_column(name, dtype, 0)
            elif function == "min":
                state.add_column(name, dtype, np.inf if floating else _INT_MAX)
            else:
                state.add_column(name, dtype, -np.inf if floating else _INT_MIN)
        for acc in self.objects.values():
            acc.bind(schema)
            state.add_column(acc.name, object, None)
        self.declared = True

    @property
    def object_columns(self) -> dict[str, ObjectAccumulator]:
        """The object accumulators by state (and partial) column name."""
        return {acc.name: acc for acc in self.objects.values()}

    def group(self, table: pa.Table, keys: Sequence[str], extra: Sequence[tuple[str, str]] = ()) -> pa.Table:
        """The batch's partial aggregates per group of ``keys`` (plus ``extra`` Arrow aggregates, e.g. a
        session's first and last event time)."""
        keys = list(keys)
        if self.objects:
            numbered = number_rows(table)
            if not self.sort_by:  # one group_by computes the partials and collects each group's rows
                grouped = numbered.group_by(keys, use_threads=False).aggregate([*self.partials, *extra, (ROW, "list")])
                return with_partials(list(self.objects.values()), grouped, f"{ROW}_list", numbered, combine=False)
            # max_by groups its own way: group the rows separately and line the groups up by key
            objects = numbered.group_by(keys, use_threads=False).aggregate([(ROW, "list")])
            objects = with_partials(list(self.objects.values()), objects, f"{ROW}_list", numbered, combine=False)
            grouped = self._group_builtin(table, keys, extra)
            objects = objects.take(pa.array(align_rows(grouped, objects, keys)))
            for name in self.object_columns:
                grouped = grouped.append_column(name, objects.column(name))
            return grouped
        return self._group_builtin(table, keys, extra)

    def _group_builtin(self, table: pa.Table, keys: list[str], extra: Sequence[tuple[str, str]]) -> pa.Table:
        if not self.sort_by:
            return table.group_by(keys, use_threads=False).aggregate([*self.partials, *extra])
        if self._numpy_max_by(table.schema):
            return self._group_max_by_numpy(table, keys)
        return self._group_max_by(table, keys)

    _NUMPY_FUNCTIONS = {"count", "count_all", "max", "min", "sum", "first"}

    def _numpy_max_by(self, schema: pa.Schema) -> bool:
        """Whether :meth:`_group_max_by_numpy` can compute every partial (numeric columns, simple functions)."""
        for column, function in self.partials:
            if function not in self._NUMPY_FUNCTIONS:
                return False
            if function in ("max", "min", "sum"):
                kind = schema.field(column).type
                if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                    return False
        return True

    def _group_max_by_numpy(self, table: pa.Table, keys: list[str]) -> pa.Table:
        """max_by over numeric columns with numpy's grouped ufuncs: dense group codes, ``bincount`` for
        counts, ``maximum.at``/``minimum.at``/``add.at`` for the rest, then the first row per group holding
        the maximum of ``by``. Produces the same partial columns as Arrow's grouped aggregation would."""
        by = self.sort_by[0]
        codes = _group_codes(table, keys)
        grouped = _Groups(codes)
        groups = grouped.count
        columns: dict[str, pa.Array] = {k: table.column(k).take(pa.array(grouped.first_rows())) for k in keys}
        maxima: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # column -> (max per group, values, valid)
        for column, function in self.partials:
            name = _partial_name(column, function)
            if function == "count_all":
                columns[name] = pa.array(grouped.sizes(None))
                continue
            if function == "first":
                continue  # below, once the maxima are known
            values = table.column(column).combine_chunks()
            valid = np.asarray(values.is_valid(), dtype=bool) if values.null_count else None
            counts = grouped.sizes(valid)
            if function == "count":
                columns[name] = pa.array(counts)
                continue
            floating = pa.types.is_floating(values.type)
            numbers = np.asarray(pc.fill_null(values.cast(pa.float64() if floating else pa.int64()), 0))
            if function == "sum":
                out = grouped.reduce(np.add, numbers, 0, valid)
            else:
                extreme = (np.inf if function == "min" else -np.inf) if floating else (
                    _INT_MAX if function == "min" else _INT_MIN)
                out = grouped.reduce(np.minimum if function == "min" else np.maximum, numbers, extreme, valid)
                if function == "max":
                    maxima[column] = (out, numbers, valid if valid is not None else np.ones(len(codes), dtype=bool))
            result = pa.array(out, mask=counts == 0)
            columns[name] = result if result.type == values.type else result.cast(values.type)
        best, numbers, valid_by = maxima[by]
        winners = np.flatnonzero((numbers == best[codes]) & valid_by)
        chosen_codes, first = np.unique(codes[winners], return_index=True)
        slot = np.full(groups, -1, dtype=np.int64)
        slot[chosen_codes] = winners[first]
        has_row = slot >= 0  # groups whose `by` is all null have no row
        take = pa.array(np.where(has_row, slot, 0), mask=~has_row)
        for column, function in self.partials:
            if function == "first":
                columns[_partial_name(column, function)] = table.column(column).combine_chunks().take(take)
        return pa.table(columns)

    def _group_max_by(self, table: pa.Table, keys: list[str]) -> pa.Table:
        """max_by: per group, the maximum of ``by``, then the values of the first row that has it.

        Vectorised without joins: each row gets a dense group code (hash dictionary encoding), one grouped
        aggregation over the codes gives the maxima, a comparison marks the rows holding their group's maximum,
        and ``np.unique`` over those few rows picks the first per group."""
        by = self.sort_by[0]
        codes = _group_codes(table, keys)
        coded = table.append_column(_CODE, pa.array(codes))
        spec = [p for p in self.partials if p[1] != "first"] + [(k, "first") for k in keys]
        grouped = coded.group_by([_CODE], use_threads=False).aggregate(spec)
        grouped = grouped.rename_columns([n[: -len("_first")] if n[: -len("_first")] in keys else n
                                          for n in grouped.column_names])
        group_codes = np.asarray(grouped.column(_CODE).combine_chunks(), dtype=np.int64)
        position = np.empty(int(group_codes.max()) + 1 if len(group_codes) else 0, dtype=np.int64)
        position[group_codes] = np.arange(len(group_codes))
        row_max = grouped.column(f"{by}_max").combine_chunks().take(pa.array(position[codes]))
        holds_max = pc.fill_null(pc.equal(table.column(by).combine_chunks(), row_max), False)
        winners = np.flatnonzero(np.asarray(holds_max, dtype=bool))
        _, first = np.unique(codes[winners], return_index=True)
        chosen_rows = winners[first]
        slot_of_group = np.full(len(group_codes), -1, dtype=np.int64)  # groups whose `by` is all null: no row
        slot_of_group[position[codes[chosen_rows]]] = np.arange(len(chosen_rows))
        has_row = slot_of_group >= 0
        take = pa.array(np.where(has_row, slot_of_group, 0), mask=~has_row)
        for column, function in self.partials:
            if function == "first":
                values = table.column(column).take(pa.array(chosen_rows)).take(take)
                grouped = grouped.append_column(f"{column}_first", values)
        return grouped.select([*keys, *(n for n in grouped.column_names if n not in keys and n != _CODE)])

    #: how two partial rows of one group combine (re-grouping partials: panes, local pre-aggregation)
    COMBINE = {"count": "sum", "count_all": "sum", "sum": "sum", "min": "min", "max": "max", "first": "first",
               "last": "last"}

    @property
    def combinable(self) -> bool:
        """Partials can be combined by Arrow grouped aggregation (not so for distinct sets)."""
        return all(function in self.COMBINE for _, function in self.partials)

    @property
    def value_partials(self) -> list[str]:
        """Names of the partial columns holding Python values per key (``first`` / ``last``)."""
        return [_partial_name(c, f) for c, f in self.partials if f in ("first", "last")]

    @property
    def distinct_partials(self) -> list[str]:
        """Names of the partial columns holding distinct-value sets (``count_distinct``)."""
        return [_partial_name(c, f) for c, f in self.partials if f == "distinct"]

    def combine(self, partials: pa.Table, keys: Sequence[str]) -> pa.Table:
        """Re-group partial rows (as produced by :meth:`group`) so each group of ``keys`` has one row."""
        if self.sort_by:
            partials = partials.sort_by([(f"{self.sort_by[0]}_max", "descending")])
        distinct = self.distinct_partials  # sets travel as list<value> columns; united per group below
        spec = [(_partial_name(c, f), self.COMBINE[f]) for c, f in self.partials if f in self.COMBINE]
        if self.objects or distinct:
            partials = number_rows(partials)
            spec.append((ROW, "list"))
        grouped = partials.group_by(list(keys), use_threads=False).aggregate(spec)
        grouped = grouped.rename_columns([n if n in keys else n.rsplit("_", 1)[0] for n in grouped.column_names])
        if distinct:  # the row-number lists were renamed to ROW above
            rows = grouped.column(ROW).to_pylist()
            for name in distinct:
                values = partials.column(name).to_pylist()
                united = [sorted({v for i in group for v in (values[i] or ()) if v is not None}, key=repr)
                          for group in rows]
                grouped = grouped.append_column(name, pa.array(united, type=partials.schema.field(name).type))
        if self.objects:
            grouped = with_partials(list(self.objects.values()), grouped, ROW, partials, combine=True)
        return grouped.drop_columns([ROW]) if ROW in grouped.column_names else grouped

    def merge(self, state: KeyedColumns, grouped: pa.Table, slots: np.ndarray) -> None:
        if self.sort_by:
            # max_by: the partial's row wins where its maximum beats the state's (computed before merging max)
            by = self.sort_by[0]
            partial_max = grouped.column(f"{by}_max").combine_chunks()
            current = state.columns[f"{by}_max"][slots]
            counts = state.columns[f"{by}_count"][slots]
            values = partial_max.cast(pa.float64()) if state.columns[f"{by}_max"].dtype.kind == "f" else as_int64(partial_max)
            wins = np.asarray(pc.fill_null(values, current.min() if len(current) else 0), dtype=current.dtype)
            wins = (wins > current) | (counts == 0)
            for column, function in self.partials:
                if function == "first" and column != by:
                    values_obj = np.array(grouped.column(f"{column}_first").to_pylist(), dtype=object)
                    state.columns[f"{column}_first"][slots[wins]] = values_obj[wins]
        for column, function in self.partials:
            name = _partial_name(column, function)
            if self.sort_by and function == "first":
                continue  # handled above
            self._merge_one(name, function, state.columns[name], grouped.column(name).combine_chunks(), slots)
        for acc in self.objects.values():
            acc.merge_into(state.columns[acc.name], slots, grouped.column(acc.name).combine_chunks())

    @staticmethod
    def _merge_one(name: str, function: str, column: np.ndarray, partial: pa.Array, slots: np.ndarray) -> None:
        if function in ("count", "count_all"):
            column[slots] += np.asarray(partial, dtype=np.int64)
            return
        if function in ("first", "last", "distinct"):
            values = partial.to_pylist()
            if function == "last":
                keep = np.asarray(partial.is_valid(), dtype=bool)
                column[slots[keep]] = np.array(values, dtype=object)[keep]
            elif function == "first":
                current = column[slots]
                fresh = np.equal(current, None) & np.asarray(partial.is_valid(), dtype=bool)  # type: ignore[call-overload]  # elementwise on an object array; numpy's stubs lack it
                column[slots[fresh]] = np.array(values, dtype=object)[fresh]
            else:
                for slot, distinct in zip(slots.tolist(), values):
                    existing = column[slot]
                    if existing is None:
                        column[slot] = existing = set()
                    existing.update(v for v in distinct if v is not None)
            return
        valid = np.asarray(partial.is_valid(), dtype=bool)
        if not pa.types.is_floating(partial.type):
            partial = as_int64(partial)
        if column.dtype.kind == "f":
            values = np.asarray(pc.fill_null(partial.cast(pa.float64()), 0.0), dtype=np.float64)
        else:
            values = np.asarray(pc.fill_null(partial.cast(pa.int64()), 0), dtype=np.int64)
        if function == "sum":
            addend = np.where(valid, values, 0)
            if column.dtype.kind == "i":
                current = column[slots]
                total = current + addend
                if (((current ^ total) & (addend ^ total)) < 0).any():
                    raise OverflowError(f"integer sum {name!r} overflowed int64; cast the column to float64 first")
                column[slots] = total
            else:
                column[slots] += addend
        elif function == "min":
            column[slots] = np.where(valid, np.minimum(column[slots], values), column[slots])
        else:
            column[slots] = np.where(valid, np.maximum(column[slots], values), column[slots])

    def results(self, state: StateColumns, slots: np.ndarray) -> list[tuple[str, pa.Array]]:
        """Output columns (name, values) for the keys at ``slots``."""
        columns = state.columns
        out: list[tuple[str, pa.Array]] = []
        for out_name, agg in self.aggregations:
            if out_name in self.objects:
                acc = self.objects[out_name]
                out.append((out_name, acc.results(columns[acc.name][slots])))
            elif agg.column is None:
                out.append((out_name, pa.array(columns["count_all"][slots])))
            else:
                out.append((out_name, _RESULTS[agg.kind](agg, columns, slots, self.value_types.get(agg.column))))
        return out


# -- how each kind is accumulated (the spec-level facts are in headwater.aggregations.KIND_FACTS) ------------
# _PARTIALS: the (column, grouped function) partials a kind needs besides its column's non-null count
# ("count"); _RESULTS: its output values from the state columns at some slots. Object kinds (top_k, udaf) are
# object accumulators instead (object_accumulators.OBJECT_ACCUMULATORS).
State = dict[str, np.ndarray]


def _count_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    return pa.array(columns[f"{agg.column}_count"][slots])


def _value_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    """first / last: Python values in an object column."""
    return pa.array(columns[f"{agg.column}_{agg.kind}"][slots].tolist(), type=value_type)


def _max_by_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    return pa.array(columns[f"{agg.column}_first"][slots].tolist(), type=value_type)


def _distinct_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    sets = columns[f"{agg.column}_distinct"][slots]
    return pa.array([len(s) if s else 0 for s in sets], pa.int64())


def _mean_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    valid_count = columns[f"{agg.column}_count"][slots]
    sums = columns[f"{agg.column}_sum"][slots].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pa.array(sums / np.maximum(valid_count, 1), mask=valid_count == 0)


def _numeric_result(agg: Aggregation, columns: State, slots: np.ndarray, value_type: pa.DataType | None) -> pa.Array:
    """sum / min / max: a typed column, null where a key has no value; min/max back in the input's type."""
    empty = columns[f"{agg.column}_count"][slots] == 0
    result = pa.array(columns[f"{agg.column}_{agg.kind}"][slots], mask=empty if empty.any() else None)
    if agg.kind is not AggregationKind.SUM and value_type is not None and result.type != value_type:
        result = from_int64(result, value_type) if is_integer_like(value_type) else result.cast(value_type)
    return result


def _no_partials(agg: Aggregation) -> list[tuple[Any, str]]:
    return []


_PARTIALS: dict[AggregationKind, Callable[[Aggregation], list[tuple[Any, str]]]] = {
    AggregationKind.COUNT: _no_partials,
    AggregationKind.SUM: lambda agg: [(agg.column, "sum")],
    AggregationKind.MEAN: lambda agg: [(agg.column, "sum")],
    AggregationKind.MIN: lambda agg: [(agg.column, "min")],
    AggregationKind.MAX: lambda agg: [(agg.column, "max")],
    AggregationKind.FIRST: lambda agg: [(agg.column, "first")],
    AggregationKind.LAST: lambda agg: [(agg.column, "last")],
    AggregationKind.COUNT_DISTINCT: lambda agg: [(agg.column, "distinct")],
    AggregationKind.MAX_BY: lambda agg: [(agg.by, "count"), (agg.by, "max"), (agg.column, "first")],
}

_RESULTS: dict[AggregationKind, Callable[[Aggregation, State, np.ndarray, pa.DataType | None], pa.Array]] = {
    AggregationKind.COUNT: _count_result,
    AggregationKind.SUM: _numeric_result,
    AggregationKind.MIN: _numeric_result,
    AggregationKind.MAX: _numeric_result,
    AggregationKind.MEAN: _mean_result,
    AggregationKind.FIRST: _value_result,
    AggregationKind.LAST: _value_result,
    AggregationKind.COUNT_DISTINCT: _distinct_result,
    AggregationKind.MAX_BY: _max_by_result,
}

_COLUMN_KINDS = {k for k in AggregationKind if not KIND_FACTS[k].holds_objects}
assert set(_PARTIALS) == set(_RESULTS) == _COLUMN_KINDS, "every column-state aggregation kind needs partials and results"
