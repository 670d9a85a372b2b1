"""Vectorised accumulators: partial aggregation of a batch with Arrow, merged into per-key numpy columns.

Both the running keyed aggregate and the window operators keep their aggregates as columns of a
:class:`~headwater.engine.state.KeyedColumns` (one row per key — or per key and window). For every batch:

1. Arrow's grouped aggregation reduces the batch to one partial row per group (``partials``);
2. :meth:`AccumulatorSet.merge` folds the partials into the state columns at the groups' slots (slots are
   unique within a batch, so fancy indexing is exact);
3. :meth:`AccumulatorSet.results` turns the state at some slots into the output columns.

Numeric aggregates are typed numpy columns. ``first``/``last`` keep values of any type in object columns;
``count_distinct`` keeps a Python set per slot (merged per group, not per row).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import Aggregation
from headwater.engine.arrays import as_int64, from_int64, is_integer_like
from headwater.engine.state import KeyedColumns
from headwater.errors import ConfigError

_INT_MIN, _INT_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _partial_name(column: Any, function: str) -> str:
    return "count_all" if column == [] else f"{column}_{function}"


class AccumulatorSet:
    """The accumulators of a list of ``(output name, Aggregation)`` pairs over one input schema."""

    def __init__(self, aggregations: Sequence[tuple[str, Aggregation]]) -> None:
        self.aggregations = tuple(aggregations)
        self.partials: list[tuple[Any, str]] = []
        for _, agg in self.aggregations:
            needed: list[tuple[Any, str]] = [([], "count_all")] if agg.column is None else [(agg.column, "count")]
            if agg.kind in ("sum", "mean"):
                needed.append((agg.column, "sum"))
            elif agg.kind in ("min", "max", "first", "last"):
                needed.append((agg.column, agg.kind))
            elif agg.kind == "count_distinct":
                needed.append((agg.column, "distinct"))
            elif agg.kind == "max_by":
                needed += [(agg.by, "count"), (agg.by, "max"), (agg.column, "first")]
            for pair in needed:
                if pair not in self.partials:
                    self.partials.append(pair)
        self.value_types: dict[str, pa.DataType] = {}
        self.declared = False
        self.sort_by = [agg.by for _, agg in self.aggregations if agg.kind == "max_by"]
        kinds = {agg.kind for _, agg in self.aggregations}
        if len(set(self.sort_by)) > 1 or (self.sort_by and kinds & {"first", "last"}):
            raise ConfigError(
                "max_by() needs rows ordered by its `by` column: use one `by` column per aggregate, and no "
                "first()/last() in the same aggregate (split it into two steps)"
            )

    def declare(self, state: KeyedColumns, schema: pa.Schema) -> None:
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
        self.declared = True

    def group(self, table: pa.Table, keys: Sequence[str]) -> pa.Table:
        """The batch's partial aggregates per group of ``keys``."""
        keys = list(keys)
        if not self.sort_by:
            return table.group_by(keys, use_threads=False).aggregate(self.partials)
        # max_by: per group, the maximum of `by`, then the values of the rows that have it (hash joins, no sort)
        by = self.sort_by[0]
        grouped = table.group_by(keys, use_threads=False).aggregate([p for p in self.partials if p[1] != "first"])
        joined = table.join(grouped.select([*keys, f"{by}_max"]), keys=keys, join_type="inner", use_threads=False)
        winners = joined.filter(pc.equal(joined.column(by), joined.column(f"{by}_max")))
        chosen = winners.group_by(keys, use_threads=False).aggregate(
            [(c, "first") for c, f in self.partials if f == "first"])
        return grouped.join(chosen, keys=keys, join_type="left outer", use_threads=False)

    #: how two partial rows of one group combine (re-grouping partials: panes, local pre-aggregation)
    COMBINE = {"count": "sum", "count_all": "sum", "sum": "sum", "min": "min", "max": "max", "first": "first",
               "last": "last"}

    @property
    def combinable(self) -> bool:
        """Partials can be combined by Arrow grouped aggregation (not so for distinct sets)."""
        return all(function in self.COMBINE for _, function in self.partials)

    def combine(self, partials: pa.Table, keys: Sequence[str]) -> pa.Table:
        """Re-group partial rows (as produced by :meth:`group`) so each group of ``keys`` has one row."""
        if self.sort_by:
            partials = partials.sort_by([(f"{self.sort_by[0]}_max", "descending")])
        spec = [(_partial_name(c, f), self.COMBINE[f]) for c, f in self.partials]
        grouped = partials.group_by(list(keys), use_threads=False).aggregate(spec)
        return grouped.rename_columns([n if n in keys else n.rsplit("_", 1)[0] for n in grouped.column_names])

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
                fresh = np.equal(current, None) & np.asarray(partial.is_valid(), dtype=bool)  # elementwise, vectorised
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

    def results(self, state: KeyedColumns, slots: np.ndarray) -> list[tuple[str, pa.Array]]:
        """Output columns (name, values) for the keys at ``slots``."""
        columns = state.columns
        out: list[tuple[str, pa.Array]] = []
        for out_name, agg in self.aggregations:
            if agg.column is None:
                out.append((out_name, pa.array(columns["count_all"][slots])))
                continue
            if agg.kind == "max_by":
                values = columns[f"{agg.column}_first"][slots].tolist()
                out.append((out_name, pa.array(values, type=self.value_types.get(agg.column))))
                continue
            valid_count = columns[f"{agg.column}_count"][slots]
            if agg.kind == "count":
                out.append((out_name, pa.array(valid_count)))
                continue
            value_type = self.value_types.get(agg.column)
            if agg.kind in ("first", "last"):
                out.append((out_name, pa.array(columns[f"{agg.column}_{agg.kind}"][slots].tolist(), type=value_type)))
                continue
            if agg.kind == "count_distinct":
                sets = columns[f"{agg.column}_distinct"][slots]
                out.append((out_name, pa.array([len(s) if s else 0 for s in sets], pa.int64())))
                continue
            empty = valid_count == 0
            if agg.kind == "mean":
                sums = columns[f"{agg.column}_sum"][slots].astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append((out_name, pa.array(sums / np.maximum(valid_count, 1), mask=empty)))
                continue
            result = pa.array(columns[f"{agg.column}_{agg.kind}"][slots], mask=empty if empty.any() else None)
            if agg.kind in ("min", "max") and value_type is not None and result.type != value_type:
                result = from_int64(result, value_type) if is_integer_like(value_type) else result.cast(value_type)
            out.append((out_name, result))
        return out
