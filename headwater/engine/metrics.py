"""Run metrics collected by subtasks and merged by the driver: row counters and latency histograms.

Every figure here is cumulative for one attempt of a job (a restart from a checkpoint starts from zero, like a
restarted process) and is plain, picklable data: subtasks hand copies to the driver, which merges them into
:class:`~headwater.engine.job.JobResult` and exports them (:mod:`headwater.observability`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace

import numpy as np

from headwater.core.quality import QualityCounts
from headwater.sources.base import SourceLag

QUALITY_SCORE = "headwater_quality_score"
"""Gauge name of a validation step's quality score (share of rows passing), labels ``job, step, rule``; the rule
``"*"`` (:data:`headwater.core.quality.DATASET`) is the whole dataset. See docs/governance.md."""

QUALITY_ROWS = "headwater_quality_rows_total"
"""Counter name of rows a validation step checked, labels ``job, step, rule, outcome`` with outcome ``passed`` or
``failed`` (for a ``drift(...)`` check the unit is a window). See docs/governance.md."""

# Log-spaced latency buckets from 10 µs to ~170 min with 2.5 % resolution: cheap to merge across subtasks.
_RATIO = 1.025
_MIN_MS = 0.01
_BUCKETS = 1000


#: bucket bounds (seconds) of the exported histograms: a 1-2.5-5 series over the range each figure lives in
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PROCESSING_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0, 2.5, 5.0, 10.0)
CHECKPOINT_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class BucketHistogram:
    """Observations (seconds) in fixed buckets, as a Prometheus histogram holds them.

    Invariant: ``counts[i]`` observations were ``<= bounds[i]`` and ``> bounds[i - 1]``; the last count (one more
    than there are bounds) holds those above every bound (``+Inf``). ``sum`` is the sum of the observed values,
    each times its weight. Observing is one ``bisect`` (cheap enough for every batch)."""

    bounds: tuple[float, ...] = PROCESSING_BOUNDS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight

    def merge(self, other: BucketHistogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum

    def copy(self) -> BucketHistogram:
        return BucketHistogram(self.bounds, list(self.counts), self.sum)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, the last bound ``inf`` (Prometheus' ``le``)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            running += n
            out.append((bound, running))
        return out


@dataclass
class LatencyHistogram:
    """Row-weighted latency distribution (milliseconds); quantiles are accurate to the bucket width (2.5 %)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(_BUCKETS, dtype=np.int64))
    max_ms: float = 0.0
    #: the same rows in the exported buckets (seconds; ``headwater_latency_seconds``)
    buckets: BucketHistogram = field(default_factory=lambda: BucketHistogram(LATENCY_BOUNDS))

    def record(self, latency_ms: float, weight: int = 1) -> None:
        bucket = 0 if latency_ms <= _MIN_MS else min(_BUCKETS - 1, int(math.log(latency_ms / _MIN_MS, _RATIO)) + 1)
        self.counts[bucket] += weight
        self.max_ms = max(self.max_ms, latency_ms)
        self.buckets.observe(latency_ms / 1000, weight)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts
        self.max_ms = max(self.max_ms, other.max_ms)
        self.buckets.merge(other.buckets)

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram(self.counts.copy(), self.max_ms, self.buckets.copy())

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q`` (0..1), or ``None`` with no samples."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="left"))
        return min(_MIN_MS * _RATIO**index, self.max_ms)

    def summary(self) -> dict[str, float | None]:
        return {
            "p50_ms": self.quantile(0.50),
            "p90_ms": self.quantile(0.90),
            "p99_ms": self.quantile(0.99),
            "p999_ms": self.quantile(0.999),
            "max_ms": self.max_ms if self.total else None,
            "rows": float(self.total),
        }


@dataclass
class StepCounters:
    """One step's figures in one subtask. Rows are counted where they cross the step's boundary: ``rows_in`` and
    ``bytes_in`` (Arrow ``nbytes``) of every batch handed to the step's operator, ``rows_out`` of every batch it
    produced (processing, watermarks, timers, finishing; a source's batches read), ``processing`` the time of
    each call with one input batch (a source: each read that returned rows)."""

    rows_in: int = 0
    rows_out: int = 0
    batches_in: int = 0
    dead_letters: int = 0  # records a source step could not convert (see headwater.core.dead_letters)
    batches_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    late: int = 0  # rows the step put on its "late" side port (read or not)
    processing: BucketHistogram = field(default_factory=BucketHistogram)

    def count_out(self, batch_rows: int, nbytes: int) -> None:
        self.rows_out += batch_rows
        self.batches_out += 1
        self.bytes_out += nbytes

    def merge(self, other: StepCounters) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.batches_in += other.batches_in
        self.dead_letters += other.dead_letters
        self.batches_out += other.batches_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.late += other.late
        self.processing.merge(other.processing)

    def copy(self) -> StepCounters:
        return replace(self, processing=self.processing.copy())


@dataclass
class SubtaskMetrics:
    """A snapshot of one subtask's figures (picklable; sent to the driver)."""

    stage_id: int
    subtask: int
    steps: dict[str, StepCounters]
    backlog: int = 0  # messages queued at this subtask's input
    buffered_rows: int = 0  # rows waiting in its output buffers
    latency: LatencyHistogram | None = None
    operator: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0  # high-water mark of the process running the subtask
    pid: int = 0
    #: per source partition of this subtask, how far it is behind its system's head (see SourcePartition.lag)
    source_lag: dict[str, SourceLag] = field(default_factory=dict)
    #: messages queued at this subtask's input, per input edge id (the parts of ``backlog``)
    backlog_by_edge: dict[int, int] = field(default_factory=dict)
    #: rows waiting in this subtask's output buffers, per output edge id (the parts of ``buffered_rows``)
    buffered_by_edge: dict[int, int] = field(default_factory=dict)
    #: the subtask's current event-time watermark (ms since the epoch); ``None`` before the first one
    watermark_ms: int | None = None
    #: time from the first barrier of a checkpoint reaching this subtask to its snapshot (non-source subtasks)
    alignment: BucketHistogram | None = None
    #: per validation step, its data-quality counters by rule name (see headwater.core.quality)
    quality: dict[str, dict[str, QualityCounts]] = field(default_factory=dict)
    #: for a source step without a declared schema: the schema of the first batch it read, as Arrow IPC bytes
    #: (plain data, no pickle; the schema registry records it when the run ends); ``None`` otherwise
    source_schema: bytes | None = None


def merge_quality(subtasks: list[SubtaskMetrics]) -> dict[str, dict[str, QualityCounts]]:
    """Quality counters of every validation step summed over subtasks: step -> rule name -> counts."""
    merged: dict[str, dict[str, QualityCounts]] = {}
    for m in subtasks:
        for step_id, rules in m.quality.items():
            step = merged.setdefault(step_id, {})
            for name, counts in rules.items():
                step.setdefault(name, QualityCounts()).merge(counts)
    return merged


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
