"""A full checkpoint disk leaves no orphaned files: a job checkpointing into a small tmpfs fails with the
``OSError`` (ENOSPC) as the cause, and afterwards every ``chk-*`` directory there has valid metadata and no
temporary file remains — in-process and on Ray. Needs root (``mount -t tmpfs``); skipped otherwise."""

from __future__ import annotations

import errno
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.checkpoints import key as checkpoint_key
from headwater.engine.checkpoints.storage import CheckpointStorage
from headwater.errors import CheckpointError
from headwater.testing import TestingSink, TestingSource

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64())])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 768 KiB tmpfs: room for the first checkpoints of the job below, not for its later ones."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k,mode=0700", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture(autouse=True)
def private_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(checkpoint_key.ENV_KEY, bytes(range(32)).hex())


def growing_state_flow(sink: TestingSink) -> hw.Dataflow:
    """Every row a new key: the aggregate's state (and each checkpoint) grows until the disk is full."""
    pause = TestingSource.PAUSE(0.03)
    rows = [{"k": i, "v": i} for i in range(60_000)]
    items = [item for n, row in enumerate(rows) for item in ((pause, row) if n % 2_000 == 0 else (row,))]
    flow = hw.Dataflow("disk_full")
    source = flow.source("in", TestingSource(partitions=[items], schema=SCHEMA, batch_size=1_000))
    source.key_by("k").aggregate(step_id="agg", n=hw.count(), total=hw.sum("v")).sink("out", sink)
    return flow


def causes(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__


def assert_no_orphans(root: Path) -> int:
    """Every chk-* directory has metadata that loads and verifies; no temporary file anywhere. Returns how many."""
    storage = CheckpointStorage(str(root))
    leftovers = [str(p) for p in root.rglob("*.tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    directories = sorted(p for p in root.iterdir() if p.name.startswith(("chk-", "savepoint-")))
    for directory in directories:
        storage.verify(storage.load(str(directory)))  # raises for a directory without valid metadata
    return len(directories)


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_full_checkpoint_disk_fails_the_job_and_leaves_no_orphaned_files(
    small_disk: Path, tmp_path: Path, executor: str, request: pytest.FixtureRequest,
) -> None:
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    checkpoints = small_disk / "checkpoints"
    config = hw.CheckpointConfig(dir=checkpoints, interval=timedelta(milliseconds=20), retain=1,
                                 restart_delay=timedelta(0))

    with pytest.raises(CheckpointError) as raised:
        hw.run(growing_state_flow(TestingSink(tmp_path / "out")), executor=executor, checkpoint=config, timeout=120)

    full = [e for e in causes(raised.value) if isinstance(e, OSError)]
    assert full and full[-1].errno == errno.ENOSPC, f"the OSError(ENOSPC) is not in the cause chain: {raised.value!r}"
    kept = assert_no_orphans(checkpoints)
    assert kept <= 1, "retain=1"
    assert os.statvfs(small_disk).f_bfree > 0, "the failed checkpoints' space was given back"
