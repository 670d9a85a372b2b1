"""Counters of data-quality checks, shared by the validation operator, the runtime and the job's metrics.

Per validation step, one :class:`QualityCounts` per rule (by rule name) and one for the whole dataset under
:data:`DATASET`. Invariants: ``passed + failed == checked``; a rule checks the rows that passed every rule
before it (its ``failed`` rows are those quarantined under its name), so the dataset's ``checked`` is the
step's input and its ``failed`` the quarantined rows. For a statistical check (``drift(...)``) the unit is a
window, not a row: ``checked`` windows compared with the baseline, ``failed`` those with findings.
"""

from __future__ import annotations

from dataclasses import dataclass

DATASET = "*"
"""The rule name under which a validation step's dataset-level counts are kept (all rules together)."""


@dataclass
class QualityCounts:
    checked: int = 0
    passed: int = 0
    failed: int = 0

    def add(self, checked: int, failed: int) -> None:
        self.checked += checked
        self.failed += failed
        self.passed += checked - failed

    def merge(self, other: QualityCounts) -> None:
        self.add(other.checked, other.failed)

    @property
    def score(self) -> float:
        """Share of checked rows that passed (1.0 when nothing was checked yet)."""
        return self.passed / self.checked if self.checked else 1.0
