"""The job registry and ``headwater status``: a running job is listed by another process with its steps,
parallelism, rates, lag, watermark and last checkpoint; it vanishes when the job ends or its driver dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from headwater.observability.registry import JobStatus, running_jobs
from headwater.sinks.testing import TestingSink
from headwater.sources.testing import TestingSource

ROOT = Path(__file__).resolve().parents[3]


def status(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEADWATER_REGISTRY_DIR": str(registry)}
    return subprocess.run([sys.executable, "-m", "headwater.cli", "status", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def slow_flow(name: str) -> hw.Dataflow:
    items: list[object] = []
    for i in range(2_000):
        items.append({"k": i % 5, "v": i, "ts": 1_000 * i})
        if i % 10 == 9:
            items.append(TestingSource.PAUSE(0.05))  # ~200 rows/s for ~10 s
    flow = hw.Dataflow(name)
    src = flow.source("src", TestingSource(partitions=[items], batch_size=10), event_time="ts")
    src.key_by("k").aggregate(step_id="sums", s=hw.sum("v")).sink("out", TestingSink())
    return flow


def test_status_of_a_running_job_from_another_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "jobs"
    monkeypatch.setenv("HEADWATER_REGISTRY_DIR", str(registry))
    job = hw.start(slow_flow("status_job"), executor="local", parallelism=1, metrics_port=0,
                   watermark_interval=timedelta(0),
                   checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=300)))
    try:
        entry: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = status(registry, "--json")
            assert done.returncode == 0, done.stderr
            jobs = json.loads(done.stdout)["jobs"]
            if jobs and jobs[0]["last_checkpoint_id"] and all(s["rate_in"] is not None for s in jobs[0]["steps"][1:]):
                entry = jobs[0]
                break
            time.sleep(0.5)
        assert entry, "the job never showed up with rates and a checkpoint"
        assert entry["job"] == "status_job" and entry["pid"] == os.getpid() and entry["executor"] == "local"
        assert entry["metrics_url"] == job.metrics_url
        steps = {s["step"]: s for s in entry["steps"]}
        assert list(steps) == ["src", "sums", "out"]
        assert steps["src"]["parallelism"] == 1 and steps["src"]["kind"] == "source"
        assert steps["src"]["lag_records"] is not None and steps["src"]["lag_records"] > 0  # rows still to come
        assert steps["sums"]["rows_in"] > 0 and steps["sums"]["rate_in"] >= 0
        assert steps["sums"]["watermark_ms"] is not None
        assert 0 <= entry["last_checkpoint_age_s"] < 15
        text = status(registry)
        assert "status_job" in text.stdout and "sums" in text.stdout and "last checkpoint" in text.stdout
    finally:
        job.stop()
        job.wait()
    done = status(registry, "--json")
    assert json.loads(done.stdout)["jobs"] == []  # the entry vanished with the job
    assert "no running jobs" in status(registry).stdout


def test_entries_of_dead_drivers_and_stale_heartbeats_vanish(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    now = time.time()
    import socket

    for name, entry_pid, host, updated in (("dead", pid, socket.gethostname(), now),
                                           ("stale", os.getpid(), "elsewhere", now - 60),
                                           ("live", os.getpid(), "elsewhere", now)):
        entry = JobStatus(name, entry_pid, host, "ray", now, updated, 2, 0, None)
        (tmp_path / f"{name}.json").write_text(json.dumps(entry.to_json()))
    (tmp_path / "garbage.json").write_text("{not json")
    assert [j.job for j in running_jobs(tmp_path, now)] == ["live"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.json", "live.json"]
