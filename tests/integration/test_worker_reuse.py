"""Worker processes of a finished job host the next job (headwater.engine.ray.worker_pool), and only when safe."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.ray.worker_pool import POOL
from headwater.errors import UserCodeError
from headwater.testing import TestingSink, TestingSource

pytestmark = pytest.mark.ray
KEY = ("shared", True, ())  # tune_allocator on, nothing reserved (the local Ray: worker_cpus 0)


def _drain(ray: Any) -> None:
    """Start from an empty pool: other tests' idle workers are killed."""
    for worker in POOL.take(ray, KEY, 1_000):
        ray.kill(worker, no_restart=True)


def _flow(rows: int, sink: TestingSink) -> hw.Dataflow:
    flow = hw.Dataflow("reuse")
    stream = flow.source("in", TestingSource([{"k": i % 5, "v": i} for i in range(rows)], batch_size=50))
    stream.key_by("k").aggregate(step_id="sums", total=hw.sum("v"), n=hw.count()).sink("out", sink)
    return flow


def _expected(rows: int) -> dict[int, tuple[int, int]]:
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for i in range(rows):
        out[i % 5][0] += i
        out[i % 5][1] += 1
    return {k: (total, n) for k, (total, n) in out.items()}


def _run(rows: int, **options: Any) -> tuple[set[Any], dict[int, tuple[int, int]]]:
    sink = TestingSink()
    job = hw.start(_flow(rows, sink), executor="ray", parallelism=2, **options)
    actors = {a._actor_id for a in job.actors().values()}
    job.wait()
    latest = sink.latest(["k"])
    return actors, {k: (r["total"], r["n"]) for k, r in latest.items()}


def test_a_finished_jobs_workers_host_the_next_job(ray_cluster: Any) -> None:
    _drain(ray_cluster)
    first, results = _run(1_000)
    assert results == _expected(1_000)
    assert POOL.idle_count() == len(first) == 2
    second, results = _run(2_000)
    assert second == first  # the same processes, and nothing of the first job's state leaked into the second
    assert results == _expected(2_000)


def test_checkpointed_failed_and_opted_out_jobs_kill_their_workers(ray_cluster: Any, tmp_path: Path) -> None:
    _drain(ray_cluster)
    _run(500, checkpoint=hw.CheckpointConfig(dir=tmp_path / "cp"))
    assert POOL.idle_count() == 0  # late coordinator notifications must never reach another job

    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("broken")

    flow = hw.Dataflow("boom")
    flow.source("in", TestingSource([{"v": 1}])).map_batches(explode, step_id="explode").sink("out", TestingSink())
    with pytest.raises(UserCodeError, match="broken"):
        hw.run(flow, executor="ray", parallelism=2)
    assert POOL.idle_count() == 0

    _run(500, reuse_workers=False)
    assert POOL.idle_count() == 0


def test_a_pooled_worker_that_died_is_replaced(ray_cluster: Any) -> None:
    _drain(ray_cluster)
    first, _ = _run(300)
    idle = POOL.take(ray_cluster, KEY, 10)
    ray_cluster.kill(idle[0], no_restart=True)
    assert POOL.give_back(ray_cluster, KEY, idle) == []
    second, results = _run(300)
    assert results == _expected(300)
    assert idle[0]._actor_id not in second and idle[1]._actor_id in second
