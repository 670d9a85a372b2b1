"""Amazon Kinesis Data Streams as a source: one partition per shard, exactly-once by sequence numbers.

Invariants:

* **Partitions are the shards listed at planning time** (``ListShards``, open and closed ones still within
  retention), sorted by shard id, so the list is stable for a run. A job does not discover shards created
  while it runs; see "Resharding" below.
* **The position of a shard is what was emitted**: :class:`KinesisShardPosition` holds the sequence number of
  the last record handed to the engine (good or dead-lettered). A restore resumes ``AFTER_SEQUENCE_NUMBER`` of
  it, so no record is repeated or skipped. Records fetched ahead (the prefetch queue) are not in the position.
  Before the first record, the position is the start: nothing (``TRIM_HORIZON``) or, with ``start="latest"``,
  the wall-clock time the partition started (resumed ``AT_TIMESTAMP``, so records that arrived after that
  start and before a crash are not skipped by a second ``LATEST``).
* **next_batch() never blocks**: a daemon thread per partition calls ``GetRecords`` and puts each non-empty
  response into a bounded queue (``prefetch`` responses), at most one call per ``poll_interval`` (>= 0.2 s:
  Kinesis allows 5 reads/s per shard, shared by every consumer). ``next_batch()`` takes one response off the
  queue and decodes it; ``next_awake()`` tells the engine when the next response can arrive.
* **Throttling and network errors are retried** by botocore (``standard`` mode, ``max_attempts``), and beyond
  that by the fetch thread with exponential backoff for up to ``max_retry_seconds``; then the partition fails
  with a transient :class:`~headwater.errors.SourceError` and a checkpointed job restarts from its checkpoint.
  An expired shard iterator (the queue was full for more than 5 minutes) is renewed after the last record fetched.
* **Bad records never stop the job**: a payload that does not decode is a dead letter (partition = shard id,
  position = its sequence number, key = its partition key, event time = its arrival time).

Resharding: a closed parent shard is read to its end, then its partition ends (also in unbounded mode) and a
warning names its child shards. The children are partitions of the next run: restart the job (from its
checkpoint) to read them. The ended parent's position says so, so the restarted job does not read it again.
Read that way, records of one partition key stay in order across the reshard (parent first, then child). When
a listing holds both a parent that still has unread records and its children (a job started, or restarted,
during a reshard), they are read concurrently and the order of a key across the boundary is not guaranteed.
"""

from __future__ import annotations

import logging
import queue
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import SecretStr

from headwater.clients.kinesis import KinesisClientSettings
from headwater.core import plain_data
from headwater.core.dead_letters import DeadLetter, decode_position
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourceLag, SourcePartition
from headwater.sources.decoding import DEFAULT_MAX_RECORD_BYTES, JsonDecoder, PayloadDecoder, RawDecoder
from headwater.sources.prefetch import FetchFailed, PrefetchThread

__all__ = ["KinesisShardPosition", "KinesisSource", "METADATA_COLUMNS"]

log = logging.getLogger(__name__)

#: the columns every batch carries after the decoded ones
METADATA_COLUMNS = pa.schema([
    pa.field("partition_key", pa.string(), nullable=False),
    pa.field("sequence_number", pa.string(), nullable=False),
    pa.field("arrival_time", pa.timestamp("ms", tz="UTC"), nullable=False),
])

MIN_POLL_INTERVAL = 0.2  # 5 GetRecords per second per shard (the service limit)
_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
#: error codes a wait cures (botocore retries them first; the fetch thread keeps at it for max_retry_seconds)
_RETRIABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException",
    "KMSThrottlingException", "InternalFailure", "InternalFailureException", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
})
#: error codes no retry or restart cures
_PERMANENT_CODES = frozenset({
    "ResourceNotFoundException", "AccessDeniedException", "InvalidArgumentException", "ValidationException",
    "UnrecognizedClientException", "KMSAccessDeniedException", "KMSNotFoundException", "KMSDisabledException",
})


@plain_data.register(name="headwater.KinesisShardPosition")
@dataclass(frozen=True)
class KinesisShardPosition:
    """Where a shard partition resumes. ``sequence_number``: the last record emitted (resume after it);
    otherwise ``started_at_ms``: the wall-clock start of a ``start="latest"`` partition that emitted nothing
    (resume at that time); ``shard_ended``: the shard is closed and was read to its end (nothing to resume)."""

    sequence_number: str | None = None
    started_at_ms: int | None = None
    shard_ended: bool = False


class KinesisSource(Source):
    """Read a Kinesis data stream, one partition per shard (see the module docstring for the guarantees).

    Example::

        source = KinesisSource("clicks", "eu-west-1", format="json",
                               schema=pa.schema([("user", pa.string()), ("n", pa.int64())]))
        flow.source("clicks", source).sink("out", sink)

    Options:

    * ``format``: ``"json"`` (one JSON object per record, decoded into ``schema``) or ``"raw"`` (the bytes, in
      a ``value`` binary column). Each batch also carries :data:`METADATA_COLUMNS` (``partition_key``,
      ``sequence_number`` as decimal text, ``arrival_time``: ApproximateArrivalTimestamp, usable as event time).
    * ``start``: where a partition without a checkpoint begins: ``"trim_horizon"`` (the oldest record kept) or
      ``"latest"`` (records arriving after the start).
    * ``bounded``: read what each shard holds when the source is created, then end: a partition ends when
      GetRecords reports it caught up (no records, ``MillisBehindLatest`` 0) or at the first record that
      arrived after the source was created (by ``ApproximateArrivalTimestamp`` against this machine's clock).
    * ``endpoint_url``, ``profile``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
      ``max_attempts``, ``connect_timeout``, ``read_timeout``: the client (:class:`KinesisClientSettings`);
      without keys, boto3's credential chain applies. Secrets are masked everywhere.
    * ``max_records_per_call`` (<= 10,000): GetRecords' ``Limit``, the largest batch.
    * ``poll_interval`` (>= 0.2 s): the least time between two GetRecords of a shard. Several consumers of a
      stream share the 5 reads/s per shard: raise it for each one.
    * ``prefetch``: responses fetched ahead per shard (memory: up to ``prefetch`` x 10 MB per shard).
    * ``max_record_bytes``: larger payloads become ``oversize`` dead letters.
    * ``max_retry_seconds``: how long throttling or network errors are retried before the partition fails.
    """

    replayable = True

    def __init__(
        self,
        stream: str,
        region: str,
        *,
        format: Literal["json", "raw"] = "json",
        schema: pa.Schema | None = None,
        start: Literal["trim_horizon", "latest"] = "trim_horizon",
        bounded: bool = False,
        endpoint_url: str | None = None,
        profile: str | None = None,
        aws_access_key_id: str | SecretStr | None = None,
        aws_secret_access_key: str | SecretStr | None = None,
        aws_session_token: str | SecretStr | None = None,
        max_attempts: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_records_per_call: int = 10_000,
        poll_interval: float = MIN_POLL_INTERVAL,
        prefetch: int = 4,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_retry_seconds: float = 300.0,
    ) -> None:
        owner = "KinesisSource"
        if not isinstance(stream, str) or not _STREAM_NAME.match(stream):
            raise ConfigError(f"{owner}: stream must be a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -), "
                              f"not {stream!r}")
        self.settings = KinesisClientSettings.build(
            region, endpoint_url=endpoint_url, profile=profile, aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token,
            max_attempts=max_attempts, connect_timeout=connect_timeout, read_timeout=read_timeout,
        )
        if format == "json":
            if schema is None:
                raise ConfigError(f"{owner}: format='json' needs schema=pa.schema([...]) naming the fields to read "
                                  "(or format='raw' for the payload bytes)")
            self.decoder: PayloadDecoder = JsonDecoder(schema, max_record_bytes=max_record_bytes)
        elif format == "raw":
            if schema is not None:
                raise ConfigError(f"{owner}: format='raw' yields a 'value' binary column; drop schema= or use "
                                  "format='json'")
            if max_record_bytes <= 0:
                raise ConfigError(f"{owner}: max_record_bytes must be positive, not {max_record_bytes}")
            self.decoder = RawDecoder(max_record_bytes=max_record_bytes)
        else:
            raise ConfigError(f"{owner}: format must be 'json' or 'raw', not {format!r}")
        clash = sorted(set(self.decoder.schema.names) & set(METADATA_COLUMNS.names))
        if clash:
            raise ConfigError(f"{owner}: schema fields {clash} clash with the metadata columns "
                              f"{METADATA_COLUMNS.names}; rename them in the schema")
        if start not in ("trim_horizon", "latest"):
            raise ConfigError(f"{owner}: start must be 'trim_horizon' or 'latest', not {start!r}")
        if not isinstance(bounded, bool):
            raise ConfigError(f"{owner}: bounded must be True or False, not {bounded!r}")
        if isinstance(max_records_per_call, bool) or not isinstance(max_records_per_call, int) \
                or not 1 <= max_records_per_call <= 10_000:
            raise ConfigError(f"{owner}: max_records_per_call must be an int in 1..10000 (GetRecords' Limit), "
                              f"not {max_records_per_call!r}")
        if not isinstance(poll_interval, (int, float)) or poll_interval < MIN_POLL_INTERVAL:
            raise ConfigError(f"{owner}: poll_interval must be >= {MIN_POLL_INTERVAL} s (Kinesis allows 5 "
                              f"GetRecords per second per shard), not {poll_interval!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"{owner}: prefetch must be an int >= 1, not {prefetch!r}")
        if not isinstance(max_retry_seconds, (int, float)) or max_retry_seconds < 0:
            raise ConfigError(f"{owner}: max_retry_seconds must be >= 0, not {max_retry_seconds!r}")
        self.stream = stream
        self.start = start
        self.bounded = bounded
        self.max_records_per_call = max_records_per_call
        self.poll_interval = float(poll_interval)
        self.prefetch = prefetch
        self.max_retry_seconds = float(max_retry_seconds)
        #: bounded mode reads records that arrived up to this time (ms since the epoch, this machine's clock)
        self.bounded_until_ms = int(time.time() * 1000)
        self._schema = pa.schema(list(self.decoder.schema) + list(METADATA_COLUMNS))
        self._shards: list[str] | None = None

    def __repr__(self) -> str:
        mode = "bounded" if self.bounded else "unbounded"
        return f"KinesisSource(stream={self.stream!r}, {self.settings.describe()}, start={self.start!r}, {mode})"

    def schema(self) -> pa.Schema:
        """The decoded columns, then :data:`METADATA_COLUMNS`."""
        return self._schema

    def list_parts(self) -> list[str]:
        """The stream's shard ids (``ListShards``), sorted; listed once per source object."""
        if self._shards is None:
            try:
                shards = list_shards(self.settings.client(), self.stream)
            except Exception as exc:
                code = error_code(exc)
                verdict = retriable_code(code) if code is not None else None
                raise SourceError(f"KinesisSource: cannot list the shards of stream {self.stream!r} at "
                                  f"{self.settings.describe()}: {exc}",
                                  transient=True if verdict is None else verdict) from exc
            if not shards:
                raise ConfigError(f"KinesisSource: stream {self.stream!r} has no shards")
            self._shards = sorted(s["ShardId"] for s in shards)
        return list(self._shards)

    def rows(self, records: list[dict[str, Any]], shard: str) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """GetRecords records of ``shard`` as rows of :meth:`schema` and dead letters."""
        decoded = self.decoder.decode([bytes(r["Data"]) for r in records])
        dead = to_dead_letters(decoded.failures, records, shard)
        if decoded.batch.num_rows == 0:
            return None, dead
        keys = pa.array([r["PartitionKey"] for r in records], pa.string())
        sequence_numbers = pa.array([r["SequenceNumber"] for r in records], pa.string())
        arrivals = pa.array([arrival_ms(r["ApproximateArrivalTimestamp"]) for r in records], pa.int64())
        columns = list(decoded.batch.columns) + [
            decoded.take(keys), decoded.take(sequence_numbers),
            decoded.take(arrivals).cast(pa.timestamp("ms", tz="UTC")),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema()), dead

    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead-lettered records again, with their partition key, sequence number and arrival time."""
        records = [
            {"Data": row["payload"] or b"", "PartitionKey": (row["key"] or b"").decode("utf-8", "replace"),
             "SequenceNumber": decode_position(row["position"]),
             "ApproximateArrivalTimestamp": (row["event_time"].timestamp() if row["event_time"] is not None else 0.0)}
            for row in letters.to_pylist()
        ]
        batch: pa.RecordBatch | None = None
        dead: list[DeadLetter] = []
        for shard in dict.fromkeys(letters.column("partition").to_pylist()):
            mine = [r for r, p in zip(records, letters.column("partition").to_pylist()) if p == shard]
            rows, failed = self.rows(mine, shard)
            dead += failed
            if rows is not None:
                batch = rows if batch is None else pa.Table.from_batches([batch, rows]).combine_chunks().to_batches()[0]
        return batch, dead

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        """Shard ``part`` from ``resume_state`` (a :class:`KinesisShardPosition`, or ``None``: from ``start``)."""
        if resume_state is not None and not isinstance(resume_state, KinesisShardPosition):
            raise SourceError(f"KinesisSource: resume state of shard {part!r} must be a KinesisShardPosition, "
                              f"got {type(resume_state).__name__}")
        if resume_state is None and self.start == "latest":
            resume_state = KinesisShardPosition(started_at_ms=int(time.time() * 1000))
        return KinesisShardPartition(self, part, resume_state)


def arrival_ms(value: Any) -> int:
    """ApproximateArrivalTimestamp (a datetime from boto3) in ms since the epoch."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(float(value) * 1000)


def to_dead_letters(decoded_failures: list[Any], records: list[dict[str, Any]], shard: str) -> list[DeadLetter]:
    """One dead letter per failed record (the decoder's index into ``records``)."""
    letters = []
    for failure in decoded_failures:
        record = records[failure.index]
        letters.append(DeadLetter(
            payload=bytes(record["Data"]), reason=failure.reason, error=failure.error, partition=shard,
            position=record["SequenceNumber"], key=record["PartitionKey"].encode("utf-8"),
            event_time_ms=arrival_ms(record["ApproximateArrivalTimestamp"]),
        ))
    return letters


def retriable_code(code: str) -> bool | None:
    """``True``: a wait cures it; ``False``: nothing does; ``None``: unknown."""
    if code in _RETRIABLE_CODES:
        return True
    if code in _PERMANENT_CODES:
        return False
    return None


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, else ``None``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def _is_retriable(exc: BaseException) -> bool:
    """Throttling and service hiccups (by error code) and network errors (botocore's connection errors)."""
    from botocore import exceptions as bex

    code = error_code(exc)
    if code is not None:
        return retriable_code(code) is True
    retriable = (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
                 bex.ConnectTimeoutError, bex.ProxyConnectionError)
    return isinstance(exc, retriable)


def list_shards(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every shard of ``stream`` (``ListShards``, all pages)."""
    shards: list[dict[str, Any]] = []
    response = client.list_shards(StreamName=stream)
    shards.extend(response.get("Shards", []))
    while response.get("NextToken"):
        response = client.list_shards(NextToken=response["NextToken"])
        shards.extend(response.get("Shards", []))
    return shards


@dataclass(frozen=True)
class _Fetched:
    records: list[dict[str, Any]]
    behind_ms: int | None


@dataclass(frozen=True)
class _End:
    closed: bool  # True: the shard is closed and read to its end; False: bounded mode is done
    children: tuple[str, ...] = ()


class _ShardReader(PrefetchThread[_Fetched | _End]):
    """The fetch thread of one shard: GetRecords at most once per ``poll_interval`` into a bounded queue.

    It owns the shard iterator and the client; the partition only reads :attr:`queue`, :attr:`next_fetch_at`
    and :attr:`behind_ms`. It resumes after :attr:`last_fetched`, not after what was emitted, when it renews an
    expired iterator: everything up to it is in the queue or emitted already."""

    def __init__(self, source: KinesisSource, shard: str, position: KinesisShardPosition) -> None:
        self.source = source
        self.shard = shard
        self.position = position
        super().__init__(f"kinesis-{source.stream}-{shard}", source.prefetch)
        self.next_fetch_at = time.monotonic()
        self.behind_ms: int | None = None
        self.last_fetched: str | None = None
        self.calls = 0

    def _call(self, method: Any, **kwargs: Any) -> Any:
        """``method(**kwargs)``, retried (after botocore's own retries) while the error is retriable."""
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_delay,
            stop_when_event_set,
            wait_exponential_jitter,
        )

        def before_sleep(state: Any) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning("Kinesis %s of stream %r shard %s failed (%s), retrying in %.1f s (attempt %d)",
                        getattr(method, "__name__", "call"), self.source.stream, self.shard,
                        error_code(error) if error is not None and error_code(error) else type(error).__name__,
                        state.next_action.sleep if state.next_action else 0.0, state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception(_is_retriable),
            wait=wait_exponential_jitter(multiplier=MIN_POLL_INTERVAL, max=10.0, jitter=MIN_POLL_INTERVAL),
            stop=stop_after_delay(self.source.max_retry_seconds) | stop_when_event_set(self.stopping),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        self.calls += 1
        return retrying(method, **kwargs)

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)  # a stop ends the wait (and then the retries)

    def _iterator(self, client: Any) -> str:
        args: dict[str, Any] = {"StreamName": self.source.stream, "ShardId": self.shard}
        after = self.last_fetched or self.position.sequence_number
        if after is not None:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif self.position.started_at_ms is not None:
            args.update(ShardIteratorType="AT_TIMESTAMP",
                        Timestamp=datetime.fromtimestamp(self.position.started_at_ms / 1000, tz=UTC))
        else:
            args.update(ShardIteratorType="TRIM_HORIZON")
        return str(self._call(client.get_shard_iterator, **args)["ShardIterator"])

    def _listing(self, client: Any) -> tuple[bool, tuple[str, ...]]:
        """Whether this shard is closed, and its child shards."""
        shards = self._call(list_shards, client=client, stream=self.source.stream)
        closed = any(s["ShardId"] == self.shard and "EndingSequenceNumber" in s.get("SequenceNumberRange", {})
                     for s in shards)
        children = tuple(sorted(s["ShardId"] for s in shards
                                if self.shard in (s.get("ParentShardId"), s.get("AdjacentParentShardId"))))
        return closed, children

    def fetch(self) -> None:
        source = self.source
        client = source.settings.client()
        closed, _ = self._listing(client)
        iterator = self._iterator(client)
        while not self.stopping.is_set():
            delay = self.next_fetch_at - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                return
            try:
                response = self._call(client.get_records, ShardIterator=iterator, Limit=source.max_records_per_call)
            except Exception as exc:
                if error_code(exc) == "ExpiredIteratorException":
                    iterator = self._iterator(client)
                    continue
                raise
            finally:
                self.next_fetch_at = time.monotonic() + source.poll_interval
            records: list[dict[str, Any]] = response.get("Records", [])
            behind = response.get("MillisBehindLatest")
            caught_up = not records and behind == 0
            done: _End | None = None
            if source.bounded and records:
                late = next((i for i, r in enumerate(records)
                             if arrival_ms(r["ApproximateArrivalTimestamp"]) > source.bounded_until_ms), None)
                if late is not None:
                    records, done = records[:late], _End(closed=False)
            if records:
                self.last_fetched = records[-1]["SequenceNumber"]
                self.put(_Fetched(records, behind))
            else:
                self.behind_ms = behind
            if done is None and (response.get("NextShardIterator") is None or (closed and caught_up)):
                done = _End(closed=True, children=self._listing(client)[1])
            elif done is None and source.bounded and caught_up:
                done = _End(closed=False)
            if done is not None:
                self.put(done)
                return
            iterator = response["NextShardIterator"]


class KinesisShardPartition(SourcePartition):
    """One shard. Resume state: a :class:`KinesisShardPosition` (the last sequence number emitted)."""

    def __init__(self, source: KinesisSource, shard: str, position: KinesisShardPosition | None) -> None:
        self._source = source
        self._shard = shard
        self._position = position or KinesisShardPosition()
        self._schema = source.schema()
        self._reader: _ShardReader | None = None
        self._dead: list[DeadLetter] = []
        self._ended = self._position.shard_ended
        self._lag_ms: int | None = None

    def next_batch(self) -> pa.RecordBatch | None:
        if self._ended:
            raise StopIteration
        if self._reader is None:
            self._reader = _ShardReader(self._source, self._shard, self._position)
            self._reader.start()
        try:
            item = self._reader.queue.get_nowait()
        except queue.Empty:
            if self._reader.behind_ms is not None:
                self._lag_ms = self._reader.behind_ms
            return None
        if isinstance(item, FetchFailed):
            raise self._failure(item.error)
        if isinstance(item, _End):
            self._ended = True
            if item.closed:
                self._position = KinesisShardPosition(self._position.sequence_number, shard_ended=True)
                log.warning(
                    "Kinesis stream %r: shard %s is closed (resharded) and was read to its end; its child shards "
                    "%s are not partitions of this job (partitions are the shards listed at planning time): "
                    "restart the job from its checkpoint to read them", self._source.stream, self._shard,
                    ", ".join(item.children) or "(none listed)")
            self._lag_ms = 0
            raise StopIteration
        return self._convert(item)

    def _convert(self, fetched: _Fetched) -> pa.RecordBatch | None:
        records = fetched.records
        batch, dead = self._source.rows(records, self._shard)
        self._dead.extend(dead)
        self._position = KinesisShardPosition(sequence_number=records[-1]["SequenceNumber"])
        self._lag_ms = fetched.behind_ms
        return batch

    def _failure(self, error: BaseException) -> SourceError:
        code = error_code(error)
        verdict = retriable_code(code) if code is not None else None
        if verdict is None and _is_retriable(error):
            verdict = True
        what = f"{code}: {error}" if code else f"{type(error).__name__}: {error}"
        hint = ""
        if code == "ResourceNotFoundException":
            hint = " (does the stream exist in this region and account? is the shard past retention?)"
        elif verdict:
            hint = f" (still failing after retrying for max_retry_seconds={self._source.max_retry_seconds:g})"
        failure = SourceError(
            f"KinesisSource: reading stream {self._source.stream!r} shard {self._shard} at "
            f"{self._source.settings.describe()} failed: {what}{hint}",
            transient=verdict if verdict is not None else True,
        )
        failure.__cause__ = error
        return failure

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def next_awake(self) -> float | None:
        reader = self._reader
        if reader is None or self._ended or not reader.queue.empty():
            return None
        return max(reader.next_fetch_at, time.monotonic() + 0.01)

    def snapshot(self) -> KinesisShardPosition:
        """The last sequence number emitted (``build_part(shard, snapshot())`` resumes right after it)."""
        return self._position

    def lag(self) -> SourceLag | None:
        """``MillisBehindLatest`` of the last response, in seconds."""
        return None if self._lag_ms is None else SourceLag(seconds=self._lag_ms / 1000)

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
