"""Small Arrow helpers shared by partitioning, keyed state, logical steps (build-time checks) and operators."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa


def is_integer_like(kind: pa.DataType) -> bool:
    """Integers and fixed-width temporal types: values that are exactly an integer underneath."""
    return pa.types.is_integer(kind) or pa.types.is_temporal(kind)


def as_int64(array: pa.Array) -> pa.Array:
    """The integer underneath each value, as int64 (uint64 is reinterpreted bit for bit; nulls stay null).

    Arrow cannot cast every temporal type to int64 (date32, time32), so those are viewed as their storage
    integer first.
    """
    kind = array.type
    if pa.types.is_int64(kind):
        return array
    if pa.types.is_uint64(kind):
        return array.view(pa.int64())
    if pa.types.is_integer(kind):
        return array.cast(pa.int64())
    width = kind.bit_width
    storage = pa.int32() if width == 32 else pa.int64()
    return array.view(storage).cast(pa.int64()) if width == 32 else array.view(storage)


def from_int64(array: pa.Array, kind: pa.DataType) -> pa.Array:
    """Inverse of :func:`as_int64`."""
    if pa.types.is_int64(kind):
        return array
    if pa.types.is_uint64(kind):
        return array.view(kind)
    if pa.types.is_integer(kind):
        return array.cast(kind)
    if kind.bit_width == 32:
        return array.cast(pa.int32()).view(kind)
    return array.view(kind)


def same_columns(a: pa.Schema, b: pa.Schema) -> bool:
    """Same column names and types in the same order (nullability flags and metadata ignored)."""
    return a.names == b.names and all(x.type == y.type for x, y in zip(a, b))


def schema_difference(expected: pa.Schema, actual: pa.Schema) -> str | None:
    """The first way ``actual`` differs from ``expected`` in names, order or types, in words (``None``: it
    does not, by :func:`same_columns`)."""
    if actual.names != expected.names:
        missing = [n for n in expected.names if n not in actual.names]
        extra = [n for n in actual.names if n not in expected.names]
        if missing or extra:
            parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"new column(s) {extra}"] if extra else [])
            return " and ".join(parts)
        index = next(i for i, (a, b) in enumerate(zip(actual.names, expected.names)) if a != b)
        return f"columns in another order: column {index} is {actual.names[index]!r}, expected {expected.names[index]!r}"
    for field in actual:
        wanted = expected.field(field.name)
        if field.type != wanted.type:
            return f"column {field.name!r} is {field.type}, expected {wanted.type}"
    return None


def join_key_type(kind: pa.DataType) -> pa.DataType | None:
    """The type a key column is compared in: integers as int64, strings as string, binaries as binary, floats as
    float64, dictionaries as their values; other hashable types as themselves. ``None``: cannot be a join key."""
    if pa.types.is_dictionary(kind):
        return join_key_type(kind.value_type)
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_floating(kind):
        return pa.float64()
    if pa.types.is_boolean(kind) or pa.types.is_temporal(kind) or pa.types.is_fixed_size_binary(kind):
        return kind
    return None


def join_tables(left: pa.Table, right: pa.Table, left_on: Sequence[str], right_on: Sequence[str]) -> pa.Table:
    joined = left.join(right, keys=list(left_on), right_keys=list(right_on), join_type="inner",
                       right_suffix="_right", coalesce_keys=True, use_threads=False)
    # Arrow's join does not keep the left input's column order: restore "left columns, then right columns".
    order = [c for c in left.column_names] + [c for c in joined.column_names if c not in left.column_names]
    return joined.select(order)
