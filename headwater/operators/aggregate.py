"""Running keyed aggregation: ``stream.key_by("auction").aggregate(bids=hw.count(), top=hw.max("price"))``.

How it works, per input batch:

1. Arrow's grouped aggregation reduces the batch to one partial row per distinct key (vectorised, in C++).
2. Each distinct key is mapped to a dense *slot* by a :class:`~headwater.operators.key_index.KeyIndex`
   (vectorised for integer keys; a dict lookup per distinct key otherwise); new keys get new slots.
3. Per-aggregate numpy accumulators are merged at those slots (``acc[slots] += partial`` — slots are unique
   within a batch, so plain fancy indexing is exact).
4. With ``emit="updates"`` (the default) one row per key touched by the batch is emitted with the key's
   current values: the output is a changelog whose last row per key is the key's result. With
   ``emit="final"`` nothing is emitted until the input ends, then one row per key (for bounded backfills).

Null handling follows SQL: ``sum``/``min``/``max``/``mean`` ignore nulls and are null for a key that has seen
no non-null value; ``count(col)`` counts non-null values, ``count()`` counts rows.

Invariant: the operator's state is exactly (key index, per-aggregate accumulators, per-column valid counts);
everything it emits is derived from it, which is what a checkpoint of this operator must contain.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import Aggregation
from headwater.engine.arrays import as_int64, from_int64, is_integer_like
from headwater.operators.base import Operator, OperatorContext
from headwater.engine.partitioning import DEFAULT_MAX_KEY_GROUPS
from headwater.engine.state import KeyedColumns, OperatorStateStore

Emit = Literal["updates", "final"]


def _accumulator_dtype(value_type: pa.DataType) -> np.dtype:
    return np.dtype(np.float64) if pa.types.is_floating(value_type) else np.dtype(np.int64)


class RunningAggregateOperator(Operator):
    """Keyed running aggregation over Arrow batches (see the module docstring)."""

    def __init__(
        self,
        keys: Sequence[str],
        aggregations: Sequence[tuple[str, Aggregation]],
        input_schema: pa.Schema | None,
        emit: Emit = "updates",
    ) -> None:
        self.keys = tuple(keys)
        self.aggregations = tuple(aggregations)
        self.emit = emit
        self._input_schema = input_schema
        self._state: KeyedColumns | None = None
        self._partials = self._partial_aggregates()
        self._value_types: dict[str, pa.DataType] = {}
        self._initialised = False

    # -- set-up ---------------------------------------------------------------------------------------------
    def _partial_aggregates(self) -> list[tuple[Any, str]]:
        wanted: list[tuple[Any, str]] = []
        for _, agg in self.aggregations:
            needed = [([], "count_all")] if agg.column is None else [(agg.column, "count")]
            if agg.kind in ("sum", "mean"):
                needed.append((agg.column, "sum"))
            elif agg.kind in ("min", "max"):
                needed.append((agg.column, agg.kind))
            for pair in needed:
                if pair not in wanted:
                    wanted.append(pair)
        return wanted

    def _init_accumulators(self, schema: pa.Schema) -> None:
        assert self._state is not None
        for column, function in self._partials:
            name = "count_all" if column == [] else f"{column}_{function}"
            if function in ("count", "count_all"):
                self._state.add_column(name, np.dtype(np.int64), 0)
                continue
            value_type = schema.field(column).type
            self._value_types[column] = value_type
            dtype = _accumulator_dtype(value_type)
            if function == "sum":
                self._state.add_column(name, dtype, 0)
            elif function == "min":
                self._state.add_column(name, dtype, np.inf if dtype.kind == "f" else np.iinfo(np.int64).max)
            else:
                self._state.add_column(name, dtype, -np.inf if dtype.kind == "f" else np.iinfo(np.int64).min)
        self._initialised = True

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state or OperatorStateStore(ctx.step_id, DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
        self._state = store.keyed_columns("accumulators", self.keys)
        if self._input_schema is not None:
            self._init_accumulators(self._input_schema)
        # Arrow loads its grouped-aggregation engine (Acero) on first use (~0.2 s): pay that before data flows.
        pa.table({"k": [0]}).group_by("k").aggregate([("k", "count")])

    # -- processing -----------------------------------------------------------------------------------------
    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        if not self._initialised:
            self._init_accumulators(batch.schema)
        grouped = pa.Table.from_batches([batch]).group_by(list(self.keys), use_threads=False).aggregate(self._partials)
        slots = self._slots_for(grouped)
        for column, function in self._partials:
            name = "count_all" if column == [] else f"{column}_{function}"
            self._merge(name, function, grouped.column(name), slots)
        if self.emit == "final":
            return []
        return [self._result_batch([grouped.column(k).combine_chunks() for k in self.keys], slots)]

    def _slots_for(self, grouped: pa.Table) -> np.ndarray:
        assert self._state is not None
        return self._state.slots_for([grouped.column(k).combine_chunks() for k in self.keys])

    def _merge(self, name: str, function: str, partial: pa.ChunkedArray, slots: np.ndarray) -> None:
        column = self._state.columns[name]  # type: ignore[union-attr]
        if function in ("count", "count_all"):
            column[slots] += np.asarray(partial.combine_chunks(), dtype=np.int64)
            return
        valid = np.asarray(partial.is_valid().combine_chunks(), dtype=bool)
        values_array = partial.combine_chunks()
        if not pa.types.is_floating(values_array.type):
            values_array = as_int64(values_array)
        if column.dtype.kind == "f":
            values = np.asarray(pc.fill_null(values_array.cast(pa.float64()), 0.0), dtype=np.float64)
        else:
            values = np.asarray(pc.fill_null(values_array.cast(pa.int64()), 0), dtype=np.int64)
        if function == "sum":
            addend = np.where(valid, values, 0)
            if column.dtype.kind == "i":
                current = column[slots]
                total = current + addend
                if (((current ^ total) & (addend ^ total)) < 0).any():
                    raise OverflowError(
                        f"integer sum {name!r} overflowed int64; cast the column to float64 before aggregating"
                    )
                column[slots] = total
            else:
                column[slots] += addend
        elif function == "min":
            column[slots] = np.where(valid, np.minimum(column[slots], values), column[slots])
        else:
            column[slots] = np.where(valid, np.maximum(column[slots], values), column[slots])

    def _result_batch(self, key_arrays: list[pa.Array], slots: np.ndarray) -> pa.RecordBatch:
        names = list(self.keys)
        arrays: list[pa.Array] = list(key_arrays)
        columns = self._state.columns  # type: ignore[union-attr]
        for out_name, agg in self.aggregations:
            names.append(out_name)
            if agg.column is None:
                arrays.append(pa.array(columns["count_all"][slots]))
                continue
            valid_count = columns[f"{agg.column}_count"][slots]
            if agg.kind == "count":
                arrays.append(pa.array(valid_count))
                continue
            empty = valid_count == 0
            value_type = self._value_types.get(agg.column, pa.from_numpy_dtype(columns[f"{agg.column}_count"].dtype))
            if agg.kind == "mean":
                sums = columns[f"{agg.column}_sum"][slots].astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    arrays.append(pa.array(sums / np.maximum(valid_count, 1), mask=empty))
                continue
            values = columns[f"{agg.column}_{agg.kind}"][slots]
            result = pa.array(values, mask=empty if empty.any() else None)
            if agg.kind in ("min", "max") and result.type != value_type:
                result = from_int64(result, value_type) if is_integer_like(value_type) else result.cast(value_type)
            arrays.append(result)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def finish(self) -> list[pa.RecordBatch]:
        if self.emit != "final" or self._state is None or not len(self._state):
            return []
        return [self._result_batch(self._state.key_columns(), np.arange(len(self._state)))]

    def metrics(self) -> dict[str, float]:
        return {"keys": float(len(self._state) if self._state is not None else 0)}
