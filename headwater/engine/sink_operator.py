"""The operator at the end of a chain that hands batches to a :class:`~headwater.sinks.base.Sink`, and the one
place that enforces the sink partition's lifecycle.

The runtime drives it in the sink's commit order: ``write`` every batch; ``prepare(n)`` at every checkpoint
barrier ``n`` and at the end of input, which seals what was staged since the last prepare into the
*transaction* of checkpoint ``n`` and returns its commit token; ``commit(n)`` once checkpoint ``n`` is complete
(at once when the job runs without checkpoints), oldest first; ``abort()`` when a run failed; ``close()``
last, also after failures.

Two state machines, in the spirit of Quix Streams' ``PartitionTransaction`` status:

* the partition's :class:`SinkPhase`: ``CREATED`` → (``open``) ``WRITING`` → (``abort``) ``ABORTED``; any phase
  → (``close``) ``CLOSED``. ``write``, ``prepare`` and ``commit`` are legal only while ``WRITING``.
* each prepared transaction's :class:`TransactionState`: ``PREPARED`` → (``commit``) ``COMMITTED``.
  Checkpoint ids of successive prepares increase; commits go in that order; a transaction is committed once.

An illegal step raises :class:`~headwater.errors.SinkProtocolError` (an engine bug, not the connector's) before
the partition sees it. Transactions are those of this operator's lifetime: after a restart, tokens restored
from a checkpoint are committed again by recovery (:func:`~headwater.engine.checkpoints.recovery.settle_sinks`)
on partitions of their own, never through this class, which is why ``SinkPartition.commit`` itself must stay
idempotent.

Transactions are keyed by checkpoint id, not by token: tokens are opaque and need not be distinct (a sink
that staged nothing may return the same token every time).
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum
from typing import Any

import pyarrow as pa

from headwater.core.operator import Operator, OperatorContext
from headwater.core.plain_data import PlainData
from headwater.errors import SinkProtocolError
from headwater.sinks.base import Sink, SinkPartition


class SinkPhase(Enum):
    """Where a sink partition is in its life (see the module docstring)."""

    CREATED = "created"  # built, not opened
    WRITING = "writing"  # open: batches are staged; prepare seals them; prepared transactions commit
    ABORTED = "aborted"  # staged, unprepared output was discarded: nothing more is written, prepared or committed
    CLOSED = "closed"  # released: no call reaches the partition any more


class TransactionState(Enum):
    """The state of the output a ``prepare`` sealed (see the module docstring)."""

    PREPARED = "prepared"  # durable, described by its token; waits for its checkpoint to complete
    COMMITTED = "committed"  # published


class SinkOperator(Operator):
    """Write batches to one sink partition; emits nothing. Enforces the lifecycle of the module docstring."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.partition: SinkPartition[Any] | None = None
        self.phase = SinkPhase.CREATED
        #: checkpoint id → token of the transactions prepared and not yet committed, oldest first
        self._prepared: OrderedDict[int, PlainData] = OrderedDict()
        self._last_prepared: int | None = None
        self._last_committed: int | None = None
        self.rows_written = 0

    # -- the lifecycle --------------------------------------------------------------------------------------
    def state_of(self, checkpoint_id: int) -> TransactionState | None:
        """``PREPARED`` while the transaction of ``checkpoint_id`` waits for its commit; ``COMMITTED`` once every
        transaction up to it is published (commits go in order); ``None`` before it was prepared."""
        if checkpoint_id in self._prepared:
            return TransactionState.PREPARED
        if self._last_committed is not None and checkpoint_id <= self._last_committed:
            return TransactionState.COMMITTED
        return None

    def _require(self, action: str, *legal: SinkPhase) -> SinkPartition[Any]:
        if self.phase not in legal:
            after = {SinkPhase.CREATED: "before open()", SinkPhase.ABORTED: "after abort()",
                     SinkPhase.CLOSED: "after close()"}.get(self.phase, f"in phase {self.phase.value}")
            raise self._error(f"{action} {after} (phase {self.phase.name})")
        assert self.partition is not None
        return self.partition

    @staticmethod
    def _error(message: str) -> SinkProtocolError:
        # the runtime's guard adds the step and the subtask (as for every error raised in a step's call)
        return SinkProtocolError(f"sink partition: {message}")

    def open(self, ctx: OperatorContext) -> None:
        if self.phase is not SinkPhase.CREATED:
            raise self._error(f"open() in phase {self.phase.name}; a partition is opened once")
        self.partition = self.sink.build_part(ctx.subtask, ctx.parallelism)
        self.phase = SinkPhase.WRITING

    @property
    def pending(self) -> list[tuple[int, PlainData]]:
        """``(checkpoint id, token)`` of every transaction prepared and not yet committed, oldest first (what a
        snapshot records, so that recovery can commit them)."""
        return list(self._prepared.items())

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        self._require("write()", SinkPhase.WRITING).write(batch)
        self.rows_written += batch.num_rows
        return []

    def prepare(self, checkpoint_id: int) -> PlainData:
        """Seal what was staged since the last prepare into the transaction of ``checkpoint_id``; its token."""
        partition = self._require(f"prepare({checkpoint_id})", SinkPhase.WRITING)
        if self._last_prepared is not None and checkpoint_id <= self._last_prepared:
            raise self._error(f"prepare({checkpoint_id}) after prepare({self._last_prepared}); checkpoint ids of "
                              "successive prepares must increase")
        token = partition.prepare(checkpoint_id)
        self._prepared[checkpoint_id] = token
        self._last_prepared = checkpoint_id
        return token

    def commit(self, checkpoint_id: int) -> None:
        """Publish the transaction prepared at ``checkpoint_id``; it must be the oldest one not yet committed."""
        partition = self._require(f"commit({checkpoint_id})", SinkPhase.WRITING)
        if checkpoint_id not in self._prepared:
            raise self._error(
                f"commit({checkpoint_id}) of no prepared transaction: this partition never prepared checkpoint "
                f"{checkpoint_id}, or committed it already (waiting: {list(self._prepared) or 'none'}; last "
                f"committed: {self._last_committed})"
            )
        oldest = next(iter(self._prepared))
        if checkpoint_id != oldest:
            raise self._error(f"commit({checkpoint_id}) before commit({oldest}); transactions commit in the order "
                              "they were prepared")
        partition.commit(self._prepared[checkpoint_id])
        del self._prepared[checkpoint_id]
        self._last_committed = checkpoint_id

    def commit_through(self, checkpoint_id: int) -> int:
        """Commit, oldest first, every transaction prepared at or before ``checkpoint_id``; how many."""
        due = [n for n in self._prepared if n <= checkpoint_id]
        for n in due:
            self.commit(n)
        return len(due)

    def abort(self) -> None:
        """Discard staged output no token covers (prepared transactions stay for recovery to commit)."""
        if self.phase is SinkPhase.ABORTED:
            return  # discarding twice discards nothing more
        if self.phase is SinkPhase.CREATED:  # never opened (its open failed): nothing staged
            self.phase = SinkPhase.ABORTED
            return
        partition = self._require("abort()", SinkPhase.WRITING)
        self.phase = SinkPhase.ABORTED
        partition.abort()

    def close(self) -> None:
        if self.phase is SinkPhase.CLOSED:
            return
        self.phase = SinkPhase.CLOSED
        if self.partition is not None:
            try:
                self.partition.close()
            except Exception:  # noqa: BLE001 - close must not raise; the run's own error (if any) matters more
                pass

    def metrics(self) -> dict[str, float]:
        stats = getattr(self.partition, "stats", None)
        extra = stats() if callable(stats) else {}
        return {"rows_written": float(self.rows_written), **{k: float(v) for k, v in extra.items()}}
