"""Dead letters: input a source could not turn into rows, kept with the reason instead of stopping the job.

A source partition that meets a record it cannot decode or convert (bad JSON, bad UTF-8, a wrong type, a missing
required field, an oversize payload) keeps it as a :class:`DeadLetter` and hands it over from
``SourcePartition.take_dead_letters()``; the runtime turns those into rows of :data:`DEAD_LETTER_SCHEMA` on the
source step's ``"dead_letters"`` port (:data:`headwater.core.ports.DEAD_LETTER_PORT`), which the DSL reads with
``stream.dead_letters()`` and any sink can store. ``headwater dlq replay`` feeds stored dead letters back into a
(fixed) pipeline.

Invariants:

* A dead letter is covered by the partition's position like a good record: the runtime takes dead letters right
  after each ``next_batch()`` and emits them before the next barrier, so a restored job neither repeats nor
  loses one.
* ``payload`` is the record's bytes exactly as the source received them (Kafka value, HTTP body, CDC message), so a
  replay can decode them again; ``position`` is the record's own position as JSON (e.g. a Kafka offset), for
  humans and for replay bookkeeping.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence

import pyarrow as pa

from headwater.core import plain_data
from headwater.core.plain_data import PlainData


class DeadLetterReason(StrEnum):
    """Why a record became a dead letter (the ``reason`` column; ``error`` holds the details)."""

    BAD_ENCODING = "bad_encoding"  # not valid UTF-8 where text was expected
    BAD_FORMAT = "bad_format"  # not valid JSON / Avro / the declared format
    WRONG_TYPE = "wrong_type"  # a field's value does not convert to the schema's type
    MISSING_FIELD = "missing_field"  # a required (non-nullable) field is absent or null
    NOT_A_RECORD = "not_a_record"  # valid JSON, but not an object
    OVERSIZE = "oversize"  # larger than the source's max_record_bytes
    UNSUPPORTED = "unsupported"  # a change the source cannot represent (e.g. a CDC schema change)


@dataclass(frozen=True)
class DeadLetter:
    """One record a source could not convert.

    ``partition`` is the source partition's name, ``position`` the record's own position (plain data, written as
    JSON), ``event_time_ms`` the time the source attached to it, if any (e.g. a Kafka timestamp)."""

    payload: bytes
    reason: DeadLetterReason
    error: str
    partition: str
    position: PlainData = None
    key: bytes | None = None
    event_time_ms: int | None = None


DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("payload", pa.binary()),
    pa.field("key", pa.binary()),
    pa.field("source_step", pa.string(), nullable=False),
    pa.field("partition", pa.string(), nullable=False),
    pa.field("position", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
    pa.field("event_time", pa.timestamp("ms", tz="UTC")),
    pa.field("dead_lettered_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])
"""The columns of every dead-letter stream: the raw ``payload`` and ``key``, where it came from (``source_step``,
``partition``, ``position`` as tagged JSON of :mod:`headwater.core.plain_data`), why (``reason``, one of
:class:`DeadLetterReason`, and ``error``), the record's ``event_time`` if known and when it was dead-lettered."""


def encode_position(position: PlainData) -> str:
    """A dead letter's position as the JSON text of the ``position`` column."""
    return json.dumps(plain_data.encode(position), separators=(",", ":"), sort_keys=True)


def decode_position(text: str | None) -> PlainData:
    """The inverse of :func:`encode_position` (``None`` stays ``None``)."""
    return None if text is None else plain_data.decode(json.loads(text))


def dead_letter_batch(source_step: str, letters: Sequence[DeadLetter], now_ms: int | None = None) -> pa.RecordBatch:
    """The rows of ``letters`` of step ``source_step`` as one batch of :data:`DEAD_LETTER_SCHEMA`."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    columns = [
        pa.array([d.payload for d in letters], pa.binary()),
        pa.array([d.key for d in letters], pa.binary()),
        pa.array([source_step] * len(letters), pa.string()),
        pa.array([d.partition for d in letters], pa.string()),
        pa.array([encode_position(d.position) for d in letters], pa.string()),
        pa.array([d.reason.value for d in letters], pa.string()),
        pa.array([d.error for d in letters], pa.string()),
        pa.array([d.event_time_ms for d in letters], pa.timestamp("ms", tz="UTC")),
        pa.array([stamp] * len(letters), pa.timestamp("ms", tz="UTC")),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=DEAD_LETTER_SCHEMA)
