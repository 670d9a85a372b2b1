"""Side outputs do not break chaining: a step's one main consumer fuses into its chain while readers of its side
ports get edges from the middle of the chain (``Edge.src_step``); rows still reach every output."""

from __future__ import annotations

import pyarrow as pa
import pytest

import headwater as hw
from headwater.core.ports import INVALID_PORT, LATE_PORT, MAIN_PORT
from headwater.runner import plan_flow
from headwater.testing import TestingSink, TestingSource, run_local

pytestmark = pytest.mark.quality


def test_validation_fuses_with_what_follows_and_its_quarantine_leaves_mid_chain() -> None:
    flow = hw.Dataflow("fused")
    rows = [{"x": i if i % 4 else None} for i in range(20)]
    good, bad = TestingSink(), TestingSink()
    valid = flow.source("in", TestingSource(rows, batch_size=3)).validate(hw.rules.not_null("x"), step_id="v")
    valid.with_columns(y=hw.col("x") * 2, step_id="double").sink("good", good)
    valid.invalid_records(step_id="bad_rows").sink("bad", bad)
    plan = plan_flow(flow, executor="local")
    chain = next(s for s in plan.stages if "v" in s.step_ids)
    assert chain.step_ids[:3] == ("in", "v", "double")
    side = next(e for e in plan.edges if e.src_port == INVALID_PORT)
    assert side.src == chain.stage_id and side.src_step == "v"
    run_local(flow)
    assert sorted(r["y"] for r in good.rows()) == sorted(2 * i for i in range(20) if i % 4)
    assert sorted(r["x"] for r in bad.rows() if r["x"] is not None) == [] and len(bad.rows()) == 5


def test_late_records_of_a_window_in_the_middle_of_a_chain() -> None:
    schema = pa.schema([("t", pa.int64()), ("k", pa.string())])
    rows = [{"t": 5_000, "k": "a"}, {"t": 20_000, "k": "a"}, TestingSource.PAUSE(0.5), {"t": 1_000, "k": "a"}]
    flow = hw.Dataflow("late")
    source = flow.source("in", TestingSource(rows, batch_size=1, schema=schema), event_time="t")
    counts = source.window(hw.TumblingWindow(seconds=10)).aggregate(n=hw.count(), step_id="w")
    out, late = TestingSink(), TestingSink()
    counts.filter(hw.col("n") > 0, step_id="nonempty").sink("out", out)
    counts.late_records().sink("late", late)
    plan = plan_flow(flow, executor="local")
    assert any(s.step_ids[:2] == ("w", "nonempty") for s in plan.stages)
    assert any(e.src_port == LATE_PORT and e.src_step == "w" for e in plan.edges)
    assert all(e.src_step for e in plan.edges if e.src_port == MAIN_PORT)
    run_local(flow)
    assert [r["t"] for r in late.rows()] == [1_000]
    assert sorted(r["n"] for r in out.rows()) == [1, 1]
