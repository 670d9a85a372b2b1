"""Payload decoders: good records all decoded in order, every bad one failed with its reason (hypothesis)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.core.dead_letters import DeadLetterReason
from headwater.errors import ConfigError
from headwater.sources.decoding import JsonDecoder, RawDecoder

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()),
                    pa.field("score", pa.float64())])


def _good(i: int, name: str) -> bytes:
    return json.dumps({"id": i, "name": name, "score": i / 2, "ignored": [1, 2]}).encode()


BAD = {
    b"{not json": DeadLetterReason.BAD_FORMAT,
    b'{"id": "seven"}': DeadLetterReason.WRONG_TYPE,
    b'{"id": 1.5}': DeadLetterReason.WRONG_TYPE,
    b'{"name": "no id"}': DeadLetterReason.MISSING_FIELD,
    b'{"id": null}': DeadLetterReason.MISSING_FIELD,
    b"[1, 2]": DeadLetterReason.NOT_A_RECORD,
    b"42": DeadLetterReason.NOT_A_RECORD,
    b"null": DeadLetterReason.NOT_A_RECORD,
    b"  null": DeadLetterReason.NOT_A_RECORD,
    b"true": DeadLetterReason.NOT_A_RECORD,
    b'"text"': DeadLetterReason.NOT_A_RECORD,
    b'{"id": 1} null': DeadLetterReason.BAD_FORMAT,
    b'{"id": 1, "name": "\xff\xfe"}': DeadLetterReason.BAD_ENCODING,
    b'{"id": 1}' + b" " * 5000: DeadLetterReason.OVERSIZE,
    b"": DeadLetterReason.BAD_FORMAT,
    b" \n ": DeadLetterReason.BAD_FORMAT,
    b'{"id": 1}{"id": 2}': DeadLetterReason.BAD_FORMAT,
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.tuples(st.just("good"), st.integers(-(2**62), 2**62), st.text(max_size=20)),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD)), st.just("")),
    st.tuples(st.just("junk"), st.binary(max_size=40), st.just("")),
), max_size=60))
def test_json_decoder_keeps_every_good_record_and_fails_every_bad_one(items: list[tuple[str, object, str]]) -> None:
    payloads: list[bytes] = []
    expected_good: dict[int, dict[str, object]] = {}
    expected_bad: dict[int, DeadLetterReason | None] = {}
    for index, (kind, value, name) in enumerate(items):
        if kind == "good":
            assert isinstance(value, int)
            payloads.append(_good(value, name))
            expected_good[index] = {"id": value, "name": name, "score": value / 2}
        elif kind == "bad":
            assert isinstance(value, bytes)
            payloads.append(value)
            expected_bad[index] = BAD[value]
        else:
            assert isinstance(value, bytes)
            payloads.append(value)
            try:
                obj = json.loads(value)
                valid = isinstance(obj, dict) and isinstance(obj.get("id"), int) and not isinstance(obj.get("id"), bool)
            except ValueError:
                valid = False
            if not valid:
                expected_bad[index] = None  # any reason
    decoded = JsonDecoder(SCHEMA, max_record_bytes=4000).decode(payloads)
    failed = {f.index: f for f in decoded.failures}
    assert set(decoded.good.tolist()).isdisjoint(failed)
    assert len(decoded.good) + len(failed) == len(payloads)
    assert decoded.batch.num_rows == len(decoded.good)
    assert decoded.batch.schema == SCHEMA
    for index, reason in expected_bad.items():
        assert index in failed, (payloads[index], decoded.batch.to_pylist())
        if reason is not None:
            assert failed[index].reason is reason, (payloads[index], failed[index])
        assert failed[index].error
    rows = dict(zip(decoded.good.tolist(), decoded.batch.to_pylist()))
    for index, row in expected_good.items():
        assert rows[index] == row


def test_take_aligns_connector_columns_with_the_good_rows() -> None:
    decoded = JsonDecoder(SCHEMA).decode([_good(1, "a"), b"bad", _good(3, "c")])
    offsets = decoded.take(pa.array([10, 11, 12], pa.int64()))
    assert offsets.to_pylist() == [10, 12]
    assert decoded.batch.column("id").to_pylist() == [1, 3]


@pytest.mark.parametrize("order", ["null first", "null later"])
def test_a_bare_null_is_not_a_record_even_when_every_field_is_nullable(order: str) -> None:
    # pyarrow 26's JSON reader kills the process on a batch that starts with a bare null, and reads a later one
    # as a row of nulls: neither may reach it.
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
    payloads = [b"null", b'{"id": 1}'] if order == "null first" else [b'{"id": 1}', b"null", b" null"]
    decoded = JsonDecoder(schema).decode(payloads)
    assert decoded.batch.to_pylist() == [{"id": 1, "name": None}]
    assert {f.reason for f in decoded.failures} == {DeadLetterReason.NOT_A_RECORD}
    assert all(f.error == "a JSON null, not an object" for f in decoded.failures)
    assert len(decoded.failures) == len(payloads) - 1


def test_pretty_printed_json_is_one_record() -> None:
    decoded = JsonDecoder(SCHEMA).decode([b'{\n  "id": 5,\r\n  "name": "x"\n}'])
    assert decoded.batch.to_pylist() == [{"id": 5, "name": "x", "score": None}]


def test_json_needs_a_schema() -> None:
    with pytest.raises(ConfigError, match="format='raw'"):
        JsonDecoder(pa.schema([]))


def test_raw_decoder_keeps_bytes_and_refuses_oversize() -> None:
    decoded = RawDecoder(max_record_bytes=4).decode([b"abc", b"toolong", b"\xff"])
    assert decoded.batch.column("value").to_pylist() == [b"abc", b"\xff"]
    assert [(f.index, f.reason) for f in decoded.failures] == [(1, DeadLetterReason.OVERSIZE)]
