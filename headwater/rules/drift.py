"""Statistical checks: flag a dataset whose *shape* changes even when every row passes its rules.

``hw.rules.drift("price", window=10_000)`` profiles the column over consecutive windows of ``window`` rows
(per subtask, over the rows that passed the row rules). The first window is the baseline; each later window
is compared with it, and every statistic that moved more than its tolerance is a *finding*: a row of the
step's ``"findings"`` output (``stream.quality_findings()``) and a failed check in the quality metrics.

Statistics and their tolerances (``None`` switches one off):

* ``null_rate``: share of nulls; a finding when it moves more than ``null_rate`` (absolute, e.g. 0.05 = 5 points).
* ``distinct``: number of distinct values; a finding when it changes by more than this share of the baseline's.
* ``mean``: a finding when the mean moves more than ``mean`` baseline standard deviations.
* ``stddev``: a finding when the standard deviation changes by more than this share of the baseline's.
* ``quantiles``: each quantile ``q`` moving more than ``quantile_shift`` baseline standard deviations.

Mean, standard deviation and quantiles apply to numeric columns only. Invariant: the configuration is frozen
and checked at build time (:meth:`DriftCheck.bind`); the profiles themselves are checkpointed operator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from headwater.errors import ConfigError, UnknownColumnError, unknown_column_message


@dataclass(frozen=True)
class DriftCheck:
    """A statistical check over windows of one column (build it with :func:`drift`)."""

    name: str
    column: str
    window: int
    null_rate: float | None = 0.05
    distinct: float | None = 0.5
    mean: float | None = 3.0
    stddev: float | None = 0.5
    quantiles: tuple[float, ...] = (0.5, 0.95)
    quantile_shift: float | None = 3.0

    def bind(self, schema: pa.Schema, where: str) -> None:
        """Check the column exists; a non-numeric column gets only the null-rate and distinct-count checks."""
        if schema.get_field_index(self.column) < 0:
            raise UnknownColumnError(f"{where}: check {self.name}: {unknown_column_message(self.column, schema.names)}")

    def numeric(self, schema: pa.Schema) -> bool:
        kind = schema.field(self.column).type
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


FINDINGS_SCHEMA = pa.schema([
    pa.field("check", pa.string()),
    pa.field("column", pa.string()),
    pa.field("statistic", pa.string()),
    pa.field("baseline", pa.float64()),
    pa.field("observed", pa.float64()),
    pa.field("tolerance", pa.float64()),
    pa.field("window", pa.int64()),
    pa.field("subtask", pa.int32()),
    pa.field("reason", pa.string()),
])
"""Rows of the ``"findings"`` output: which check and statistic moved, from what to what, in which window
(0-based per subtask, the baseline being window 0) of which subtask."""


def _tolerance(value: float | None, what: str, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}: {what} must be a non-negative number or None (off), got {value!r}")
    return float(value)


def drift(
    column: str, *, window: int = 10_000, null_rate: float | None = 0.05, distinct: float | None = 0.5,
    mean: float | None = 3.0, stddev: float | None = 0.5, quantiles: tuple[float, ...] = (0.5, 0.95),
    quantile_shift: float | None = 3.0, name: str | None = None,
) -> DriftCheck:
    """Profile ``column`` over windows of ``window`` rows and flag drift from the first (baseline) window;
    see the module docstring for the statistics. Default name ``drift(column)``."""
    if not isinstance(column, str) or not column:
        raise ConfigError(f"drift() takes a column name first, got {column!r}")
    label = name if name is not None else f"drift({column})"
    if not isinstance(label, str) or not label:
        raise ConfigError(f"a check's name must be a non-empty string, got {name!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ConfigError(f"{label}: window is a number of rows of at least 2, got {window!r}")
    qs = tuple(quantiles)
    if not all(isinstance(q, (int, float)) and 0 < q < 1 for q in qs):
        raise ConfigError(f"{label}: quantiles must lie strictly between 0 and 1, got {quantiles!r}")
    return DriftCheck(
        label, column, window, _tolerance(null_rate, "null_rate", label), _tolerance(distinct, "distinct", label),
        _tolerance(mean, "mean", label), _tolerance(stddev, "stddev", label), tuple(float(q) for q in qs),
        _tolerance(quantile_shift, "quantile_shift", label),
    )
