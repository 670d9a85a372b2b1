"""Autoscaling on Ray's fake multi-node cluster: a 5x rate step makes the controller raise parallelism and
the Ray autoscaler add nodes for the workers' CPUs; when the rate drops both go back down; the committed output
equals the input exactly once.

The cluster: a 1-CPU head and up to 3 worker nodes of 1 CPU that Ray's autoscaler starts on this machine
(:class:`headwater.engine.ray.fake_cluster.FakeCluster`, token auth on). The job's driver is a process of its
own joined by address (tests/integration/fake_cluster_job.py), so every worker reserves a CPU as on a real
cluster: parallelism 2 cannot be placed on the head alone, and the autoscaler must add a node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from headwater.engine.ray.fake_cluster import FakeCluster

pytestmark = [pytest.mark.autoscale, pytest.mark.ray, pytest.mark.slow]

DRIVER = Path(__file__).with_name("fake_cluster_job.py")


def test_a_rate_step_adds_nodes_and_subtasks_and_both_go_back_down_exactly_once(tmp_path: Path) -> None:
    with FakeCluster(tmp_path / "cluster", max_workers=3) as cluster:
        env = {**os.environ, **cluster.env(), "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p)}
        report = tmp_path / "report.json"
        done = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "out"), str(tmp_path / "ckpt"), str(report)],
                              env=env, capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(report.read_text())

    ids = Counter(ds.dataset(tmp_path / "out", format="parquet").to_table(columns=["id"]).column("id").to_pylist())
    assert sorted(ids) == list(range(seen["total"])), "every row committed"
    assert max(ids.values()) == 1, "none twice"

    decisions = seen["decisions"]
    directions = [d["direction"] for d in decisions]
    assert "up" in directions and max(d["parallelism"] for d in decisions) >= 2, decisions
    first_up = directions.index("up")
    assert "down" in directions[first_up:], f"back down once the rate fell: {decisions}"
    assert seen["restarts"] == 0, "a rescale is not a restart"

    during = seen["nodes_during"]
    peak = max(n for _, n in during)
    assert peak >= 1, f"the autoscaler added a node for the wider job: {during}"
    up_at = decisions[first_up]["at"]
    assert any(n >= 1 for t, n in during if t > up_at), "the node came after the scale-up decision"
    assert seen["nodes_after"][-1][1] == 0, f"idle nodes released once the job ended: {seen['nodes_after']}"
    last_down = max(d["at"] for d in decisions if d["direction"] == "down")
    later = [n for t, n in during if t > last_down + 15]
    if later:  # the job still ran 15 s after scaling down: by then the idle nodes were released
        assert min(later) < peak, f"nodes went down while the job ran on: {during}"
