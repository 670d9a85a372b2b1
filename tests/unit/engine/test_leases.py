"""Directory ownership: location normalisation, the build-time overlap check, and flock leases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import headwater as hw
from headwater.engine.leases import LEASE_FILE, DirectoryLease, JobLeases, LeaseHolder
from headwater.engine.ownership import Claim, check_claims, location
from headwater.errors import DirectoryInUseError, OwnershipConflictError
from headwater.sinks.files import CsvSink, ParquetSink
from headwater.testing import TestingSink, TestingSource


def claim(path: str | Path, owner: str = "sink step 'out'") -> Claim:
    return Claim(owner, location(str(path)), owner)


# -- locations -------------------------------------------------------------------------------------------------

def test_locations_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert location(tmp_path / "link" / "x") == location(tmp_path / "real" / "x")
    assert location(f"file://{tmp_path}/real/./x/") == location(tmp_path / "real" / "x")
    assert location("s3://bucket/a//b/../c/") == location("S3://bucket/a/c")
    assert location("s3://bucket/a").path == "s3://bucket/a" and not location("s3://bucket/a").local
    assert location("s3://bucket/a") != location("gs://bucket/a")


def test_nested_and_equal_claims_conflict_siblings_do_not(tmp_path: Path) -> None:
    check_claims([claim(tmp_path / "out"), claim(tmp_path / "out2"), claim(tmp_path / "other" / "out")])
    with pytest.raises(OwnershipConflictError, match="both use"):
        check_claims([claim(tmp_path / "out", "sink step 'a'"), claim(tmp_path / "out", "sink step 'b'")])
    with pytest.raises(OwnershipConflictError, match="lies inside"):
        check_claims([claim(tmp_path / "out" / "deep", "sink step 'a'"), claim(tmp_path / "out", "sink step 'b'")])
    with pytest.raises(OwnershipConflictError, match="lies inside"):
        check_claims([claim("s3://b/out"), claim("s3://b/out/x")])


# -- the build-time check --------------------------------------------------------------------------------------

def two_sinks(first: object, second: object) -> hw.Dataflow:
    flow = hw.Dataflow("two-sinks")
    stream = flow.source("in", TestingSource([{"v": i} for i in range(10)]))
    stream.sink("left", first)  # type: ignore[arg-type]
    stream.filter(hw.col("v") > 4).sink("right", second)  # type: ignore[arg-type]
    return flow


def test_two_sinks_on_one_directory_fail_at_build_time_naming_both(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OwnershipConflictError) as info:
        hw.run(two_sinks(ParquetSink(out), CsvSink(out)), executor="local")
    message = str(info.value)
    assert "sink step 'left'" in message and "sink step 'right'" in message and str(out) in message
    assert "a directory of its own" in message
    assert not out.exists()  # refused before anything was written
    with pytest.raises(OwnershipConflictError, match="lies inside"):
        hw.plan_flow(two_sinks(ParquetSink(out), ParquetSink(out / "inner")))
    shared = TestingSink()
    with pytest.raises(OwnershipConflictError, match="both use"):
        hw.plan_flow(two_sinks(shared, shared))


def test_a_sink_in_or_around_the_checkpoint_directory_fails_at_build_time(tmp_path: Path) -> None:
    flow = two_sinks(ParquetSink(tmp_path / "state" / "out"), TestingSink())
    with pytest.raises(OwnershipConflictError, match="the checkpoint directory and sink step 'left'"):
        hw.run(flow, executor="local", checkpoint=hw.CheckpointConfig(dir=tmp_path / "state"))
    flow = two_sinks(ParquetSink(tmp_path / "out"), TestingSink())
    with pytest.raises(OwnershipConflictError, match="keep them apart"):
        hw.run(flow, executor="local", checkpoint=hw.CheckpointConfig(dir=tmp_path / "out" / "checkpoints"))


# -- leases ----------------------------------------------------------------------------------------------------

def test_a_lease_is_exclusive_within_one_process_and_names_its_holder(tmp_path: Path) -> None:
    first = DirectoryLease(claim(tmp_path, "the checkpoint directory"), LeaseHolder.this_process("job-a", "run1"))
    first.acquire()
    record = json.loads((tmp_path / LEASE_FILE).read_text())
    assert record["job"] == "job-a" and record["run_id"] == "run1" and record["pid"] == os.getpid()
    second = DirectoryLease(claim(tmp_path, "the checkpoint directory"), LeaseHolder.this_process("job-b"))
    with pytest.raises(DirectoryInUseError) as info:
        second.acquire()
    message = str(info.value)
    assert "job 'job-a'" in message and "run run1" in message and f"pid {os.getpid()} (this process)" in message
    assert str(tmp_path) in message and not second.held
    first.release()
    assert (tmp_path / LEASE_FILE).read_text() == ""  # released: nothing recorded, the file stays
    second.acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["job"] == "job-b"
    second.release()


def test_job_leases_take_all_or_none(tmp_path: Path) -> None:
    holder = LeaseHolder.this_process("other")
    busy = DirectoryLease(claim(tmp_path / "b"), holder)
    busy.acquire()
    leases = JobLeases([claim(tmp_path / "a"), claim(tmp_path / "b"), claim("s3://bucket/out")],
                       LeaseHolder.this_process("job"))
    assert [str(w.path) for w in leases.unprotected] == ["s3://bucket/out"]  # object stores: no lock
    with pytest.raises(DirectoryInUseError):
        leases.__enter__()
    again = DirectoryLease(claim(tmp_path / "a"), holder)
    again.acquire()  # the lease on 'a' taken before the refusal was released
    again.release()
    busy.release()
    with leases:
        assert all(lease.held for lease in leases.leases)
    assert not any(lease.held for lease in leases.leases)


HOLD = textwrap.dedent(
    """
    import sys, time
    from headwater.engine.leases import DirectoryLease, LeaseHolder
    from headwater.engine.ownership import Claim, location
    lease = DirectoryLease(Claim("the checkpoint directory", location(sys.argv[1])),
                           LeaseHolder.this_process("holder-job", "holder-run"))
    lease.acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_lease_of_a_process_killed_with_sigkill_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lease = DirectoryLease(claim(tmp_path, "the checkpoint directory"), LeaseHolder.this_process("next"))
        with pytest.raises(DirectoryInUseError) as info:
            lease.acquire()
        assert f"pid {holder.pid} on host" in str(info.value) and "holder-job" in str(info.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        lease.acquire()  # no expiry to wait out: the kernel dropped the dead process's lock
        assert time.monotonic() - started < 1.0
        assert json.loads((tmp_path / LEASE_FILE).read_text())["job"] == "next"
        lease.release()
    finally:
        holder.kill()
        holder.wait(10)


# -- leases come before Ray ------------------------------------------------------------------------------------

class RaySessionSpy:
    """Stands in for ``ray_session``: records each entry, then fails the start (no Ray in unit tests)."""

    def __init__(self) -> None:
        self.entered = 0

    def __call__(self, config: object) -> RaySessionSpy:
        return self

    def __enter__(self) -> None:
        self.entered += 1
        raise ConnectionError("simulated: the Ray cluster failed to start")

    def __exit__(self, *exc: object) -> None:
        return None


def one_sink(out: Path) -> hw.Dataflow:
    flow = hw.Dataflow("leased")
    flow.source("in", TestingSource([{"k": 1}])).sink("out", ParquetSink(out))
    return flow


def test_a_ray_run_on_a_directory_in_use_fails_before_ray_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = RaySessionSpy()
    monkeypatch.setattr("headwater.runner.ray_session", spy)
    holder = LeaseHolder.this_process("first")
    with JobLeases([claim(tmp_path / "chk", "the checkpoint directory")], holder):
        started = time.monotonic()
        with pytest.raises(DirectoryInUseError, match=f"job 'first' \\(run {holder.run_id}"):
            hw.run(one_sink(tmp_path / "out"), executor="ray", checkpoint=hw.CheckpointConfig(dir=tmp_path / "chk"))
        assert spy.entered == 0, "Ray was started (or joined) for a run that could not take its leases"
        assert time.monotonic() - started < 2
    # the refused run released the sink directory's lease it had taken before the refusal
    with JobLeases([claim(tmp_path / "out")], LeaseHolder.this_process("next")):
        pass


def test_the_leases_are_released_when_ray_fails_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = RaySessionSpy()
    monkeypatch.setattr("headwater.runner.ray_session", spy)
    with pytest.raises(ConnectionError, match="failed to start"):
        hw.run(one_sink(tmp_path / "out"), executor="ray", checkpoint=hw.CheckpointConfig(dir=tmp_path / "chk"))
    assert spy.entered == 1  # the leases were taken first, then Ray was tried
    with JobLeases([claim(tmp_path / "chk", "the checkpoint directory"), claim(tmp_path / "out")],
                   LeaseHolder.this_process("next")):
        pass  # both free again


def test_an_overlap_is_reported_as_a_conflict_before_any_lease_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = RaySessionSpy()
    monkeypatch.setattr("headwater.runner.ray_session", spy)
    with pytest.raises(OwnershipConflictError, match="the checkpoint directory and sink step 'out'"):
        hw.run(one_sink(tmp_path / "chk" / "out"), executor="ray", checkpoint=hw.CheckpointConfig(dir=tmp_path / "chk"))
    assert spy.entered == 0
