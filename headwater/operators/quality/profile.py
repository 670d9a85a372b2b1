"""Column profiles over windows of rows and their comparison with a baseline (``hw.rules.drift``).

Per check, the operator keeps the rows of the current window (only the checked column) until ``window`` rows
are in; the first full window becomes the baseline :class:`Profile`, each later one is compared with it.
All statistics are computed with ``pyarrow.compute`` over the window's array. State (the baseline, the
pending rows, the window index) is plain picklable data held in the operator's checkpointed value state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headwater.rules import FINDINGS_SCHEMA, DriftCheck


@dataclass(frozen=True)
class Profile:
    rows: int
    null_rate: float
    distinct: float
    mean: float | None = None
    stddev: float | None = None
    quantiles: tuple[float | None, ...] = ()


def profile(values: pa.Array, check: DriftCheck, numeric: bool) -> Profile:
    rows = len(values)
    nulls = values.null_count
    distinct = float(pc.count_distinct(values, mode="only_valid").as_py())
    if not numeric or nulls == rows:
        return Profile(rows, nulls / rows, distinct)
    floats = pc.cast(values, pa.float64())
    quantiles = tuple(pc.quantile(floats, q=list(check.quantiles)).to_pylist()) if check.quantiles else ()
    return Profile(rows, nulls / rows, distinct, pc.mean(floats).as_py(), pc.stddev(floats).as_py(), quantiles)


def _relative(baseline: float, observed: float) -> float:
    if baseline == 0:
        return 0.0 if observed == 0 else float("inf")
    return abs(observed - baseline) / abs(baseline)


def compare(check: DriftCheck, base: Profile, now: Profile) -> list[dict[str, Any]]:
    """The statistics of ``now`` that moved from ``base`` beyond their tolerance, as findings (without the window
    and subtask fields)."""
    found: list[dict[str, Any]] = []

    def flag(statistic: str, baseline: float, observed: float, tolerance: float, how: str) -> None:
        found.append({"check": check.name, "column": check.column, "statistic": statistic, "baseline": baseline,
                      "observed": observed, "tolerance": tolerance,
                      "reason": f"{statistic} of {check.column} moved from {baseline:.6g} to {observed:.6g} ({how})"})

    if check.null_rate is not None and abs(now.null_rate - base.null_rate) > check.null_rate:
        flag("null_rate", base.null_rate, now.null_rate, check.null_rate, f"more than {check.null_rate:g} apart")
    if check.distinct is not None and _relative(base.distinct, now.distinct) > check.distinct:
        flag("distinct_count", base.distinct, now.distinct, check.distinct,
             f"a change of more than {check.distinct:.0%}")
    spread = base.stddev if base.stddev else None
    if check.mean is not None and base.mean is not None and now.mean is not None:
        shift = abs(now.mean - base.mean)
        if (spread is not None and shift > check.mean * spread) or (spread is None and shift > 0):
            flag("mean", base.mean, now.mean, check.mean, f"more than {check.mean:g} baseline stddevs")
    if check.stddev is not None and base.stddev is not None and now.stddev is not None:
        if _relative(base.stddev, now.stddev) > check.stddev:
            flag("stddev", base.stddev, now.stddev, check.stddev, f"a change of more than {check.stddev:.0%}")
    if check.quantile_shift is not None and spread is not None:
        for q, b, n in zip(check.quantiles, base.quantiles, now.quantiles):
            if b is not None and n is not None and abs(n - b) > check.quantile_shift * spread:
                flag(f"quantile_{q:g}", b, n, check.quantile_shift,
                     f"more than {check.quantile_shift:g} baseline stddevs")
    return found


@dataclass
class WindowProfiler:
    """The state of one drift check in one subtask (picklable: it is checkpointed as it is)."""

    check: DriftCheck
    numeric: bool
    pending: list[pa.Array] = field(default_factory=list)
    pending_rows: int = 0
    window: int = 0
    baseline: Profile | None = None

    def add(self, values: pa.Array, subtask: int) -> tuple[list[dict[str, Any]], int, int]:
        """Take the column of the rows that passed; returns (findings, windows compared, windows with findings)."""
        findings: list[dict[str, Any]] = []
        compared = flagged = 0
        offset = 0
        size = self.check.window
        while offset < len(values):
            take = min(size - self.pending_rows, len(values) - offset)
            self.pending.append(values.slice(offset, take))
            self.pending_rows += take
            offset += take
            if self.pending_rows < size:
                break
            window = pa.concat_arrays(self.pending)
            self.pending, self.pending_rows = [], 0
            current = profile(window, self.check, self.numeric)
            if self.baseline is None:
                self.baseline = current
            else:
                compared += 1
                found = compare(self.check, self.baseline, current)
                findings += [{**f, "window": self.window, "subtask": subtask} for f in found]
                flagged += bool(found)
            self.window += 1
        return findings, compared, flagged

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["pending"] = [pa.concat_arrays(self.pending)] if self.pending else []  # one array, sliced copies
        return state


def findings_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=FINDINGS_SCHEMA)
