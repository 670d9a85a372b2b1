"""Failed checkpoints leave no files, and damage is caught when a checkpoint is written: read-back verification
before sinks commit, deletion of aborted (timed out) and failed checkpoints, late acknowledgements, what a failed
attempt left, and a job whose checkpoint is damaged between write and completion still completes exactly once."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.checkpoints import key as checkpoint_key
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator
from headwater.engine.checkpoints.key import CheckpointKey
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, StateFile, SubtaskAck
from headwater.engine.config import CheckpointConfig
from headwater.engine.runtime import SubtaskRuntime
from headwater.errors import CheckpointCorruptError
from headwater.testing import TestingSink, TestingSource

G = 128
KEY = CheckpointKey(bytes(range(32)), "test key")
SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])


@pytest.fixture(autouse=True)
def private_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(checkpoint_key.ENV_KEY, bytes(range(32)).hex())


def table(seed: int) -> pa.Table:
    return pa.table({"k": pa.array(range(10), pa.int64()), "n": pa.array([seed] * 10, pa.int64()),
                     "_key_group": pa.array(range(10), pa.int32())})


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def coordinator(tmp_path: Path, subtasks: int = 2, timeout_s: float = 60.0) -> CheckpointCoordinator:
    config = CheckpointConfig(dir=tmp_path / "chk", timeout=timedelta(seconds=timeout_s), retain=2)
    storage = CheckpointStorage(config.uri, key=KEY)
    return CheckpointCoordinator(storage, config, "flow", [(1, i) for i in range(subtasks)], G, 1)


def ack_for(core: CheckpointCoordinator, checkpoint_id: int, subtask: int, finished: bool = False) -> SubtaskAck:
    state = core.storage.write_state(checkpoint_id, "agg", "acc", 1, subtask, table(checkpoint_id), range(G))
    return SubtaskAck(checkpoint_id, 1, subtask, 2, state_files=[state], finished=finished)


def test_a_state_file_damaged_before_completion_fails_that_checkpoint_and_deletes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    core = coordinator(tmp_path)
    root = tmp_path / "chk"
    one = core.begin()
    assert core.ack(ack_for(core, one, 0)) is None
    damaged = ack_for(core, one, 1)
    flip_a_byte(root / damaged.state_files[0].path)  # bit rot, or a concurrent writer, after the write

    with caplog.at_level(logging.WARNING, logger="headwater.checkpoint"):
        assert core.ack(damaged) is None, "the damaged checkpoint did not complete (sinks are not told to commit)"

    assert core.stats.failed == 1 and core.stats.completed == 0 and core.pending is None
    assert files_under(root) == [] and not (root / "chk-000001").exists()
    assert any("checkpoint 1 failed verification" in r.getMessage() for r in caplog.records)
    two = core.begin()
    assert core.ack(ack_for(core, two, 0)) is None
    completed = core.ack(ack_for(core, two, 1))
    assert completed is not None and completed.checkpoint_id == 2, "the job goes on with the next checkpoint"
    assert core.storage.latest_valid().checkpoint_id == 2  # type: ignore[union-attr]


def test_the_read_back_cache_holds_only_final_snapshots(tmp_path: Path) -> None:
    """Files of running subtasks never recur, so remembering them would grow the coordinator without bound."""
    core = coordinator(tmp_path)
    final = None
    for _ in range(5):
        checkpoint_id = core.begin()
        if final is None:
            final = ack_for(core, checkpoint_id, 0, finished=True)
            core.report_finished(final)
        assert core.ack(ack_for(core, checkpoint_id, 1)) is not None
    assert core.stats.completed == 5
    assert len(core.verified_files) == 1  # the final snapshot, verified once, standing in for five checkpoints


def test_damage_in_a_finished_subtasks_final_snapshot_fails_the_attempt(tmp_path: Path) -> None:
    """A final snapshot stands in for every later checkpoint: none of them could ever verify."""
    core = coordinator(tmp_path)
    one = core.begin()
    final = ack_for(core, one, 0, finished=True)
    flip_a_byte(tmp_path / "chk" / final.state_files[0].path)
    core.report_finished(final)
    with pytest.raises(CheckpointCorruptError, match="final snapshot of a finished subtask"):
        core.ack(ack_for(core, one, 1))


def test_a_timed_out_checkpoint_and_its_late_acks_leave_no_files_but_final_snapshots_stay(tmp_path: Path) -> None:
    core = coordinator(tmp_path, subtasks=3, timeout_s=1)
    root = tmp_path / "chk"
    one = core.begin()
    core.ack(ack_for(core, one, 0))
    final = ack_for(core, one, 2, finished=True)  # finished while 1 was in flight: stands in for later ones
    core.report_finished(final)

    assert core.expire(now=core.pending.started + 5).checkpoint_id == one  # type: ignore[union-attr]

    assert files_under(root) == [final.state_files[0].path], "the acked state file went at once"
    late = ack_for(core, one, 1)  # a subtask still writing when the checkpoint was aborted
    assert core.ack(late) is None
    assert files_under(root) == [final.state_files[0].path], "the late ack's file went too"
    two = core.begin()
    core.ack(ack_for(core, two, 0))
    completed = core.ack(ack_for(core, two, 1))
    assert completed is not None
    core.storage.verify(core.storage.load(completed.directory))  # the final snapshot it references is intact


def test_prune_and_discard_incomplete_keep_what_complete_checkpoints_reference(tmp_path: Path) -> None:
    storage = CheckpointStorage(str(tmp_path / "chk"), key=KEY)
    final = storage.write_state(2, "agg", "acc", 1, 0, table(2), range(64))  # a final snapshot in chk-000002
    storage.write_state(3, "agg", "acc", 1, 0, table(3), range(G))  # an attempt that failed at 3
    own = storage.write_state(4, "agg", "acc", 1, 1, table(4), range(64, G))
    storage.write_metadata(CheckpointMetadata(4, "flow", "checkpoint", G, 0.0, [
        SubtaskAck(4, 1, 0, 2, state_files=[final], finished=True), SubtaskAck(4, 1, 1, 2, state_files=[own])]))
    storage.write_state(5, "agg", "acc", 1, 0, table(5), range(G))  # written by the failed attempt
    (tmp_path / "chk" / "chk-000005" / "_metadata.123.tmp").write_bytes(b"partial")

    deleted = storage.discard_incomplete()

    assert sorted(Path(p).name for p in deleted) == ["chk-000003", "chk-000005"]
    assert sorted(p.name for p in (tmp_path / "chk").iterdir() if p.name.startswith("chk-")) == ["chk-000002", "chk-000004"]
    storage.verify(storage.latest_valid())  # type: ignore[arg-type]


def test_discard_incomplete_keeps_directories_below_a_checkpoint_it_cannot_read(tmp_path: Path) -> None:
    """Written with another key: its references are unknown, so nothing older is deleted."""
    other = CheckpointStorage(str(tmp_path / "chk"), key=CheckpointKey(bytes(range(5, 37)), "other"))
    final = other.write_state(2, "agg", "acc", 1, 0, table(2), range(G))
    other.write_metadata(CheckpointMetadata(4, "flow", "checkpoint", G, 0.0, [SubtaskAck(4, 1, 0, 1, state_files=[final], finished=True)]))
    other.write_state(6, "agg", "acc", 1, 0, table(6), range(G))
    deleted = CheckpointStorage(str(tmp_path / "chk"), key=KEY).discard_incomplete()
    assert [Path(p).name for p in deleted] == ["chk-000006"] and (tmp_path / "chk" / "chk-000002").exists()


# -- a job: a checkpoint damaged between write and completion ------------------------------------------------------
def stream_flow(sink: TestingSink, parts: list[list[Any]]) -> hw.Dataflow:
    flow = hw.Dataflow("verify")
    source = flow.source("in", TestingSource(partitions=parts, schema=SCHEMA, batch_size=5))
    source.key_by("k").aggregate(step_id="agg", n=hw.count(), total=hw.sum("v")).sink("out", sink)
    return flow


def test_a_job_whose_checkpoint_is_damaged_on_disk_completes_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pause = TestingSource.PAUSE(0.05)
    parts = [[{"k": f"k{i % 7}", "v": i} for i in range(j * 40, (j + 1) * 40)] for j in range(2)]
    scripted = [[item for n, row in enumerate(part) for item in ((pause, row) if n % 10 == 0 else (row,))]
                for part in parts]  # pauses leave time for checkpoints between rows
    clean = TestingSink(tmp_path / "clean")
    hw.run(stream_flow(clean, scripted), executor="local")

    damaged: list[int] = []
    original = CheckpointStorage.write_state

    def write_then_damage(self: CheckpointStorage, checkpoint_id: int, *args: Any) -> StateFile:
        written = original(self, checkpoint_id, *args)
        if not damaged and checkpoint_id >= 2 and args[0] == "agg":
            damaged.append(checkpoint_id)
            flip_a_byte(Path(self.uri, written.path))
        return written

    committed: list[int] = []
    notify = SubtaskRuntime.notify_checkpoint_complete

    def record(self: SubtaskRuntime, checkpoint_id: int) -> None:
        committed.append(checkpoint_id)
        notify(self, checkpoint_id)

    monkeypatch.setattr(CheckpointStorage, "write_state", write_then_damage)
    monkeypatch.setattr(SubtaskRuntime, "notify_checkpoint_complete", record)
    out = TestingSink(tmp_path / "out")
    result = hw.run(stream_flow(out, scripted), executor="local",
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "chk", interval=timedelta(milliseconds=20)))

    assert damaged, "no checkpoint with state was written after the first"
    assert result.checkpoints.failed == 1 and result.restarts == 0
    assert damaged[0] not in committed, "sinks were told to commit a checkpoint that failed verification"
    assert not (tmp_path / "chk" / f"chk-{damaged[0]:06d}").exists()
    # A running aggregate's output is a changelog whose update rows depend on how input was batched (timing);
    # its result is the last row per key, and a replayed input would show there (counts and sums double).
    assert out.latest(["k"]) == clean.latest(["k"])
    assert len(clean.latest(["k"])) == 7
