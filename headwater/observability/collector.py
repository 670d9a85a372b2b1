"""From a job's figures to Prometheus metric families.

A :class:`JobSnapshot` is what the engine reports about one job at one moment: the plan, every subtask's
:class:`~headwater.engine.metrics.SubtaskMetrics`, the checkpoint statistics and the restarts. :func:`families`
turns snapshots into the families of :mod:`headwater.observability.definitions`, and nothing else.

Invariants:
* Counters are the subtasks' own cumulative counts, summed by nobody: one series per (job, step, subtask), so a
  series equals the rows that subtask processed in the current attempt (a restart starts it from zero again,
  which ``rate()`` and ``increase()`` read as a counter reset).
* A snapshot taken while some subtask did not answer keeps that subtask's previous figures (:func:`merge`), so
  counters never go backwards within an attempt.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from headwater.engine.checkpoints.coordinator import CheckpointStats
from headwater.engine.metrics import BucketHistogram, SubtaskMetrics, merge_quality
from headwater.engine.plan import PhysicalPlan
from headwater.observability import definitions as d

#: operator figures that count records too late for their windows (dropped rather than sent to a side output)
LATE_OPERATOR_FIGURES = ("late_rows", "late_partials")


@dataclass
class JobSnapshot:
    """One job's figures at ``taken_at`` (``time.time()``); plain data."""

    job: str
    plan: PhysicalPlan
    subtasks: list[SubtaskMetrics]
    checkpoints: CheckpointStats | None = None
    restarts: int = 0
    running: bool = True
    started_at: float = field(default_factory=time.time)
    taken_at: float = field(default_factory=time.time)
    #: the job's default parallelism and, when autoscaled, its rescales so far by direction
    parallelism: int | None = None
    rescales: dict[str, int] | None = None


def merge(previous: JobSnapshot | None, current: JobSnapshot) -> JobSnapshot:
    """``current``, with the subtasks it lacks (their worker did not answer in time) taken from ``previous``
    and the checkpoint statistics kept when it has none."""
    if previous is None:
        return current
    answered = {(m.stage_id, m.subtask) for m in current.subtasks}
    missing = [m for m in previous.subtasks if (m.stage_id, m.subtask) not in answered]
    checkpoints = current.checkpoints if current.checkpoints is not None else previous.checkpoints
    return replace(current, subtasks=[*current.subtasks, *missing], checkpoints=checkpoints)


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: BucketHistogram) -> None:
    buckets = [("+Inf" if math.isinf(b) else floatToGoString(b), float(n)) for b, n in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.sum)


class _Families:
    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}
        for m in d.METRICS:
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
            self.by_name[m.name] = cls[m.kind](m.family, m.help, labels=list(m.labels))

    def add(self, metric: d.MetricDef, labels: list[str], value: float) -> None:
        family = self.by_name[metric.name]
        assert isinstance(family, (CounterMetricFamily, GaugeMetricFamily))
        family.add_metric(labels, value)

    def histogram(self, metric: d.MetricDef, labels: list[str], histogram: BucketHistogram) -> None:
        family = self.by_name[metric.name]
        assert isinstance(family, HistogramMetricFamily)
        _histogram(family, labels, histogram)


def _edge_name(plan: PhysicalPlan, edge_id: int) -> str:
    edge = plan.edges[edge_id]
    return f"{edge_id}:{plan.stages[edge.src].tail}->{plan.stages[edge.dst].head}"


def _job(f: _Families, s: JobSnapshot) -> None:
    job = s.job
    f.add(d.JOB_UP, [job], 1.0 if s.running else 0.0)
    f.add(d.JOB_START, [job], s.started_at)
    f.add(d.RESTARTS, [job], float(s.restarts))
    if s.parallelism is not None:
        f.add(d.PARALLELISM, [job], float(s.parallelism))
    if s.rescales is not None:
        for direction in ("up", "down"):
            f.add(d.AUTOSCALE_DECISIONS, [job, direction], float(s.rescales.get(direction, 0)))
    for stage in s.plan.stages:
        for step_id in stage.step_ids:
            f.add(d.STEP_INFO, [job, step_id, s.plan.steps[step_id].kind, str(stage.stage_id)], 1.0)
    stats = s.checkpoints
    if stats is not None:
        for outcome, n in (("completed", stats.completed), ("aborted", stats.aborted), ("failed", stats.failed)):
            f.add(d.CHECKPOINTS, [job, outcome], float(n))
        f.histogram(d.CHECKPOINT_DURATION, [job], stats.durations)
        if stats.last_completed_at is not None:
            f.add(d.CHECKPOINT_SIZE, [job], float(stats.last_bytes))
            f.add(d.LAST_CHECKPOINT, [job], stats.last_completed_at)


def _subtask(f: _Families, s: JobSnapshot, m: SubtaskMetrics) -> None:
    job, subtask, plan = s.job, str(m.subtask), s.plan
    stage = plan.stages[m.stage_id]
    for step_id, c in m.steps.items():
        labels = [job, step_id, subtask]
        f.add(d.RECORDS_IN, labels, float(c.rows_in))
        f.add(d.RECORDS_OUT, labels, float(c.rows_out))
        f.add(d.BATCHES_IN, labels, float(c.batches_in))
        f.add(d.BATCHES_OUT, labels, float(c.batches_out))
        f.add(d.BYTES_IN, labels, float(c.bytes_in))
        f.add(d.BYTES_OUT, labels, float(c.bytes_out))
        f.add(d.DEAD_LETTERS, labels, float(c.dead_letters))
        figures = m.operator.get(step_id, {})
        f.add(d.LATE, labels, float(c.late + sum(figures.get(name, 0.0) for name in LATE_OPERATOR_FIGURES)))
        f.histogram(d.PROCESSING, labels, c.processing)
        for name, value in sorted(figures.items()):
            f.add(d.OPERATOR_VALUE, [job, step_id, subtask, name], float(value))
        if m.watermark_ms is not None:
            f.add(d.WATERMARK, labels, m.watermark_ms / 1000)
            f.add(d.WATERMARK_LAG, labels, s.taken_at - m.watermark_ms / 1000)
    if m.latency is not None:
        f.histogram(d.LATENCY, [job, stage.tail, subtask], m.latency.buckets)
    if m.alignment is not None:
        f.histogram(d.CHECKPOINT_ALIGNMENT, [job, stage.head, subtask], m.alignment)
    for part, lag in sorted(m.source_lag.items()):
        labels = [job, stage.head, subtask, part]
        if lag.records is not None:
            f.add(d.LAG_RECORDS, labels, float(lag.records))
        if lag.seconds is not None:
            f.add(d.LAG_SECONDS, labels, lag.seconds)
    for edge in plan.inputs_of(m.stage_id):
        f.add(d.BACKLOG, [job, stage.head, subtask, _edge_name(plan, edge.edge_id)],
              float(m.backlog_by_edge.get(edge.edge_id, 0)))
    for edge in plan.outputs_of(m.stage_id):
        f.add(d.BUFFERED, [job, stage.tail, subtask, _edge_name(plan, edge.edge_id)],
              float(m.buffered_by_edge.get(edge.edge_id, 0)))


def _quality(f: _Families, s: JobSnapshot) -> None:
    """Validation steps' counts summed over the subtasks (the score is a job-wide share, labelled without a
    subtask, as docs/governance.md defines it)."""
    for step_id, rules in sorted(merge_quality(s.subtasks).items()):
        for rule, counts in sorted(rules.items()):
            f.add(d.QUALITY_SCORE, [s.job, step_id, rule], counts.score)
            f.add(d.QUALITY_ROWS, [s.job, step_id, rule, "passed"], float(counts.passed))
            f.add(d.QUALITY_ROWS, [s.job, step_id, rule, "failed"], float(counts.failed))


def families(snapshots: Iterable[JobSnapshot]) -> list[Metric]:
    """The metric families of ``snapshots`` (one job label each), empty families left out."""
    f = _Families()
    for s in snapshots:
        _job(f, s)
        for m in sorted(s.subtasks, key=lambda m: (m.stage_id, m.subtask)):
            _subtask(f, s, m)
        _quality(f, s)
    return [family for family in f.by_name.values() if family.samples]
