"""Stateless, vectorised operators: filter, projection (select / with_columns), union pass-through."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from headwater.core.arrays import same_columns
from headwater.core.operator import Operator, OperatorContext
from headwater.errors import SchemaMismatchError
from headwater.expressions import Expr, to_array


class FilterOperator(Operator):
    """Keep the rows where ``predicate`` is true (null counts as false)."""

    def __init__(self, predicate: Expr) -> None:
        self.predicate = predicate

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        mask = self.predicate.evaluate(batch)
        if isinstance(mask, pa.Scalar):
            return [batch] if mask.as_py() else []
        kept = batch.filter(mask)
        return [kept] if kept.num_rows else []


class ProjectOperator(Operator):
    """Compute ``outputs`` (name, expression) pairs; with ``keep_input`` the input columns stay, replaced by
    name where an output has the same name, new ones appended in order."""

    def __init__(self, outputs: Sequence[tuple[str, Expr]], keep_input: bool) -> None:
        self.outputs = tuple(outputs)
        self.keep_input = keep_input

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        computed = {name: to_array(expr.evaluate(batch), batch.num_rows) for name, expr in self.outputs}
        if not self.keep_input:
            return [pa.RecordBatch.from_arrays(list(computed.values()), names=list(computed))]
        names = list(batch.schema.names)
        arrays = list(batch.columns)
        for name, array in computed.items():
            if name in names:
                arrays[names.index(name)] = array
            else:
                names.append(name)
                arrays.append(array)
        return [pa.RecordBatch.from_arrays(arrays, names=names)]


class UnionOperator(Operator):
    """Pass batches of every input through; inputs must agree on the schema."""

    def __init__(self, schema: pa.Schema | None) -> None:
        self.schema = schema

    def open(self, ctx: OperatorContext) -> None:
        self.step_id = ctx.step_id

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        if self.schema is None:
            self.schema = batch.schema
        elif not same_columns(batch.schema, self.schema):
            raise SchemaMismatchError(
                f"input {input_index} yielded a batch with schema {batch.schema} but the union's schema is "
                f"{self.schema}; select/cast the inputs to the same columns and types first"
            )
        return [batch]
