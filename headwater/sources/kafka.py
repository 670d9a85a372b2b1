"""Kafka source: one source partition per topic partition, offsets in checkpoints, values decoded in bulk.

Properties: unbounded (``bounded=True`` reads up to the end offsets seen when the job is planned, then ends),
replayable (a partition rebuilt from an offset reads the same records again), exactly-once with the engine's
checkpoints: the position of a partition is the *next offset to read*, recorded at each barrier and restored on
recovery. The client is confluent-kafka (librdkafka; docs/connectors/kafka.md says why).

Invariants:

* Partitions are assigned by the engine (``Consumer.assign``; no consumer-group membership, no rebalancing):
  partition ``<topic>/<n>`` of :meth:`KafkaSource.list_parts` is read by exactly one subtask.
* :meth:`KafkaPartition.next_batch` never blocks: ``consume(timeout=0)`` returns what librdkafka has fetched in
  the background; nothing fetched means ``None`` and a short back-off (:meth:`KafkaPartition.next_awake`).
* Everything emitted (good rows and dead letters) lies below the position's ``offset``
  (:meth:`KafkaPartition.snapshot`, a :class:`KafkaPosition` as plain data); nothing at or above it was emitted.
  A bounded source's position also carries its ``end``, fixed when the job first planned it, so a backfill resumed
  from a checkpoint (by another run, after more records arrived) ends where the uninterrupted run would have.
* A checkpointed offset that the broker no longer holds (retention deleted it while the job was down) is an error
  naming the partition and the offsets, never a silent jump (``auto.offset.reset=error``): records would be lost. Control records of transactions (offsets never delivered) are skipped by moving the
  position to the end offset the client reports at end of partition.
* Consumer-group offsets are committed only in :meth:`KafkaPartition.on_checkpoint_complete` (monitoring: Kafka
  tools show the group's lag); the engine never reads them back — positions live in checkpoints.
* Values are decoded per batch by :mod:`headwater.sources.decoding` (one ``pyarrow.json`` parse for JSON); a
  value that does not decode becomes a dead letter with its offset as position; the job goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import pyarrow as pa

from headwater.clients.kafka import KafkaClientSettings
from headwater.core.dead_letters import DeadLetter, DeadLetterReason, decode_position
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourceLag, SourcePartition
from headwater.sources.decoding import (
    DEFAULT_MAX_RECORD_BYTES,
    AvroDecoder,
    Decoded,
    JsonDecoder,
    PayloadDecoder,
    RawDecoder,
)

log = logging.getLogger(__name__)

Format = Literal["json", "avro", "raw"]

#: Kafka metadata columns a source can add to the decoded value columns
METADATA_COLUMNS: dict[str, pa.DataType] = {
    "key": pa.binary(),
    "partition": pa.int32(),
    "offset": pa.int64(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "headers": pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())])),
}
DEFAULT_METADATA = ("key", "partition", "offset", "timestamp")


@dataclass(frozen=True)
class KafkaPosition:
    """Where a partition resumes: ``offset``, the next offset to read (everything below it was emitted), and for a
    bounded source ``end``, the offset it stops before. Stored in checkpoints as ``{"offset": n[, "end": e]}``."""

    offset: int
    end: int | None = None

    def to_plain(self) -> dict[str, int]:
        return {"offset": self.offset} if self.end is None else {"offset": self.offset, "end": self.end}

    @classmethod
    def from_plain(cls, state: PlainData, where: str) -> KafkaPosition:
        """The position ``state`` stores; a bare int is an offset (checkpoints of earlier versions)."""
        if isinstance(state, int) and not isinstance(state, bool) and state >= 0:
            return cls(state)
        if isinstance(state, dict) and set(state) <= {"offset", "end"} and "offset" in state:
            offset, end = state["offset"], state.get("end")
            if (isinstance(offset, int) and offset >= 0 and (end is None or (isinstance(end, int) and end >= 0))):
                return cls(offset, end)
        raise SourceError(f"{where} has an invalid position {state!r} (expected {{'offset': n[, 'end': e]}})")


class KafkaSource(Source):
    """Read ``topic`` from the Kafka cluster at ``bootstrap_servers``.

    Args:
        format: ``"json"`` (objects decoded into ``schema``'s fields; others ignored), ``"avro"`` (schemaless
            Avro records of ``avro_schema``, a dict; Arrow ``schema`` derived from it unless given) or ``"raw"``
            (the value bytes in a ``value`` column).
        schema: the value columns for ``"json"`` (required) and ``"avro"`` (optional).
        metadata: Kafka fields added as columns: ``key`` (binary), ``partition``, ``offset``, ``timestamp``
            (the record's timestamp, usable as event time: ``flow.source(..., event_time="timestamp")``) and
            ``headers`` (opt-in: a list of key/value structs).
        bounded: read up to the end offsets seen when the job is planned, then end (backfills, tests).
        start: where a partition without a checkpointed position begins: ``"earliest"`` or ``"latest"``.
        group_id: the consumer group whose offsets are committed after each checkpoint, for monitoring (default
            ``headwater-<topic>``); ``""`` commits nothing.
        max_batch_records: the most records one batch holds.
        max_record_bytes: larger values are dead-lettered as oversize.
        poll_interval: back-off, in seconds, when nothing was fetched.
        client: further :class:`~headwater.clients.kafka.KafkaClientSettings` (security, credentials, options).
    """

    bounded = False
    replayable = True

    def __init__(
        self, bootstrap_servers: str, topic: str, format: Format = "json", schema: pa.Schema | None = None, *,
        avro_schema: dict[str, Any] | None = None, metadata: Sequence[str] = DEFAULT_METADATA,
        bounded: bool = False, start: Literal["earliest", "latest"] = "earliest", group_id: str | None = None,
        max_batch_records: int = 50_000, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        poll_interval: float = 0.01, **client: Any,
    ) -> None:
        self.settings = KafkaClientSettings.build(bootstrap_servers, **client)
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"KafkaSource: topic must be a non-empty string, not {topic!r}")
        if start not in ("earliest", "latest"):
            raise ConfigError(f"KafkaSource: start must be 'earliest' or 'latest', not {start!r}")
        if not isinstance(max_batch_records, int) or max_batch_records <= 0:
            raise ConfigError(f"KafkaSource: max_batch_records must be a positive int, not {max_batch_records!r}")
        if poll_interval < 0:
            raise ConfigError(f"KafkaSource: poll_interval must be >= 0 seconds, not {poll_interval!r}")
        unknown = [m for m in metadata if m not in METADATA_COLUMNS]
        if unknown:
            raise ConfigError(f"KafkaSource: unknown metadata column(s) {unknown}; choose from {list(METADATA_COLUMNS)}")
        self.topic = topic
        self.format = format
        self.decoder = _decoder(format, schema, avro_schema, max_record_bytes)
        clash = [m for m in metadata if self.decoder.schema.get_field_index(m) >= 0]
        if clash:
            raise ConfigError(f"KafkaSource: value field(s) {clash} clash with metadata columns of the same name; "
                              f"pass metadata=[...] without them")
        self.metadata = tuple(metadata)
        self.bounded = bounded
        self.start = start
        self.group_id = f"headwater-{topic}" if group_id is None else group_id
        self.max_batch_records = max_batch_records
        self.poll_interval = poll_interval
        self._schema = pa.schema([*self.decoder.schema, *(pa.field(m, METADATA_COLUMNS[m]) for m in self.metadata)])
        #: per partition, the end offset a bounded source reads up to (fixed when the partitions are listed)
        self.end_offsets: dict[str, int] = {}
        self._parts: list[str] | None = None

    def __repr__(self) -> str:
        return f"KafkaSource({self.settings.bootstrap_servers!r}, {self.topic!r}, format={self.format!r})"

    def schema(self) -> pa.Schema:
        return self._schema

    def list_parts(self) -> list[str]:
        """``<topic>/<n>`` for each partition of the topic (asks the cluster once; a bounded source also fixes
        its end offsets here)."""
        if self._parts is None:
            from confluent_kafka import Consumer, KafkaException, TopicPartition

            consumer = Consumer(self._consumer_config())
            try:
                metadata = consumer.list_topics(self.topic, timeout=15)
                topic = metadata.topics.get(self.topic)
                if topic is None or topic.error is not None or not topic.partitions:
                    reason = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
                    raise ConfigError(f"KafkaSource: topic {self.topic!r} is not readable at "
                                      f"{self.settings.bootstrap_servers} ({reason}); create it first")
                numbers = sorted(topic.partitions)
                if self.bounded:
                    for n in numbers:
                        _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, n), timeout=15)
                        self.end_offsets[_part_name(self.topic, n)] = int(high)
            except KafkaException as exc:
                raise ConfigError(f"KafkaSource: cannot read the metadata of {self.topic!r} at "
                                  f"{self.settings.bootstrap_servers}: {exc}") from None
            finally:
                consumer.close()
            self._parts = [_part_name(self.topic, n) for n in numbers]
        return list(self._parts)

    def build_part(self, part: str, resume_state: PlainData) -> KafkaPartition:
        position = None
        if resume_state is not None:
            position = KafkaPosition.from_plain(resume_state, f"KafkaSource {self.topic!r}: partition {part!r}")
        return KafkaPartition(self, part, position)

    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead-lettered values again, with their key, partition, offset and timestamp."""
        payloads = [p if p is not None else b"" for p in letters.column("payload").to_pylist()]
        partitions = letters.column("partition").to_pylist()
        offsets = [decode_position(p) for p in letters.column("position").to_pylist()]
        times = letters.column("event_time").cast(pa.int64()).to_pylist()
        keys = letters.column("key").to_pylist()
        return self.rows(payloads, keys, [_part_number(p) for p in partitions], offsets, times, None, partitions)

    def rows(
        self, values: list[bytes], keys: list[bytes | None], partitions: list[int], offsets: list[Any],
        times: list[int | None], headers: list[Any] | None, part_names: list[str],
    ) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Records' values decoded into rows of :meth:`schema` with their Kafka columns, and the dead letters."""
        decoded: Decoded = self.decoder.decode(values)
        dead = [
            DeadLetter(values[f.index], f.reason, f.error, part_names[f.index], offsets[f.index], keys[f.index],
                       times[f.index])
            for f in decoded.failures
        ]
        if decoded.batch.num_rows == 0:
            return None, dead
        by_name: dict[str, list[Any]] = {"key": keys, "partition": partitions, "offset": offsets, "timestamp": times,
                                         "headers": headers if headers is not None else [None] * len(values)}
        columns = list(decoded.batch.columns)
        columns += [decoded.take(pa.array(by_name[name], METADATA_COLUMNS[name])) for name in self.metadata]
        return pa.RecordBatch.from_arrays(columns, schema=self._schema), dead

    def _consumer_config(self) -> dict[str, Any]:
        return self.settings.client_config(**{
            "group.id": self.group_id or "headwater-unnamed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            # every partition is assigned at an explicit offset; only one the broker no longer holds would make
            # librdkafka "reset", and that would silently skip (or repeat) records: fail instead
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 50,
            # librdkafka waits this long before fetching again once its local queue is over its thresholds
            # (default 1000 ms): with the engine draining the queue every few ms, that pause was pure latency
            "fetch.queue.backoff.ms": 5,
            "queued.max.messages.kbytes": 32768,
        })


class KafkaPartition(SourcePartition):
    """One topic partition, read by one consumer assigned to it (see the module docstring)."""

    def __init__(self, source: KafkaSource, part: str, resume: KafkaPosition | None) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

        self.source = source
        self.part = part
        self.number = _part_number(part)
        self.end: int | None = None
        if source.bounded:
            self.end = resume.end if resume is not None and resume.end is not None else source.end_offsets.get(part)
        self._dead: list[DeadLetter] = []
        self._wake = 0.0
        self._committed: int | None = None
        self._tp = TopicPartition
        self._eof_code = KafkaError._PARTITION_EOF
        self._reset_code = KafkaError._AUTO_OFFSET_RESET
        self.consumer = Consumer(source._consumer_config())
        position = resume.offset if resume is not None else None
        if position is None:
            # A fresh partition pins its start offset now, so that a restore before any record resumes here too.
            try:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(source.topic, self.number), timeout=15)
            except KafkaException as exc:
                self.consumer.close()
                raise SourceError(f"KafkaSource {source.topic!r} partition {self.number}: cannot read its offsets: "
                                  f"{exc}") from None
            position = int(low) if source.start == "earliest" else int(high)
        if self.end is not None and position > self.end:
            position = self.end
        #: the next offset to read: everything below it was emitted (or was a control record)
        self.position: int = position
        self.consumer.assign([TopicPartition(source.topic, self.number, position)])

    def next_batch(self) -> pa.RecordBatch | None:
        if self.end is not None and self.position >= self.end:
            raise StopIteration
        messages = self.consumer.consume(num_messages=self.source.max_batch_records, timeout=0)
        if not messages:
            self._wake = time.monotonic() + self.source.poll_interval
            return None
        records: list[Any] = []  # of confluent_kafka.Message, typed Any: its stubs make every field optional
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
                continue
            if error.code() == self._eof_code:
                # at the end of what exists: skip control records of transactions by moving to the end offset
                eof = message.offset()
                if eof is not None and eof > self.position:
                    self.position = eof if self.end is None else min(eof, self.end)
                continue
            if error.code() == self._reset_code:
                raise SourceError(
                    f"KafkaSource {self.source.topic!r} partition {self.number}: offset {self.position} is no longer "
                    f"on the broker ({error.str()}); the records between it and the partition's earliest offset were "
                    "deleted (retention) before this job read them. To go on from what is left, start the job "
                    "without its checkpoint (a new checkpoint directory) or with a longer topic retention next time")
            if error.fatal() or not error.retriable():
                raise SourceError(f"KafkaSource {self.source.topic!r} partition {self.number}: {error.str()}")
            log.warning("Kafka %s partition %s: %s (retrying)", self.source.topic, self.number, error.str())
        if self.end is not None and records and records[-1].offset() >= self.end:
            records = [m for m in records if m.offset() < self.end]
            self.position = self.end  # everything below the end was fetched (gaps are control records)
        if not records:
            return None
        self.position = max(self.position, records[-1].offset() + 1)
        tombstones = [m for m in records if m.value() is None]
        if tombstones:  # a null value (a deletion marker of a compacted topic) is no record of any format
            self._dead += [DeadLetter(b"", DeadLetterReason.BAD_FORMAT, "null value (a tombstone)", self.part,
                                      m.offset(), m.key(), m.timestamp()[1] or None) for m in tombstones]
            records = [m for m in records if m.value() is not None]
            if not records:
                return None
        values = [m.value() for m in records]
        keys = [m.key() for m in records]
        offsets = [m.offset() for m in records]
        times = [ts if kind else None for kind, ts in (m.timestamp() for m in records)]
        headers = None
        if "headers" in self.source.metadata:
            headers = [[{"key": k, "value": v} for k, v in (m.headers() or [])] for m in records]
        names = [self.part] * len(records)
        batch, dead = self.source.rows(values, keys, [self.number] * len(records), offsets, times, headers, names)
        self._dead.extend(dead)
        return batch

    def next_awake(self) -> float | None:
        return self._wake

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def snapshot(self) -> PlainData:
        return KafkaPosition(self.position, self.end).to_plain()

    def on_checkpoint_complete(self, checkpoint_id: int, position: PlainData) -> None:
        if not self.source.group_id or position is None:
            return
        try:
            offset = KafkaPosition.from_plain(position, self.part).offset
        except SourceError:
            return
        if offset == self._committed:
            return
        try:
            self.consumer.commit(offsets=[self._tp(self.source.topic, self.number, offset)], asynchronous=True)
            self._committed = offset
        except Exception as exc:  # noqa: BLE001 - monitoring only: positions live in checkpoints
            log.info("Kafka %s partition %s: committing offset %s for monitoring failed: %s",
                     self.source.topic, self.number, offset, exc)

    def lag(self) -> SourceLag | None:
        try:
            _, high = self.consumer.get_watermark_offsets(self._tp(self.source.topic, self.number), cached=True)
        except Exception:  # noqa: BLE001 - no figure yet
            return None
        if high is None or high < 0:
            return None
        return SourceLag(records=int(high) - self.position)

    def close(self) -> None:
        self.consumer.close()


def _decoder(format: str, schema: pa.Schema | None, avro_schema: dict[str, Any] | None,
             max_record_bytes: int) -> PayloadDecoder:
    if format == "json":
        if schema is None:
            raise ConfigError("KafkaSource: format='json' needs schema=pa.schema([...]) naming the fields to read "
                              "(or use format='raw' to get the value bytes)")
        return JsonDecoder(schema, max_record_bytes)
    if format == "raw":
        if schema is not None:
            raise ConfigError("KafkaSource: format='raw' yields the value bytes in a 'value' column; drop schema=")
        return RawDecoder("value", max_record_bytes)
    if format == "avro":
        if avro_schema is None:
            raise ConfigError("KafkaSource: format='avro' needs avro_schema={...} (the writer's Avro schema as a dict)")
        return AvroDecoder(avro_schema, schema, max_record_bytes)
    raise ConfigError(f"KafkaSource: format must be 'json', 'avro' or 'raw', not {format!r}")


def _part_name(topic: str, number: int) -> str:
    return f"{topic}/{number}"


def _part_number(part: str) -> int:
    try:
        return int(part.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        raise SourceError(f"{part!r} is not a Kafka partition name (<topic>/<number>)") from None
