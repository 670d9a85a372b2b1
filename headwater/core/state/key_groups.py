"""Key groups and a stable, vectorised hash.

Keyed state is split into ``max_key_groups`` key groups (default 128). A row's key group is
``stable_hash(key) % max_key_groups``; the owner of group ``g`` among ``p`` subtasks is ``g * p // G``, so
subtask ``i`` owns the contiguous range ``[ceil(i * G / p), ceil((i + 1) * G / p))``. Changing ``p`` re-splits
ranges; it never moves a key to another group. That is what makes restore with a different parallelism (and
rescaling) a matter of re-assigning whole groups.

The hash must be identical in every process, run and release: it never uses Python's ``hash()`` (salted per
process). Integers are mixed with the SplitMix64 finaliser; strings and binaries with a polynomial hash over
their UTF-8 bytes computed for the whole array at once (prefix sums of ``byte * P**position`` modulo 2**64),
then mixed. Nulls hash to a fixed value. All arithmetic is on ``uint64`` with wrap-around.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.arrays import as_int64, is_integer_like

DEFAULT_MAX_KEY_GROUPS = 128

_P = np.uint64(0x100000001B3)  # odd multiplier (FNV prime) for the polynomial byte hash
_P_INV = np.uint64(pow(int(_P), -1, 2**64))  # its inverse modulo 2**64
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_COMBINE = np.uint64(0xC2B2AE3D27D4EB4F)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_power_tables: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, count: int) -> np.ndarray:
    """``base ** i`` modulo 2**64 for ``i < count``; cached per base and grown by doubling (vectorised)."""
    table = _power_tables.get(int(base))
    if table is None:
        table = np.ones(1, dtype=np.uint64)
    while len(table) < count:
        with np.errstate(over="ignore"):
            step = table[-1] * base  # base ** len(table)
            table = np.concatenate((table, table * step))
    _power_tables[int(base)] = table
    return table[:count]


_ROWS_PER_CHUNK = 16_384  # keeps the cached power tables small (about rows x average length entries)


def _hash_binary(array: pa.Array) -> np.ndarray:
    if len(array) > _ROWS_PER_CHUNK:
        return np.concatenate(
            [_hash_binary(array.slice(i, _ROWS_PER_CHUNK)) for i in range(0, len(array), _ROWS_PER_CHUNK)]
        )
    if not (pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)):
        array = pc.cast(array, pa.large_binary() if pa.types.is_binary(array.type) or pa.types.is_fixed_size_binary(array.type) else pa.large_string())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data_buffer = array.buffers()[2]
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buffer, dtype=np.uint8)[start:end].astype(np.uint64) if data_buffer else np.zeros(0, np.uint64)
    relative = offsets - start
    with np.errstate(over="ignore"):
        weighted = data * _powers(_P, len(data))
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))
        sums = prefix[relative[1:]] - prefix[relative[:-1]]
        # Shift every string's sum so it starts at P**0, making the hash independent of the string's position.
        hashes = sums * _powers(_P_INV, len(data) + 1)[relative[:-1]]
        hashes = hashes + (relative[1:] - relative[:-1]).astype(np.uint64) * _COMBINE
    return _splitmix64(hashes)


def _hash_column(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        if len(array.dictionary) == 0:
            hashes = np.full(len(array), _NULL_HASH, dtype=np.uint64)  # every value is null
        else:
            dictionary_hashes = _hash_column(array.dictionary)
            hashes = dictionary_hashes[np.asarray(array.indices.fill_null(0), dtype=np.int64)]
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind) or pa.types.is_string_view(kind) \
            or pa.types.is_binary_view(kind):
        hashes = _hash_binary(array)
    elif pa.types.is_floating(kind):
        values = np.asarray(pc.cast(array, pa.float64()).fill_null(0.0), dtype=np.float64) + 0.0  # -0.0 -> 0.0
        hashes = _splitmix64(values.view(np.uint64))
    elif pa.types.is_boolean(kind):
        hashes = _splitmix64(np.asarray(array.fill_null(False), dtype=np.uint64))
    elif is_integer_like(kind):
        hashes = _splitmix64(np.asarray(as_int64(array).fill_null(0), dtype=np.int64).view(np.uint64))
    else:
        raise TypeError(f"cannot hash key column of type {kind}; key by a column of a primitive or string type")
    if array.null_count:
        hashes = np.where(np.asarray(array.is_null()), _NULL_HASH, hashes)
    return hashes


def stable_hash(columns: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Per-row ``uint64`` hash of one or more key columns; identical in every process and release."""
    combined = _hash_column(columns[0])
    for column in columns[1:]:
        with np.errstate(over="ignore"):
            combined = _splitmix64(combined * _COMBINE + _hash_column(column))
    return combined


def key_groups(columns: Sequence[pa.Array | pa.ChunkedArray], max_key_groups: int) -> np.ndarray:
    """Key group (``0 <= g < max_key_groups``) of every row."""
    return (stable_hash(columns) % np.uint64(max_key_groups)).astype(np.int64)


def owner_of(groups: np.ndarray, parallelism: int, max_key_groups: int) -> np.ndarray:
    """Index of the subtask that owns each key group, for contiguous ranges."""
    return (groups * parallelism) // max_key_groups


def key_group_range(subtask: int, parallelism: int, max_key_groups: int) -> range:
    """The key groups subtask ``subtask`` of ``parallelism`` owns (the inverse of :func:`owner_of`)."""
    start = -((-subtask * max_key_groups) // parallelism)
    stop = -((-(subtask + 1) * max_key_groups) // parallelism)
    return range(start, stop)


def split_by_receiver(batch: pa.RecordBatch, receivers: np.ndarray, count: int) -> list[pa.RecordBatch | None]:
    """Split ``batch`` into per-receiver batches with one ``take`` and zero-copy slices (order kept per receiver)."""
    if count == 1:
        return [batch]
    order = np.argsort(receivers, kind="stable")
    counts = np.bincount(receivers, minlength=count)
    taken = batch.take(pa.array(order))
    parts: list[pa.RecordBatch | None] = []
    offset = 0
    for size in counts.tolist():
        parts.append(taken.slice(offset, size) if size else None)
        offset += size
    return parts
