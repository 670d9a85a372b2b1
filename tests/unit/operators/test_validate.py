"""The validation operator: first failed rule, counters, unique_within state across a snapshot/restore, drift
findings, and quality alerts (log and a real webhook)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pytest

import headwater as hw
from headwater.core.operator import OperatorContext
from headwater.core.ports import FINDINGS_PORT, INVALID_PORT
from headwater.core.quality import DATASET
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.core.state.store import OperatorStateStore
from headwater.operators.quality.validate import ValidateOperator
from headwater.testing import through_checkpoint_files

pytestmark = pytest.mark.quality


def operator(*rules: Any, store: OperatorStateStore | None = None, threshold: float = 0.99,
             webhook: str | None = None) -> ValidateOperator:
    row_rules = [r for r in rules if not isinstance(r, hw.rules.DriftCheck)]
    checks = [r for r in rules if isinstance(r, hw.rules.DriftCheck)]
    op = ValidateOperator(row_rules, checks, None, threshold, webhook)
    op.open(OperatorContext("v", 0, 1, store) if store is not None else OperatorContext("v", 0, 1))
    return op


def test_first_failed_rule_names_the_row_and_counts_follow() -> None:
    op = operator(hw.rules.not_null("x"), hw.rules.between("x", 0, 10), hw.rules.check("even", hw.col("x") % 2 == 0))
    out = op.process(pa.RecordBatch.from_pydict({"x": [None, 20, 3, 4, -1, 6]}))
    assert [r["x"] for r in pa.Table.from_batches(out).to_pylist()] == [4, 6]
    invalid = pa.Table.from_batches(op.take_side_outputs()[INVALID_PORT]).to_pylist()
    assert [(r["x"], r["rule"]) for r in invalid] == [
        (None, "not_null(x)"), (20, "between(x, 0, 10)"), (3, "even"), (-1, "between(x, 0, 10)")]
    assert invalid[0]["reason"] == "x is null" and invalid[1]["reason"] == "x is outside [0, 10]"
    q = op.quality()
    assert (q["not_null(x)"].checked, q["not_null(x)"].failed) == (6, 1)
    assert (q["between(x, 0, 10)"].checked, q["between(x, 0, 10)"].failed) == (5, 2)
    assert (q["even"].checked, q["even"].passed, q["even"].failed) == (3, 2, 1)
    assert (q[DATASET].checked, q[DATASET].failed, q[DATASET].score) == (6, 4, 2 / 6)


def test_unique_within_survives_a_checkpoint_and_sees_only_rows_that_passed_before_it() -> None:
    rules = (hw.rules.not_null("v"), hw.rules.unique_within("k", timedelta(hours=1)))
    store = OperatorStateStore("v", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
    op = operator(*rules, store=store)
    first = op.process(pa.RecordBatch.from_pydict({"k": ["a", "b", "a", "c"], "v": [1, None, 2, 3]}))
    assert pa.Table.from_batches(first).column("k").to_pylist() == ["a", "c"]  # b was null: not seen
    tables, values = store.snapshot()

    restored_store = OperatorStateStore("v", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
    restored = operator(*rules, store=restored_store)
    restored_store.restore(through_checkpoint_files(tables), values)
    out = restored.process(pa.RecordBatch.from_pydict({"k": ["a", "b", "c", "d"], "v": [4, 5, 6, 7]}))
    assert pa.Table.from_batches(out).column("k").to_pylist() == ["b", "d"]
    invalid = pa.Table.from_batches(restored.take_side_outputs()[INVALID_PORT])
    assert invalid.column("rule").to_pylist() == ["unique_within(k, 3600s)"] * 2


def test_drift_flags_a_shifted_window_even_when_every_row_passes() -> None:
    op = operator(hw.rules.not_null("x"), hw.rules.drift("x", window=1000, distinct=None))
    rng = np.random.default_rng(7)
    for values in (rng.normal(10, 1, 1000), rng.normal(10, 1, 1000)):  # baseline, then the same shape
        op.process(pa.RecordBatch.from_pydict({"x": values}))
    assert FINDINGS_PORT not in op.take_side_outputs()
    shifted = rng.normal(20, 1, 1000).tolist()
    shifted[:200] = [None] * 200
    op.process(pa.RecordBatch.from_pydict({"x": pa.array(shifted, pa.float64())}))  # nulls fail not_null ...
    side = op.take_side_outputs()
    assert len(pa.Table.from_batches(side[INVALID_PORT])) == 200
    op.process(pa.RecordBatch.from_pydict({"x": rng.normal(20, 1, 1000)}))  # ... the window fills with passing rows
    findings = pa.Table.from_batches(op.take_side_outputs()[FINDINGS_PORT]).to_pylist()
    statistics = {f["statistic"] for f in findings}
    assert {"mean", "quantile_0.5", "quantile_0.95"} <= statistics and "stddev" not in statistics
    assert all(f["check"] == "drift(x)" and f["window"] == 2 for f in findings)
    assert op.quality()["drift(x)"].checked == 2 and op.quality()["drift(x)"].failed == 1


def test_drift_profiles_survive_a_checkpoint() -> None:
    check = hw.rules.drift("x", window=10)
    store = OperatorStateStore("v", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
    op = operator(check, store=store)
    op.process(pa.RecordBatch.from_pydict({"x": list(range(15))}))  # baseline 0..9, 5 pending
    tables, values = store.snapshot()
    restored_store = OperatorStateStore("v", DEFAULT_MAX_KEY_GROUPS, range(DEFAULT_MAX_KEY_GROUPS))
    restored = operator(check, store=restored_store)
    restored_store.restore(tables, values)
    restored.process(pa.RecordBatch.from_pydict({"x": [1000] * 5}))
    findings = pa.Table.from_batches(restored.take_side_outputs()[FINDINGS_PORT]).to_pylist()
    assert {f["statistic"] for f in findings} >= {"mean"} and findings[0]["window"] == 1


def test_null_rate_and_distinct_count_of_a_string_column() -> None:
    op = operator(hw.rules.drift("s", window=100))
    op.process(pa.RecordBatch.from_pydict({"s": [f"v{i % 50}" for i in range(100)]}))
    op.process(pa.RecordBatch.from_pydict({"s": ["v1"] * 50 + [None] * 50}))
    findings = {f["statistic"]: f for f in pa.Table.from_batches(op.take_side_outputs()[FINDINGS_PORT]).to_pylist()}
    assert set(findings) == {"null_rate", "distinct_count"}
    assert findings["null_rate"]["baseline"] == 0 and findings["null_rate"]["observed"] == 0.5


class _Collector(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802  # http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


@pytest.mark.http
def test_a_score_below_the_threshold_logs_once_and_posts_the_webhook(
    webhook: str, caplog: pytest.LogCaptureFixture
) -> None:
    op = operator(hw.rules.between("x", 0, 10), threshold=0.9, webhook=webhook)
    with caplog.at_level(logging.WARNING, logger="headwater.quality"):
        op.process(pa.RecordBatch.from_pydict({"x": [1] * 95 + [50] * 5}))  # 95 %: fine
        assert not caplog.records
        op.process(pa.RecordBatch.from_pydict({"x": [50] * 20}))  # 95/120 = 79 %
        op.process(pa.RecordBatch.from_pydict({"x": [50] * 20}))  # still below: no second alert
        op.finish()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "below the threshold 90.00%" in warnings[0].getMessage()
    assert webhook not in warnings[0].getMessage()
    assert len(_Collector.received) == 1
    alert = _Collector.received[0]
    assert alert["step"] == "v" and alert["checked"] == 120 and alert["failed"] == 25
    assert alert["rules"]["between(x, 0, 10)"]["failed"] == 25


def test_no_alert_before_enough_rows(caplog: pytest.LogCaptureFixture) -> None:
    op = operator(hw.rules.between("x", 0, 10))
    with caplog.at_level(logging.WARNING, logger="headwater.quality"):
        op.process(pa.RecordBatch.from_pydict({"x": [50] * 10}))
    assert not caplog.records


def test_the_job_result_reports_the_quality_score() -> None:
    from headwater.testing import TestingSink, TestingSource, run_local

    flow = hw.Dataflow("q")
    valid = flow.source("in", TestingSource([{"x": i} for i in range(10)])).validate(
        hw.rules.between("x", 0, 7), step_id="v")
    valid.sink("good", TestingSink())
    valid.invalid_records().sink("bad", TestingSink())
    result = run_local(flow)
    assert result.quality_score("v") == 0.8 and result.quality["v"]["between(x, 0, 7)"].failed == 2
    assert "quality of v: 80.00% of 10 rows passed (2 quarantined)" in str(result)
