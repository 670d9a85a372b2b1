"""Operator state that the engine snapshots and restores — operators declare it, they never serialise it.

An operator declares its state in ``open(ctx)`` through ``ctx.state`` (an :class:`OperatorStateStore`):

* :meth:`OperatorStateStore.keyed_columns` — per-key *columnar* values (numpy columns indexed by a dense slot
  per key): what vectorised keyed operators (aggregates, windows) use.
* :meth:`OperatorStateStore.keyed_objects` — per-key Python objects (lists, dicts, anything picklable): the
  convenient form for per-key lists/maps in row-at-a-time code.
* :meth:`OperatorStateStore.value` — one picklable value per subtask (non-keyed operator state).

What a snapshot contains (the invariant restores rely on): for every keyed state, an Arrow table with the key
columns, one column per value column (or a binary column of pickled objects), and ``_key_group`` — the key
group of each row. Because every row carries its key group, a restore with any parallelism keeps exactly the
rows whose key group the new subtask owns. Snapshots *copy* the live numpy columns (copy-on-snapshot), so
writing them out can proceed in a background thread while processing continues.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable, Protocol, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.state.key_groups import key_groups
from headwater.core.state.key_index import KeyIndex, make_key_index
from headwater.errors import ConfigError, StateCompatibilityError


class KeyedState(Protocol):
    """What :meth:`OperatorStateStore.register` accepts: a keyed state that snapshots to a table."""

    def snapshot(self) -> pa.Table | None: ...

    def restore(self, table: pa.Table) -> None: ...


S = TypeVar("S", bound=KeyedState)

KEY_GROUP_COLUMN = "_key_group"
_PICKLED = b"headwater.pickled"


class KeyedColumns:
    """Growable numpy columns indexed by a slot per key (see the module docstring)."""

    def __init__(self, key_names: Sequence[str], max_key_groups: int) -> None:
        self.key_names = tuple(key_names)
        self.max_key_groups = max_key_groups
        self.index: KeyIndex | None = None
        self.columns: dict[str, np.ndarray] = {}
        self._fills: dict[str, Any] = {}
        self._capacity = 0
        self._groups = np.empty(0, dtype=np.int32)  # key group per slot, computed once when a key arrives

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else 0

    def add_column(self, name: str, dtype: np.dtype | type, fill: Any) -> None:
        """Declare a value column (idempotent: a restored column keeps its data)."""
        self._fills[name] = fill
        if name not in self.columns:
            self.columns[name] = np.full(self._capacity, fill, dtype=dtype)

    def slots_for(self, keys: Sequence[pa.Array]) -> np.ndarray:
        """Slots of the given distinct keys, creating rows (at the declared fill values) for new keys."""
        if self.index is None:
            self.index = make_key_index([k.type for k in keys])
        before = len(self.index)
        slots = self.index.slots_for(keys)
        self._ensure(len(self.index))
        self._record_groups(keys, slots, before)
        return slots

    def _record_groups(self, keys: Sequence[pa.Array], slots: np.ndarray, before: int) -> None:
        """Remember the key group of keys that just got a slot (so snapshots need not hash every key)."""
        fresh = slots >= before
        if not fresh.any():
            return
        if len(self._groups) < self._capacity:
            self._groups = np.resize(self._groups, self._capacity)
        mask = pa.array(fresh)
        self._groups[slots[fresh]] = key_groups([k.filter(mask) for k in keys], self.max_key_groups)

    def _ensure(self, size: int) -> None:
        if size <= self._capacity:
            return
        capacity = max(size, 2 * self._capacity, 1024)
        for name, column in self.columns.items():
            grown = np.full(capacity, self._fills.get(name, 0), dtype=column.dtype)
            grown[: len(column)] = column[: len(grown)]
            self.columns[name] = grown
        self._capacity = capacity

    def key_columns(self) -> list[pa.Array]:
        return self.index.key_columns() if self.index is not None else []

    def snapshot(self) -> pa.Table | None:
        """A copy of every key and value, with each row's key group; ``None`` when empty."""
        size = len(self)
        if size == 0:
            return None
        keys = self.key_columns()
        fields = [pa.field(name, k.type) for name, k in zip(self.key_names, keys)]
        arrays = list(keys)
        for name, column in self.columns.items():
            if column.dtype == object:  # first/last values, distinct sets: pickled per row
                arrays.append(pa.array([pickle.dumps(v, protocol=5) for v in column[:size]], pa.binary()))
                fields.append(pa.field(name, pa.binary(), metadata={_PICKLED: b"1"}))
            else:
                arrays.append(pa.array(column[:size].copy()))
                fields.append(pa.field(name, arrays[-1].type))
        arrays.append(pa.array(self._groups[:size].copy(), pa.int32()))
        fields.append(pa.field(KEY_GROUP_COLUMN, pa.int32()))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def restore(self, table: pa.Table) -> None:
        """Load rows of a snapshot (already filtered to this subtask's key groups)."""
        if table.num_rows == 0:
            return
        table = table.combine_chunks()
        keys = [table.column(k).combine_chunks() for k in self.key_names]
        self.index = make_key_index([k.type for k in keys])
        slots = self.index.slots_for(keys)  # new slots 0..n-1, in an order the index chooses
        self._groups = np.empty(len(slots), dtype=np.int32)
        self._groups[slots] = np.asarray(table.column(KEY_GROUP_COLUMN).combine_chunks(), dtype=np.int32)
        value_names = [n for n in table.column_names if n not in self.key_names and n != KEY_GROUP_COLUMN]
        self._capacity = 0
        for name in value_names:
            field = table.schema.field(name)
            if field.metadata and field.metadata.get(_PICKLED):
                values: Any = [pickle.loads(b) for b in table.column(name).to_pylist()]
                column = np.empty(len(values), dtype=object)
            else:
                values = table.column(name).to_numpy(zero_copy_only=False)
                column = np.empty(len(values), dtype=values.dtype)
            column[slots] = values  # place every row at the slot its key received
            self.columns[name] = column
            self._capacity = len(column)
        for name, column in self.columns.items():  # columns declared but absent from the snapshot (new aggregates)
            if len(column) < self._capacity:
                grown = np.full(self._capacity, self._fills.get(name, 0), dtype=column.dtype)
                grown[: len(column)] = column
                self.columns[name] = grown
        self._ensure(table.num_rows)


class KeyedObjects:
    """A picklable Python value per key."""

    def __init__(self, key_names: Sequence[str], max_key_groups: int) -> None:
        self.key_names = tuple(key_names)
        self.max_key_groups = max_key_groups
        self.values: dict[Any, Any] = {}
        self._key_types: list[pa.DataType] | None = None

    def bind_key_types(self, types: Iterable[pa.DataType]) -> None:
        if self._key_types is None:
            self._key_types = list(types)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: Any, value: Any) -> None:
        self.values[key] = value

    def delete(self, key: Any) -> None:
        self.values.pop(key, None)

    def snapshot(self) -> pa.Table | None:
        if not self.values:
            return None
        keys = list(self.values)
        if self._key_types is None:  # never bound: infer the key types from the keys themselves
            columns = [keys] if len(self.key_names) == 1 else [list(c) for c in zip(*keys)]
            self._key_types = [pa.array(c).type for c in columns]
        if len(self.key_names) == 1:
            key_arrays = [pa.array(keys, type=self._key_types[0])]
        else:
            key_arrays = [pa.array([k[i] for k in keys], type=t) for i, t in enumerate(self._key_types)]
        blobs = pa.array([pickle.dumps(v, protocol=5) for v in self.values.values()], pa.binary())
        groups = pa.array(key_groups(key_arrays, self.max_key_groups), pa.int32())
        return pa.Table.from_arrays([*key_arrays, blobs, groups], names=[*self.key_names, "_value", KEY_GROUP_COLUMN])

    def restore(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.bind_key_types(table.schema.field(k).type for k in self.key_names)
        columns = [table.column(k).to_pylist() for k in self.key_names]
        keys = columns[0] if len(columns) == 1 else list(zip(*columns))
        for key, blob in zip(keys, table.column("_value").to_pylist()):
            self.values[key] = pickle.loads(blob)


class ValueState:
    """One picklable value for the whole subtask (non-keyed). Restored only with the same parallelism."""

    def __init__(self, default: Any) -> None:
        self.value = default


class OperatorStateStore:
    """The states one operator instance declared; the runtime snapshots and restores them by name."""

    def __init__(self, step_id: str, max_key_groups: int, key_group_range: range) -> None:
        self.step_id = step_id
        self.max_key_groups = max_key_groups
        self.key_group_range = key_group_range
        self.keyed: dict[str, KeyedState] = {}
        self.values: dict[str, ValueState] = {}

    def _check_new(self, name: str) -> None:
        if name in self.keyed or name in self.values:
            raise ConfigError(f"step {self.step_id!r} declared state {name!r} twice")

    def keyed_columns(self, name: str, key_names: Sequence[str]) -> KeyedColumns:
        self._check_new(name)
        state = KeyedColumns(key_names, self.max_key_groups)
        self.keyed[name] = state
        return state

    def keyed_objects(self, name: str, key_names: Sequence[str]) -> KeyedObjects:
        self._check_new(name)
        state = KeyedObjects(key_names, self.max_key_groups)
        self.keyed[name] = state
        return state

    def register(self, name: str, state: S) -> S:
        """Add a custom keyed state: anything with ``snapshot() -> pa.Table | None`` (rows carrying
        ``_key_group``) and ``restore(table)`` (rows already filtered to this subtask's key groups)."""
        self._check_new(name)
        self.keyed[name] = state
        return state

    def value(self, name: str, default: Any = None) -> ValueState:
        self._check_new(name)
        state = ValueState(default)
        self.values[name] = state
        return state

    @property
    def is_empty(self) -> bool:
        return not self.keyed and not self.values

    def snapshot(self) -> tuple[dict[str, pa.Table], dict[str, bytes]]:
        """(keyed tables by state name, pickled non-keyed values by name); copies, safe to write later."""
        tables = {name: t for name, state in self.keyed.items() if (t := state.snapshot()) is not None}
        values = {name: pickle.dumps(state.value, protocol=5) for name, state in self.values.items()}
        return tables, values

    def restore(self, tables: dict[str, pa.Table], values: dict[str, bytes]) -> None:
        """Load snapshot rows of this subtask's key groups; unknown state names are an error."""
        for name, table in tables.items():
            if name not in self.keyed:
                raise StateCompatibilityError(
                    f"step {self.step_id!r}: the checkpoint holds state {name!r} that the operator no longer declares "
                    "(did the step change kind?); give the changed step a new step id, and pass "
                    "allow_non_restored_state=True to drop the old state"
                )
            groups = table.column(KEY_GROUP_COLUMN)
            start, stop = self.key_group_range.start, self.key_group_range.stop
            mine = table.filter(pc.and_(pc.greater_equal(groups, start), pc.less(groups, stop)))
            self.keyed[name].restore(mine)
        for name, blob in values.items():
            if name in self.values:
                self.values[name].value = pickle.loads(blob)
