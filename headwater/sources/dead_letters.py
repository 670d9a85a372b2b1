"""Replaying dead letters: a source that reads stored dead letters and decodes them again.

``stream.dead_letters()`` rows (:data:`~headwater.core.dead_letters.DEAD_LETTER_SCHEMA`) stored as Parquet (e.g. by
``ParquetSink(dir)``) can be fed back into a pipeline once it is fixed: :class:`DeadLetterReplaySource` reads the
committed files of that directory, keeps the rows of one source step, and hands them to that step's source in the
fixed pipeline (:meth:`~headwater.sources.base.Source.replay_dead_letters`), which decodes the payloads with its
current decoder. ``headwater dlq replay`` swaps it in for the step and runs the pipeline as a bounded,
checkpointed job.

Exactly once: the partitions are the dead-letter files (as listed when the source is built) and a position is the
number of rows of its file already read, so a replay that crashes resumes from its checkpoint, and a second
replay with the same checkpoint directory reads only files that were not there (or not finished) before — a
record is replayed once. Records that fail again become dead letters again, with the new reason.
"""

from __future__ import annotations

import os
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from headwater.core.plain_data import PlainData
from headwater.errors import DeadLetterReplayError
from headwater.sources.base import Source, SourceLag, SourcePartition
from headwater.sources.files import ParquetSource


class DeadLetterReplaySource(Source):
    """The dead letters of step ``source_step`` stored as Parquet under ``directory``, decoded again by ``source``
    (the step's source in the fixed pipeline). Bounded; partitions are the files."""

    bounded = True

    def __init__(self, source: Source, source_step: str, directory: str | os.PathLike[str],
                 batch_size: int = 8192) -> None:
        if not isinstance(source, Source):
            raise DeadLetterReplayError(f"{source!r} is not a headwater Source")
        self.source = source
        self.source_step = source_step
        self.directory = str(directory)
        if not os.path.isdir(self.directory):
            raise DeadLetterReplayError(f"dead-letter directory {self.directory!r} does not exist")
        self.files = ParquetSource(self.directory, batch_size=batch_size)
        if not self.files.list_parts():
            raise DeadLetterReplayError(f"{self.directory!r} holds no committed Parquet files of dead letters")
        stored = self.files.schema()
        missing = [f.name for f in DEAD_LETTER_SCHEMA if stored.get_field_index(f.name) < 0]
        if missing:
            raise DeadLetterReplayError(
                f"{self.directory!r} does not hold dead letters (columns {', '.join(missing)} are missing); point "
                "--dead-letters at the directory a sink of stream.dead_letters() writes"
            )

    def schema(self) -> pa.Schema | None:
        return self.source.schema()

    def list_parts(self) -> list[str]:
        return self.files.list_parts()

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        return _ReplayPartition(self, self.files.build_part(part, resume_state))

    def project(self, columns: Sequence[str]) -> Source | None:
        return None


class _ReplayPartition(SourcePartition):
    """One dead-letter file; its position is the file partition's (rows read), which covers both the records
    emitted and those that failed again."""

    def __init__(self, owner: DeadLetterReplaySource, inner: SourcePartition) -> None:
        self.owner = owner
        self.inner = inner
        self._dead: list[DeadLetter] = []

    def next_batch(self) -> pa.RecordBatch | None:
        batch = self.inner.next_batch()
        if batch is None or batch.num_rows == 0:
            return None
        mine = batch.filter(pc.equal(batch.column("source_step"), self.owner.source_step))
        if mine.num_rows == 0:
            return None
        mine = mine.select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA)
        good, dead = self.owner.source.replay_dead_letters(mine)
        self._dead.extend(dead)
        return good

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def snapshot(self) -> PlainData:
        return self.inner.snapshot()

    def lag(self) -> SourceLag | None:
        return self.inner.lag()

    def close(self) -> None:
        self.inner.close()
