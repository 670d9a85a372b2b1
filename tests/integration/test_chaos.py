"""Chaos: kill operator actors of a running checkpointed job on Ray; the committed output must equal a clean
run's (nothing lost, nothing duplicated)."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path

import pytest

import headwater as hw
from headwater.sources import NexmarkSource
from headwater.testing import TestingSink

EVENTS = 300_000


def _flow(out: TestingSink, rate: float | None) -> hw.Dataflow:
    flow = hw.Dataflow("chaos")
    bids = flow.source("bids", NexmarkSource("bid", events=EVENTS, rate=rate, partitions=2, batch_size=4_096))
    (
        bids.filter(hw.col("price") > 1_000)
        .key_by("auction")
        .aggregate(step_id="per_auction", bids=hw.count(), volume=hw.sum("price"), top=hw.max("price"))
        .sink("out", out)
    )
    return flow


@pytest.mark.ray
@pytest.mark.chaos
def test_killing_random_actors_loses_and_duplicates_nothing(ray_cluster, tmp_path: Path) -> None:
    clean = TestingSink()
    hw.run(_flow(clean, rate=None), executor="local", parallelism=2)
    expected = clean.latest(["auction"])

    import ray

    out = TestingSink()
    checkpoint = hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=300), max_restarts=10)
    job = hw.start(_flow(out, rate=60_000), parallelism=2, checkpoint=checkpoint, batch_size=4_096)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 3 and time.monotonic() < deadline:
        time.sleep(1.2)
        actors = job.actors()
        if not actors or job.attempt > kills + 1:
            continue
        victim = rng.choice(sorted(actors))
        ray.kill(actors[victim], no_restart=True)
        kills += 1
        # wait until the supervisor restarted the job before the next kill
        while job.attempt <= kills and time.monotonic() < deadline:
            time.sleep(0.1)
    result = job.wait()

    assert kills == 3
    assert result.restarts == 3
    got = out.latest(["auction"])
    assert got == expected
    counts = {}
    for row in out.rows():  # the committed changelog never goes backwards (no replayed, duplicated updates)
        assert row["bids"] >= counts.get(row["auction"], 0)
        counts[row["auction"]] = row["bids"]
