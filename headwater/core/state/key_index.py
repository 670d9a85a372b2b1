"""Key → dense slot maps for keyed state.

Keyed operators keep per-key values in numpy columns indexed by a dense *slot*; a :class:`KeyIndex` assigns
slots. Invariants: slots are ``0..len(index)-1`` in order of first appearance, a key keeps its slot for the life
of the index, and :meth:`KeyIndex.key_columns` returns the keys in slot order (so state can be written out and
rebuilt by re-inserting keys in that order).

* :class:`IntegerKeyIndex` — one integer or temporal key column: vectorised lookups with ``np.searchsorted``
  over a sorted copy of the keys (no Python per key); new keys are merged in with ``np.insert``.
* :class:`GeneralKeyIndex` — any other key (strings, several columns): a dict lookup per *distinct* key of a
  batch (never per row: the batch is reduced to distinct keys first).

:meth:`KeyIndex.find` looks keys up without adding them (probing a table, e.g. in a lookup join); it accepts
repeated keys. :func:`distinct_rows` reduces a batch to its distinct keys with Arrow's hash kernels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.arrays import as_int64, from_int64, is_integer_like


class KeyIndex(ABC):
    @abstractmethod
    def slots_for(self, keys: Sequence[pa.Array]) -> np.ndarray:
        """Slots of the given *distinct* keys (one array per key column), assigning new slots to new keys."""

    @abstractmethod
    def find(self, keys: Sequence[pa.Array]) -> np.ndarray:
        """Slot of every row's key (keys may repeat), ``-1`` where the key has none; never adds keys."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def key_columns(self) -> list[pa.Array]:
        """Every key, in slot order, one array per key column."""


def distinct_rows(keys: Sequence[pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: the row of the first occurrence of each distinct key, and for every row the number
    of its distinct key (``keys[c].take(first)[inverse]`` rebuilds column ``c``). Nulls are a key like any
    other and NaNs equal each other. Vectorised: Arrow's hash kernel encodes each column, numpy combines them.
    """
    codes: np.ndarray | None = None
    for column in keys:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        indices = np.asarray(encoded.indices, dtype=np.int64)
        if codes is None:
            codes = indices
        else:  # both codes are below the row count, so the combination cannot overflow; densify it again
            codes = np.unique(codes * len(encoded.dictionary) + indices, return_inverse=True)[1].reshape(-1)
    assert codes is not None, "distinct_rows() needs at least one key column"
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return first.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def make_key_index(key_types: Sequence[pa.DataType]) -> KeyIndex:
    if len(key_types) == 1 and is_integer_like(key_types[0]):
        return IntegerKeyIndex(key_types[0])
    return GeneralKeyIndex(key_types)


class IntegerKeyIndex(KeyIndex):
    def __init__(self, key_type: pa.DataType) -> None:
        self.key_type = key_type
        self._sorted_keys = np.empty(0, dtype=np.int64)
        self._sorted_slots = np.empty(0, dtype=np.int64)
        self._by_slot = np.empty(0, dtype=np.int64)
        self._valid_by_slot = np.empty(0, dtype=bool)
        self._size = 0
        self._null_slot = -1

    def __len__(self) -> int:
        return self._size

    def _grow(self, size: int) -> None:
        if size > len(self._by_slot):
            capacity = max(size, 2 * len(self._by_slot), 1024)
            self._by_slot = np.resize(self._by_slot, capacity)
            self._valid_by_slot = np.resize(self._valid_by_slot, capacity)

    @staticmethod
    def _values(keys: Sequence[pa.Array]) -> tuple[pa.Array, np.ndarray]:
        """The key column (one array) and its values as int64, nulls as 0 (callers mask them)."""
        column = keys[0]
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        return column, np.asarray(pc.fill_null(as_int64(column), 0), dtype=np.int64)

    def slots_for(self, keys: Sequence[pa.Array]) -> np.ndarray:
        column, values = self._values(keys)
        slots = np.full(len(values), -1, dtype=np.int64)
        valid = np.ones(len(values), dtype=bool) if column.null_count == 0 else np.asarray(column.is_valid())
        if len(self._sorted_keys):
            clipped = self._positions(values)
            found = (self._sorted_keys[clipped] == values) & valid
            slots[found] = self._sorted_slots[clipped[found]]
        if not valid.all():
            nulls = np.flatnonzero(~valid)
            if self._null_slot < 0:
                self._null_slot = self._size
                self._grow(self._size + 1)
                self._by_slot[self._size] = 0
                self._valid_by_slot[self._size] = False
                self._size += 1
            slots[nulls] = self._null_slot
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            new_keys = values[missing]
            new_slots = np.arange(self._size, self._size + len(missing), dtype=np.int64)
            slots[missing] = new_slots
            self._grow(self._size + len(missing))
            self._by_slot[self._size : self._size + len(missing)] = new_keys
            self._valid_by_slot[self._size : self._size + len(missing)] = True
            self._size += len(missing)
            order = np.argsort(new_keys, kind="stable")
            sorted_new = new_keys[order]
            at = np.searchsorted(self._sorted_keys, sorted_new)
            self._sorted_keys = np.insert(self._sorted_keys, at, sorted_new)
            self._sorted_slots = np.insert(self._sorted_slots, at, new_slots[order])
        return slots

    def find(self, keys: Sequence[pa.Array]) -> np.ndarray:
        column, values = self._values(keys)
        slots = np.full(len(values), -1, dtype=np.int64)
        if len(self._sorted_keys):
            clipped = self._positions(values)
            found = self._sorted_keys[clipped] == values
            slots[found] = self._sorted_slots[clipped[found]]
        if column.null_count:
            slots[np.asarray(column.is_null())] = self._null_slot  # -1 while no null key has a slot
        return slots

    def _positions(self, values: np.ndarray) -> np.ndarray:
        """Where each value is (or would go) in the sorted keys, clipped to a valid index. The values are
        looked up in sorted order: successive binary searches then walk the keys forward instead of jumping
        around them, which halves the cost against a large index."""
        if len(values) > 64:
            order = np.argsort(values)
            positions = np.empty(len(values), dtype=np.intp)
            positions[order] = np.searchsorted(self._sorted_keys, values[order])
        else:
            positions = np.searchsorted(self._sorted_keys, values)
        return np.minimum(positions, len(self._sorted_keys) - 1)

    def key_columns(self) -> list[pa.Array]:
        values = pa.array(self._by_slot[: self._size], mask=~self._valid_by_slot[: self._size])
        return [from_int64(values, self.key_type)]


_NAN = float("nan")


def _canonical_nan(key: Any) -> Any:
    """Replace every NaN by one NaN object: dict lookups match it by identity (NaN != NaN otherwise)."""
    if isinstance(key, float):
        return _NAN if key != key else key
    if isinstance(key, tuple):
        return tuple(_NAN if isinstance(v, float) and v != v else v for v in key)
    return key


class GeneralKeyIndex(KeyIndex):
    def __init__(self, key_types: Sequence[pa.DataType]) -> None:
        self.key_types = list(key_types)
        self._index: dict[Any, int] = {}
        self._keys: list[Any] = []
        self._has_floats = any(pa.types.is_floating(t) for t in self.key_types)

    def __len__(self) -> int:
        return len(self._keys)

    def _python_keys(self, keys: Sequence[pa.Array]) -> list[Any]:
        if len(keys) == 1:
            key_list = keys[0].to_pylist()
        else:
            key_list = list(zip(*(k.to_pylist() for k in keys)))
        if self._has_floats:
            key_list = [_canonical_nan(k) for k in key_list]
        return key_list

    def find(self, keys: Sequence[pa.Array]) -> np.ndarray:
        rows = len(keys[0])
        if not self._keys or rows == 0:
            return np.full(rows, -1, dtype=np.int64)
        first, inverse = distinct_rows(keys)  # one dict lookup per distinct key, not per row
        taken = pa.array(first)
        key_list = self._python_keys([k.take(taken) for k in keys])
        index = self._index
        found = np.fromiter((index.get(k, -1) for k in key_list), dtype=np.int64, count=len(key_list))
        return found[inverse]

    def slots_for(self, keys: Sequence[pa.Array]) -> np.ndarray:
        key_list = self._python_keys(keys)
        index = self._index
        slots = np.fromiter((index.get(k, -1) for k in key_list), dtype=np.int64, count=len(key_list))
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            start = len(self._keys)
            for offset, position in enumerate(missing.tolist()):
                key = key_list[position]
                index[key] = start + offset
                self._keys.append(key)
            slots[missing] = np.arange(start, start + len(missing))
        return slots

    def key_columns(self) -> list[pa.Array]:
        if len(self.key_types) == 1:
            return [pa.array(self._keys, type=self.key_types[0])]
        return [pa.array([k[i] for k in self._keys], type=t) for i, t in enumerate(self.key_types)]
