"""The source protocol: a source is a factory of partitions, a partition produces Arrow batches.

Shaped after Bytewax's fixed-partition sources, but batch-oriented:

* :meth:`Source.list_parts` names the partitions; the names are stable across runs because checkpoints key
  resume state on them. The engine spreads partitions over the source step's subtasks (partition ``i`` goes to
  subtask ``i % parallelism``).
* :meth:`Source.build_part` builds one partition from its resume state. **Derive all state from
  ``resume_state``**: ``None`` means start from the beginning; otherwise resume *after* the last record that was
  emitted before :meth:`SourcePartition.snapshot` returned that state.
* :meth:`SourcePartition.next_batch` never blocks for long: it returns a batch, ``None`` when nothing is available
  right now, and raises ``StopIteration`` when a bounded partition is exhausted.

Hooks for connectors to real systems (all optional, with harmless defaults):

* :meth:`SourcePartition.take_dead_letters` hands over the records the last ``next_batch()`` could not convert
  (:mod:`headwater.core.dead_letters`); they become rows of the step's ``dead_letters()`` stream, and the job
  goes on.
* :meth:`SourcePartition.on_checkpoint_complete` is told, once a checkpoint is durable, the position the partition
  reported for it: Kafka commits consumer-group offsets there (for monitoring), PostgreSQL confirms its slot's
  flush LSN there and never earlier.
* :meth:`SourcePartition.lag` says how far the partition is behind the head of its system (records and/or
  seconds); it is reported in the subtask metrics and the progress display, and read by the autoscaler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Sequence

import pyarrow as pa

from headwater.core.dead_letters import DeadLetter
from headwater.core.plain_data import PlainData
from headwater.errors import DeadLetterReplayError


@dataclass(frozen=True)
class SourceLag:
    """How far a partition is behind the head of its system: ``records`` (e.g. Kafka's end offset minus the
    next offset to read) and/or ``seconds`` (e.g. now minus the commit time of the last change read); ``None``
    where the system cannot tell."""

    records: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.records is not None and self.records < 0:
            object.__setattr__(self, "records", 0)
        if self.seconds is not None and self.seconds < 0:
            object.__setattr__(self, "seconds", 0.0)


class SourcePartition(ABC):
    """One readable partition of a source (a file, a Kafka partition, a generator slice)."""

    @abstractmethod
    def next_batch(self) -> pa.RecordBatch | None:
        """Return the next batch, ``None`` if nothing is available now, or raise ``StopIteration`` at the end."""

    def next_awake(self) -> float | None:
        """Monotonic time (``time.monotonic()``) before which polling again is pointless, or ``None``.

        Rate-limited or polling sources use this so the engine sleeps instead of spinning.
        """
        return None

    @abstractmethod
    def snapshot(self) -> PlainData:
        """Return the position to resume *after*: everything emitted so far is covered by it.

        Must be small plain data (an offset, an index, an LSN; see :mod:`headwater.core.plain_data`), never
        the data itself: checkpoint metadata is JSON, not pickle.
        """

    def take_dead_letters(self) -> list[DeadLetter]:
        """The records that the calls to :meth:`next_batch` since the last call could not convert, oldest first.

        The runtime calls it after every ``next_batch()`` (whatever it returned), so the position that
        :meth:`snapshot` returns afterwards covers them as it covers the good records: a restored job neither
        repeats nor loses a dead letter."""
        return []

    def on_checkpoint_complete(self, checkpoint_id: int, position: PlainData) -> None:
        """Checkpoint ``checkpoint_id`` is durable; ``position`` is what :meth:`snapshot` returned for it.

        Called in the partition's own process, in checkpoint order, at most once per checkpoint and possibly not
        at all (a failure in between, or the partition ended): the next call covers the skipped ones, since
        positions only move forward. Also called once after a restore with the restored checkpoint's position.
        Use it to tell the system what the job will never need again (commit Kafka offsets for monitoring,
        confirm a replication slot's LSN); never to keep state of its own: positions live in checkpoints."""

    def lag(self) -> SourceLag | None:
        """How far this partition is behind the head of its system, if it can tell (cheap: the engine calls it
        with every metrics report; use figures the client already has)."""
        return None

    def close(self) -> None:
        """Release resources; called once, also after failures."""


def drain(partition: SourcePartition) -> Iterator[pa.RecordBatch | None]:
    """Every ``next_batch()`` result of ``partition`` (``None`` included: nothing available at that poll)
    until it ends; closes the partition afterwards, also when the caller stops early or fails. For bounded
    sources read outside a dataflow (tests, reference results, materialising input)."""
    try:
        while True:
            try:
                batch = partition.next_batch()
            except StopIteration:
                return
            yield batch
    finally:
        partition.close()


class Source(ABC):
    """A factory of partitions; holds configuration only and must be picklable (it travels to Ray actors)."""

    #: True when every partition eventually raises ``StopIteration`` (files, a fixed number of events).
    bounded: bool = True
    #: True when a partition rebuilt from a position reads the same records after it again (files, Kafka, a
    #: replication slot): what exactly-once recovery needs. A source that cannot replay (a webhook without its
    #: own log) gives at-most-once across a crash and says so here.
    replayable: bool = True

    def schema(self) -> pa.Schema | None:
        """The schema of every batch this source yields, if known before running.

        A known schema lets the planner check expressions and keys at build time, and lets the engine reject
        a batch whose schema differs (``SchemaMismatchError`` naming the step).
        """
        return None

    def project(self, columns: Sequence[str]) -> Source | None:
        """A source like this one whose batches hold only ``columns`` (names of :meth:`schema`, in its order),
        or ``None`` when it cannot read fewer columns (the engine then drops the others after reading).

        The planner calls it with the columns the pipeline actually reads. The projected source must have the
        same partitions and resume states as this one, so a checkpoint restores whatever the projection.
        """
        return None

    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead letters this source produced (rows of
        :data:`~headwater.core.dead_letters.DEAD_LETTER_SCHEMA`) into rows of :meth:`schema`, as
        ``headwater dlq replay`` does after a fix to the pipeline; what still fails comes back as dead letters.

        A connector that decodes payloads implements it with the same decoder as its partitions, filling its
        metadata columns (key, partition, offset, time) from the letter's columns. Default: it cannot."""
        raise DeadLetterReplayError(
            f"{type(self).__name__} cannot replay dead letters (it does not implement replay_dead_letters())"
        )

    @abstractmethod
    def list_parts(self) -> list[str]:
        """Stable names of this source's partitions (at least one)."""

    @abstractmethod
    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        """Build partition ``part``, resuming after ``resume_state`` (``None``: from the beginning)."""
