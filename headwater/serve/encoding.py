"""Answers as bytes: JSON ``{"columns": [...], "rows": [[...]]}`` or an Arrow IPC stream.

JSON values: timestamps, dates and times as ISO 8601 strings, integral decimals as integers (others as floats),
binary as base64, NaN and infinities as ``null``; nested values as JSON arrays and objects.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def json_value(value: Any) -> Any:
    """``value`` as a JSON-ready Python value (see the module docstring)."""
    return json.loads(json.dumps(_clean(value), default=_default, allow_nan=False))


def _column(array: pa.ChunkedArray) -> list[Any]:
    values = array.to_pylist()
    kind = array.type
    if pa.types.is_floating(kind) or pa.types.is_nested(kind):
        values = [_clean(v) for v in values]
    return values


def to_json(table: pa.Table, truncated: bool = False) -> bytes:
    columns = [_column(c) for c in table.columns]
    rows = [list(r) for r in zip(*columns)] if columns else []
    document = {"columns": table.column_names, "rows": rows, "truncated": truncated}
    return json.dumps(document, default=_default, allow_nan=False, separators=(",", ":")).encode("utf-8")


def to_arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def wants_arrow(accept: str | None) -> bool:
    return bool(accept) and "application/vnd.apache.arrow.stream" in (accept or "")
