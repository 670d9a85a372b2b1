"""Autoscaling on Ray: a source whose rate steps up 5x makes the controller raise parallelism; when the rate
drops it goes back down; the committed output equals the input exactly once throughout.

The work per row is a sleep (2 ms: 500 rows/s per subtask), so extra subtasks add capacity even on this
2-core machine; ``ScheduledSource`` reports its lag (rows released by its schedule but not read yet), as Kafka
reports offsets behind the end, and a restart at a new parallelism finds the rows released meanwhile waiting.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

import headwater as hw
from headwater.sinks.testing import TestingSink
from headwater.sources import ScheduledSource

pytestmark = [pytest.mark.autoscale, pytest.mark.ray, pytest.mark.slow]

#: (seconds, rows/s over all partitions): slow, then 5x that (2x what one subtask does), then slow again
PHASES = [(8.0, 200.0), (24.0, 1000.0), (40.0, 100.0)]


def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.002 * batch.num_rows)  # 500 rows/s per subtask
    return batch


def test_parallelism_follows_a_rate_step_up_and_down_and_nothing_is_lost_or_repeated(
    ray_cluster: Any, tmp_path: Path
) -> None:
    out = TestingSink()
    flow = hw.Dataflow("autoscaled")
    source = ScheduledSource(PHASES, partitions=4)
    flow.source("events", source).map_batches(slow).sink("out", out)
    autoscale = hw.AutoscaleConfig(
        min_parallelism=1, max_parallelism=4, target_lag=timedelta(seconds=1), cooldown=timedelta(seconds=4),
        scale_up_after=timedelta(seconds=2), scale_down_after=timedelta(seconds=4), interval=timedelta(milliseconds=500),
        request_resources=False,
    )
    job = hw.start(flow, autoscale=autoscale, metrics_port=0,
                   checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=500)))
    result = job.wait(240)
    ids = Counter(row["id"] for row in out.rows())
    assert sorted(ids) == list(range(source.total)), "every row arrived"
    assert max(ids.values()) == 1, "none twice"
    directions = [d.direction for d in result.rescales]
    assert "up" in directions, result.rescales
    assert max(d.parallelism for d in result.rescales) >= 2
    assert "down" in directions[directions.index("up"):], f"back down once the rate fell: {result.rescales}"
    assert all(1 <= d.parallelism <= 4 for d in result.rescales)
    assert job.metrics_url is not None
    exported = {(s.name, s.labels.get("direction")): s.value
                for family in text_string_to_metric_families(httpx.get(job.metrics_url, timeout=10).text)
                for s in family.samples if s.labels.get("job") == "autoscaled"}
    assert exported[("headwater_autoscale_decisions_total", "up")] == directions.count("up")
    assert exported[("headwater_autoscale_decisions_total", "down")] == directions.count("down")
    assert exported[("headwater_parallelism", None)] == result.rescales[-1].parallelism
    assert exported[("headwater_restarts_total", None)] == 0 == job.restarts, "a rescale is not a restart"
