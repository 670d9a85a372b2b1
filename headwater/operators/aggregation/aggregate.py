"""Running keyed aggregation: ``stream.key_by("auction").aggregate(bids=hw.count(), top=hw.max("price"))``.

How it works, per input batch:

1. Arrow's grouped aggregation reduces the batch to one partial row per distinct key (vectorised, in C++).
2. Each distinct key is mapped to a dense *slot* by a :class:`~headwater.core.state.key_index.KeyIndex`
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

from typing import Sequence

import numpy as np
import pyarrow as pa

from headwater.aggregations import Aggregation, Emit
from headwater.core.operator import Operator, OperatorContext
from headwater.core.state.store import KeyedColumns
from headwater.operators.aggregation.accumulators import AccumulatorSet


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
        self._accumulators = AccumulatorSet(self.aggregations)

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self._state = store.keyed_columns("accumulators", self.keys)
        if self._input_schema is not None:
            self._accumulators.declare(self._state, self._input_schema)
        # Arrow loads its grouped-aggregation engine (Acero) on first use (~0.2 s): pay that before data flows.
        pa.table({"k": [0]}).group_by("k").aggregate([("k", "count")])

    # -- processing -----------------------------------------------------------------------------------------
    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        state = self._state
        assert state is not None, "open() was not called"
        if not self._accumulators.declared:
            self._accumulators.declare(state, batch.schema)
        grouped = self._accumulators.group(pa.Table.from_batches([batch]), self.keys)
        key_arrays = [grouped.column(k).combine_chunks() for k in self.keys]
        slots = state.slots_for(key_arrays)
        self._accumulators.merge(state, grouped, slots)
        if self.emit == "final":
            return []
        return [self._result_batch(key_arrays, slots)]

    def _result_batch(self, key_arrays: list[pa.Array], slots: np.ndarray) -> pa.RecordBatch:
        assert self._state is not None
        results = self._accumulators.results(self._state, slots)
        names = [*self.keys, *(name for name, _ in results)]
        return pa.RecordBatch.from_arrays([*key_arrays, *(a for _, a in results)], names=names)

    def finish(self) -> list[pa.RecordBatch]:
        if self.emit != "final" or self._state is None or not len(self._state):
            return []
        return [self._result_batch(self._state.key_columns(), np.arange(len(self._state)))]

    def metrics(self) -> dict[str, float]:
        return {"keys": float(len(self._state) if self._state is not None else 0)}
