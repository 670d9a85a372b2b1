"""The operator at the end of a chain that hands batches to a :class:`~headwater.sinks.base.Sink`.

It follows the sink's commit order: ``write`` every batch; the subtask runtime calls ``prepare`` at every
checkpoint barrier and at the end of input, and ``commit`` once the checkpoint holding the token is complete
(at once when the job runs without checkpoints).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from headwater.core.operator import Operator, OperatorContext
from headwater.sinks.base import Sink, SinkPartition


class SinkOperator(Operator):
    """Write batches to one sink partition; emits nothing."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.partition: SinkPartition | None = None
        self.rows_written = 0

    def open(self, ctx: OperatorContext) -> None:
        self.partition = self.sink.build_part(ctx.subtask, ctx.parallelism)

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.partition is not None, "open() was not called"
        self.partition.write(batch)
        self.rows_written += batch.num_rows
        return []

    def prepare(self, checkpoint_id: int) -> Any:
        assert self.partition is not None
        return self.partition.prepare(checkpoint_id)

    def commit(self, token: Any) -> None:
        assert self.partition is not None
        self.partition.commit(token)

    def close(self) -> None:
        if self.partition is not None:
            try:
                self.partition.close()
            except Exception:  # noqa: BLE001 - close must not raise; the run's own error (if any) matters more
                pass

    def abort(self) -> None:
        if self.partition is not None:
            self.partition.abort()

    def metrics(self) -> dict[str, float]:
        stats = getattr(self.partition, "stats", None)
        extra = stats() if callable(stats) else {}
        return {"rows_written": float(self.rows_written), **{k: float(v) for k, v in extra.items()}}
