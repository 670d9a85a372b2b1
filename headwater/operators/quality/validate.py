"""The validation operator of ``stream.validate(*rules)``: rows that pass go on, rows that fail are quarantined.

Per batch, every stateless rule is evaluated once on the whole batch (one ``pyarrow.compute`` mask each); a
row's *first* failed rule, in the order the rules were given, names it in the quarantine. Stateful rules
(``unique_within``) see only the rows that passed every rule before them, so a row quarantined for a null
never makes a later row look like its duplicate. Statistical checks profile the rows that passed.

Invariants:
* Every input row leaves exactly once: on the main output or on the ``"invalid"`` port (with ``rule`` and
  ``reason``), in input order within each; so across a recovery the two outputs together are the input once.
* ``unique_within`` keys and drift profiles are operator state in ``ctx.state``: snapshotted with each
  checkpoint and restored before processing resumes, like every keyed state.
* Counters (:meth:`quality`) are per attempt: a restart starts them again (they count the rows this attempt
  checked, replayed ones included).
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.operator import Operator, OperatorContext
from headwater.core.ports import FINDINGS_PORT, INVALID_PORT
from headwater.core.quality import DATASET, QualityCounts
from headwater.core.state.store import ValueState
from headwater.operators.dedup import FirstWithin, record_times
from headwater.operators.quality.alerts import QualityAlert
from headwater.operators.quality.profile import WindowProfiler, findings_batch
from headwater.rules import DriftCheck, Rule
from headwater.rules.rules import UniqueWithin


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


class ValidateOperator(Operator):
    def __init__(self, rules: Sequence[Rule], checks: Sequence[DriftCheck], time_column: tuple[str, int] | None,
                 threshold: float, webhook: str | None) -> None:
        self.rules = tuple(rules)
        self.checks = tuple(checks)
        self.time = time_column
        self.threshold = threshold
        self.webhook = webhook
        self._names = pa.array([r.name for r in self.rules], pa.string())
        self._reasons = pa.array([r.reason for r in self.rules], pa.string())
        self.counts: dict[str, QualityCounts] = {}
        self._seen: dict[str, FirstWithin] = {}
        self._profiles: ValueState | None = None
        self._pending: dict[str, list[pa.RecordBatch]] = {}
        self.subtask = 0
        self.alert: QualityAlert | None = None

    def open(self, ctx: OperatorContext) -> None:
        self.step_id = ctx.step_id
        self.subtask = ctx.subtask
        self.counts = {DATASET: QualityCounts(), **{r.name: QualityCounts() for r in self.rules},
                       **{c.name: QualityCounts() for c in self.checks}}
        for rule in self.rules:
            if isinstance(rule, UniqueWithin):
                self._seen[rule.name] = FirstWithin(ctx.state, f"unique:{rule.name}", rule.keys, rule.within_ms)
        if self.checks:
            self._profiles = ctx.state.value("drift", {})
        self.alert = QualityAlert(ctx.step_id, ctx.subtask, self.threshold, self.webhook)

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        rows = batch.num_rows
        if rows == 0:
            return []
        now_ms = time.time_ns() // 1_000_000
        masks = {i: rule.failures(batch, now_ms) for i, rule in enumerate(self.rules) if not rule.stateful}
        if not self._seen and not any(pc.any(m).as_py() for m in masks.values()):  # the common case: all pass
            for rule in self.rules:
                self.counts[rule.name].add(rows, 0)
            self.counts[DATASET].add(rows, 0)
            if self.checks:
                self._profile(batch)
            if self.alert is not None:
                self.alert.observe(self.counts)
            return [batch]
        alive = np.ones(rows, dtype=bool)
        first_failed = np.full(rows, -1, dtype=np.int32)
        for index, rule in enumerate(self.rules):
            checked = int(alive.sum())
            if checked == 0:
                break
            if rule.stateful:
                positions = np.flatnonzero(alive)
                subset = batch if checked == rows else batch.take(pa.array(positions))
                seen = self._seen[rule.name]
                failed_positions = positions[~seen.admit(subset, record_times(subset, self.time, seen))]
            else:
                failed_positions = np.flatnonzero(_mask(masks[index]) & alive)
            self.counts[rule.name].add(checked, len(failed_positions))
            alive[failed_positions] = False
            first_failed[failed_positions] = index
        passed = int(alive.sum())
        self.counts[DATASET].add(rows, rows - passed)
        valid = batch if passed == rows else batch.filter(pa.array(alive))
        if passed < rows:
            self._quarantine(batch, first_failed)
        if self.checks and passed:
            self._profile(valid)
        if self.alert is not None:
            self.alert.observe(self.counts)
        return [valid] if passed else []

    def _quarantine(self, batch: pa.RecordBatch, first_failed: np.ndarray) -> None:
        positions = np.flatnonzero(first_failed >= 0)
        failed = batch.take(pa.array(positions))
        codes = pa.array(first_failed[positions])
        quarantined = pa.RecordBatch.from_arrays(
            [*failed.columns, self._names.take(codes), self._reasons.take(codes)],
            names=[*failed.schema.names, "rule", "reason"],
        )
        self._pending.setdefault(INVALID_PORT, []).append(quarantined)

    def _profile(self, valid: pa.RecordBatch) -> None:
        assert self._profiles is not None
        profilers: dict[str, WindowProfiler] = self._profiles.value
        found = []
        for check in self.checks:
            profiler = profilers.get(check.name)
            if profiler is None:
                profiler = profilers[check.name] = WindowProfiler(check, check.numeric(valid.schema))
            findings, compared, flagged = profiler.add(valid.column(check.column), self.subtask)
            self.counts[check.name].add(compared, flagged)
            found += findings
        if found:
            self._pending.setdefault(FINDINGS_PORT, []).append(findings_batch(found))

    def take_side_outputs(self) -> Mapping[str, list[pa.RecordBatch]]:
        taken, self._pending = self._pending, {}
        return taken

    def finish(self) -> list[pa.RecordBatch]:
        if self.alert is not None:
            self.alert.wait()
        return []

    def quality(self) -> Mapping[str, QualityCounts]:
        return self.counts

    def metrics(self) -> dict[str, float]:
        dataset = self.counts.get(DATASET, QualityCounts())
        return {"quarantined": float(dataset.failed), "keys": float(sum(len(s) for s in self._seen.values()))}

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        for seen in self._seen.values():
            seen.advance(watermark_ms)
        return []
