"""``hw.run(..., autoscale=...)`` refuses what cannot work before anything starts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import headwater as hw
from headwater.errors import ConfigError
from headwater.sinks.testing import TestingSink
from headwater.testing import TestingSource

pytestmark = pytest.mark.autoscale


def flow() -> hw.Dataflow:
    f = hw.Dataflow("scaled")
    f.source("in", TestingSource([{"v": 1}, {"v": 2}])).sink("out", TestingSink())
    return f


def test_autoscale_needs_checkpointing() -> None:
    with pytest.raises(ConfigError, match="autoscale needs checkpointing"):
        hw.run(flow(), executor="local", autoscale=hw.AutoscaleConfig())


def test_an_explicit_parallelism_must_lie_within_the_bounds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outside AutoscaleConfig's bounds \[1, 2\]"):
        hw.run(flow(), executor="local", parallelism=3, autoscale=hw.AutoscaleConfig(max_parallelism=2),
               checkpoint=hw.CheckpointConfig(dir=tmp_path))


def test_max_parallelism_within_the_key_groups(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exceeds max_key_groups"):
        hw.run(flow(), executor="local", max_key_groups=4, autoscale=hw.AutoscaleConfig(max_parallelism=8),
               checkpoint=hw.CheckpointConfig(dir=tmp_path))


def test_not_an_autoscale_config() -> None:
    with pytest.raises(ConfigError, match="must be a headwater AutoscaleConfig"):
        hw.run(flow(), executor="local", autoscale={"max_parallelism": 2})  # type: ignore[arg-type]


def test_a_bounded_job_that_never_lags_runs_once_at_min_parallelism(tmp_path: Path) -> None:
    out = TestingSink()
    f = hw.Dataflow("scaled")
    f.source("in", TestingSource([{"v": i} for i in range(100)], batch_size=10)).sink("out", out)
    result = hw.run(f, executor="local", checkpoint=hw.CheckpointConfig(dir=tmp_path, interval=timedelta(milliseconds=50)),
                    autoscale=hw.AutoscaleConfig(min_parallelism=2, max_parallelism=3))
    assert result.rescales == []
    assert sorted(r["v"] for r in out.rows()) == list(range(100))
    assert {stage.parallelism for stage in result.plan.stages} == {1}, "one partition: one source subtask"
