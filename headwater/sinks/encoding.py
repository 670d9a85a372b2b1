"""Encoding Arrow batches into Kafka record keys and values: the write side of :mod:`headwater.sources.decoding`.

* :class:`JsonEncoder` writes one JSON object per row with every column of the input. Columns of the common
  types are rendered by Arrow compute kernels, one column at a time, and the objects are assembled with
  ``binary_join_element_wise`` (no per-row Python on that path): integers and finite floats as numbers
  (NaN and infinities as ``null``: JSON has no such numbers), booleans, strings (escaped), timestamps as ISO 8601
  strings (``2024-03-01T12:00:00.000Z`` for UTC-aware ones), dates as ``YYYY-MM-DD``. Other types (decimals as
  strings, binary as base64, lists, structs, maps, durations) go through ``json.dumps`` per value of that
  column only. A string column holding control characters other than ``\\n``, ``\\r`` and ``\\t`` is escaped by
  ``json.dumps`` too. What :class:`~headwater.sources.decoding.JsonDecoder` reads back with the same schema is
  the same rows.
* :class:`AvroEncoder` writes schemaless Avro records of a given writer schema (fastavro, C-accelerated, one
  record at a time: Avro has no bulk writer for bare records) — what
  :class:`~headwater.sources.decoding.AvroDecoder` reads.
* :class:`RawEncoder` writes one binary or string column as it is (strings as UTF-8).
* :func:`encode_keys`: the record key from a column — binary as is, strings as UTF-8, integers as their decimal
  text; a null key is a record without key.

Every encoder checks an input schema at build time (:meth:`ValueEncoder.check`, raising
:class:`~headwater.errors.ConfigError` that says what to fix), so that :meth:`ValueEncoder.encode` only fails on
values (a long outside an Avro ``int``), never on types.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from base64 import b64encode
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.avro import arrow_schema_of_avro
from headwater.errors import ConfigError

__all__ = ["AvroEncoder", "JsonEncoder", "RawEncoder", "ValueEncoder", "check_key_column", "encode_keys"]


class ValueEncoder(ABC):
    """Turns batches into record values; picklable configuration only."""

    @abstractmethod
    def check(self, schema: pa.Schema, key: str | None) -> None:
        """Build time: raise :class:`ConfigError` unless batches of ``schema`` can be encoded."""

    @abstractmethod
    def encode(self, batch: pa.RecordBatch) -> pa.Array:
        """One binary value per row of ``batch`` (never null)."""


# -- keys -----------------------------------------------------------------------------------------------------------
def check_key_column(schema: pa.Schema, key: str | None, owner: str) -> None:
    if key is None:
        return
    if key not in schema.names:
        raise ConfigError(f"{owner}: key column {key!r} is not in the input (columns: {', '.join(schema.names)}); "
                          "name one of them, or key=None for records without key")
    kind = schema.field(key).type
    if not (_is_text_or_binary(kind) or pa.types.is_integer(kind)):
        raise ConfigError(f"{owner}: key column {key!r} is {kind}; a key must be binary, a string or an integer. "
                          "Cast it before the sink (e.g. .with_columns(k=hw.col('k').cast(pa.string())))")


def encode_keys(batch: pa.RecordBatch, key: str) -> pa.Array:
    """The key column as binary (nulls stay null: records without key)."""
    column = batch.column(key)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_integer(column.type):
        column = column.cast(pa.string())
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    return column.cast(pa.binary())


def _is_text_or_binary(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind))


# -- raw ------------------------------------------------------------------------------------------------------------
class RawEncoder(ValueEncoder):
    """The value is column ``column`` (binary or string); other input columns are not written."""

    def __init__(self, column: str = "value") -> None:
        self.column = column

    def check(self, schema: pa.Schema, key: str | None) -> None:
        if self.column not in schema.names:
            raise ConfigError(f"KafkaSink(format='raw'): the input has no column {self.column!r} to write as the value "
                              f"(columns: {', '.join(schema.names)}); pass value_column=... or rename one")
        kind = schema.field(self.column).type
        if not _is_text_or_binary(kind):
            raise ConfigError(f"KafkaSink(format='raw'): value column {self.column!r} is {kind}, not binary or a string; "
                              "cast it, or use format='json'")

    def encode(self, batch: pa.RecordBatch) -> pa.Array:
        column = batch.column(self.column)
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.large_binary())
        return column.cast(pa.binary()).fill_null(b"")


# -- json -----------------------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return b64encode(value).decode("ascii")
    raise TypeError(f"a {type(value).__name__} value has no JSON form")


def _python_json(column: pa.Array) -> pa.Array:
    return pa.array([json.dumps(v, default=_json_default, ensure_ascii=False, allow_nan=False)
                     if v is not None else "null" for v in _finite(column.to_pylist())], pa.string())


def _finite(values: list[Any]) -> list[Any]:
    return [None if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))) else v for v in values]


def _json_strings(column: pa.Array) -> pa.Array:
    """Strings as quoted JSON strings; control characters beyond \\n, \\r, \\t fall back to ``json.dumps``."""
    text = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
    if pc.any(pc.match_substring_regex(text, "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]")).as_py():
        return _python_json(text)
    for old, new in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = pc.replace_substring(text, old, new)
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_numbers(column: pa.Array) -> pa.Array:
    if pa.types.is_floating(column.type):
        finite = pc.is_finite(column)
        return pc.if_else(finite, column.cast(pa.string()), pa.scalar(None, pa.string()))
    return column.cast(pa.string())


def _json_timestamps(column: pa.Array) -> pa.Array:
    text = pc.replace_substring(column.cast(pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_column_kernel(kind: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return _json_numbers
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _json_strings
    if pa.types.is_timestamp(kind):
        return _json_timestamps
    if pa.types.is_date(kind):
        return lambda c: pc.binary_join_element_wise('"', c.cast(pa.string()), '"', "")
    return _python_json


def _has_json_form(kind: pa.DataType) -> bool:
    if pa.types.is_nested(kind):
        return all(_has_json_form(kind.field(i).type) for i in range(kind.num_fields))
    return (pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or _is_text_or_binary(kind) or pa.types.is_timestamp(kind)
            or pa.types.is_date(kind) or pa.types.is_time(kind) or pa.types.is_decimal(kind)
            or pa.types.is_duration(kind))


class JsonEncoder(ValueEncoder):
    """One JSON object per row, every input column a member (see the module docstring)."""

    def __init__(self) -> None:
        self._names: tuple[str, ...] | None = None
        self._prefixes: list[str] = []

    def check(self, schema: pa.Schema, key: str | None) -> None:
        for field in schema:
            kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
            if not _has_json_form(kind):
                raise ConfigError(f"KafkaSink(format='json'): column {field.name!r} of type {kind} has no JSON form; "
                                  "cast or drop it before the sink")

    def encode(self, batch: pa.RecordBatch) -> pa.Array:
        names = tuple(batch.schema.names)
        if names != self._names:
            self._names = names
            self._prefixes = [("{" if i == 0 else ",") + json.dumps(n, ensure_ascii=False) + ":"
                              for i, n in enumerate(names)]
        if batch.num_rows == 0:
            return pa.array([], pa.binary())
        if not names:
            return pa.array([b"{}"] * batch.num_rows, pa.binary())
        parts: list[Any] = []
        for prefix, column in zip(self._prefixes, batch.columns):
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            if pa.types.is_null(column.type):
                rendered = pa.array(["null"] * len(column), pa.string())
            else:
                rendered = _json_column_kernel(column.type)(column).fill_null("null")
            parts += [prefix, rendered]
        parts.append("}")
        return pc.binary_join_element_wise(*parts, "").cast(pa.binary())


# -- avro -----------------------------------------------------------------------------------------------------------
class AvroEncoder(ValueEncoder):
    """Schemaless Avro records of ``avro_schema`` (a record schema, as a dict); only its fields are written."""

    def __init__(self, avro_schema: dict[str, Any]) -> None:
        import fastavro

        if not isinstance(avro_schema, dict) or avro_schema.get("type") != "record":
            raise ConfigError("KafkaSink(format='avro'): avro_schema must be an Avro record schema "
                              "({'type': 'record', 'name': ..., 'fields': [...]})")
        try:
            self._parsed = fastavro.parse_schema(avro_schema)
        except Exception as exc:  # noqa: BLE001 - fastavro raises several types for a bad schema
            raise ConfigError(f"KafkaSink: avro_schema is not a valid Avro schema: {exc}") from None
        self.avro_schema = avro_schema
        self._fields = [f["name"] for f in avro_schema.get("fields", [])]

    def check(self, schema: pa.Schema, key: str | None) -> None:
        try:
            wanted = arrow_schema_of_avro(self.avro_schema)
        except ConfigError:
            wanted = None  # complex Avro types: values are checked when they are encoded
        for field in self.avro_schema.get("fields", []):
            name = field["name"]
            nullable = isinstance(field["type"], list) and "null" in field["type"]
            if name not in schema.names:
                if "default" in field or nullable:
                    continue
                raise ConfigError(f"KafkaSink(format='avro'): Avro field {name!r} (no default, not nullable) is not in "
                                  f"the input (columns: {', '.join(schema.names)}); add the column or a default")
            if wanted is None:
                continue
            want, have = wanted.field(name).type, schema.field(name).type
            if pa.types.is_dictionary(have):
                have = have.value_type
            if not _avro_compatible(want, have):
                raise ConfigError(f"KafkaSink(format='avro'): column {name!r} is {have} but the Avro schema wants "
                                  f"{want}; cast it before the sink")

    def encode(self, batch: pa.RecordBatch) -> pa.Array:
        import fastavro

        present = [n for n in self._fields if n in batch.schema.names]
        rows = batch.select(present).to_pylist()
        out: list[bytes] = []
        buffer = io.BytesIO()
        for i, row in enumerate(rows):
            buffer.seek(0)
            buffer.truncate()
            try:
                fastavro.schemaless_writer(buffer, self._parsed, row)
            except Exception as exc:  # noqa: BLE001 - fastavro raises ValueError, TypeError, OverflowError, ...
                raise ValueError(f"row {i} is not a record of the Avro schema: {exc}") from None
            out.append(buffer.getvalue())
        return pa.array(out, pa.binary())


def _avro_compatible(want: pa.DataType, have: pa.DataType) -> bool:
    if want.equals(have):
        return True
    families: tuple[Callable[[pa.DataType], bool], ...] = (
        pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_timestamp)
    for family in families:
        if family(want):
            if family is pa.types.is_integer and pa.types.is_integer(have):
                return bool(have.bit_width <= want.bit_width)
            if family is pa.types.is_floating:
                return pa.types.is_floating(have) or pa.types.is_integer(have)
            return bool(family(have))
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have)
    if pa.types.is_binary(want):
        return pa.types.is_binary(have) or pa.types.is_large_binary(have)
    return False
