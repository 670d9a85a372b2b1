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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Sequence

import pyarrow as pa

from headwater.core.plain_data import PlainData


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

    @abstractmethod
    def list_parts(self) -> list[str]:
        """Stable names of this source's partitions (at least one)."""

    @abstractmethod
    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        """Build partition ``part``, resuming after ``resume_state`` (``None``: from the beginning)."""
