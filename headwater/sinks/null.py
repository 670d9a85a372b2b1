"""A sink that discards every batch but counts it, for benchmarks and smoke tests.

Nothing is ever visible, so there is nothing to stage or publish: ``prepare`` returns ``None`` and ``commit``
does nothing. The counters live in each partition (per subtask, per incarnation: they restart at zero after a
failure) and are read with :meth:`NullPartition.stats`.
"""

from __future__ import annotations

import pyarrow as pa

from headwater.sinks.base import Sink, SinkPartition

__all__ = ["NullPartition", "NullSink"]


class NullPartition(SinkPartition[None]):
    """Counts rows and batches written to one subtask."""

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self.batches += 1

    def prepare(self, checkpoint_id: int) -> None:
        return None

    def commit(self, token: None) -> None:
        """No-op: nothing was staged."""

    def stats(self) -> dict[str, int]:
        """``{"rows": ..., "batches": ...}`` written to this partition so far."""
        return {"rows": self.rows, "batches": self.batches}


class NullSink(Sink):
    """Discard everything; each subtask's partition counts rows and batches (see :meth:`NullPartition.stats`)."""

    exactly_once = True

    def build_part(self, index: int, count: int) -> NullPartition:
        return NullPartition()
