"""cluster/grafana/headwater.json: every query names only metrics the engine's exporter produces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from headwater.observability import exported_names

DASHBOARD = Path(__file__).resolve().parents[3] / "cluster" / "grafana" / "headwater.json"
METRIC = re.compile(r"\b(headwater_[a-z0-9_]+)")


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets' ``expr`` and template variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, (str, dict)):
                yield value if isinstance(value, str) else value.get("query", "")
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [q for q in queries(dashboard) if q != "prometheus"]  # the datasource variable's plugin type
    assert len(found) >= 20
    known = exported_names()
    for query in found:
        names = METRIC.findall(query)
        assert names, f"query names no Headwater metric: {query}"
        unknown = sorted(set(names) - known)
        assert not unknown, f"query {query!r} names {unknown}, which the exporter does not produce"


def test_the_check_catches_a_misspelt_metric() -> None:
    assert "headwater_records_in" not in exported_names()  # a counter is queried with its _total suffix
    assert {"headwater_records_in_total", "headwater_latency_seconds_bucket"} <= exported_names()


def test_the_dashboard_covers_the_headline_metrics() -> None:
    text = DASHBOARD.read_text()
    for name in ("headwater_records_in_total", "headwater_records_out_total", "headwater_latency_seconds_bucket",
                 "headwater_source_lag_records", "headwater_source_lag_seconds", "headwater_checkpoints_total",
                 "headwater_checkpoint_duration_seconds_bucket", "headwater_watermark_lag_seconds"):
        assert name in text
