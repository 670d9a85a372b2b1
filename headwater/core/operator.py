"""The physical operator protocol: what operators implement and what the runtime of both executors calls.

An operator is built once per subtask from its logical step. The executor calls, in this order:
:meth:`Operator.open` once; :meth:`Operator.process` for every input batch (in arrival order per input);
:meth:`Operator.finish` once when every input has ended (bounded runs and graceful stops), and
:meth:`Operator.close` last, also after failures. ``process`` and ``finish`` return the batches to pass on
(possibly none). Operators never do I/O on channels: the runtime moves what they return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping

import pyarrow as pa

from headwater.core.quality import QualityCounts
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.core.state.store import OperatorStateStore


@dataclass(frozen=True)
class OperatorContext:
    """Where an operator instance runs.

    Invariant: ``state`` is always a store. The runtime passes the subtask's own (over its key groups, restored
    from a checkpoint and snapshotted by the engine); a context built without one (an operator unit test) gets
    a fresh store over every key group of :data:`DEFAULT_MAX_KEY_GROUPS`, which nothing snapshots.
    """

    step_id: str
    subtask: int
    parallelism: int
    #: Where the operator declares its state (see :mod:`headwater.core.state.store`).
    state: OperatorStateStore = field(default=None, compare=False)  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.state is None:
            store = OperatorStateStore(self.step_id, DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
            object.__setattr__(self, "state", store)


class Operator(ABC):
    """Base class; subclasses override :meth:`process` and, when they hold data, :meth:`finish`."""

    step_id: str = ""

    def open(self, ctx: OperatorContext) -> None:
        """Prepare per-subtask resources (construct a class UDF, open a writer)."""

    @abstractmethod
    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        """Handle one input batch (``input_index`` tells which input of a multi-input step)."""

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        """Event time advanced to ``watermark_ms`` (no earlier events will follow): emit what it completes."""
        return []

    def next_timer(self) -> float | None:
        """``time.monotonic()`` at which the operator wants :meth:`on_processing_time` called (``None``: never)."""
        return None

    def on_processing_time(self, now: float) -> list[pa.RecordBatch]:
        """A processing-time timer fired (early window results, table refreshes, flush deadlines)."""
        return []

    def take_side_outputs(self) -> Mapping[str, list[pa.RecordBatch]]:
        """Batches for the step's side outputs by port name (e.g. ``"late"``, see :mod:`headwater.core.ports`),
        collected since the last call."""
        return {}

    def finish(self) -> list[pa.RecordBatch]:
        """All inputs ended: return what is still held (final aggregates), publish sink output."""
        return []

    def close(self) -> None:
        """Release resources; must not raise."""

    def quality(self) -> Mapping[str, QualityCounts]:
        """Data-quality counters by rule name (:mod:`headwater.core.quality`); empty for non-validating operators."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Operator-specific figures for progress displays and run results (e.g. state size)."""
        return {}


OperatorFactory = Callable[[], Operator]
"""Builds one subtask's operator; plain data for pickle (see :mod:`headwater.planner.operators`)."""
