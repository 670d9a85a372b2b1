"""Live progress display: rows/s per step and backlog, refreshed every ``progress_interval``."""

from __future__ import annotations

import sys
from typing import TextIO

from headwater.engine.metrics import SubtaskMetrics
from headwater.engine.plan import PhysicalPlan


class ProgressDisplay:
    """Callable given to the executors; redraws in place on a terminal, appends lines otherwise."""

    def __init__(self, plan: PhysicalPlan, stream: TextIO | None = None) -> None:
        self.plan = plan
        self.stream = stream or sys.stderr
        self._last: dict[str, int] = {}
        self._last_elapsed = 0.0
        self._lines_drawn = 0

    def __call__(self, metrics: list[SubtaskMetrics], elapsed: float) -> None:
        self.stream.write(self.render(metrics, elapsed))
        self.stream.flush()

    def render(self, metrics: list[SubtaskMetrics], elapsed: float) -> str:
        rows: dict[str, int] = {}
        backlog: dict[int, int] = {}
        for m in metrics:
            for step_id, counters in m.steps.items():
                rows[step_id] = rows.get(step_id, 0) + counters.rows_out if counters.rows_out else rows.get(step_id, 0) + counters.rows_in
            backlog[m.stage_id] = backlog.get(m.stage_id, 0) + m.backlog
        window = max(elapsed - self._last_elapsed, 1e-9)
        lines = [f"{self.plan.flow_name}  {elapsed:7.1f}s"]
        for stage in self.plan.stages:
            for step_id in stage.step_ids:
                total = rows.get(step_id, 0)
                rate = (total - self._last.get(step_id, 0)) / window
                self._last[step_id] = total
                lines.append(f"  {step_id:<24} {total:>14,} rows {rate:>14,.0f} rows/s")
            lines.append(f"  {'(stage ' + str(stage.stage_id) + ' backlog)':<24} {backlog.get(stage.stage_id, 0):>14,} msgs")
        self._last_elapsed = elapsed
        text = "\n".join(lines) + "\n"
        if self.stream.isatty() and self._lines_drawn:
            text = f"\x1b[{self._lines_drawn}F\x1b[J" + text
        self._lines_drawn = len(lines)
        return text
