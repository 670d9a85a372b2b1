"""Failures no restart can cure fail a checkpointed run at once, with their cause — in-process and on Ray.

Before failures were classified, each of these restarted the job ``max_restarts`` times (12-167 s) before
failing: a parse error in an input file, a UDF that changes its output schema, a full or read-only checkpoint
directory. Real file systems are used for the disk conditions: a small tmpfs fills up for real, and a tmpfs
remounted read-only refuses writes for real (root ignores permission bits, so ``chmod`` would not do).
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import CheckpointError, HeadwaterError, SchemaMismatchError, SourceError
from headwater.sources.files import CsvSource, JsonLinesSource
from headwater.testing import TestingSink, TestingSource

PAUSE = TestingSource.PAUSE


@pytest.fixture(params=["local", "ray"])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        request.node.add_marker(pytest.mark.ray)
    return str(request.param)


def checkpointing(directory: Path) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, max_restarts=5, interval=timedelta(milliseconds=100))


def run_failing(flow: hw.Dataflow, executor: str, checkpoint: hw.CheckpointConfig,
                expected: type[BaseException]) -> tuple[BaseException, float, int]:
    """Run ``flow`` until it fails with ``expected``; return the error, the seconds it took, the attempts made."""
    started = time.monotonic()
    job = hw.start(flow, executor=executor, checkpoint=checkpoint, parallelism=1)
    with pytest.raises(expected) as raised:
        job.wait(timeout=120)
    return raised.value, time.monotonic() - started, job.attempt


def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    mountpoint.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {exc}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system: room for a lease and a small checkpoint, not for a large one."""
    yield from tmpfs(tmp_path / "small", "256k")


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    for mountpoint in tmpfs(tmp_path / "ro", "1m"):
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True, capture_output=True)
        yield mountpoint


# -- bad input ------------------------------------------------------------------------------------------------------
def test_a_csv_parse_error_fails_at_once(executor: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("id,amount\n" + "".join(f"{i},{i * 10}\n" for i in range(1000)) + "1000,10,extra\n")
    flow = hw.Dataflow("csv_error")
    schema = pa.schema([("id", pa.int64()), ("amount", pa.int64())])
    flow.source("orders", CsvSource(path, schema=schema)).sink("out", TestingSink(tmp_path / "out"))

    error, took, attempts = run_failing(flow, executor, checkpointing(tmp_path / "chk"), SourceError)

    assert attempts == 1, "a parse error is not retried"
    assert took < 5
    assert error.step_id == "orders" and str(path) in str(error) and "Expected 2 columns, got 3" in str(error)


def test_bad_json_lines_fail_at_once(executor: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(1000)) + '{"id": 1000\n')
    flow = hw.Dataflow("json_error")
    source = JsonLinesSource(path, schema=pa.schema([("id", pa.int64())]))
    flow.source("events", source).sink("out", TestingSink(tmp_path / "out"))

    error, took, attempts = run_failing(flow, executor, checkpointing(tmp_path / "chk"), SourceError)

    assert attempts == 1 and took < 5
    assert error.step_id == "events" and str(path) in str(error) and "JSON parse error" in str(error)


def changes_its_schema(batch: pa.RecordBatch) -> pa.RecordBatch:
    values = batch.column("v").to_pylist()
    if values[0] >= 50:
        return pa.record_batch({"v": pa.array([str(v) for v in values])})
    return batch


def test_a_udf_that_changes_its_output_schema_fails_naming_the_udf(executor: str, tmp_path: Path) -> None:
    flow = hw.Dataflow("schema_change")
    (flow.source("in", TestingSource([{"v": i} for i in range(100)], batch_size=10))
     .map_batches(changes_its_schema, step_id="stringify")
     .sink("out", TestingSink(tmp_path / "out")))

    error, took, attempts = run_failing(flow, executor, checkpointing(tmp_path / "chk"), SchemaMismatchError)

    assert attempts == 1 and took < 5
    assert error.step_id == "stringify", "reported at the UDF, not at the sink"
    assert "column 'v' is string, expected int64" in str(error)


# -- checkpoint storage -----------------------------------------------------------------------------------------------
def many_keys_then_slow(rows: int = 40_000, pauses: int = 100) -> TestingSource:
    """A large keyed state early, then ~5 s of trickling input: checkpoints are tried long before the end."""
    items: list[Any] = [{"k": f"key-{i:06d}", "v": i} for i in range(rows)]
    for i in range(pauses):
        items += [PAUSE(0.05), {"k": f"key-{i:06d}", "v": i}]
    return TestingSource(items, batch_size=8_192)


def test_a_full_checkpoint_disk_fails_at_once_naming_the_directory(executor: str, small_disk: Path,
                                                                     tmp_path: Path) -> None:
    flow = hw.Dataflow("full_disk")
    (flow.source("in", many_keys_then_slow()).key_by("k").aggregate(step_id="per_key", n=hw.count())
     .sink("out", TestingSink(tmp_path / "out")))
    directory = small_disk / "chk"

    error, took, attempts = run_failing(flow, executor, checkpointing(directory), CheckpointError)

    assert attempts == 1, "a full disk is not retried"
    assert took < 5, "failed at the first failed checkpoint, not at the end of the input"
    message = str(error)
    assert message.startswith(f"checkpoint directory {directory}: disk full (ENOSPC); free space")
    assert "CheckpointConfig.dir" in message


def test_a_read_only_checkpoint_directory_fails_at_once(read_only_disk: Path, tmp_path: Path) -> None:
    flow = hw.Dataflow("read_only")
    flow.source("in", TestingSource([{"v": i} for i in range(10)])).sink("out", TestingSink(tmp_path / "out"))
    directory = read_only_disk / "chk"
    started = time.monotonic()
    jobs = []

    with pytest.raises(HeadwaterError) as raised:  # refused when the job is made, or when it first writes
        jobs.append(hw.start(flow, executor="local", checkpoint=checkpointing(directory)))
        jobs[0].wait()

    assert time.monotonic() - started < 5
    assert all(job.attempt == 1 for job in jobs), "not retried"
    assert str(directory) in str(raised.value) and "Read-only file system" in str(raised.value)
