"""Data-quality rules for ``stream.validate(*rules)`` (``hw.rules``).

Example::

    import headwater as hw
    from datetime import timedelta

    valid = bids.validate(
        hw.rules.not_null("price"),
        hw.rules.between("price", 0, 1_000_000),
        hw.rules.one_of("channel", ["web", "app"]),
        hw.rules.matches("url", r"^https://"),
        hw.rules.unique_within("bid_id", timedelta(minutes=10)),
        hw.rules.fresh_within("date_time", timedelta(hours=1)),
        hw.rules.check("cheap_enough", hw.col("price") < hw.col("reserve") * 10),
        hw.rules.drift("price", window=10_000),
        step_id="bids_quality",
    )
    valid.invalid_records().sink("quarantine", ParquetSink("out/quarantine"))
    valid.quality_findings().sink("drift", ConsoleSink())

Row rules live in :mod:`headwater.rules.rules`, statistical checks in :mod:`headwater.rules.drift`.
"""

from headwater.rules.drift import FINDINGS_SCHEMA, DriftCheck, drift
from headwater.rules.rules import (
    Rule,
    between,
    check,
    fresh_within,
    matches,
    not_null,
    one_of,
    unique_within,
)

__all__ = [
    "FINDINGS_SCHEMA", "DriftCheck", "Rule", "between", "check", "drift", "fresh_within", "matches", "not_null",
    "one_of", "unique_within",
]
