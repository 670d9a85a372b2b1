"""Helpers for testing pipelines: ``TestingSource``, ``TestingSink`` and ``run_local``.

Example::

    from headwater.testing import TestingSource, TestingSink, run_local

    flow = hw.Dataflow("t")
    out = TestingSink()
    flow.source("in", TestingSource([{"x": 1}, {"x": 2}])).filter(hw.col("x") > 1).sink("out", out)
    run_local(flow)
    assert out.rows() == [{"x": 2}]
"""

from __future__ import annotations

from typing import Any

from headwater.dataflow import Dataflow
from headwater.engine.job import JobResult
from headwater.engine.runner import run
from headwater.sinks.testing import TestingSink
from headwater.sources.testing import TestingSource

__all__ = ["TestingSink", "TestingSource", "run_local"]


def run_local(flow: Dataflow, **options: Any) -> JobResult:
    """Run ``flow`` in this process with the same physical plan as on Ray (default parallelism 1)."""
    return run(flow, executor="local", **options)
