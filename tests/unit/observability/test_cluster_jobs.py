"""The cluster-wide job list: drivers of jobs on a joined Ray cluster report their registry entries to a
detached actor, and ``headwater status --address`` lists them from another machine's point of view (a process
with a registry directory of its own, so only the cluster can tell it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from headwater.observability import cluster_jobs as module
from headwater.observability.cluster_jobs import ClusterJobs, cluster_jobs
from headwater.observability.collector import JobSnapshot
from headwater.observability.registry import JobRegistration
from headwater.runner import plan_flow
from headwater.sinks.testing import TestingSink
from headwater.sources.testing import TestingSource

ROOT = Path(__file__).resolve().parents[3]


def test_the_actor_keeps_entries_while_heartbeats_come(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(module.time, "time", lambda: clock[0])
    jobs = ClusterJobs()
    jobs.put("a", {"job": "a"})
    jobs.put("b", {"job": "b"})
    clock[0] += module.STALE_S - 1
    jobs.put("b", {"job": "b", "beat": 2})
    assert jobs.list() == [{"job": "a"}, {"job": "b", "beat": 2}]
    clock[0] += 2  # a's driver died without removing its entry: stale now
    assert jobs.list() == [{"job": "b", "beat": 2}]
    jobs.remove("b")
    jobs.remove("never-there")
    assert jobs.list() == []


class Reports:
    """A ClusterReporter that remembers what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.calls.append(("put", key, entry["job"]))

    def remove(self, key: str) -> None:
        self.calls.append(("remove", key, None))


def test_a_registration_reports_each_heartbeat_and_its_end(tmp_path: Path) -> None:
    reports = Reports()
    flow = hw.Dataflow("orders")
    flow.source("in", TestingSource([{"v": 1}])).sink("out", TestingSink())
    physical = plan_flow(flow, executor="local")
    registration = JobRegistration("orders", "local", lambda: JobSnapshot(job="orders", plan=physical, subtasks=[]),
                                   None, tmp_path, reports)
    registration.beat()
    registration.beat()
    registration.close()
    key = registration.path.name
    assert reports.calls == [("put", key, "orders"), ("put", key, "orders"), ("remove", key, None)]


DRIVER = textwrap.dedent("""
    import sys, time
    import headwater as hw
    from headwater.sinks.testing import TestingSink
    from headwater.sources import ScheduledSource

    flow = hw.Dataflow("reported_to_the_cluster")
    flow.source("events", ScheduledSource([(15.0, 40.0)], partitions=1)).sink("out", TestingSink())
    hw.run(flow, ray_address=sys.argv[1], parallelism=1, worker_cpus=0, metrics_port=None)
""")


@pytest.mark.ray
def test_a_job_on_a_joined_cluster_is_listed_from_anywhere_and_vanishes_when_it_ends(
        ray_cluster: Any, tmp_path: Path) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEADWATER_REGISTRY_DIR": str(tmp_path / "driver-machine")}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, address], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        listed: list[Any] = []
        while time.monotonic() < deadline and not listed:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            listed = [j for j in cluster_jobs(ray_cluster) if j.job == "reported_to_the_cluster"]
            time.sleep(0.5)
        assert listed, "the driver's job reached the cluster's list"
        assert listed[0].pid == driver.pid and [s.step for s in listed[0].steps][:1] == ["events"]

        elsewhere = {**env, "HEADWATER_REGISTRY_DIR": str(tmp_path / "another-machine")}
        shown = subprocess.run([sys.executable, "-m", "headwater.cli", "status", "--json", "--address", address],
                               env=elsewhere, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr[-3000:]
        answer = json.loads(shown.stdout)
        assert answer["cluster"] == address
        assert [j["job"] for j in answer["jobs"]] == ["reported_to_the_cluster"]
    finally:
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err[-3000:]
    assert [j for j in cluster_jobs(ray_cluster) if j.job == "reported_to_the_cluster"] == [], "removed at its end"


def test_status_names_a_cluster_it_cannot_reach(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEADWATER_REGISTRY_DIR": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "headwater.cli", "status", "--address", "127.0.0.1:1"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2 and "could not reach the Ray cluster at '127.0.0.1:1'" in shown.stderr
