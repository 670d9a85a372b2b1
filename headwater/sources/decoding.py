"""Decoding payloads (Kafka values, HTTP bodies, webhook posts, Kinesis records) into Arrow rows, with failures
kept per record instead of failing the batch.

A decoder turns a list of payloads into one batch of the good ones (in input order) and a list of failures by
index; the connector adds its own columns (key, partition, offset, timestamp) for the good rows with
:meth:`Decoded.take` and turns each failure into a :class:`~headwater.core.dead_letters.DeadLetter` with its
position.

* :class:`JsonDecoder` parses the whole list in one ``pyarrow.json`` call over one buffer (no per-record Python
  loop on the good path): payloads are checked for UTF-8 and joined by newlines in Arrow, raw newlines inside a
  payload (pretty-printed JSON) become spaces first. When the batch fails to parse, it is split in halves until
  the failing records are found (``O(bad · log n)`` parses), so one bad record costs little and the good ones
  around it are kept. A record missing a non-nullable field fails as ``missing_field``.
* :class:`RawDecoder` keeps the bytes (a ``value`` binary column).
* :class:`AvroDecoder` reads schemaless Avro records of a given writer schema (fastavro, one record at a time).

The Avro → Arrow schema mapping lives in :mod:`headwater.core.avro` (the Kafka sink encodes with it too).

Invariant: ``len(decoded.good) + len(decoded.failures) == len(payloads)``, each index in exactly one of them.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from headwater.core.avro import arrow_schema_of_avro
from headwater.core.dead_letters import DeadLetterReason
from headwater.errors import ConfigError

DEFAULT_MAX_RECORD_BYTES = 1 << 20  # 1 MiB: larger payloads are dead-lettered as oversize


@dataclass(frozen=True)
class DecodeFailure:
    index: int
    reason: DeadLetterReason
    error: str


@dataclass
class Decoded:
    """The good rows of a list of payloads (``batch``, row ``i`` is payload ``good[i]``) and the failures."""

    batch: pa.RecordBatch
    good: np.ndarray  # int64 indices into the payloads, ascending
    failures: list[DecodeFailure] = field(default_factory=list)

    def take(self, values: pa.Array) -> pa.Array:
        """``values`` (one per payload) restricted to the good rows, aligned with ``batch``."""
        if len(self.good) == len(values):
            return values
        return values.take(pa.array(self.good, pa.int64()))


class PayloadDecoder(ABC):
    """Decodes payloads into rows of :attr:`schema`; picklable configuration only."""

    schema: pa.Schema

    @abstractmethod
    def decode(self, payloads: Sequence[bytes]) -> Decoded:
        """Decode ``payloads`` (see the module docstring for the invariant)."""


def _checked_size(
    payloads: Sequence[bytes], max_record_bytes: int,
) -> tuple[pa.BinaryArray, np.ndarray, list[DecodeFailure]]:
    """The payloads within ``max_record_bytes`` as one Arrow array, their indices, and the oversize failures."""
    array = pa.array(payloads, pa.binary())
    sizes = pc.binary_length(array).to_numpy(zero_copy_only=False)
    fits = sizes <= max_record_bytes
    failures = [
        DecodeFailure(int(i), DeadLetterReason.OVERSIZE, f"payload of {int(sizes[i]):,} bytes exceeds max_record_bytes "
                      f"({max_record_bytes:,})")
        for i in np.flatnonzero(~fits)
    ]
    if not failures:
        return array, np.arange(len(payloads), dtype=np.int64), failures
    return array.filter(pa.array(fits)), np.flatnonzero(fits).astype(np.int64), failures


class RawDecoder(PayloadDecoder):
    """The payload bytes as they are, in a ``value`` binary column (or the name given)."""

    def __init__(self, column: str = "value", max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.schema = pa.schema([pa.field(column, pa.binary())])
        self.max_record_bytes = max_record_bytes

    def decode(self, payloads: Sequence[bytes]) -> Decoded:
        kept, keep, failures = _checked_size(payloads, self.max_record_bytes)
        return Decoded(pa.record_batch([kept], schema=self.schema), keep, failures)


class JsonDecoder(PayloadDecoder):
    """JSON objects into rows of ``schema`` (fields not in the schema are ignored; absent ones are null, which
    a non-nullable field refuses)."""

    def __init__(self, schema: pa.Schema, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        if not isinstance(schema, pa.Schema) or len(schema) == 0:
            raise ConfigError("format='json' needs schema=pa.schema([...]) naming the fields to read "
                              "(or use format='raw' to get the payload bytes)")
        if max_record_bytes <= 0:
            raise ConfigError(f"max_record_bytes must be positive, not {max_record_bytes}")
        self.schema = schema
        self.max_record_bytes = max_record_bytes
        self._parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        self._required = [f.name for f in schema if not f.nullable]

    def decode(self, payloads: Sequence[bytes]) -> Decoded:
        array, keep, failures = _checked_size(payloads, self.max_record_bytes)
        texts, bad_utf8 = self._as_text(array)
        failures += [DecodeFailure(int(keep[i]), DeadLetterReason.BAD_ENCODING, "payload is not valid UTF-8")
                     for i in bad_utf8]
        if bad_utf8:
            keep = np.delete(keep, bad_utf8)
        texts = pc.replace_substring(pc.replace_substring(texts, "\n", " "), "\r", " ")
        # An empty payload parses to no row at all; refused up front, every payload yields at least one row, so a
        # parse with one row per payload proves each payload held exactly one object.
        blank = np.flatnonzero(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).to_numpy(zero_copy_only=False))
        if len(blank):
            failures += [DecodeFailure(int(keep[i]), DeadLetterReason.BAD_FORMAT, "empty payload") for i in blank]
            ok = np.setdiff1d(np.arange(len(keep)), blank)
            keep = keep[ok]
            texts = texts.take(pa.array(ok, pa.int64()))
        # Only a payload that opens an object goes to Arrow's reader: pyarrow 26 crashes the process (SIGSEGV) on a
        # batch whose first value is a bare ``null``, and reads a later bare ``null`` as an all-null row. Anything
        # else is classified on its own (not valid JSON, or JSON but not an object).
        opens_object = pc.starts_with(pc.utf8_ltrim(texts, characters=" \t"), "{").to_numpy(zero_copy_only=False)
        if not opens_object.all():
            for i in np.flatnonzero(~opens_object):
                failures.append(self._classify(int(keep[i]), texts[int(i)].as_py(), "not a JSON object"))
            keep = keep[opens_object]
            texts = texts.filter(pa.array(opens_object))
        tables: list[pa.Table] = []
        good: list[int] = []
        self._parse_range(texts, keep, 0, len(keep), tables, good, failures)
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        good_idx = np.asarray(good, dtype=np.int64)
        if self._required and table.num_rows:
            missing = np.zeros(table.num_rows, dtype=bool)
            for name in self._required:
                missing |= table.column(name).is_null().to_numpy(zero_copy_only=False)
            if missing.any():
                for row in np.flatnonzero(missing):
                    absent = [n for n in self._required if table.column(n)[int(row)].as_py() is None]
                    failures.append(DecodeFailure(int(good_idx[row]), DeadLetterReason.MISSING_FIELD,
                                                  f"required field(s) {', '.join(map(repr, absent))} missing or null"))
                table = table.filter(pa.array(~missing))
                good_idx = good_idx[~missing]
        batches = table.cast(self.schema).combine_chunks().to_batches()
        out = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=self.schema)
        failures.sort(key=lambda f: f.index)
        return Decoded(out, good_idx, failures)

    @staticmethod
    def _as_text(array: pa.Array) -> tuple[pa.Array, list[int]]:
        try:
            return array.cast(pa.string()), []
        except pa.ArrowInvalid:
            bad: list[int] = []
            for i, value in enumerate(array.to_pylist()):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    bad.append(i)
            ok = np.setdiff1d(np.arange(len(array)), np.asarray(bad, dtype=np.int64))
            return array.take(pa.array(ok, pa.int64())).cast(pa.string()), bad

    def _parse_range(self, texts: pa.Array, keep: np.ndarray, lo: int, hi: int, tables: list[pa.Table],
                     good: list[int], failures: list[DecodeFailure]) -> None:
        if lo >= hi:
            return
        count = hi - lo
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, count], pa.int32()), texts.slice(lo, count)), "\n")
        try:
            table = pajson.read_json(pa.BufferReader(joined[0].as_buffer()), parse_options=self._parse)
            error = None if table.num_rows == count else f"expected one JSON object per payload, got {table.num_rows}"
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            table, error = None, str(exc)
        if error is None and table is not None:
            tables.append(table)
            good.extend(keep[lo:hi].tolist())
            return
        if count == 1:
            failures.append(self._classify(int(keep[lo]), texts[lo].as_py(), error or "unparseable"))
            return
        mid = lo + count // 2
        self._parse_range(texts, keep, lo, mid, tables, good, failures)
        self._parse_range(texts, keep, mid, hi, tables, good, failures)

    @staticmethod
    def _classify(index: int, text: str, arrow_error: str) -> DecodeFailure:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return DecodeFailure(index, DeadLetterReason.BAD_FORMAT, f"not valid JSON: {exc}")
        if not isinstance(value, dict):
            kind = ("null" if value is None else "boolean" if isinstance(value, bool) else "array"
                    if isinstance(value, list) else "string" if isinstance(value, str) else "number")
            return DecodeFailure(index, DeadLetterReason.NOT_A_RECORD, f"a JSON {kind}, not an object")
        message = arrow_error.removeprefix("JSON parse error: ")
        if "required field" in message:
            return DecodeFailure(index, DeadLetterReason.MISSING_FIELD, message)
        return DecodeFailure(index, DeadLetterReason.WRONG_TYPE, message)


class AvroDecoder(PayloadDecoder):
    """Schemaless Avro records of ``avro_schema`` (a dict, the writer's schema) into rows of ``schema`` (derived
    from the Avro record's fields when not given). fastavro decodes one record at a time (C-accelerated): there is
    no bulk Avro reader for bare records."""

    def __init__(self, avro_schema: dict[str, Any], schema: pa.Schema | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        import fastavro

        try:
            self._parsed = fastavro.parse_schema(avro_schema)
        except Exception as exc:  # noqa: BLE001 - fastavro raises several types for a bad schema
            raise ConfigError(f"avro_schema is not a valid Avro schema: {exc}") from None
        if avro_schema.get("type") != "record":
            raise ConfigError("avro_schema must be an Avro record schema ({'type': 'record', 'fields': [...]})")
        self.avro_schema = avro_schema
        self.schema = schema if schema is not None else arrow_schema_of_avro(avro_schema)
        self.max_record_bytes = max_record_bytes

    def decode(self, payloads: Sequence[bytes]) -> Decoded:
        import fastavro

        _, keep, failures = _checked_size(payloads, self.max_record_bytes)
        rows: list[dict[str, Any]] = []
        good: list[int] = []
        for i in keep.tolist():
            try:
                stream = io.BytesIO(payloads[i])
                row = fastavro.schemaless_reader(stream, self._parsed, None)
                if stream.tell() != len(payloads[i]):
                    raise ValueError(f"{len(payloads[i]) - stream.tell()} bytes left after the record")
            except Exception as exc:  # noqa: BLE001 - any decoding failure is this record's
                failures.append(DecodeFailure(i, DeadLetterReason.BAD_FORMAT, f"not an Avro record of the schema: {exc}"))
                continue
            rows.append(row)  # type: ignore[arg-type]  # a record schema decodes to a dict
            good.append(i)
        try:
            batch = pa.RecordBatch.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            batch_rows, kept = [], []
            for row, i in zip(rows, good):
                try:
                    pa.RecordBatch.from_pylist([row], schema=self.schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                    failures.append(DecodeFailure(i, DeadLetterReason.WRONG_TYPE, str(exc)))
                    continue
                batch_rows.append(row)
                kept.append(i)
            batch, good = pa.RecordBatch.from_pylist(batch_rows, schema=self.schema), kept
        failures.sort(key=lambda f: f.index)
        return Decoded(batch, np.asarray(good, dtype=np.int64), failures)
