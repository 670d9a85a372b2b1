"""Key groups and the stable hash: stable across layouts, encodings and releases; ranges partition the groups."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.state.key_groups import (
    DEFAULT_MAX_KEY_GROUPS,
    key_group_range,
    key_groups,
    owner_of,
    split_by_receiver,
    stable_hash,
)

MASK = 2**64 - 1
P = 0x100000001B3
COMBINE = 0xC2B2AE3D27D4EB4F
NULL_HASH = 0x9E3779B97F4A7C15

FAST = settings(max_examples=50, deadline=None)


# -- a plain-Python reference of the documented hash --------------------------------------------------------------


def splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_hash(value: object) -> int:
    if value is None:
        return NULL_HASH
    if isinstance(value, bool):
        return splitmix64(int(value))
    if isinstance(value, int):
        return splitmix64(value & MASK)
    if isinstance(value, float):
        return splitmix64(struct.unpack("<Q", struct.pack("<d", value + 0.0))[0])
    data = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
    polynomial = sum(byte * pow(P, i, 2**64) for i, byte in enumerate(data))
    return splitmix64((polynomial + len(data) * COMBINE) & MASK)


def reference_combined(*values: object) -> int:
    combined = reference_hash(values[0])
    for value in values[1:]:
        combined = splitmix64((combined * COMBINE + reference_hash(value)) & MASK)
    return combined


def hashes(*columns: pa.Array | pa.ChunkedArray) -> list[int]:
    return stable_hash(list(columns)).tolist()


texts = st.text(max_size=12)
optional_texts = st.lists(st.one_of(st.none(), texts), max_size=30)
optional_ints = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=30)


# -- pinned values: a change of the function breaks every checkpoint's key groups ---------------------------------


def test_pinned_hashes() -> None:
    # SplitMix64's first output for seed 0 (a published constant) is the hash of integer 0.
    assert hashes(pa.array([0], pa.int64())) == [0xE220A8397B1DCDAF]
    assert hashes(pa.array(["auction"], pa.string())) == [7201068609784355180]
    assert hashes(pa.array(["a"]), pa.array([7], pa.int64())) == [6473002344541323620]


def test_pinned_key_groups() -> None:
    groups = key_groups([pa.array(range(8), pa.int64())], DEFAULT_MAX_KEY_GROUPS).tolist()
    assert groups == [47, 65, 78, 109, 74, 90, 0, 87]


@FAST
@given(values=optional_ints)
def test_integer_hash_matches_the_reference(values: list[int | None]) -> None:
    assert hashes(pa.array(values, pa.int64())) == [reference_hash(v) for v in values]


@FAST
@given(values=optional_texts)
def test_string_hash_matches_the_reference(values: list[str | None]) -> None:
    assert hashes(pa.array(values, pa.string())) == [reference_hash(v) for v in values]


@FAST
@given(values=st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=30))
def test_float_hash_matches_the_reference(values: list[float | None]) -> None:
    assert hashes(pa.array(values, pa.float64())) == [reference_hash(v) for v in values]


@FAST
@given(rows=st.lists(st.tuples(st.one_of(st.none(), texts), st.integers(-1000, 1000)), max_size=20))
def test_multi_column_hash_matches_the_reference(rows: list[tuple[str | None, int]]) -> None:
    names, numbers = pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.int64())
    assert hashes(names, numbers) == [reference_combined(*r) for r in rows]


# -- independent of layout: slicing, chunking, batch position -------------------------------------------------------


@FAST
@given(values=optional_texts, data=st.data())
def test_hash_of_a_slice_is_the_slice_of_the_hash(values: list[str | None], data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(values)))
    stop = data.draw(st.integers(start, len(values)))
    for kind in (pa.string(), pa.large_string(), pa.string_view(), pa.binary()):
        array = pa.array([v.encode() if v is not None and kind == pa.binary() else v for v in values], kind)
        whole = hashes(array)
        assert hashes(array.slice(start, stop - start)) == whole[start:stop]
    ints = pa.array([None if v is None else len(v) for v in values], pa.int64())
    assert hashes(ints.slice(start, stop - start)) == hashes(ints)[start:stop]
    if any(v is not None for v in values):  # an empty dictionary is test_all_null_dictionary_array_hashes
        encoded = pa.array(values, pa.string()).dictionary_encode()
        assert hashes(encoded.slice(start, stop - start)) == hashes(encoded)[start:stop]


@FAST
@given(values=optional_texts, data=st.data())
def test_hash_is_independent_of_chunking(values: list[str | None], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=4)))
    bounds = [0, *cuts, len(values)]
    chunks = [pa.array(values[a:b], pa.string()) for a, b in zip(bounds, bounds[1:])]
    chunked = pa.chunked_array(chunks, type=pa.string())
    assert hashes(chunked) == hashes(pa.array(values, pa.string()))


@FAST
@given(values=optional_texts, position=st.integers(0, 30))
def test_hash_of_a_value_does_not_depend_on_its_neighbours(values: list[str | None], position: int) -> None:
    position = min(position, len(values))
    alone = hashes(pa.array(["needle"]))[0]
    assert hashes(pa.array([*values[:position], "needle", *values[position:]]))[position] == alone


def test_long_arrays_hash_like_their_slices() -> None:
    values = [f"key-{i % 977}-{'x' * (i % 7)}" for i in range(40_000)]  # more rows than one internal chunk
    array = pa.array(values)
    whole = stable_hash([array])
    assert np.array_equal(whole[16_000:24_000], stable_hash([array.slice(16_000, 8_000)]))
    assert whole[39_999] == reference_hash(values[39_999])


# -- independent of encoding ------------------------------------------------------------------------------------------


@FAST
@given(values=optional_texts)
def test_string_encodings_hash_alike(values: list[str | None]) -> None:
    plain = pa.array(values, pa.string())
    expected = hashes(plain)
    assert hashes(plain.cast(pa.large_string())) == expected
    assert hashes(plain.cast(pa.string_view())) == expected
    if any(v is not None for v in values):  # an empty dictionary is test_all_null_dictionary_array_hashes
        assert hashes(plain.dictionary_encode()) == expected
        assert hashes(plain.cast(pa.dictionary(pa.int8(), pa.large_string()))) == expected


def test_dictionary_with_null_values_in_the_dictionary() -> None:
    array = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0], pa.int32()), pa.array(["a", None]))
    assert hashes(array) == hashes(pa.array(["a", None, None, "a"]))


def test_floats_hash_alike_across_widths_and_signed_zero() -> None:
    assert hashes(pa.array([1.5, -0.0], pa.float32())) == hashes(pa.array([1.5, 0.0], pa.float64()))


def test_timestamps_hash_like_their_integer_value() -> None:
    ts = pa.array([0, 1_700_000_000_000_000, None], pa.timestamp("us", tz="UTC"))
    assert hashes(ts) == hashes(pa.array([0, 1_700_000_000_000_000, None], pa.int64()))


def test_nulls_hash_alike_in_every_type() -> None:
    columns = [
        pa.array([None, 1], pa.int64()),
        pa.array([None, 1], pa.int32()),
        pa.array([None, 1.0], pa.float64()),
        pa.array([None, True], pa.bool_()),
        pa.array([None, "a"], pa.string()),
        pa.array([None, "a"], pa.large_string()),
        pa.array([None, b"a"], pa.binary()),
        pa.array([None, "a"]).dictionary_encode(),
        pa.array([None, 1], pa.timestamp("ms")),
    ]
    assert {hashes(c)[0] for c in columns} == {NULL_HASH}


def test_empty_and_all_null_arrays() -> None:
    assert hashes(pa.array([], pa.string())) == []
    assert hashes(pa.array([], pa.int64())) == []
    assert hashes(pa.array([None, None], pa.string())) == [NULL_HASH, NULL_HASH]
    assert hashes(pa.array(["", ""], pa.string())) == [reference_hash("")] * 2


def test_unhashable_type_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="cannot hash key column of type decimal"):
        stable_hash([pa.array([1], pa.decimal128(5, 2))])


@pytest.mark.parametrize("kind", [pa.date32(), pa.time32("s")])
def test_date_and_time_keys_hash(kind: pa.DataType) -> None:
    assert hashes(pa.array([1, None], kind)) == [reference_hash(1), NULL_HASH]


def test_large_uint64_keys_hash() -> None:
    assert hashes(pa.array([2**64 - 1], pa.uint64())) == [reference_hash(2**64 - 1)]


def test_all_null_dictionary_array_hashes() -> None:
    assert hashes(pa.array([None, None], pa.string()).dictionary_encode()) == [NULL_HASH, NULL_HASH]


# -- multi-column keys ------------------------------------------------------------------------------------------------


@FAST
@given(rows=st.lists(st.tuples(texts, st.integers(-100, 100)), min_size=1, max_size=20, unique=True))
def test_multi_column_hash_differs_from_single_and_depends_on_order(rows: list[tuple[str, int]]) -> None:
    names = pa.array([r[0] for r in rows])
    numbers = pa.array([r[1] for r in rows], pa.int64())
    pair = hashes(names, numbers)
    assert all(p != s for p, s in zip(pair, hashes(names)))
    assert all(p != s for p, s in zip(pair, hashes(numbers)))
    assert len(set(pair)) == len(rows)  # distinct (name, number) pairs, distinct hashes (no collisions here)
    # Order matters unless both parts hash alike (the hash is type-agnostic: "" and 0 both hash as 0).
    swapped = hashes(numbers, names)
    for p, s, name, number in zip(pair, swapped, hashes(names), hashes(numbers)):
        assert (p == s) == (name == number)


def test_key_groups_are_in_range() -> None:
    groups = key_groups([pa.array([f"k{i}" for i in range(1_000)])], 7)
    assert groups.dtype == np.int64
    assert groups.min() >= 0 and groups.max() < 7
    assert len(set(groups.tolist())) == 7


# -- key-group ranges -------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_key_group_ranges_partition_the_groups_and_agree_with_owner_of(data: st.DataObject) -> None:
    max_key_groups = data.draw(st.integers(1, 1024), label="G")
    parallelism = data.draw(st.integers(1, max_key_groups), label="p")
    ranges = [key_group_range(i, parallelism, max_key_groups) for i in range(parallelism)]
    assert [g for r in ranges for g in r] == list(range(max_key_groups))  # exact, ordered, contiguous
    assert all(len(r) in (max_key_groups // parallelism, -(-max_key_groups // parallelism)) for r in ranges)
    owners = owner_of(np.arange(max_key_groups), parallelism, max_key_groups)
    for subtask, group_range in enumerate(ranges):
        assert all(owners[g] == subtask for g in group_range)


def test_key_group_range_examples() -> None:
    assert [key_group_range(i, 2, 128) for i in range(2)] == [range(0, 64), range(64, 128)]
    assert [key_group_range(i, 3, 8) for i in range(3)] == [range(0, 3), range(3, 6), range(6, 8)]
    assert key_group_range(0, 1, 128) == range(128)


# -- splitting a batch by receiver ------------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_split_by_receiver_keeps_every_row_once_in_order(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 6), label="receivers")
    receivers = data.draw(st.lists(st.integers(0, count - 1), max_size=60), label="targets")
    batch = pa.RecordBatch.from_pydict(
        {"row": pa.array(range(len(receivers)), pa.int64()), "name": [f"r{i}" for i in range(len(receivers))]}
    )
    parts = split_by_receiver(batch, np.array(receivers, dtype=np.int64), count)
    assert len(parts) == count
    if count == 1:
        assert parts[0] is batch
        return
    for receiver, part in enumerate(parts):
        expected = [i for i, r in enumerate(receivers) if r == receiver]
        if not expected:
            assert part is None
        else:
            assert part is not None and part.schema == batch.schema
            assert part.column("row").to_pylist() == expected
            assert part.column("name").to_pylist() == [f"r{i}" for i in expected]


def test_split_by_receiver_on_a_hash_routed_batch() -> None:
    keys = pa.array([f"user-{i % 13}" for i in range(200)])
    batch = pa.RecordBatch.from_pydict({"k": keys, "i": list(range(200))})
    owners = owner_of(key_groups([keys], 128), 3, 128)
    parts = split_by_receiver(batch, owners, 3)
    seen: dict[str, int] = {}
    for receiver, part in enumerate(parts):
        assert part is not None
        for k in part.column("k").to_pylist():
            assert seen.setdefault(k, receiver) == receiver  # one key, one receiver
    assert sorted(i for p in parts if p is not None for i in p.column("i").to_pylist()) == list(range(200))
