"""Live progress display: rows/s per step, dead letters, source lag and backlog, refreshed every
``progress_interval``."""

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
        lag_records: dict[int, int] = {}
        lag_seconds: dict[int, float] = {}
        dead: dict[str, int] = {}
        for m in metrics:
            for lag in m.source_lag.values():
                if lag.records is not None:
                    lag_records[m.stage_id] = lag_records.get(m.stage_id, 0) + lag.records
                if lag.seconds is not None:
                    lag_seconds[m.stage_id] = max(lag_seconds.get(m.stage_id, 0.0), lag.seconds)
            for step_id, counters in m.steps.items():
                if counters.dead_letters:
                    dead[step_id] = dead.get(step_id, 0) + counters.dead_letters
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
                if dead.get(step_id):
                    lines.append(f"  {'  dead letters':<24} {dead[step_id]:>14,} rows")
            if stage.stage_id in lag_records or stage.stage_id in lag_seconds:
                parts = []
                if stage.stage_id in lag_records:
                    parts.append(f"{lag_records[stage.stage_id]:,} records")
                if stage.stage_id in lag_seconds:
                    parts.append(f"{lag_seconds[stage.stage_id]:.1f} s")
                lines.append(f"  {'(source lag)':<24} {' / '.join(parts):>14} behind")
            lines.append(f"  {'(stage ' + str(stage.stage_id) + ' backlog)':<24} {backlog.get(stage.stage_id, 0):>14,} msgs")
        self._last_elapsed = elapsed
        text = "\n".join(lines) + "\n"
        if self.stream.isatty() and self._lines_drawn:
            text = f"\x1b[{self._lines_drawn}F\x1b[J" + text
        self._lines_drawn = len(lines)
        return text
