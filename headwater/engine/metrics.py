"""Run metrics collected by subtasks and merged by the driver: row counters and latency histograms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass
class LatencyHistogram:
    """Row-weighted latency distribution (milliseconds); quantiles are accurate to the bucket width (2.5 %)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(_BUCKETS, dtype=np.int64))
    max_ms: float = 0.0

    def record(self, latency_ms: float, weight: int = 1) -> None:
        bucket = 0 if latency_ms <= _MIN_MS else min(_BUCKETS - 1, int(math.log(latency_ms / _MIN_MS, _RATIO)) + 1)
        self.counts[bucket] += weight
        self.max_ms = max(self.max_ms, latency_ms)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts
        self.max_ms = max(self.max_ms, other.max_ms)

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
    rows_in: int = 0
    rows_out: int = 0
    batches_in: int = 0
    dead_letters: int = 0  # records a source step could not convert (see headwater.core.dead_letters)

    def merge(self, other: StepCounters) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.batches_in += other.batches_in
        self.dead_letters += other.dead_letters


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
    #: per validation step, its data-quality counters by rule name (see headwater.core.quality)
    quality: dict[str, dict[str, QualityCounts]] = field(default_factory=dict)


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
