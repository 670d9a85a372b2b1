"""A run owns its checkpoint directory and its sinks' directories (issue 16): concurrent runs are refused,
a SIGKILLed holder's successor takes over, output files never collide, staging is cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import headwater as hw
from headwater import runner
from headwater.engine.ownership import sink_owner
from headwater.errors import DirectoryInUseError, SinkError, UserCodeError
from headwater.sinks.files import FileSinkPartition, ParquetSink
from headwater.sinks.testing import TestingSink
from headwater.testing import TestingSource

ROWS = 600
EXECUTORS = ["local", pytest.param("ray", marks=pytest.mark.ray)]


def executor_options(executor: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    return {"executor": executor, "parallelism": 2 if executor == "ray" else 1}


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"k": i, "v": i * 10} for i in range(start, start + n)]


def paced_flow(sink: Any, pause: float) -> hw.Dataflow:
    """Half the rows, a pause, the other half: long enough for a second run to try the same directories."""
    flow = hw.Dataflow("owned")
    items = [*rows(0, ROWS // 2), TestingSource.PAUSE(pause), *rows(ROWS // 2, ROWS // 2)]
    flow.source("in", TestingSource(items, batch_size=50)).sink("out", sink)
    return flow


def checkpointing(directory: Path) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, interval=timedelta(milliseconds=100), restart_delay=timedelta(0))


def parquet_keys(directory: Path) -> Counter[int]:
    dataset = ds.dataset(directory, format="parquet")
    return Counter(dataset.to_table().column("k").to_pylist()) if dataset.files else Counter()


def staging_files(directory: Path) -> list[str]:
    """Staged files of every owner's area under ``_staging`` (not the areas' ``_owner`` records)."""
    return sorted(p.name for p in (directory / "_staging").rglob("*") if p.is_file() and p.name != "_owner")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_second_run_on_a_checkpoint_directory_in_use_fails_at_once_naming_the_holder(
    executor: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = executor_options(executor, request)
    first_sink = TestingSink(tmp_path / "first")
    first = hw.start(paced_flow(first_sink, 3.0), checkpoint=checkpointing(tmp_path / "chk"), **options)
    ray_sessions = []  # every ray_session the refused runs would enter
    real_session = runner.ray_session
    monkeypatch.setattr(runner, "ray_session", lambda config: ray_sessions.append(config) or real_session(config))
    try:
        started = time.monotonic()
        with pytest.raises(DirectoryInUseError) as info:
            hw.start(paced_flow(TestingSink(tmp_path / "second"), 0.0), checkpoint=checkpointing(tmp_path / "chk"),
                     **options)
        assert time.monotonic() - started < 2  # at once: not after the first run ended, nor after a Ray start
        assert ray_sessions == [], "the refused run started or joined Ray before taking its leases"
        message = str(info.value)
        assert "the checkpoint directory" in message and str(tmp_path / "chk") in message
        assert f"job 'owned' (run {first.holder.run_id}, pid {os.getpid()} (this process)" in message
        with pytest.raises(DirectoryInUseError, match="sink step 'out'"):  # the same sink, another checkpoint dir
            hw.start(paced_flow(first_sink, 0.0), checkpoint=checkpointing(tmp_path / "chk2"), **options)
        assert ray_sessions == []
    finally:
        monkeypatch.setattr(runner, "ray_session", real_session)
        result = first.wait(120)
    assert not result.stopped
    assert Counter(r["k"] for r in first_sink.rows()) == Counter(range(ROWS))  # every key exactly once
    assert TestingSink(tmp_path / "second").rows() == []
    # the lease ended with the run: the same directories are free for the next one, which resumes
    again = hw.run(paced_flow(first_sink, 0.0), checkpoint=checkpointing(tmp_path / "chk"), **options)
    assert again.restarts == 0 and Counter(r["k"] for r in first_sink.rows()) == Counter(range(ROWS))


KILLED_RUN = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    import headwater as hw
    from headwater.sinks.files import ParquetSink
    from headwater.testing import TestingSource

    base = sys.argv[1]
    rows = [{"k": i, "v": i * 10} for i in range(int(sys.argv[2]))]
    items = []
    for start in range(0, len(rows), 50):
        items += rows[start:start + 50] + [TestingSource.PAUSE(0.05)]
    flow = hw.Dataflow("owned")
    flow.source("in", TestingSource(items, batch_size=50)).sink("out", ParquetSink(base + "/out"))
    job = hw.start(flow, executor="local", checkpoint=hw.CheckpointConfig(dir=base + "/chk",
                                                                           interval=timedelta(milliseconds=100)))
    print("started", flush=True)
    job.wait()
    """
)


def test_the_lease_of_a_driver_killed_with_sigkill_is_taken_over_and_output_is_exactly_once(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path), str(ROWS)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while not list((tmp_path / "chk").glob("chk-*/_metadata")) and time.monotonic() < deadline:
            time.sleep(0.05)  # let it complete a checkpoint and commit some output first
        time.sleep(0.2)
        items = []  # the killed run's input, PAUSE markers included (they count in the source's positions)
        for start in range(0, ROWS, 50):
            items += [*rows(start, 50), TestingSource.PAUSE(0.05)]
        flow = hw.Dataflow("owned")
        flow.source("in", TestingSource(items, batch_size=50)).sink("out", ParquetSink(tmp_path / "out"))
        with pytest.raises(DirectoryInUseError, match=f"pid {holder.pid} on host"):
            hw.run(flow, executor="local", checkpoint=checkpointing(tmp_path / "chk"))
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait(10)
    assert parquet_keys(tmp_path / "out"), "the killed run had committed nothing: the test proves nothing"
    result = hw.run(flow, executor="local", checkpoint=checkpointing(tmp_path / "chk"))
    assert result.restarts == 0
    assert parquet_keys(tmp_path / "out") == Counter(range(ROWS))
    assert staging_files(tmp_path / "out") == []  # whatever the killed run had staged is gone


@pytest.mark.parametrize("executor", EXECUTORS)
def test_abandoned_staging_files_are_deleted_on_recovery_and_output_is_exactly_once(
    executor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options = executor_options(executor, request)
    out = tmp_path / "out"
    own = out / "_staging" / sink_owner(tmp_path / "chk").key  # this job's staging area
    own.mkdir(parents=True)
    (out / "_staging" / "unchecked").mkdir()
    (own / "part-000041-0000-0000-00000000deadbeef.parquet").write_bytes(b"prepared for a checkpoint never completed")
    (own / "inprogress-0005-0123456789abcdef.parquet").write_bytes(b"a subtask of a wider, crashed earlier run")
    (out / "_staging" / "unchecked" / "part-000001-0000-0000-00000000feedf00d.parquet").write_bytes(b"a killed run")
    items = [*rows(0, 300), TestingSource.ABORT(), *rows(300, 300)]
    flow = hw.Dataflow("owned")
    flow.source("in", TestingSource(items, batch_size=50)).sink("out", ParquetSink(out))
    result = hw.run(flow, checkpoint=checkpointing(tmp_path / "chk"), **options)
    assert result.restarts == 1
    assert staging_files(out) == []
    assert parquet_keys(out) == Counter(range(600))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failed_run_without_checkpointing_leaves_no_staging_files(
    executor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options = executor_options(executor, request)
    out = tmp_path / "out"
    (out / "_staging" / "unchecked").mkdir(parents=True)
    (out / "_staging" / "unchecked" / "inprogress-0003-0123456789abcdef.parquet").write_bytes(b"left by a killed run")

    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        if pa.compute.max(batch.column("k")).as_py() >= 400:
            raise ValueError("bad row")
        return batch

    flow = hw.Dataflow("owned")
    flow.source("in", TestingSource(rows(0, 600), batch_size=50)).map_batches(explode).sink("out", ParquetSink(out))
    with pytest.raises(UserCodeError, match="bad row"):
        hw.run(flow, **options)
    assert staging_files(out) == []
    assert [p.name for p in out.iterdir() if not p.name.startswith("_")] == []  # nothing was committed


@pytest.mark.parametrize("executor", EXECUTORS)
def test_two_jobs_one_after_the_other_on_one_sink_directory_keep_both_outputs(
    executor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options = executor_options(executor, request)
    out = tmp_path / "out"
    for start in (0, 1000):
        flow = hw.Dataflow("owned")
        flow.source("in", TestingSource(rows(start, 500), batch_size=50)).sink("out", ParquetSink(out))
        hw.run(flow, **options)
    assert parquet_keys(out) == Counter([*range(500), *range(1000, 1500)])


class CommitFailsWhileMarked(ParquetSink):
    """A ParquetSink whose commit fails while ``marker`` exists: its job ends after completing a checkpoint and
    before its sink committed it, as a crash at the worst moment would leave it."""

    def __init__(self, path: Path, marker: Path) -> None:
        super().__init__(path)
        self.marker = str(marker)

    def build_part(self, index: int, count: int) -> FileSinkPartition:
        return _CommitFailsWhileMarked(self, index)


class _CommitFailsWhileMarked(FileSinkPartition):
    def commit(self, token: Any) -> None:
        if os.path.exists(self._sink.marker):  # type: ignore[attr-defined]
            raise SinkError("simulated crash between a completed checkpoint and its commit", transient=False)
        super().commit(token)


def crashing_job(out: Path, marker: Path) -> hw.Dataflow:
    flow = hw.Dataflow("job_a")
    items = [*rows(0, 300), TestingSource.PAUSE(0.5), *rows(300, 300)]
    flow.source("in", TestingSource(items, batch_size=50)).sink("out", CommitFailsWhileMarked(out, marker))
    return flow


def staged_data_files(directory: Path) -> list[Path]:
    return [p for p in (directory / "_staging").rglob("*") if p.is_file() and p.name != "_owner"]


def test_another_job_on_the_sink_directory_never_deletes_what_a_crashed_checkpointed_job_prepared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, marker = tmp_path / "out", tmp_path / "crash"
    marker.touch()
    with pytest.raises(SinkError, match="simulated crash"):
        hw.run(crashing_job(out, marker), executor="local", checkpoint=checkpointing(tmp_path / "chkA"))
    assert list((tmp_path / "chkA").glob("chk-*/_metadata")), "job A completed no checkpoint"
    prepared = staged_data_files(out)
    assert prepared and parquet_keys(out) == Counter(), "job A must end with prepared, uncommitted output"
    # job B on the same sink directory, without checkpointing and then with its own checkpoint directory
    for start, checkpoint in ((1000, None), (2000, checkpointing(tmp_path / "chkB"))):
        flow = hw.Dataflow("job_b")
        flow.source("in", TestingSource(rows(start, 100), batch_size=50)).sink("out", ParquetSink(out))
        with caplog.at_level("WARNING", logger="headwater.sinks.files"):
            hw.run(flow, executor="local", checkpoint=checkpoint)
    assert all(p.exists() for p in prepared), "job B deleted files job A prepared for a completed checkpoint"
    assert f"the job with checkpoint directory {str(tmp_path / 'chkA')!r}" in caplog.text
    marker.unlink()
    result = hw.run(crashing_job(out, marker), executor="local", checkpoint=checkpointing(tmp_path / "chkA"))
    assert result.restarts == 0
    assert parquet_keys(out) == Counter([*range(600), *range(1000, 1100), *range(2000, 2100)])  # exactly once
    assert staged_data_files(out) == []


def test_a_job_restored_from_a_crashed_jobs_checkpoint_into_a_new_directory_commits_its_output(
    tmp_path: Path,
) -> None:
    out, marker = tmp_path / "out", tmp_path / "crash"
    marker.touch()
    with pytest.raises(SinkError, match="simulated crash"):
        hw.run(crashing_job(out, marker), executor="local", checkpoint=checkpointing(tmp_path / "chkA"))
    restore_from = sorted((tmp_path / "chkA").glob("chk-*/_metadata"))[-1].parent
    marker.unlink()
    config = hw.CheckpointConfig(dir=tmp_path / "chkB", interval=timedelta(milliseconds=100),
                                 restart_delay=timedelta(0), restore_from=restore_from)
    result = hw.run(crashing_job(out, marker), executor="local", checkpoint=config)
    assert result.restarts == 0
    assert parquet_keys(out) == Counter(range(600))  # the restored checkpoint's tokens committed, once
    assert staged_data_files(out) == []
