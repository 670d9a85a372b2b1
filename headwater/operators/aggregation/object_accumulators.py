"""Object accumulators: aggregations whose state per key is a Python object rather than a number —
``hw.top_k`` (a short sorted list) and ``hw.udaf`` (the user's accumulator).

They ride along with the numeric accumulators of :class:`~headwater.operators.aggregation.accumulators.AccumulatorSet`
through every operator (running aggregate, tumbling/sliding panes, sessions, local pre-aggregation), in two
forms:

* the **state form**: one Python object per slot, in an object column of
  :class:`~headwater.core.state.store.KeyedColumns` (pickled per row by snapshots, like ``first``/``last``);
* the **partial form**: an Arrow column with one value per group, carried by partial tables — a batch's
  grouped partials, panes exported to combine a sliding window, and the rows a local pre-aggregation sends
  over the shuffle. ``top_k`` partials are Arrow lists, so top-k selection stays vectorised (one Arrow sort by
  (group, by, value), then the first k rows per group); ``udaf`` partials are pickled accumulators.

Arrow's grouped aggregation has no top-k or user kernel, so ``AccumulatorSet`` also collects each group's row
numbers in the same ``group_by`` (``hash_list`` of a row-number column) and hands them over as
:class:`GroupRows`.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import Aggregation, AggregationKind
from headwater.errors import UserCodeError


def object_array(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (``np.array`` would turn equal-length lists into a 2-d array)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


class GroupRows:
    """The rows of each group of a grouped table: group ``g`` owns ``rows[offsets[g]:offsets[g + 1]]``, in input
    order; ``groups`` holds the group of each entry of ``rows``."""

    def __init__(self, lists: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks()
        parents = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
        rows = np.asarray(pc.list_flatten(lists), dtype=np.int64)
        order = np.lexsort((rows, parents))  # by group, then input order (not left to hash_list's ordering)
        self.rows, self.groups = rows[order], parents[order]
        self.count = len(lists)
        self.offsets = np.zeros(self.count + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.groups, minlength=self.count), out=self.offsets[1:])


class ObjectAccumulator(ABC):
    """One aggregation kept as a Python object per slot (see the module docstring for the two forms)."""

    def __init__(self, out_name: str, agg: Aggregation) -> None:
        self.out_name = out_name
        self.agg = agg
        #: name of the state column and of the partial column (never of the form ``<column>_<function>``)
        self.name = f"{out_name}.{agg.kind}"

    def bind(self, schema: pa.Schema) -> None:
        """Learn the input types (before :meth:`to_arrow` is used)."""

    @abstractmethod
    def partial(self, table: pa.Table, groups: GroupRows) -> pa.Array:
        """Partial form per group, from the input rows of ``table``."""

    @abstractmethod
    def combine(self, partials: pa.Array, groups: GroupRows) -> pa.Array:
        """Partial form per group, from partial values (``groups`` indexes ``partials``)."""

    @abstractmethod
    def merge_into(self, column: np.ndarray, slots: np.ndarray, partial: pa.Array) -> None:
        """Fold one partial value per slot into the state objects ``column[slots]`` (slots are unique)."""

    @abstractmethod
    def merge_pair(self, a: Any, b: Any) -> Any:
        """Two state objects (either may be ``None``: empty) as one."""

    @abstractmethod
    def to_arrow(self, objects: Sequence[Any] | np.ndarray) -> pa.Array:
        """State form → partial form."""

    @abstractmethod
    def to_objects(self, partial: pa.Array) -> np.ndarray:
        """Partial form → state form (an object array)."""

    @abstractmethod
    def results(self, objects: Sequence[Any]) -> pa.Array:
        """The output column for these state objects."""


def _usable(array: pa.Array) -> np.ndarray:
    """Rows that can be ranked: not null, not NaN."""
    mask = np.asarray(array.is_valid(), dtype=bool)
    if pa.types.is_floating(array.type):
        mask &= ~np.asarray(pc.fill_null(pc.is_nan(array), True), dtype=bool)
    return mask


class TopK(ObjectAccumulator):
    """``hw.top_k``: per slot the best ``k`` values. State: a list, best first; with ``by``, a pair of
    lists ``(by values, values)`` (two plain lists convert to and from Arrow much faster than structs).
    Partial form: ``list<value>``, or ``list<struct<by, value>>``. Rows rank by ``(by, value)``, so the
    selection depends only on the set of rows."""

    def __init__(self, out_name: str, agg: Aggregation) -> None:
        super().__init__(out_name, agg)
        assert agg.column is not None and agg.k is not None
        self.column, self.by, self.k = agg.column, agg.by, agg.k
        self.order = "ascending" if agg.ascending else "descending"
        self.partial_type: pa.DataType | None = None
        self.by_type: pa.DataType | None = None
        self.value_type: pa.DataType | None = None

    def bind(self, schema: pa.Schema) -> None:
        self.value_type = schema.field(self.column).type
        if self.by is None:
            self.partial_type = pa.list_(self.value_type)
        else:
            self.by_type = schema.field(self.by).type
            self.partial_type = pa.list_(pa.struct([("by", self.by_type), ("value", self.value_type)]))

    def _select(self, by: pa.Array, values: pa.Array, groups: np.ndarray, count: int) -> pa.Array:
        """Vectorised top-k: per group (0..count-1) the first ``k`` elements ordered by (by, value)."""
        keep = _usable(values) if by is values else _usable(by) & _usable(values)
        index = pa.array(np.flatnonzero(keep))
        values, groups = values.take(index), groups[keep]
        by = values if self.by is None else by.take(index)
        columns = {"g": groups, "b": by} if self.by is None else {"g": groups, "b": by, "v": values}
        sort_keys = [("g", "ascending"), *((name, self.order) for name in list(columns)[1:])]
        order = np.asarray(pc.sort_indices(pa.table(columns), sort_keys=sort_keys), dtype=np.int64)
        ordered = groups[order]
        rank = np.arange(len(ordered)) - np.searchsorted(ordered, ordered, side="left")
        best = order[rank < self.k]  # grouped (ascending group), best first within each group
        chosen = pa.array(best)
        offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(groups[best], minlength=count))]).astype(np.int32))
        picked: pa.Array = values.take(chosen)
        if self.by is not None:
            picked = pa.StructArray.from_arrays([by.take(chosen), picked], names=["by", "value"])
        return pa.ListArray.from_arrays(offsets, picked, type=self.partial_type)

    def _elements(self, partial: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """A partial-form array's elements (by, value) and the index of the list each came from."""
        parents = np.asarray(pc.list_parent_indices(partial), dtype=np.int64)
        flat = pc.list_flatten(partial)
        if self.by is None:
            return flat, flat, parents
        return pc.struct_field(flat, "by"), pc.struct_field(flat, "value"), parents

    def partial(self, table: pa.Table, groups: GroupRows) -> pa.Array:
        rows = pa.array(groups.rows)
        values = table.column(self.column).take(rows).combine_chunks()
        by = values if self.by is None else table.column(self.by).take(rows).combine_chunks()
        return self._select(by, values, groups.groups, groups.count)

    def combine(self, partials: pa.Array, groups: GroupRows) -> pa.Array:
        by, values, parents = self._elements(partials.take(pa.array(groups.rows)))
        return self._select(by, values, groups.groups[parents], groups.count)

    def merge_into(self, column: np.ndarray, slots: np.ndarray, partial: pa.Array) -> None:
        if self.partial_type is not None and partial.type != self.partial_type:
            partial = partial.cast(self.partial_type)
        state_by, state_values, state_groups = self._elements(self.to_arrow(column[slots]))
        new_by, new_values, new_groups = self._elements(partial)
        values = pa.concat_arrays([state_values, new_values])
        by = values if self.by is None else pa.concat_arrays([state_by, new_by])
        merged = self._select(by, values, np.concatenate([state_groups, new_groups]), len(slots))
        column[slots] = self.to_objects(merged)

    def merge_pair(self, a: Any, b: Any) -> Any:
        descending = self.order == "descending"
        if self.by is None:
            return sorted([*(a or ()), *(b or ())], reverse=descending)[: self.k]
        pairs = [pair for state in (a, b) if state is not None for pair in zip(*state)]
        best = sorted(pairs, reverse=descending)[: self.k]
        return [p[0] for p in best], [p[1] for p in best]

    def to_arrow(self, objects: Sequence[Any] | np.ndarray) -> pa.Array:
        assert self.partial_type is not None, "bind() was not called"
        if self.by is None:
            return pa.array([o if o is not None else [] for o in objects], type=self.partial_type)
        by = pa.array([o[0] if o is not None else [] for o in objects], type=pa.list_(self.by_type))
        values = pa.array([o[1] if o is not None else [] for o in objects], type=pa.list_(self.value_type))
        pairs = pa.StructArray.from_arrays([by.values, values.values], names=["by", "value"])
        return pa.ListArray.from_arrays(by.offsets, pairs, type=self.partial_type)

    def to_objects(self, partial: pa.Array) -> np.ndarray:
        if self.by is None:
            return object_array(partial.to_pylist())
        by, values, _ = self._elements(partial)
        by_list, value_list = by.to_pylist(), values.to_pylist()
        bounds = np.concatenate([[0], np.cumsum(pc.list_value_length(partial).fill_null(0))]).tolist()
        return object_array([(by_list[a:b], value_list[a:b]) for a, b in zip(bounds, bounds[1:])])

    def results(self, objects: Sequence[Any]) -> pa.Array:
        assert self.value_type is not None, "bind() was not called"
        if self.by is None:
            return self.to_arrow(objects)
        return pa.array([o[1] if o is not None else [] for o in objects], type=pa.list_(self.value_type))


class UserAggregate(ObjectAccumulator):
    """``hw.udaf``: the user's accumulator per slot; partials are pickled accumulators. User exceptions become
    :class:`UserCodeError` naming the aggregation (the runtime adds the step and subtask)."""

    def __init__(self, out_name: str, agg: Aggregation) -> None:
        super().__init__(out_name, agg)
        self.aggregator = agg.aggregator
        self.columns = agg.columns
        self.output_type: pa.DataType = agg.aggregator.output_type

    def _where(self) -> str:
        return f"aggregation {self.out_name!r} ({self.agg!r})"

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.aggregator, method)(*args)
        except Exception as exc:
            raise UserCodeError(f"{self._where()}: {method}() raised {type(exc).__name__}: {exc}") from exc

    def _pickle(self, acc: Any) -> bytes:
        try:
            return pickle.dumps(acc, protocol=5)
        except Exception as exc:
            raise UserCodeError(
                f"{self._where()}: the accumulator ({type(acc).__name__}) cannot be pickled ({exc}); accumulators "
                "go into checkpoints and between workers, so add() and merge() must return picklable values"
            ) from exc

    def partial(self, table: pa.Table, groups: GroupRows) -> pa.Array:
        rows = pa.array(groups.rows)
        arrays = [table.column(c).take(rows).combine_chunks() for c in self.columns]
        bounds = groups.offsets.tolist()
        blobs = []
        for start, stop in zip(bounds, bounds[1:]):
            slices = [a.slice(start, stop - start) for a in arrays]
            values = slices[0] if len(slices) == 1 else pa.RecordBatch.from_arrays(slices, names=list(self.columns))
            blobs.append(self._pickle(self._call("add", self._call("create"), values)))
        return pa.array(blobs, pa.binary())

    def combine(self, partials: pa.Array, groups: GroupRows) -> pa.Array:
        blobs = partials.take(pa.array(groups.rows)).to_pylist()
        bounds = groups.offsets.tolist()
        out = []
        for start, stop in zip(bounds, bounds[1:]):
            acc = None
            for blob in blobs[start:stop]:
                acc = self.merge_pair(acc, pickle.loads(blob))
            out.append(self._pickle(acc))
        return pa.array(out, pa.binary())

    def merge_into(self, column: np.ndarray, slots: np.ndarray, partial: pa.Array) -> None:
        for slot, blob in zip(slots.tolist(), partial.to_pylist()):
            column[slot] = self.merge_pair(column[slot], pickle.loads(blob))

    def merge_pair(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return self._call("merge", a, b)

    def to_arrow(self, objects: Sequence[Any] | np.ndarray) -> pa.Array:
        return pa.array([self._pickle(o) for o in objects], pa.binary())

    def to_objects(self, partial: pa.Array) -> np.ndarray:
        return object_array([pickle.loads(blob) for blob in partial.to_pylist()])

    def results(self, objects: Sequence[Any]) -> pa.Array:
        values = [self._call("result", o if o is not None else self._call("create")) for o in objects]
        try:
            return pa.array(values, type=self.output_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            sample = next((v for v in values if v is not None), None)
            raise UserCodeError(
                f"{self._where()}: result() returned {sample!r} ({type(sample).__name__}), which does not fit the "
                f"declared output_type {self.output_type}: {exc}"
            ) from exc


ROW = "__row"  # row numbers, collected per group (``hash_list``) for the object accumulators


def number_rows(table: pa.Table) -> pa.Table:
    return table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def with_partials(
    objects: Sequence[ObjectAccumulator], grouped: pa.Table, rows: str, source: pa.Table, combine: bool
) -> pa.Table:
    """Replace the row-number lists (column ``rows``) of ``grouped`` by one partial column per object
    accumulator, computed from the rows of ``source``: input rows, or partial rows when ``combine``."""
    groups = GroupRows(grouped.column(rows))
    grouped = grouped.drop_columns([rows])
    for acc in objects:
        if combine:
            partial = acc.combine(source.column(acc.name).combine_chunks(), groups)
        else:
            partial = acc.partial(source, groups)
        grouped = grouped.append_column(acc.name, partial)
    return grouped


def align_rows(target: pa.Table, source: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """For each row of ``target``, the row of ``source`` with equal ``keys`` (nulls equal to nulls; every key
    appears once in ``source``): lines up two grouped tables whose group order may differ."""
    size = target.num_rows
    codes = np.zeros(size + source.num_rows, dtype=np.int64)
    for key in keys:
        both = pa.concat_arrays([target.column(key).combine_chunks(), source.column(key).combine_chunks()])
        encoded = pc.dictionary_encode(both, null_encoding="encode")
        codes = codes * len(encoded.dictionary) + np.asarray(encoded.indices, dtype=np.int64)
        codes = np.unique(codes, return_inverse=True)[1].astype(np.int64)  # dense again: no overflow
    position = np.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=np.int64)
    position[codes[size:]] = np.arange(source.num_rows)
    return position[codes[:size]]


#: the object accumulator of each kind whose facts say it holds objects (headwater.aggregations.KIND_FACTS)
OBJECT_ACCUMULATORS: dict[AggregationKind, type[ObjectAccumulator]] = {
    AggregationKind.TOP_K: TopK,
    AggregationKind.UDAF: UserAggregate,
}


def make_object_accumulator(out_name: str, agg: Aggregation) -> ObjectAccumulator:
    accumulator = OBJECT_ACCUMULATORS.get(agg.kind)
    if accumulator is None:
        raise ValueError(f"{agg!r} is not an object aggregation")
    return accumulator(out_name, agg)
