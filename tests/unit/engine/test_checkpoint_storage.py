"""CheckpointStorage: the on-disk layout, atomic metadata, ids that never repeat, detection of damaged files with
fallback to the previous checkpoint, self-contained savepoints and retention."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pytest

from headwater.engine.checkpoints.storage import METADATA, CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.errors import CheckpointCorruptError

G = 128


def table(seed: int, rows: int = 50) -> pa.Table:
    return pa.table({"k": pa.array(range(rows), pa.int64()), "count": pa.array([seed] * rows, pa.int64()),
                     "_key_group": pa.array([i % G for i in range(rows)], pa.int32())})


def write_checkpoint(
    storage: CheckpointStorage, checkpoint_id: int, kind: str = "checkpoint", subtasks: int = 2,
) -> CheckpointMetadata:
    """A complete checkpoint of a two-subtask keyed step: one state file per subtask, then ``_metadata``."""
    acks = []
    for subtask in range(subtasks):
        key_groups = range(subtask * G // subtasks, (subtask + 1) * G // subtasks)
        state = storage.write_state(checkpoint_id, "agg", "acc", 1, subtask, table(checkpoint_id), key_groups)
        acks.append(SubtaskAck(checkpoint_id, 1, subtask, subtasks, state_files=[state],
                               source_positions={"in": {f"part-{subtask}": checkpoint_id * 10}}))
    metadata = CheckpointMetadata(checkpoint_id, "flow", kind, G, 0.0, acks)
    metadata.directory = storage.write_metadata(metadata)
    return metadata


@pytest.fixture
def storage(tmp_path: Path) -> CheckpointStorage:
    return CheckpointStorage(str(tmp_path / "checkpoints"))


def state_path(storage: CheckpointStorage, checkpoint_id: int, subtask: int = 0) -> Path:
    return Path(storage.uri, f"chk-{checkpoint_id:06d}", "state", "agg", "acc", f"s1-t{subtask}.arrow")


# -- writing and reading ------------------------------------------------------------------------------------------
def test_state_file_round_trip_records_size_digest_and_key_groups(storage: CheckpointStorage) -> None:
    written = storage.write_state(7, "agg", "acc", 1, 3, table(7), range(40, 80))
    assert written.path == "chk-000007/state/agg/acc/s1-t3.arrow"
    assert written.size == os.path.getsize(Path(storage.uri, written.path))
    assert written.sha256 == hashlib.sha256(Path(storage.uri, written.path).read_bytes()).hexdigest()
    assert written.key_group_range == (40, 80)
    metadata = CheckpointMetadata(7, "flow", "checkpoint", G, 0.0, [SubtaskAck(7, 1, 3, 4, state_files=[written])])
    storage.write_metadata(metadata)
    loaded = storage.load(str(Path(storage.uri, "chk-000007")))
    assert storage.read_state(loaded, loaded.state_files("agg")[0]).equals(table(7))


def test_metadata_is_written_atomically_and_makes_the_checkpoint_exist(storage: CheckpointStorage) -> None:
    storage.write_state(1, "agg", "acc", 1, 0, table(1), range(G))  # state written, no metadata yet
    assert storage.completed() == [] and storage.latest_valid() is None
    metadata = write_checkpoint(storage, 2)
    directory = Path(metadata.directory)
    assert sorted(p.name for p in directory.iterdir()) == [METADATA, "state"], "no temporary file is left behind"
    assert [i for i, _ in storage.completed()] == [2]
    latest = storage.latest_valid()
    assert latest is not None and latest.checkpoint_id == 2 and latest.directory == str(directory)
    assert latest.source_positions() == {"in": {"part-0": 20, "part-1": 20}}


def test_latest_valid_of_a_missing_root_is_none(tmp_path: Path) -> None:
    assert CheckpointStorage(str(tmp_path / "never-created")).latest_valid() is None
    assert CheckpointStorage(str(tmp_path / "never-created")).next_id() == 1


def test_next_id_counts_incomplete_checkpoints_and_savepoints(storage: CheckpointStorage) -> None:
    assert storage.next_id() == 1
    write_checkpoint(storage, 1)
    assert storage.next_id() == 2
    storage.write_state(5, "agg", "acc", 1, 0, table(5), range(G))  # begun, never completed
    assert storage.next_id() == 6
    write_checkpoint(storage, 9, kind="savepoint")
    assert storage.next_id() == 10


def test_next_id_never_repeats_across_retention(storage: CheckpointStorage) -> None:
    used: list[int] = []
    for _ in range(12):
        checkpoint_id = storage.next_id()
        used.append(checkpoint_id)
        write_checkpoint(storage, checkpoint_id)
        storage.prune(retain=1)
    assert used == sorted(set(used)), f"ids repeated or went backwards: {used}"
    assert [i for i, _ in storage.completed()] == [used[-1]]


# -- damaged checkpoints ------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def overwrite_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


def garbage(path: Path) -> None:
    path.write_bytes(b"not a pickle")


DAMAGE: dict[str, tuple[Callable[[Path], None], bool]] = {  # how, and whether it hits the state file
    "truncated state file": (truncate, True),
    "altered state file (same size)": (overwrite_same_size, True),
    "deleted state file": (delete, True),
    "unreadable _metadata": (garbage, False),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    storage: CheckpointStorage, damage: str, caplog: pytest.LogCaptureFixture,
) -> None:
    write_checkpoint(storage, 1)
    newest = write_checkpoint(storage, 2)
    how, on_state = DAMAGE[damage]
    damaged = state_path(storage, 2, subtask=1) if on_state else Path(newest.directory, METADATA)
    how(damaged)

    with caplog.at_level(logging.WARNING, logger="headwater.checkpoint"):
        latest = storage.latest_valid()

    assert latest is not None and latest.checkpoint_id == 1
    assert storage.read_state(latest, latest.state_files("agg")[0]).equals(table(1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(damaged) in warnings[0], warnings


def test_checkpoint_whose_metadata_was_deleted_does_not_exist(storage: CheckpointStorage) -> None:
    write_checkpoint(storage, 1)
    newest = write_checkpoint(storage, 2)
    os.unlink(Path(newest.directory, METADATA))
    latest = storage.latest_valid()
    assert latest is not None and latest.checkpoint_id == 1
    assert storage.next_id() == 3, "the id of the checkpoint that lost its metadata is still never reused"
    with pytest.raises(CheckpointCorruptError, match=METADATA) as raised:
        storage.load(newest.directory)
    assert raised.value.path == str(Path(newest.directory, METADATA))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_checkpoint_damaged_raises_naming_the_file(storage: CheckpointStorage, damage: str) -> None:
    how, on_state = DAMAGE[damage]
    damaged = []
    for checkpoint_id in (1, 2):
        metadata = write_checkpoint(storage, checkpoint_id)
        path = state_path(storage, checkpoint_id) if on_state else Path(metadata.directory, METADATA)
        how(path)
        damaged.append(str(path))

    with pytest.raises(CheckpointCorruptError) as raised:
        storage.latest_valid()

    message = str(raised.value)
    assert all(path in message for path in damaged), message
    assert raised.value.path in damaged


def test_read_state_with_a_wrong_digest_raises_naming_the_file(storage: CheckpointStorage) -> None:
    metadata = write_checkpoint(storage, 1)
    overwrite_same_size(state_path(storage, 1))
    state_file = next(f for f in metadata.state_files("agg") if f.path.endswith("s1-t0.arrow"))
    loaded = storage.load(metadata.directory)  # sizes still match: load alone cannot tell
    with pytest.raises(CheckpointCorruptError, match="does not match its SHA-256 digest") as raised:
        storage.read_state(loaded, state_file)
    assert raised.value.path == str(state_path(storage, 1)) and str(state_path(storage, 1)) in str(raised.value)


def test_load_detects_a_truncated_or_missing_state_file_by_its_size(storage: CheckpointStorage) -> None:
    metadata = write_checkpoint(storage, 1)
    truncate(state_path(storage, 1, subtask=0))
    with pytest.raises(CheckpointCorruptError, match="bytes") as raised:
        storage.load(metadata.directory)
    assert raised.value.path == str(state_path(storage, 1, subtask=0))

    metadata = write_checkpoint(storage, 2)
    delete(state_path(storage, 2, subtask=1))
    with pytest.raises(CheckpointCorruptError, match="is missing") as raised:
        storage.load(metadata.directory)
    assert raised.value.path == str(state_path(storage, 2, subtask=1))


# -- savepoints and retention -------------------------------------------------------------------------------------
def test_savepoint_is_self_contained(storage: CheckpointStorage) -> None:
    """A savepoint copies the state files it references, so deleting every checkpoint leaves it restorable."""
    state = storage.write_state(3, "agg", "acc", 1, 0, table(3), range(G))
    metadata = CheckpointMetadata(4, "flow", "savepoint", G, 0.0, [SubtaskAck(4, 1, 0, 1, state_files=[state])])
    directory = storage.write_metadata(metadata)
    assert directory.endswith("savepoint-000004")
    shutil.rmtree(Path(storage.uri, "chk-000003"))

    loaded = storage.load(directory)
    storage.verify(loaded)
    assert storage.read_state(loaded, loaded.state_files("agg")[0]).equals(table(3))
    assert storage.completed() == [] and [i for i, _ in storage.completed(include_savepoints=True)] == [4]


def test_prune_keeps_retained_referenced_and_newer_directories(storage: CheckpointStorage) -> None:
    write_checkpoint(storage, 1, kind="savepoint")
    # checkpoint 2 is referenced by checkpoint 6 (a finished subtask's final snapshot written at 2)
    final_state = storage.write_state(2, "agg", "acc", 1, 0, table(2), range(G))
    for checkpoint_id in (3, 4, 5):
        write_checkpoint(storage, checkpoint_id)
    storage.write_state(6, "agg", "acc", 1, 1, table(6), range(G))  # abandoned, older than the newest complete one
    acks = [SubtaskAck(7, 1, 0, 2, state_files=[final_state], finished=True),
            SubtaskAck(7, 1, 1, 2, state_files=[storage.write_state(7, "agg", "acc", 1, 1, table(7), range(64, G))])]
    storage.write_metadata(CheckpointMetadata(7, "flow", "checkpoint", G, 0.0, acks))
    storage.write_state(8, "agg", "acc", 1, 0, table(8), range(G))  # in flight

    storage.prune(retain=2)

    names = sorted(p.name for p in Path(storage.uri).iterdir())
    # chk-000006 goes although it is newer than the oldest kept: no subtask writes below the newest complete one
    assert names == ["chk-000002", "chk-000005", "chk-000007", "chk-000008", "savepoint-000001"]
    latest = storage.latest_valid()
    assert latest is not None and latest.checkpoint_id == 7
    storage.verify(latest)  # the referenced final snapshot is still there


def test_prune_deletes_abandoned_checkpoints_older_than_the_oldest_kept(storage: CheckpointStorage) -> None:
    write_checkpoint(storage, 1)
    storage.write_state(2, "agg", "acc", 1, 0, table(2), range(G))  # abandoned
    write_checkpoint(storage, 3)
    write_checkpoint(storage, 4)
    storage.prune(retain=2)
    assert sorted(p.name for p in Path(storage.uri).iterdir()) == ["chk-000003", "chk-000004"]
    storage.prune(retain=5)  # nothing more to delete
    assert [i for i, _ in storage.completed()] == [3, 4]


def test_a_restored_watermark_is_the_subtasks_own_or_after_a_rescale_the_minimum(tmp_path) -> None:
    from headwater.engine.checkpoints.snapshots import SubtaskRestore
    from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck

    acks = [SubtaskAck(1, stage_id=1, subtask=i, parallelism=2, watermarks={"w": w}) for i, w in ((0, 900), (1, 700))]
    acks.append(SubtaskAck(1, stage_id=0, subtask=0, parallelism=1))  # a source without fused operators
    restore = SubtaskRestore.of(CheckpointStorage(str(tmp_path)), CheckpointMetadata(1, "f", "checkpoint", 128, 0.0, acks))
    assert restore.watermark(("w",), subtask=0, parallelism=2) == 900
    assert restore.watermark(("w",), subtask=1, parallelism=2) == 700
    assert restore.watermark(("w",), subtask=0, parallelism=3) == 700  # rescaled: nobody's on-time record is late
    assert restore.watermark(("new_step",), subtask=0, parallelism=2) is None
