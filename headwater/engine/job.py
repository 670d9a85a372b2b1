"""What a run returns and the handle of a running job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.metrics import LatencyHistogram, StepCounters, SubtaskMetrics
from headwater.engine.plan import PhysicalPlan

if TYPE_CHECKING:
    from headwater.engine.autoscale.controller import Decision
    from headwater.engine.checkpoints.coordinator import CheckpointStats
    from headwater.engine.checkpoints.metadata import CheckpointMetadata


@dataclass
class JobResult:
    """Figures of a finished run: rows per step (summed over subtasks), wall time and sink latency."""

    flow_name: str
    plan: PhysicalPlan
    elapsed_s: float
    steps: dict[str, StepCounters]
    latency: LatencyHistogram
    subtasks: list[SubtaskMetrics] = field(default_factory=list)
    stopped: bool = False  # ended by stop() / Ctrl-C rather than by the end of its sources
    checkpoints: CheckpointStats | None = None  # of the last attempt, when checkpointing
    last_checkpoint: CheckpointMetadata | None = None  # the last completed checkpoint (final/savepoint at the end)
    restarts: int = 0  # automatic restarts from a checkpoint during this run
    #: rescales the autoscaler made, in order (``headwater.engine.autoscale.Decision``); the figures above are
    #: those of the run since the last one
    rescales: list[Decision] = field(default_factory=list)

    @property
    def savepoint_path(self) -> str | None:
        """Directory of the savepoint taken by ``stop(savepoint=True)``, if any."""
        last = self.last_checkpoint
        return last.directory if last is not None and last.kind is CheckpointKind.SAVEPOINT else None

    @classmethod
    def merge(
        cls, plan: PhysicalPlan, elapsed_s: float, subtasks: list[SubtaskMetrics], stopped: bool = False
    ) -> JobResult:
        steps = {step_id: StepCounters() for step_id in plan.steps}
        latency = LatencyHistogram()
        for m in subtasks:
            for step_id, counters in m.steps.items():
                steps[step_id].merge(counters)
            if m.latency is not None:
                latency.merge(m.latency)
        return cls(plan.flow_name, plan, elapsed_s, steps, latency, subtasks, stopped)

    def rows_out(self, step_id: str) -> int:
        return self.steps[step_id].rows_out

    def rows_in(self, step_id: str) -> int:
        return self.steps[step_id].rows_in

    def peak_rss_mb(self) -> float:
        """Sum, over the distinct processes that ran subtasks, of each one's peak RSS in MiB (an upper bound of
        the job's peak: the peaks need not coincide). The driver is not included."""
        by_process = {m.pid: m.peak_rss_mb for m in self.subtasks}
        return float(sum(by_process.values()))

    def operator_metric(self, step_id: str, name: str) -> float:
        """Sum of an operator metric (e.g. ``"keys"`` of an aggregate) over the step's subtasks."""
        return sum(m.operator.get(step_id, {}).get(name, 0.0) for m in self.subtasks)

    def __str__(self) -> str:
        lines = [f"{self.flow_name}: finished in {self.elapsed_s:.2f}s" + (" (stopped)" if self.stopped else "")]
        for step_id, c in self.steps.items():
            lines.append(f"  {step_id:<24} in {c.rows_in:>12,}  out {c.rows_out:>12,}")
        summary = self.latency.summary()
        if summary["p50_ms"] is not None:
            lines.append(
                f"  sink latency: p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, "
                f"max {summary['max_ms']:.1f} ms"
            )
        return "\n".join(lines)
