"""A sink that prints each batch as a small table, for development and examples.

It writes straight through: ``write`` prints at once, ``prepare`` returns ``None`` and ``commit`` does nothing.
After a failure, rows printed since the last checkpoint are printed again on replay, so the console is
**at-least-once** (:attr:`ConsoleSink.exactly_once` is ``False``).

Example output of a 3-row batch with ``limit_rows_per_batch=2``::

    user | clicks
    -----+-------
    ann  |      3
    bob  |   null
    ... 1 more row
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TextIO

import pyarrow as pa

from headwater.errors import ConfigError
from headwater.sinks.base import Sink, SinkPartition

__all__ = ["ConsoleSink", "format_batch"]

_MAX_CELL = 40


def _cell(value: Any) -> str:
    text = "null" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def format_batch(batch: pa.RecordBatch, limit: int) -> str:
    """Render ``batch`` as a text table of at most ``limit`` rows, then how many rows were left out."""
    shown = batch.slice(0, limit)
    columns = [[_cell(v) for v in column.to_pylist()] for column in shown.columns]
    names = [_cell(name) for name in batch.schema.names]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in batch.schema]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, columns)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return " | ".join(parts).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out.extend(line([col[i] for col in columns]) for i in range(shown.num_rows))
    hidden = batch.num_rows - shown.num_rows
    if hidden:
        out.append(f"... {hidden} more row{'s' if hidden != 1 else ''}")
    return "\n".join(out)


class ConsolePartition(SinkPartition[None]):
    """Prints each written batch; nothing is staged."""

    def __init__(self, limit: int, stream: str, label: str) -> None:
        self._limit = limit
        self._stream = stream
        self._label = label

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        # Resolve the stream at print time, so redirection (and pytest's capture) takes effect.
        target: TextIO = sys.stdout if self._stream == "stdout" else sys.stderr
        text = format_batch(batch, self._limit)
        print(f"{self._label}{text}" if self._label else text, file=target, flush=True)

    def prepare(self, checkpoint_id: int) -> None:
        """Nothing to stage: the rows are already printed."""
        return None

    def commit(self, token: None) -> None:
        """No-op: the console cannot publish atomically (at-least-once)."""


class ConsoleSink(Sink):
    """Print every batch to stdout or stderr as a table of at most ``limit_rows_per_batch`` rows.

    At-least-once: rows printed before a crash are printed again when the job replays from its checkpoint.
    With several subtasks each table is preceded by ``[subtask i]``.
    """

    exactly_once = False

    def __init__(self, limit_rows_per_batch: int = 20, stream: Literal["stdout", "stderr"] = "stdout") -> None:
        if isinstance(limit_rows_per_batch, bool) or not isinstance(limit_rows_per_batch, int):
            raise ConfigError(f"ConsoleSink: limit_rows_per_batch must be an int, got {limit_rows_per_batch!r}")
        if limit_rows_per_batch < 0:
            raise ConfigError(f"ConsoleSink: limit_rows_per_batch must be >= 0, got {limit_rows_per_batch}")
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"ConsoleSink: stream must be 'stdout' or 'stderr', got {stream!r}")
        self.limit_rows_per_batch = limit_rows_per_batch
        self.stream = stream

    def build_part(self, index: int, count: int) -> ConsolePartition:
        label = f"[subtask {index}]\n" if count > 1 else ""
        return ConsolePartition(self.limit_rows_per_batch, self.stream, label)
