"""The encode side of the Kafka formats: what the sink writes, the source's decoders read back as the same rows;
schemas that cannot be written fail at build time with what to fix."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.errors import ConfigError
from headwater.sinks.encoding import AvroEncoder, JsonEncoder, RawEncoder, check_key_column, encode_keys
from headwater.sources.decoding import AvroDecoder, JsonDecoder, RawDecoder

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("ok", pa.bool_()),
                    ("at", pa.timestamp("ms", tz="UTC"))])

AVRO = {"type": "record", "name": "Order", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": ["null", "string"]},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}


def rows_batch() -> pa.RecordBatch:
    at = datetime(2024, 3, 1, 12, 0, 0, 125000, tzinfo=UTC)
    return pa.record_batch([
        pa.array([1, None, -(2**63)], pa.int64()),
        pa.array(['quote " backslash \\ newline \n tab \t', "ünïcode ✓", None]),
        pa.array([1.5, 1e-7, None]),
        pa.array([True, False, None]),
        pa.array([at, at, None], pa.timestamp("ms", tz="UTC")),
    ], schema=SCHEMA)


def test_json_values_decode_to_the_same_rows() -> None:
    batch = rows_batch()
    encoder = JsonEncoder()
    encoder.check(batch.schema, None)
    values = encoder.encode(batch).to_pylist()
    assert all(isinstance(json.loads(v), dict) for v in values)
    decoded = JsonDecoder(SCHEMA).decode(values)
    assert not decoded.failures
    assert decoded.batch.to_pylist() == batch.to_pylist()


def test_json_writes_non_finite_floats_as_null_and_other_types_through_json_dumps() -> None:
    batch = pa.record_batch({"x": pa.array([float("nan"), float("inf"), 2.0]),
                             "d": pa.array([Decimal("1.25"), None, Decimal("-3")], pa.decimal128(5, 2)),
                             "raw": pa.array([b"\x00\x01", None, b""]), "tags": pa.array([["a"], [], None]),
                             "ctl": pa.array(["bell\x07", "ok", None])})
    values = [json.loads(v) for v in JsonEncoder().encode(batch).to_pylist()]
    assert [v["x"] for v in values] == [None, None, 2.0]
    assert [v["d"] for v in values] == ["1.25", None, "-3.00"]
    assert [v["raw"] for v in values] == ["AAE=", None, ""]
    assert [v["tags"] for v in values] == [["a"], [], None]
    assert [v["ctl"] for v in values] == ["bell\x07", "ok", None]
    days = pa.record_batch({"day": pa.array([date(2024, 3, 1), None], pa.date32())})
    assert [json.loads(v) for v in JsonEncoder().encode(days).to_pylist()] == [{"day": "2024-03-01"}, {"day": None}]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), st.one_of(st.none(), st.text()),
                          st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))), max_size=30))
def test_json_round_trip_of_any_ints_texts_and_floats(rows: list[tuple[int | None, str | None, float | None]]) -> None:
    schema = pa.schema([("i", pa.int64()), ("s", pa.string()), ("f", pa.float64())])
    batch = pa.RecordBatch.from_pylist([{"i": i, "s": s, "f": f} for i, s, f in rows], schema=schema)
    values = JsonEncoder().encode(batch).to_pylist()
    assert [json.loads(v) for v in values] == batch.to_pylist()
    decoded = JsonDecoder(schema).decode(values)
    assert decoded.batch.to_pylist() == batch.to_pylist()


def test_avro_values_decode_with_the_same_schema() -> None:
    at = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    batch = pa.record_batch({"id": [1, 2], "name": ["a", None], "at": pa.array([at, at], pa.timestamp("ms", tz="UTC")),
                             "extra": ["not", "written"]})
    encoder = AvroEncoder(AVRO)
    encoder.check(batch.schema, None)
    decoded = AvroDecoder(AVRO).decode(encoder.encode(batch).to_pylist())
    assert not decoded.failures
    assert decoded.batch.to_pylist() == batch.select(["id", "name", "at"]).to_pylist()


def test_avro_refuses_missing_fields_and_wrong_types_at_build_time_and_bad_values_when_encoding() -> None:
    encoder = AvroEncoder(AVRO)
    with pytest.raises(ConfigError, match="Avro field 'at'.*not in the input"):
        encoder.check(pa.schema([("id", pa.int64())]), None)
    with pytest.raises(ConfigError, match="column 'id' is string"):
        encoder.check(pa.schema([("id", pa.string()), ("at", pa.timestamp("ms", tz="UTC"))]), None)
    encoder.check(pa.schema([("id", pa.int32()), ("at", pa.timestamp("ms", tz="UTC"))]), None)  # name is nullable
    with pytest.raises(ConfigError, match="column 'id' is int64 but the Avro schema wants int32"):
        AvroEncoder({"type": "record", "name": "S", "fields": [{"name": "id", "type": "int"}]}).check(
            pa.schema([("id", pa.int64())]), None)
    strict = AvroEncoder({"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]})
    strict.check(pa.schema([("s", pa.string())]), None)
    with pytest.raises(ValueError, match="row 1"):
        strict.encode(pa.record_batch({"s": pa.array(["a", None])}))  # null in a field that is not nullable
    with pytest.raises(ConfigError, match="not a valid Avro schema"):
        AvroEncoder({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]})


def test_raw_writes_one_binary_or_string_column() -> None:
    batch = pa.record_batch({"value": pa.array(["héllo", None]), "other": [1, 2]})
    encoder = RawEncoder()
    encoder.check(batch.schema, None)
    values = encoder.encode(batch)
    assert values.to_pylist() == ["héllo".encode(), b""]
    assert RawDecoder().decode(values.to_pylist()).batch.column(0).to_pylist() == ["héllo".encode(), b""]
    with pytest.raises(ConfigError, match="no column 'payload'"):
        RawEncoder("payload").check(batch.schema, None)
    with pytest.raises(ConfigError, match="not binary or a string"):
        RawEncoder("other").check(batch.schema, None)


def test_keys_from_binary_string_and_integer_columns_and_refused_types() -> None:
    batch = pa.record_batch({"b": pa.array([b"\x01", None]), "s": ["k1", "k2"], "i": pa.array([7, -1], pa.int32()),
                             "f": [1.0, 2.0]})
    assert encode_keys(batch, "b").to_pylist() == [b"\x01", None]
    assert encode_keys(batch, "s").to_pylist() == [b"k1", b"k2"]
    assert encode_keys(batch, "i").to_pylist() == [b"7", b"-1"]
    check_key_column(batch.schema, "s", "KafkaSink('t')")
    with pytest.raises(ConfigError, match="key column 'nope' is not in the input"):
        check_key_column(batch.schema, "nope", "KafkaSink('t')")
    with pytest.raises(ConfigError, match="key column 'f' is double"):
        check_key_column(batch.schema, "f", "KafkaSink('t')")


def test_json_refuses_types_without_a_json_form() -> None:
    with pytest.raises(ConfigError, match="column 'span' of type month_day_nano_interval"):
        JsonEncoder().check(pa.schema([("span", pa.month_day_nano_interval())]), None)
