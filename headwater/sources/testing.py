"""A source for tests: rows and batches from a list, with in-band markers.

Markers (put them between rows):

* ``TestingSource.EOF()`` — the partition ends here, as if the input were exhausted. A run resumed from a
  checkpoint taken after it continues with the items after the marker.
* ``TestingSource.ABORT()`` — simulate a crash of the subtask reading this partition, **the first time** it is
  reached only (the "already fired" fact is kept in a directory on local disk, so it survives the restart of
  a Ray actor on this machine). The run fails with :class:`~headwater.errors.SimulatedCrashError` unless the
  engine recovers from it.
* ``TestingSource.PAUSE(seconds)`` — produce nothing for that long (drives linger/latency and time-based tests).

Consecutive rows (dicts) are grouped into batches of at most ``batch_size`` rows; a ``RecordBatch`` item is
emitted as it is. Resume state is the index of the next item to read: resuming after a snapshot never repeats
or skips an item.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, cast

import pyarrow as pa

from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SimulatedCrashError
from headwater.sources.base import Source, SourceLag, SourcePartition


@dataclass(frozen=True)
class _Eof:
    pass


@dataclass(frozen=True)
class _Abort:
    pass


@dataclass(frozen=True)
class _Pause:
    seconds: float


_MARKERS = (_Eof, _Abort, _Pause)


class TestingSource(Source):
    """Emit ``items`` (rows as dicts, ``RecordBatch``es and markers); one partition, or several."""

    __test__ = False  # not a pytest test class

    EOF = _Eof
    ABORT = _Abort

    @staticmethod
    def PAUSE(seconds: float) -> _Pause:  # noqa: N802 - marker constructors read as constants
        return _Pause(seconds)

    def __init__(
        self,
        items: Iterable[Any] | None = None,
        *,
        partitions: Sequence[Iterable[Any]] | None = None,
        batch_size: int = 1024,
        schema: pa.Schema | None = None,
    ) -> None:
        if (items is None) == (partitions is None):
            raise ConfigError("TestingSource takes either items or partitions=[items, items, ...], not both")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.partitions = [list(items)] if items is not None else [list(p) for p in partitions or []]
        if not self.partitions:
            raise ConfigError("TestingSource needs at least one partition")
        for part in self.partitions:
            for item in part:
                if not isinstance(item, (dict, pa.RecordBatch, *_MARKERS)):
                    raise ConfigError(
                        f"TestingSource items must be dicts, pyarrow RecordBatches or markers, got {item!r}"
                    )
        self.batch_size = batch_size
        self._schema = schema
        self.marker_dir = tempfile.mkdtemp(prefix="headwater-testing-source-")

    def schema(self) -> pa.Schema | None:
        return self._schema

    def list_parts(self) -> list[str]:
        return [f"part-{i}" for i in range(len(self.partitions))]

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        index = int(part.split("-")[1])
        return _TestingPartition(self, part, self.partitions[index], int(cast("int | None", resume_state) or 0))


class _TestingPartition(SourcePartition):
    def __init__(self, source: TestingSource, name: str, items: list[Any], position: int) -> None:
        self.source = source
        self.name = name
        self.items = items
        self.position = position
        self.paused_until = 0.0

    def next_batch(self) -> pa.RecordBatch | None:
        if time.monotonic() < self.paused_until:
            return None
        if self.position >= len(self.items):
            raise StopIteration
        item = self.items[self.position]
        if isinstance(item, _Eof):
            self.position += 1
            raise StopIteration
        if isinstance(item, _Pause):
            self.position += 1
            self.paused_until = time.monotonic() + item.seconds
            return None
        if isinstance(item, _Abort):
            fired = Path(self.source.marker_dir) / f"abort-{self.name}-{self.position}"
            self.position += 1
            if not fired.exists():
                fired.touch()
                raise SimulatedCrashError(f"ABORT marker at item {self.position - 1} of {self.name} (simulated crash)")
            return None
        if isinstance(item, pa.RecordBatch):
            self.position += 1
            return item
        rows: list[dict[str, Any]] = []
        while (
            self.position < len(self.items)
            and isinstance(self.items[self.position], dict)
            and len(rows) < self.source.batch_size
        ):
            rows.append(self.items[self.position])
            self.position += 1
        return pa.RecordBatch.from_pylist(rows, schema=self.source.schema())

    def next_awake(self) -> float | None:
        return self.paused_until if self.paused_until > time.monotonic() else None

    def lag(self) -> SourceLag:
        """The rows still to come before the end (or the next EOF marker): all of them are available at once."""
        left = 0
        for item in self.items[self.position:]:
            if isinstance(item, _Eof):
                break
            left += item.num_rows if isinstance(item, pa.RecordBatch) else 1 if isinstance(item, dict) else 0
        return SourceLag(records=left)

    def snapshot(self) -> int:
        return self.position
