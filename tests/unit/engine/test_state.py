"""Keyed and value state: snapshot -> restore round trips, and restores that keep only the subtask's key groups.

The invariant under test (``headwater/core/state/store.py``): a snapshot holds every key with its values and its key
group, so restoring it into subtask ``i`` of ``p`` keeps exactly the keys whose group that subtask owns; splitting
one snapshot over 1, 2 or 3 subtasks gives every key to exactly one of them, with its values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS, key_group_range, key_groups
from headwater.core.state.store import KEY_GROUP_COLUMN, KeyedColumns, KeyedObjects, OperatorStateStore
from headwater.errors import ConfigError, HeadwaterError, StateCompatibilityError

G = DEFAULT_MAX_KEY_GROUPS
FAST = settings(max_examples=40, deadline=None)

INT_KEYS = [pa.array(list(range(-20, 40)), pa.int64())]
STRING_KEYS = [pa.array([f"user-{i}" for i in range(60)] + ["", "ünï"], pa.string())]
MULTI_KEYS = [
    pa.array([f"k{i % 7}" for i in range(50)], pa.string()),
    pa.array([i // 7 for i in range(50)], pa.int32()),
]
KEY_CASES = {"int": (("id",), INT_KEYS), "string": (("user",), STRING_KEYS), "multi": (("name", "n"), MULTI_KEYS)}


def python_keys(names: tuple[str, ...], arrays: list[pa.Array]) -> list[Any]:
    columns = [a.to_pylist() for a in arrays]
    return columns[0] if len(names) == 1 else list(zip(*columns))


def filled_columns(names: tuple[str, ...], arrays: list[pa.Array]) -> KeyedColumns:
    """Columnar state with a count, a float sum and a min per key (value of key at slot s: s, s / 2, -s)."""
    state = KeyedColumns(names, G)
    state.add_column("count", np.int64, 0)
    state.add_column("total", np.float64, 0.0)
    state.add_column("low", np.int64, np.iinfo(np.int64).max)
    slots = state.slots_for(arrays)
    state.columns["count"][slots] = slots
    state.columns["total"][slots] = slots / 2
    state.columns["low"][slots] = -slots
    return state


def columns_by_key(state: KeyedColumns) -> dict[Any, tuple[int, float, int]]:
    table = state.snapshot()
    if table is None:
        return {}
    keys = python_keys(state.key_names, [table.column(k) for k in state.key_names])
    values = zip(*(table.column(c).to_pylist() for c in ("count", "total", "low")))
    return dict(zip(keys, values))


def empty_columns(names: tuple[str, ...]) -> KeyedColumns:
    state = KeyedColumns(names, G)
    state.add_column("count", np.int64, 0)
    state.add_column("total", np.float64, 0.0)
    state.add_column("low", np.int64, np.iinfo(np.int64).max)
    return state


# -- KeyedColumns ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_keyed_columns_round_trip(case: str) -> None:
    names, arrays = KEY_CASES[case]
    state = filled_columns(names, arrays)
    table = state.snapshot()
    assert table is not None
    assert table.column_names == [*names, "count", "total", "low", KEY_GROUP_COLUMN]
    assert table.column(KEY_GROUP_COLUMN).to_pylist() == key_groups(arrays, G).tolist()

    restored = empty_columns(names)
    restored.restore(table)

    assert len(restored) == len(state)
    assert columns_by_key(restored) == columns_by_key(state)
    # a restored key is found again (same slot as its values), a new key gets fresh fill values
    again = restored.slots_for([a.slice(3, 1) for a in arrays])
    assert restored.columns["count"][again].tolist() == [3]


def test_keyed_columns_restored_state_keeps_growing() -> None:
    """After a restore, thousands of new keys grow the columns without disturbing the restored values."""
    state = filled_columns(("id",), INT_KEYS)
    restored = empty_columns(("id",))
    restored.restore(state.snapshot())
    new = restored.slots_for([pa.array(range(1_000, 4_000), pa.int64())])
    assert restored.columns["count"][new].tolist() == [0] * 3_000
    assert restored.columns["low"][new].tolist() == [np.iinfo(np.int64).max] * 3_000
    got = columns_by_key(restored)
    for key, values in columns_by_key(state).items():
        assert got[key] == values


def test_keyed_columns_snapshot_is_a_copy() -> None:
    state = filled_columns(("id",), INT_KEYS)
    table = state.snapshot()
    state.columns["count"][:] = 999
    assert table is not None and 999 not in table.column("count").to_pylist()


def test_empty_keyed_columns_snapshot_nothing_and_restore_nothing() -> None:
    state = empty_columns(("id",))
    assert state.snapshot() is None
    state.restore(pa.table({"id": pa.array([], pa.int64()), "count": pa.array([], pa.int64()),
                            KEY_GROUP_COLUMN: pa.array([], pa.int32())}))
    assert len(state) == 0


def test_keyed_columns_restore_keeps_values_of_a_null_integer_key() -> None:
    state = KeyedColumns(("id",), G)
    state.add_column("v", np.int64, 0)
    slots = state.slots_for([pa.array([1, 2], pa.int64())])
    state.columns["v"][slots] = [10, 20]
    slots = state.slots_for([pa.array([None], pa.int64())])  # a null key seen after the others
    state.columns["v"][slots] = [99]

    restored = KeyedColumns(("id",), G)
    restored.add_column("v", np.int64, 0)
    restored.restore(state.snapshot())

    slots = restored.slots_for([pa.array([1, 2, None], pa.int64())])
    assert restored.columns["v"][slots].tolist() == [10, 20, 99]


def test_keyed_columns_restore_fills_a_column_the_snapshot_lacks() -> None:
    old = KeyedColumns(("id",), G)
    old.add_column("count", np.int64, 0)
    slots = old.slots_for(INT_KEYS)
    old.columns["count"][slots] = 1

    new = KeyedColumns(("id",), G)
    new.add_column("count", np.int64, 0)
    new.add_column("total", np.int64, 0)  # declared by the upgraded operator, absent from the snapshot
    new.restore(old.snapshot())

    slots = new.slots_for([pa.array([0, 5], pa.int64())])  # restored keys only: no new key grows the columns
    assert new.columns["count"][slots].tolist() == [1, 1]
    assert new.columns["total"][slots].tolist() == [0, 0]


# -- KeyedObjects ------------------------------------------------------------------------------------------------
def filled_objects(names: tuple[str, ...], arrays: list[pa.Array]) -> KeyedObjects:
    state = KeyedObjects(names, G)
    state.bind_key_types(a.type for a in arrays)
    for i, key in enumerate(python_keys(names, arrays)):
        state.set(key, {"seen": list(range(i % 4)), "tag": f"t{i}"})
    return state


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_keyed_objects_round_trip(case: str) -> None:
    names, arrays = KEY_CASES[case]
    state = filled_objects(names, arrays)
    table = state.snapshot()
    assert table is not None
    assert table.column_names == [*names, "_value", KEY_GROUP_COLUMN]
    assert [table.schema.field(n).type for n in names] == [a.type for a in arrays]

    restored = KeyedObjects(names, G)
    restored.restore(table)

    assert restored.values == state.values
    # restored keys have the bound types again, so a second snapshot is identical
    assert restored.snapshot().equals(table)


def test_keyed_objects_delete_and_get() -> None:
    state = filled_objects(("id",), INT_KEYS)
    state.delete(0)
    state.delete(12345)  # absent: no error
    assert state.get(0, "missing") == "missing"
    restored = KeyedObjects(("id",), G)
    restored.restore(state.snapshot())
    assert 0 not in restored.values and len(restored.values) == len(INT_KEYS[0]) - 1


def test_keyed_objects_state_is_never_silently_dropped() -> None:
    state = KeyedObjects(("user",), G)
    state.set("alice", {1, 2})
    try:
        table = state.snapshot()
    except HeadwaterError:
        return  # refusing loudly is acceptable
    assert table is not None and table.num_rows == 1


# -- OperatorStateStore ------------------------------------------------------------------------------------------
def full_store(names: tuple[str, ...], arrays: list[pa.Array]) -> OperatorStateStore:
    store = OperatorStateStore("agg", G, range(G))
    columns = store.keyed_columns("acc", names)
    columns.add_column("count", np.int64, 0)
    slots = columns.slots_for(arrays)  # before reading the column: new keys grow (replace) it
    columns.columns["count"][slots] = np.arange(len(arrays[0])) + 1
    objects = store.keyed_objects("seen", names)
    objects.bind_key_types(a.type for a in arrays)
    for i, key in enumerate(python_keys(names, arrays)):
        objects.set(key, i)
    store.value("offset", 0).value = 42
    return store


def subtask_store(
    names: tuple[str, ...], subtask: int, parallelism: int, max_key_groups: int = G
) -> OperatorStateStore:
    store = OperatorStateStore("agg", max_key_groups, key_group_range(subtask, parallelism, max_key_groups))
    store.keyed_columns("acc", names).add_column("count", np.int64, 0)
    store.keyed_objects("seen", names)
    store.value("offset", 0)
    return store


@pytest.mark.parametrize("case", sorted(KEY_CASES))
@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_restore_splits_keys_by_key_group_range(case: str, parallelism: int) -> None:
    names, arrays = KEY_CASES[case]
    tables, values = full_store(names, arrays).snapshot()
    assert set(tables) == {"acc", "seen"} and set(values) == {"offset"}
    expected = {key: i + 1 for i, key in enumerate(python_keys(names, arrays))}
    groups = dict(zip(python_keys(names, arrays), key_groups(arrays, G).tolist()))

    owner: dict[Any, int] = {}
    for subtask in range(parallelism):
        store = subtask_store(names, subtask, parallelism)
        store.restore(tables, values)
        counted = columns_by_count(store.keyed["acc"])  # type: ignore[arg-type]
        seen = store.keyed["seen"].values  # type: ignore[union-attr]
        assert set(counted) == set(seen)
        for key, count in counted.items():
            assert key not in owner, f"key {key!r} restored into subtasks {owner[key]} and {subtask}"
            owner[key] = subtask
            assert count == expected[key] and seen[key] == expected[key] - 1
            assert groups[key] in store.key_group_range
        assert store.values["offset"].value == 42
    assert set(owner) == set(expected), "every key is restored into exactly one subtask"


def columns_by_count(state: KeyedColumns) -> dict[Any, int]:
    table = state.snapshot()
    if table is None:
        return {}
    keys = python_keys(state.key_names, [table.column(k) for k in state.key_names])
    return dict(zip(keys, table.column("count").to_pylist()))


@FAST
@given(
    keys=st.lists(st.one_of(st.integers(-(2**40), 2**40)), min_size=1, max_size=80, unique=True),
    parallelism=st.integers(1, 5),
    max_key_groups=st.sampled_from([1, 5, 128, 1024]),
)
def test_any_split_restores_every_key_once(keys: list[int], parallelism: int, max_key_groups: int) -> None:
    parallelism = min(parallelism, max_key_groups)
    arrays = [pa.array(keys, pa.int64())]
    source = OperatorStateStore("agg", max_key_groups, range(max_key_groups))
    state = source.keyed_columns("acc", ("id",))
    state.add_column("count", np.int64, 0)
    slots = state.slots_for(arrays)
    state.columns["count"][slots] = np.arange(len(keys))
    tables, values = source.snapshot()

    restored: dict[int, int] = {}
    for subtask in range(parallelism):
        store = subtask_store(("id",), subtask, parallelism, max_key_groups)
        store.restore(tables, values)
        part = columns_by_count(store.keyed["acc"])  # type: ignore[arg-type]
        assert not set(part) & set(restored)
        restored.update(part)
    assert restored == {k: i for i, k in enumerate(keys)}


def test_restore_of_a_state_the_operator_no_longer_declares_is_refused() -> None:
    tables, values = full_store(("id",), INT_KEYS).snapshot()
    store = OperatorStateStore("agg", G, range(G))
    store.keyed_columns("acc", ("id",)).add_column("count", np.int64, 0)
    with pytest.raises(StateCompatibilityError, match="'seen'"):
        store.restore(tables, values)


def test_declaring_a_state_twice_is_refused() -> None:
    store = OperatorStateStore("agg", G, range(G))
    store.keyed_columns("acc", ("id",))
    with pytest.raises(ConfigError, match="declared state 'acc' twice"):
        store.value("acc")


def test_store_without_state_is_empty_and_value_state_round_trips() -> None:
    store = OperatorStateStore("map", G, range(G))
    assert store.is_empty and store.snapshot() == ({}, {})
    store.value("buffer", []).value.append({"x": 1})
    tables, values = store.snapshot()
    assert tables == {}
    other = OperatorStateStore("map", G, range(G))
    other.value("buffer", [])
    other.restore(tables, values)
    assert other.values["buffer"].value == [{"x": 1}]
