"""Kafka sink: exactly-once into a topic, by staging each checkpoint's records durably and producing them in one
Kafka transaction at commit, together with a marker that makes a repeat a no-op.

Why not keep a transaction open from ``prepare`` to ``commit`` (as Flink's KafkaSink does)? After a crash the
driver commits the tokens of the restored checkpoint in *another process*, and Kafka cannot resume another
process's open transaction (the client exposes no way to adopt a producer id and epoch). So ``prepare`` only makes
the encoded records durable, and ``commit`` does the whole transaction, which any process can do.

Commit order, per subtask (names: ``<scoped>`` = ``<owner key>:<sink_id>``, ``<tid>`` =
``<transactional_id_prefix>.<scoped>.<subtask>``):

1. :meth:`KafkaSinkPartition.write` encodes each batch (keys and values, :mod:`headwater.sinks.encoding`),
   checks every record against ``max_record_bytes`` and appends it to an in-progress staging file
   (:mod:`headwater.sinks.kafka_staging`).
2. :meth:`KafkaSinkPartition.prepare` (checkpoint ``n``) closes, syncs and renames that file to
   ``prepared-<n>-<subtask>-<writer>.arrow``; the :class:`KafkaCommitToken` names it. Nothing is in Kafka yet.
3. :meth:`KafkaSinkPartition.commit`:

   a. a transactional producer with ``transactional.id = <tid>`` runs ``init_transactions`` (once per partition
      object). That fences every earlier producer of this id — a zombie subtask, a crashed attempt — and settles
      its open transaction (aborts it), so from here on this producer is the only one that can commit for
      the subtask;
   b. it reads the **marker**: the offset committed for consumer group ``<tid>`` on partition 0 of the topic; the
      offset is the last checkpoint committed for the subtask, its metadata the writer (partition object) that
      committed it;
   c. if the marker shows the token committed (same writer, checkpoint ≥ ``n``), it only deletes the staged file;
   d. else, in **one transaction**: it produces the staged records and writes the marker ``(n, writer)`` with
      ``send_offsets_to_transaction``; ``commit_transaction``; then deletes the staged file.

   A kill before (d)'s ``commit_transaction`` completes leaves no visible record (the next ``init_transactions``
   aborts the transaction); a kill after it leaves the marker, so the repeat is (c). A token whose staged file is
   gone is committed when the marker's checkpoint is ≥ ``n`` (the file is deleted only after the commit),
   else its records are lost and commit raises :class:`~headwater.errors.SinkError`.
4. :meth:`KafkaSinkPartition.abort` deletes this subtask's in-progress files (of any writer); prepared files are
   left for their commit or for :meth:`KafkaSink.clean_up` (driver, leases held), which deletes this owner's
   staged files that no token names.

Why the writer is in the marker: checkpoint ids start again at 1 in every run without checkpointing and in a
job whose checkpoint directory was emptied; "the marker's checkpoint ≥ n" alone would then skip their commits.
A staged file exists after its commit only until the committing process deletes it, and the next commit of that
subtask (by recovery) is of the same token, so "same writer and checkpoint ≥ n" recognises exactly the repeat.

Latency: records become visible only once their checkpoint completed and committed, so a record waits on
average half a checkpoint interval, plus the checkpoint, plus the commit (docs/connectors/kafka.md has figures).

Limits: one running job per ``(topic, sink_id)`` and owner (a second one's producer would fence the first's);
markers are consumer-group offsets and expire with ``offsets.retention.minutes`` (broker default 7 days) after
the last commit: a job that is down longer than that *and* was killed between a commit and the deletion of its
staged file would produce that checkpoint again on resume.
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.clients.kafka import KafkaClientSettings
from headwater.core import plain_data
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SinkError
from headwater.sinks.base import Sink, SinkOwner, SinkPartition
from headwater.sinks.encoding import AvroEncoder, JsonEncoder, RawEncoder, ValueEncoder, check_key_column, encode_keys
from headwater.sinks.kafka_staging import STAGED_SCHEMA, StagingArea, StagingWriter

log = logging.getLogger("headwater.sinks.kafka")

__all__ = ["KafkaCommitToken", "KafkaSink", "KafkaSinkPartition"]

Format = Literal["json", "avro", "raw"]

#: librdkafka's default ``message.max.bytes`` (the producer refuses larger records)
DEFAULT_MAX_RECORD_BYTES = 1_000_000
#: room for a record's framing inside the producer's ``message.max.bytes``
_RECORD_OVERHEAD = 512
_STAGING_DIR = "_kafka_sinks"
_RETRY_PAUSE = 0.2


@plain_data.register(name="headwater.KafkaCommitToken")
@dataclass(frozen=True)
class KafkaCommitToken:
    """What one ``prepare`` staged: ``records`` encoded records in the file ``staged`` (``""`` when none), to be
    produced to ``topic`` under the transactional id and marker of ``(sink_id, subtask)``."""

    sink_id: str  # scoped: "<owner key>:<sink_id>"
    subtask: int
    checkpoint_id: int
    writer: str
    topic: str
    staged: str
    records: int


class KafkaSink(Sink):
    """Write to ``topic`` of the Kafka cluster at ``bootstrap_servers``, exactly once (see the module docstring).

    Args:
        format: ``"json"`` (one object per row, every column; see :mod:`headwater.sinks.encoding`), ``"avro"``
            (schemaless records of ``avro_schema``, a record schema as a dict; only its fields are written) or
            ``"raw"`` (the bytes of ``value_column``, binary or string).
        key: the column whose value is the record key (binary, string as UTF-8, integer as decimal text; null:
            no key), or ``None`` (records without key). Keys are partitioned as the Java client does
            (``murmur2``), records without key spread over the partitions.
        sink_id: names the sink's transactional ids, markers and staging (default: the topic); two sinks of one
            job on one topic need distinct ids.
        staging_dir: where prepared records wait for their commit: a directory (or ``pyarrow.fs`` URI) that
            every process which may commit — the workers and the driver — can read. Default: inside the job's
            checkpoint directory (``<checkpoint dir>/_kafka_sinks``; a run without checkpointing stages in the
            system's temporary directory). A given ``staging_dir`` is owned (leased) by the sink.
        max_record_bytes: the largest key + value; a larger record fails the job with a ``SinkError`` naming the
            limit (the broker's and the topic's ``max.message.bytes`` must allow it too).
        transactional_id_prefix: prefix of the transactional ids and marker groups (for ACLs).
        transaction_timeout: seconds the broker keeps a transaction open before aborting it (a killed
            committer's transaction blocks ``read_committed`` readers at most this long, unless recovery settles
            it sooner); ``commit_timeout``: seconds a commit keeps retrying (e.g. while a broker restarts).
        client: further :class:`~headwater.clients.kafka.KafkaClientSettings` (security, credentials, options).
    """

    exactly_once = True

    def __init__(
        self, bootstrap_servers: str, topic: str, format: Format = "json", key: str | None = None, *,
        avro_schema: dict[str, Any] | None = None, value_column: str = "value", sink_id: str | None = None,
        staging_dir: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        transactional_id_prefix: str = "headwater-sink", transaction_timeout: float = 60.0,
        commit_timeout: float = 120.0, linger_ms: int = 5, **client: Any,
    ) -> None:
        self.settings = KafkaClientSettings.build(bootstrap_servers, **client)
        for name, value in (("topic", topic), ("sink_id", sink_id or "x"), ("transactional_id_prefix",
                                                                          transactional_id_prefix)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"KafkaSink: {name} must be a non-empty string, not {value!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"KafkaSink: key must name a column or be None, not {key!r}")
        if isinstance(max_record_bytes, bool) or not isinstance(max_record_bytes, int) or max_record_bytes < 1:
            raise ConfigError(f"KafkaSink: max_record_bytes must be a positive int, not {max_record_bytes!r}")
        if not 1 <= transaction_timeout <= 900:
            raise ConfigError(f"KafkaSink: transaction_timeout must be 1–900 seconds (the broker's "
                              f"transaction.max.timeout.ms is 15 min by default), not {transaction_timeout!r}")
        if commit_timeout <= 0:
            raise ConfigError(f"KafkaSink: commit_timeout must be > 0 seconds, not {commit_timeout!r}")
        self.encoder = _encoder(format, avro_schema, value_column)
        self.topic, self.format, self.key = topic, format, key
        self.sink_id = sink_id or topic
        self.staging_dir = staging_dir
        self.max_record_bytes = max_record_bytes
        self.transactional_id_prefix = transactional_id_prefix
        self.transaction_timeout, self.commit_timeout, self.linger_ms = transaction_timeout, commit_timeout, linger_ms
        #: the topic's ``max.message.bytes``, read at build time (:meth:`check_topic`)
        self.topic_max_message_bytes: int | None = None
        self.owner = SinkOwner()  # bound per run by staging_as

    def __repr__(self) -> str:
        return (f"KafkaSink({self.settings.bootstrap_servers!r}, {self.topic!r}, format={self.format!r}, "
                f"key={self.key!r})")

    @property
    def scoped_id(self) -> str:
        return f"{self.owner.key}:{self.sink_id}"

    def staging_area(self, scoped_id: str | None = None) -> StagingArea:
        """The staging directory of ``scoped_id`` (default: this run's owner)."""
        scoped = scoped_id or self.scoped_id
        owner_key = scoped.split(":", 1)[0]
        if self.staging_dir is not None:
            root = self.staging_dir
        elif self.owner.checkpoint_dir is not None:
            root = _join(self.owner.checkpoint_dir, _STAGING_DIR)
        else:
            root = _join(tempfile.gettempdir(), "headwater-kafka-sinks")
        return StagingArea(_join(root, owner_key, _safe(self.sink_id)))

    # -- the Sink protocol ------------------------------------------------------------------------------------------
    def build_part(self, index: int, count: int) -> KafkaSinkPartition:
        if not 0 <= index < count:
            raise ConfigError(f"KafkaSink: subtask index {index} is out of range for {count} subtasks")
        return KafkaSinkPartition(self, index)

    def staging_as(self, owner: SinkOwner) -> KafkaSink:
        bound = copy.copy(self)
        bound.owner = owner
        return bound

    def owned_locations(self) -> tuple[str, ...]:
        return (self.staging_dir,) if self.staging_dir is not None else ()

    def check_input_schema(self, schema: pa.Schema) -> None:
        """Build time: the key column and the format fit ``schema``, and the topic exists."""
        self.check_schema(schema)
        self.check_topic()

    def check_schema(self, schema: pa.Schema) -> None:
        check_key_column(schema, self.key, f"KafkaSink({self.topic!r})")
        self.encoder.check(schema, self.key)

    @property
    def record_limit(self) -> int:
        """The largest key + value written: ``max_record_bytes``, or less when the topic allows less."""
        if self.topic_max_message_bytes is None:
            return self.max_record_bytes
        return min(self.max_record_bytes, self.topic_max_message_bytes - _RECORD_OVERHEAD)

    def check_topic(self) -> None:
        """Raise :class:`ConfigError` unless the topic exists; note its ``max.message.bytes`` (asks the cluster)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, ConfigResource

        admin = AdminClient(self.settings.client_config())
        try:
            metadata = admin.list_topics(timeout=15)  # naming the topic would create it on auto-creating brokers
        except KafkaException as exc:
            raise ConfigError(f"KafkaSink: cannot read the metadata of topic {self.topic!r} at "
                              f"{self.settings.bootstrap_servers}: {exc}") from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
            raise ConfigError(f"KafkaSink: topic {self.topic!r} does not exist at {self.settings.bootstrap_servers} "
                              f"({reason}); create it first")
        try:
            resource = ConfigResource("topic", self.topic)
            entries = admin.describe_configs([resource])[resource].result(timeout=15)
            limit = entries.get("max.message.bytes")
            self.topic_max_message_bytes = int(limit.value) if limit is not None and limit.value else None
        except (KafkaException, ValueError) as exc:
            log.info("KafkaSink %s: cannot read the topic's max.message.bytes (%s); using max_record_bytes", self.topic,
                     exc)

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        """Delete this owner's (and ended unchecked runs') staged files that no token names."""
        keep = {t.staged for t in tokens if isinstance(t, KafkaCommitToken)}
        for owner_key in {self.owner.key, SinkOwner.UNCHECKED}:
            area = self.staging_area(f"{owner_key}:{self.sink_id}")
            try:
                for name in area.names():
                    path = area.path(name)
                    if name.startswith(("inprogress-", "prepared-")) and path not in keep:
                        area.delete(path)
            except OSError as exc:
                raise SinkError(f"KafkaSink({self.topic!r}): cannot clean up staging {area.directory!r}: {exc}") from exc


def _encoder(format: str, avro_schema: dict[str, Any] | None, value_column: str) -> ValueEncoder:
    if format == "json":
        return JsonEncoder()
    if format == "raw":
        return RawEncoder(value_column)
    if format == "avro":
        if avro_schema is None:
            raise ConfigError("KafkaSink: format='avro' needs avro_schema={...} (the record schema to write)")
        return AvroEncoder(avro_schema)
    raise ConfigError(f"KafkaSink: format must be 'json', 'avro' or 'raw', not {format!r}")


def _capture(call: Any) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - handed back to the calling thread
        return exc
    return None


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class KafkaSinkPartition(SinkPartition[KafkaCommitToken]):
    """The writer of one sink subtask; see the module docstring for the commit protocol."""

    def __init__(self, sink: KafkaSink, index: int) -> None:
        self._sink = sink
        self._index = index
        self._writer_id = uuid.uuid4().hex[:16]  # names this partition object in staged files and markers
        self._area = sink.staging_area()
        self._current: StagingWriter | None = None
        self._checked: pa.Schema | None = None
        self._producer: Any = None  # confluent_kafka.Producer, for the transactional id in self._producer_for
        self._producer_for: str | None = None
        self._marker: tuple[int, str] | None = None  # (checkpoint, writer) last read or written by self._producer
        self._consumer: Any = None  # for marker reads and the group metadata
        self._delivery_errors: list[Any] = []
        self._records_committed = 0
        self._commits = 0
        self._last_commit_seconds = 0.0

    # -- write and prepare -------------------------------------------------------------------------------------------
    def write(self, batch: pa.RecordBatch) -> None:
        """Encode ``batch`` and append it to the in-progress staging file."""
        if batch.num_rows == 0:
            return
        sink = self._sink
        if self._checked is None or not batch.schema.equals(self._checked):
            sink.check_schema(batch.schema)  # also when the planner did not know the schema
            self._checked = batch.schema
        try:
            values = sink.encoder.encode(batch)
        except (ValueError, TypeError, OverflowError, pa.ArrowException) as exc:
            raise SinkError(f"KafkaSink({sink.topic!r}, format={sink.format!r}): cannot encode a batch: {exc}. Cast "
                            "or fix the offending column before the sink", transient=False) from exc
        keys = encode_keys(batch, sink.key) if sink.key is not None else pa.nulls(batch.num_rows, pa.binary())
        sizes = pc.add(pc.binary_length(values), pc.fill_null(pc.binary_length(keys), 0))
        largest = pc.max(sizes).as_py()
        if largest is not None and largest > sink.record_limit:
            row = pc.index(sizes, largest).as_py()
            topic_limit = (f", less the topic's max.message.bytes={sink.topic_max_message_bytes:,} minus "
                           f"{_RECORD_OVERHEAD} bytes of framing" if sink.record_limit < sink.max_record_bytes else "")
            raise SinkError(f"KafkaSink({sink.topic!r}): a record of {largest:,} bytes (key + value, row {row} of a "
                            f"batch) exceeds the limit of {sink.record_limit:,} bytes (max_record_bytes="
                            f"{sink.max_record_bytes:,}{topic_limit}). Raise max_record_bytes together with the "
                            "topic's max.message.bytes (and the broker's message.max.bytes), or make the record "
                            "smaller before the sink", transient=False)
        staged = pa.record_batch([keys, values], schema=STAGED_SCHEMA)
        try:
            if self._current is None:
                self._current = self._area.new_writer(self._index)
            self._current.write(staged)
        except OSError as exc:
            raise self._staging_error("write to", exc) from exc

    def prepare(self, checkpoint_id: int) -> KafkaCommitToken:
        """Seal the in-progress file as ``prepared-<checkpoint>-<subtask>-<writer>.arrow``; its token."""
        current, self._current = self._current, None
        staged, records = "", 0
        if current is not None:
            records = current.records
            staged = self._area.path(f"prepared-{checkpoint_id:06d}-{self._index:04d}-{self._writer_id}.arrow")
            try:
                current.seal(staged)
            except OSError as exc:
                raise self._staging_error(f"stage checkpoint {checkpoint_id} in", exc) from exc
        return KafkaCommitToken(self._sink.scoped_id, self._index, checkpoint_id, self._writer_id, self._sink.topic,
                                staged, records)

    # -- commit ------------------------------------------------------------------------------------------------------
    def commit(self, token: KafkaCommitToken) -> None:
        """Produce the token's staged records and its marker in one transaction, unless the marker shows it done."""
        if token.records == 0:
            return
        started = time.monotonic()
        area = self._sink.staging_area(token.sink_id)
        tid = self._transactional_id(token)
        if not area.exists(token.staged):
            checkpoint, writer = self._read_marker(token, tid)
            if checkpoint >= token.checkpoint_id:
                return  # committed: the staged file is deleted only after the transaction
            raise SinkError(
                f"KafkaSink({token.topic!r}): cannot commit checkpoint {token.checkpoint_id} of subtask "
                f"{token.subtask}: its staged file {token.staged!r} is gone and the marker (group {tid!r}) records "
                f"only checkpoint {checkpoint}; something other than this job deleted it, so its {token.records} "
                "record(s) are lost. Restore from an earlier savepoint or rerun the job", transient=False)
        producer = self._transactional_producer(tid)
        marker = self._marker if self._marker is not None else self._read_marker(token, tid)
        self._marker = marker
        if marker[1] == token.writer and marker[0] >= token.checkpoint_id:
            area.delete(token.staged)  # a kill came between the commit and this deletion
            return
        if marker[0] >= token.checkpoint_id:
            log.warning("KafkaSink %s: marker of %s is checkpoint %d (writer %s) but checkpoint %d of writer %s is "
                        "staged and not committed (checkpoint ids started again: a new run, or an emptied "
                        "checkpoint directory); committing it", token.topic, tid, marker[0], marker[1],
                        token.checkpoint_id, token.writer)
        self._transaction(producer, token, area, tid)
        self._marker = (token.checkpoint_id, token.writer)
        area.delete(token.staged)
        self._records_committed += token.records
        self._commits += 1
        self._last_commit_seconds = time.monotonic() - started

    def _transaction(self, producer: Any, token: KafkaCommitToken, area: StagingArea, tid: str) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + self._sink.commit_timeout
        self._delivery_errors.clear()
        try:
            producer.begin_transaction()
            for batch in area.read(token.staged):
                keys, values = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                for key, value in zip(keys, values):
                    while True:
                        try:
                            producer.produce(token.topic, value=value, key=key)
                            break
                        except BufferError:  # the local queue is full: let deliveries drain it
                            producer.poll(0.05)
                producer.poll(0)
            marker = TopicPartition(token.topic, 0, token.checkpoint_id, metadata=token.writer)
            metadata = self._marker_consumer(tid).consumer_group_metadata()
            self._bounded(lambda: self._retrying(lambda: producer.send_offsets_to_transaction(
                [marker], metadata, self._remaining(deadline)), deadline, "write the marker"), deadline, token, tid)
            self._retrying(lambda: producer.commit_transaction(self._remaining(deadline)), deadline,
                           "commit the transaction")
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            try:
                producer.poll(0)  # serve the delivery reports: they hold the records' own errors
            except KafkaException:
                pass  # a fatal error (fenced) is raised again by poll: the error at hand says it
            self._after_failed_transaction(producer, error)
            raise self._commit_error(token, tid, error) from None
        except OSError as exc:
            self._after_failed_transaction(producer, None)
            raise self._staging_error(f"read {token.staged!r} in", exc) from exc

    def _bounded(self, call: Any, deadline: float, token: KafkaCommitToken, tid: str) -> None:
        """Run ``call`` in a helper thread, giving up at ``deadline``: after a broker restart librdkafka 2.16's
        ``send_offsets_to_transaction`` was seen to block past its own timeout. Giving up drops the producer (the
        next ``init_transactions``, here or in recovery, fences it and aborts its transaction)."""
        outcome: list[BaseException | None] = []
        thread = threading.Thread(target=lambda: outcome.append(_capture(call)), daemon=True,
                                  name=f"kafka-sink-{token.subtask}")
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
        if not outcome:
            self._drop_producer()
            raise SinkError(f"KafkaSink({token.topic!r}): writing the marker of checkpoint {token.checkpoint_id} "
                            f"(transactional id {tid!r}) did not finish within commit_timeout="
                            f"{self._sink.commit_timeout} s; nothing of it is visible, and recovery commits it again",
                            transient=True)
        if outcome[0] is not None:
            raise outcome[0]

    def _retrying(self, call: Any, deadline: float, what: str) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                retriable = error is not None and error.retriable() and not error.txn_requires_abort()
                if error is None or not retriable or time.monotonic() >= deadline:
                    raise
                log.info("KafkaSink %s: %s failed (%s); retrying", self._sink.topic, what, error.str())
                time.sleep(_RETRY_PAUSE)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())

    def _after_failed_transaction(self, producer: Any, error: Any) -> None:
        """Abort what can be aborted; drop a producer that is fenced or failed fatally."""
        if error is not None and error.fatal():
            self._drop_producer()
            return
        try:
            producer.abort_transaction(10)
        except Exception:  # noqa: BLE001 - the next init_transactions (any process) aborts it anyway
            self._drop_producer()

    def _commit_error(self, token: KafkaCommitToken, tid: str, error: Any) -> SinkError:
        from confluent_kafka import KafkaError

        first = self._delivery_errors[0] if self._delivery_errors else None
        cause = first or error
        text = cause.str() if cause is not None else "unknown error"
        code = cause.code() if cause is not None else None
        if code == KafkaError.MSG_SIZE_TOO_LARGE:
            return SinkError(f"KafkaSink({token.topic!r}): the broker refused a record of checkpoint "
                             f"{token.checkpoint_id} as too large ({text}); max_record_bytes="
                             f"{self._sink.max_record_bytes:,} exceeds the topic's max.message.bytes: lower it, or "
                             "raise the topic's max.message.bytes", transient=False)
        if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART):
            return SinkError(f"KafkaSink({token.topic!r}): cannot commit checkpoint {token.checkpoint_id} "
                             f"(transactional id {tid!r}): {text}", transient=False)
        fenced = error is not None and error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                                        KafkaError.INVALID_PRODUCER_EPOCH)
        why = "another producer of this transactional id took over (a newer attempt); " if fenced else ""
        return SinkError(f"KafkaSink({token.topic!r}): cannot commit checkpoint {token.checkpoint_id} of subtask "
                         f"{token.subtask} (transactional id {tid!r}): {why}{text}; nothing of it is visible, and "
                         "recovery commits it again", transient=True)

    # -- clients -----------------------------------------------------------------------------------------------------
    def _transactional_id(self, token: KafkaCommitToken) -> str:
        return f"{self._sink.transactional_id_prefix}.{token.sink_id}.{token.subtask}"

    def _transactional_producer(self, tid: str) -> Any:
        """The producer of ``tid``, initialised (which fences every earlier one and settles its transaction)."""
        if self._producer is not None and self._producer_for == tid:
            return self._producer
        from confluent_kafka import KafkaException, Producer

        self._drop_producer()
        sink = self._sink
        timeout_ms = int(sink.transaction_timeout * 1000)
        producer = Producer(sink.settings.client_config(**{
            "transactional.id": tid, "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random",
            "linger.ms": sink.linger_ms, "transaction.timeout.ms": timeout_ms, "message.timeout.ms": timeout_ms,
            "message.max.bytes": sink.max_record_bytes + _RECORD_OVERHEAD,
            "on_delivery": self._on_delivery, "delivery.report.only.error": True,
        }))
        deadline = time.monotonic() + sink.commit_timeout
        try:
            self._retrying(lambda: producer.init_transactions(self._remaining(deadline)), deadline,
                           "initialise transactions")
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            raise SinkError(f"KafkaSink({sink.topic!r}): cannot initialise transactional id {tid!r} at "
                            f"{sink.settings.bootstrap_servers}: {error.str() if error is not None else exc}",
                            transient=True) from None
        self._producer, self._producer_for, self._marker = producer, tid, None
        return producer

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(error)

    def _marker_consumer(self, tid: str) -> Any:
        if self._consumer is None or self._consumer[0] != tid:
            from confluent_kafka import Consumer

            if self._consumer is not None:
                self._consumer[1].close()
            consumer = Consumer(self._sink.settings.client_config(**{
                "group.id": tid, "enable.auto.commit": False, "isolation.level": "read_committed", "logger": log}))
            self._consumer = (tid, consumer)
        return self._consumer[1]

    def _read_marker(self, token: KafkaCommitToken, tid: str) -> tuple[int, str]:
        """``(checkpoint, writer)`` of the last commit of ``tid`` (``(-1, "")`` before the first)."""
        from confluent_kafka import KafkaException, TopicPartition

        consumer = self._marker_consumer(tid)
        deadline = time.monotonic() + self._sink.commit_timeout
        while True:
            try:
                [found] = consumer.committed([TopicPartition(token.topic, 0)], timeout=self._remaining(deadline))
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if error is None or not error.retriable() or time.monotonic() >= deadline:
                    raise SinkError(f"KafkaSink({token.topic!r}): cannot read the marker of {tid!r}: {exc}",
                                    transient=True) from None
                time.sleep(_RETRY_PAUSE)
        if found.error is not None:
            raise SinkError(f"KafkaSink({token.topic!r}): cannot read the marker of {tid!r}: {found.error}",
                            transient=True)
        offset = int(found.offset)
        return (offset, found.metadata or "") if offset >= 0 else (-1, "")

    def _drop_producer(self) -> None:
        self._producer, self._producer_for, self._marker = None, None, None

    def _staging_error(self, action: str, exc: BaseException) -> SinkError:
        return SinkError(f"KafkaSink({self._sink.topic!r}): cannot {action} staging {self._area.directory!r}: {exc}. "
                         "Check that the directory is writable and the disk is not full")

    # -- abort and close ---------------------------------------------------------------------------------------------
    def abort(self) -> None:
        """Delete this subtask's in-progress files (of any writer); prepared files are not touched."""
        current, self._current = self._current, None
        if current is not None:
            try:
                current.close()
            except (OSError, pa.ArrowException):
                pass  # deleted next
        prefix = f"inprogress-{self._index:04d}-"
        try:
            for name in self._area.names():
                if name.startswith(prefix):
                    self._area.delete(self._area.path(name))
        except OSError as exc:
            raise self._staging_error("clean up", exc) from exc

    def close(self) -> None:
        """Close the staging file and the clients (an unprepared file is left for ``abort``/``clean_up``)."""
        current, self._current = self._current, None
        if current is not None:
            current.close()
        if self._consumer is not None:
            self._consumer[1].close()
            self._consumer = None
        self._drop_producer()

    def stats(self) -> dict[str, float]:
        return {"records_committed": self._records_committed, "commits": self._commits,
                "last_commit_seconds": self._last_commit_seconds}
