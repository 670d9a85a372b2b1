"""User-defined functions: vectorised ``map_batches`` (functions or classes) and the row convenience path.

``map_batches(fn)`` calls ``fn(batch)`` with a ``pyarrow.RecordBatch``. A *class* is constructed once per
subtask (so expensive set-up such as loading a model happens once per actor, as with Ray Data's actor pools)
and its instance is called per batch. The function may return a RecordBatch, a Table, a dict of columns, a
pandas DataFrame, or ``None`` (drop the batch).

Every batch a ``map_batches`` function returns must have one schema: the declared ``output_schema``, else the
schema of its first non-empty result. A batch with another schema fails the step at once with a
:class:`~headwater.errors.SchemaMismatchError` naming the step and the first differing column — not later, at
a sink or an exchange that cannot combine the batches. The check compares names and types (one equality per
batch).

``map_rows(fn)`` and ``flat_map(fn)`` call ``fn`` per row with a dict; they are a convenience for code that is
not vectorised and cost Python per row.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa

from headwater.core.arrays import same_columns, schema_difference
from headwater.core.operator import Operator, OperatorContext
from headwater.errors import SchemaMismatchError


def to_batches(result: Any, schema: pa.Schema | None) -> list[pa.RecordBatch]:
    """Normalise what a UDF returned into record batches (checked against ``schema`` when declared)."""
    if result is None:
        return []
    if isinstance(result, pa.RecordBatch):
        batches = [result]
    elif isinstance(result, pa.Table):
        batches = result.combine_chunks().to_batches()
    elif isinstance(result, Mapping) or (type(result).__name__ == "DataFrame" and hasattr(result, "to_dict")):
        try:
            if isinstance(result, Mapping):
                batches = [pa.RecordBatch.from_pydict(dict(result), schema=schema)]
            else:
                batches = [pa.RecordBatch.from_pandas(result, schema=schema, preserve_index=False)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as exc:
            if schema is None:
                raise
            raise SchemaMismatchError(f"the function's result does not fit the declared output_schema {schema}: {exc}") from exc
    else:
        raise TypeError(
            f"the function returned {type(result).__name__}; return a pyarrow RecordBatch or Table, a dict of "
            "columns, a pandas DataFrame, or None"
        )
    if schema is not None:
        for batch in batches:
            if not same_columns(batch.schema, schema):
                raise SchemaMismatchError(
                    f"the function returned schema ({_one_line(batch.schema)}) but declared output_schema "
                    f"({_one_line(schema)}): {schema_difference(schema, batch.schema)}"
                )
    return [b for b in batches if b.num_rows]


def _one_line(schema: pa.Schema, limit: int = 12) -> str:
    shown = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:limit])
    return shown if len(schema) <= limit else f"{shown}, ... ({len(schema) - limit} more)"


class MapBatchesOperator(Operator):
    """Apply a batch function, or an instance of a batch class constructed in :meth:`open`."""

    def __init__(
        self,
        fn: Callable[..., Any] | type,
        constructor_args: tuple[Any, ...] = (),
        constructor_kwargs: Mapping[str, Any] | None = None,
        output_schema: pa.Schema | None = None,
    ) -> None:
        self.fn = fn
        self.constructor_args = constructor_args
        self.constructor_kwargs = dict(constructor_kwargs or {})
        self.output_schema = output_schema
        self._callable: Callable[[pa.RecordBatch], Any] | None = None
        self._first_schema: pa.Schema | None = None  # of the first non-empty result, when none is declared

    def open(self, ctx: OperatorContext) -> None:
        if isinstance(self.fn, type):
            self._callable = self.fn(*self.constructor_args, **self.constructor_kwargs)
        else:
            self._callable = self.fn

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self._callable is not None, "open() was not called"
        batches = to_batches(self._callable(batch), self.output_schema)
        if self.output_schema is None:
            for out in batches:
                if self._first_schema is None:
                    self._first_schema = out.schema
                elif not same_columns(out.schema, self._first_schema):
                    raise SchemaMismatchError(
                        "the function changed its output schema after its first batch: "
                        f"{schema_difference(self._first_schema, out.schema)} (now {_one_line(out.schema)}; first "
                        f"batch {_one_line(self._first_schema)}). "
                        "Return one schema for every batch, or declare output_schema= and cast to it"
                    )
        return batches

    def close(self) -> None:
        closer = getattr(self._callable, "close", None) if isinstance(self.fn, type) else None
        if callable(closer):
            try:
                closer()
            except Exception:  # noqa: BLE001 - close must not raise; the run's own error (if any) matters more
                pass


class MapRowsOperator(Operator):
    """Per-row UDF: ``fn(row: dict) -> dict | None`` (``flat=False``) or ``-> iterable of dicts`` (``flat=True``)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any], flat: bool, schema: pa.Schema | None) -> None:
        self.fn = fn
        self.flat = flat
        self.schema = schema

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        if self.flat:
            for row in rows:
                produced: Iterable[dict[str, Any]] | None = self.fn(row)
                if produced is not None:
                    out.extend(produced)
        else:
            for row in rows:
                mapped = self.fn(row)
                if mapped is not None:
                    out.append(mapped)
        if not out:
            return []
        if not isinstance(out[0], Mapping):
            raise TypeError(f"the row function must return dicts (column -> value), got {type(out[0]).__name__}")
        return [pa.RecordBatch.from_pylist(out, schema=self.schema)]
