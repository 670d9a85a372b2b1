"""PostgreSQL types → Arrow types, and PostgreSQL's text format → Arrow arrays, vectorised, with bad values kept
per row instead of failing the batch.

Mapping (by type OID; ``typmod`` gives numeric precision):

==========================================  ==============================================================
bool                                        bool
int2 / int4 / int8, oid                     int16 / int32 / int64, int64
float4 / float8                             float32 / float64 (``NaN``, ``Infinity`` included)
numeric(p, s) with p <= 38                  decimal128(p, s) (``NaN`` is a bad value)
numeric without precision, money            string (exact text; no Arrow type holds any numeric)
text, varchar, bpchar, name, char           string
bytea                                       binary
date                                        date32
time                                        time64[us]
timestamp / timestamptz                     timestamp[us] / timestamp[us, UTC] (``infinity`` is a bad value)
uuid, json, jsonb, interval, arrays, ...    string (PostgreSQL's text form)
==========================================  ==============================================================

Invariant: :func:`convert` returns an array of exactly ``len(values)`` rows and the indices whose text does not
convert (those rows are null in the array), so the caller can dead-letter exactly them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BOOL, _BYTEA, _INT8, _INT2, _INT4, _OID = 16, 17, 20, 21, 23, 26
_FLOAT4, _FLOAT8, _DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ, _NUMERIC = 700, 701, 1082, 1083, 1114, 1184, 1700

_SIMPLE: dict[int, pa.DataType] = {
    _BOOL: pa.bool_(), _BYTEA: pa.binary(), _INT2: pa.int16(), _INT4: pa.int32(), _INT8: pa.int64(),
    _OID: pa.int64(), _FLOAT4: pa.float32(), _FLOAT8: pa.float64(), _DATE: pa.date32(), _TIME: pa.time64("us"),
    _TIMESTAMP: pa.timestamp("us"), _TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
}


def arrow_type(type_oid: int, typmod: int) -> pa.DataType:
    """The Arrow type that column values of PostgreSQL type ``type_oid`` (with ``typmod``) become."""
    if type_oid in _SIMPLE:
        return _SIMPLE[type_oid]
    if type_oid == _NUMERIC and typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        if 1 <= precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
    return pa.string()


def convert(values: Sequence[bytes | None] | pa.Array, kind: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """``values`` (text bytes or ``None``, or a binary/string array) as an array of ``kind``, and
    ``{row: error}`` for those that do not convert (null in the array)."""
    raw = values.cast(pa.binary()) if isinstance(values, pa.Array) else pa.array(values, pa.binary())
    try:
        return _convert(raw, kind), {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        first_error = str(exc)
    bad: dict[int, str] = {}
    if isinstance(values, pa.Array):
        values = raw.to_pylist()
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            _convert(pa.array([value], pa.binary()), kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            bad[i] = f"{_shown(value)} is not a valid {kind}: {exc}"
    if not bad:  # the batch failed but no single value does: report the batch's error on every row
        return pa.nulls(len(values), kind), {i: first_error for i, v in enumerate(values) if v is not None}
    mask = np.zeros(len(values), dtype=bool)
    mask[list(bad)] = True
    cleaned = pc.if_else(pa.array(mask), pa.nulls(len(values), pa.binary()), raw)
    return _convert(cleaned, kind), bad


def _shown(value: bytes) -> str:
    text = value[:40].decode("utf-8", "replace")
    return repr(text + ("..." if len(value) > 40 else ""))


def _convert(raw: pa.Array, kind: pa.DataType) -> pa.Array:
    if pa.types.is_binary(kind):
        return _bytea(raw)
    text = raw.cast(pa.string())  # validates UTF-8
    if pa.types.is_string(kind):
        return text
    if pa.types.is_boolean(kind):
        ok = pc.is_in(text, value_set=pa.array(["t", "f"]))
        if not pc.all(pc.or_kleene(ok, pc.is_null(text))).as_py():
            raise ValueError("a bool is 't' or 'f'")
        return pc.equal(text, "t")
    if pa.types.is_time(kind):
        return pc.binary_join_element_wise("1970-01-01 ", text, "").cast(pa.timestamp("us")).cast(kind)
    return text.cast(kind)


def _bytea(raw: pa.Array) -> pa.Array:
    """``bytea_output = hex`` text (``\\x0102``) to bytes."""
    out: list[bytes | None] = []
    for value in raw.to_pylist():
        if value is None:
            out.append(None)
        elif value[:2] != b"\\x":
            raise ValueError("bytea text must start with \\x (bytea_output = 'hex')")
        else:
            out.append(bytes.fromhex(value[2:].decode("ascii")))
    return pa.array(out, pa.binary())
