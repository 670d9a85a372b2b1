"""Nothing executable is loaded from a checkpoint directory: authenticated JSON metadata (HMAC under the
deployment key), SHA-256-checked state files, refusal of crafted pickles before anything unpickles them,
malformed metadata as a damaged checkpoint (fallback with a warning naming the file), the key file, and the
key's travel (with the coordinator only)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pytest

from headwater.core.state.store import OperatorStateStore
from headwater.engine.checkpoints import key as checkpoint_key
from headwater.engine.checkpoints.coordinator import CheckpointCoordinator
from headwater.engine.checkpoints.key import CheckpointKey, load_key
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.metadata import canonical
from headwater.engine.checkpoints.recovery import load_restore_point
from headwater.engine.checkpoints.snapshots import PendingSnapshot, SubtaskRestore, persist
from headwater.engine.checkpoints.storage import METADATA, CheckpointMetadata, CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig
from headwater.errors import CheckpointCorruptError, CheckpointError, CheckpointValueError, ConfigError

G = 128
KEY_A = CheckpointKey(bytes(range(32)), "test key A")
KEY_B = CheckpointKey(bytes(range(1, 33)), "test key B")


@pytest.fixture(autouse=True)
def private_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own key file (never the user's ~/.headwater/checkpoint.key)."""
    path = tmp_path / "home" / ".headwater" / "checkpoint.key"
    monkeypatch.delenv(checkpoint_key.ENV_KEY, raising=False)
    monkeypatch.setenv(checkpoint_key.ENV_KEY_FILE, str(path))
    return path


class Evil:
    """Unpickling this creates ``marker`` (what an attacker's ``os.system`` payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def table(seed: int, rows: int = 20) -> pa.Table:
    return pa.table({"k": pa.array(range(rows), pa.int64()), "count": pa.array([seed] * rows, pa.int64()),
                     "_key_group": pa.array([i % G for i in range(rows)], pa.int32())})


def write_checkpoint(storage: CheckpointStorage, checkpoint_id: int, values: dict[str, dict[str, bytes]] | None = None,
                     tables: dict[str, pa.Table] | None = None) -> CheckpointMetadata:
    files = [storage.write_state(checkpoint_id, "agg", name, 1, 0, t, range(G))
             for name, t in (tables or {"acc": table(checkpoint_id)}).items()]
    ack = SubtaskAck(checkpoint_id, 1, 0, 1, state_files=files, values=values or {},
                     source_positions={"in": {"p0": (checkpoint_id, 7), "p1": {"offset": checkpoint_id}}},
                     sink_tokens={"out": [(checkpoint_id, ("staged", "final"))]})
    metadata = CheckpointMetadata(checkpoint_id, "flow", "checkpoint", G, 1.5, [ack])
    storage.write_metadata(metadata)
    return metadata


def metadata_path(storage: CheckpointStorage, checkpoint_id: int) -> Path:
    return Path(storage.uri, f"chk-{checkpoint_id:06d}", METADATA)


def rewrite(path: Path, edit: Callable[[dict[str, Any]], None], key: CheckpointKey | None = None) -> None:
    """Edit the JSON document in ``path``; re-sign it with ``key`` (an attacker who has the format but not the
    key passes ``None``: the old HMAC stays)."""
    document = json.loads(path.read_bytes())
    edit(document)
    if key is not None:
        document.pop("hmac")
        document["key_id"] = key.key_id
        document["hmac"] = key.sign(canonical(document))
    path.write_bytes(canonical(document))


@pytest.fixture
def storage(tmp_path: Path) -> CheckpointStorage:
    return CheckpointStorage(str(tmp_path / "checkpoints"), key=KEY_A)


def latest_with_warnings(storage: CheckpointStorage, caplog: pytest.LogCaptureFixture) -> tuple[CheckpointMetadata | None, list[str]]:
    with caplog.at_level(logging.WARNING, logger="headwater.checkpoint"):
        latest = storage.latest_valid()
    return latest, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- the format ---------------------------------------------------------------------------------------------------
def test_metadata_is_versioned_signed_json_with_plain_positions_and_tokens(storage: CheckpointStorage) -> None:
    write_checkpoint(storage, 1, values={"agg": {"v": b"\x00\x01"}})
    document = json.loads(metadata_path(storage, 1).read_bytes())
    assert document["format"] == "headwater-checkpoint" and document["version"] == 1
    assert document["key_id"] == KEY_A.key_id and len(document["hmac"]) == 64
    loaded = storage.load(str(metadata_path(storage, 1).parent))
    ack = loaded.acks[0]
    assert ack.source_positions == {"in": {"p0": (1, 7), "p1": {"offset": 1}}}, "a tuple stays a tuple"
    assert ack.sink_tokens == {"out": [(1, ("staged", "final"))]} and ack.values == {"agg": {"v": b"\x00\x01"}}
    assert len(ack.state_files[0].sha256) == 64


@pytest.mark.parametrize("kind", list(CheckpointKind))
def test_the_kind_is_written_as_its_plain_string_and_read_back_as_the_enum(
    storage: CheckpointStorage, kind: CheckpointKind,
) -> None:
    state = storage.write_state(3, "agg", "acc", 1, 0, table(3), range(G))
    directory = storage.write_metadata(CheckpointMetadata(3, "flow", kind, G, 1.5, [SubtaskAck(3, 1, 0, 1, state_files=[state])]))
    data = Path(directory, METADATA).read_bytes()
    assert f'"kind":"{kind.value}"'.encode() in data, "the file holds the plain string, as before the enum"
    assert json.loads(data)["checkpoint"]["kind"] == kind.value
    loaded = storage.load(directory)
    assert loaded.kind is kind and isinstance(loaded.kind, CheckpointKind)


def test_metadata_written_with_a_plain_string_kind_loads_as_the_enum(storage: CheckpointStorage) -> None:
    """A file written before the enum existed (the kind was a plain ``str`` then) is the same bytes: it loads."""
    write_checkpoint(storage, 1)
    rewrite(metadata_path(storage, 1), lambda d: d["checkpoint"].update(kind="final"), key=KEY_A)
    loaded = storage.load(str(metadata_path(storage, 1).parent))
    assert loaded.kind is CheckpointKind.FINAL and loaded.kind == "final"


def test_an_unknown_kind_is_a_damaged_checkpoint_not_a_value_error(storage: CheckpointStorage) -> None:
    write_checkpoint(storage, 1)
    rewrite(metadata_path(storage, 1), lambda d: d["checkpoint"].update(kind="snapshot"), key=KEY_A)
    with pytest.raises(CheckpointCorruptError, match="checkpoint.kind is 'snapshot', expected one of checkpoint, final, savepoint"):
        storage.load(str(metadata_path(storage, 1).parent))


def test_the_key_is_written_into_no_checkpoint_file(tmp_path: Path, private_key_file: Path) -> None:
    storage = CheckpointStorage(str(tmp_path / "checkpoints"))  # the default: the key file, created now
    write_checkpoint(storage, 1)
    secret = private_key_file.read_text().strip()
    for path in Path(storage.uri).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and bytes.fromhex(secret) not in data, path
    assert secret not in repr(storage.key) and storage.key.key_id in repr(storage.key)


# -- crafted pickles never run ------------------------------------------------------------------------------------
def test_a_crafted_pickle_in_metadata_does_not_run_and_the_older_checkpoint_is_restored(
    storage: CheckpointStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "pwned"
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2)
    metadata_path(storage, 2).write_bytes(pickle.dumps(Evil(marker)))

    latest, warnings = latest_with_warnings(storage, caplog)

    assert not marker.exists(), "the crafted metadata was unpickled"
    assert latest is not None and latest.checkpoint_id == 1
    assert len(warnings) == 1 and str(metadata_path(storage, 2)) in warnings[0] and "not a JSON document" in warnings[0]


def test_a_crafted_pickle_in_a_values_blob_is_refused_before_unpickling(
    storage: CheckpointStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "pwned"
    write_checkpoint(storage, 1, values={"agg": {"v": pickle.dumps(0)}})
    write_checkpoint(storage, 2, values={"agg": {"v": pickle.dumps(0)}})
    evil = base64.b64encode(pickle.dumps(Evil(marker))).decode()
    rewrite(metadata_path(storage, 2), lambda d: d["checkpoint"]["acks"][0]["values"]["agg"].update(v=evil))

    with pytest.raises(CheckpointCorruptError, match="HMAC does not match"):
        storage.load(str(metadata_path(storage, 2).parent))
    latest, warnings = latest_with_warnings(storage, caplog)

    assert latest is not None and latest.checkpoint_id == 1
    store = OperatorStateStore("agg", G, range(G))
    store.keyed_columns("acc", ["k"]).add_column("count", np.int64, 0)
    value = store.value("v", default=None)
    SubtaskRestore.of(storage, latest).restore_store(store, subtask=0, parallelism=1)
    assert value.value == 0 and not marker.exists()
    assert len(warnings) == 1 and str(metadata_path(storage, 2)) in warnings[0]


def pickled_object_table(store_name: str, payload: Any) -> pa.Table:
    """A snapshot of a keyed state with an object column (pickled per row, as first/last/udaf state is)."""
    store = OperatorStateStore("agg", G, range(G))
    columns = store.keyed_columns(store_name, ["k"])
    columns.add_column("acc", object, None)
    slots = columns.slots_for([pa.array([1, 2], pa.int64())])
    columns.columns["acc"][slots] = [payload, payload]
    snapshot = columns.snapshot()
    assert snapshot is not None
    return snapshot


@pytest.mark.parametrize("attacker_rewrites_metadata", [False, True], ids=["state file only", "and its digest"])
def test_a_crafted_pickle_in_a_state_table_is_refused_before_unpickling(
    storage: CheckpointStorage, tmp_path: Path, attacker_rewrites_metadata: bool,
) -> None:
    marker = tmp_path / "pwned"
    metadata = write_checkpoint(storage, 1, tables={"acc": pickled_object_table("acc", {"sum": 1})})
    state = Path(storage.uri, metadata.acks[0].state_files[0].path)
    verified_before = storage.load(metadata.directory)
    crafted = pickled_object_table("acc", "placeholder")
    evil = pickle.dumps(Evil(marker))
    column = crafted.schema.get_field_index("acc")
    crafted = crafted.set_column(column, crafted.schema.field(column), pa.array([evil, evil], pa.binary()))
    with pa.ipc.new_file(str(state), crafted.schema) as writer:
        writer.write_table(crafted)
    if attacker_rewrites_metadata:  # the digest and size now match the crafted file; the HMAC does not
        data = state.read_bytes()
        rewrite(metadata_path(storage, 1), lambda d: d["checkpoint"]["acks"][0]["state_files"][0].update(
            sha256=hashlib.sha256(data).hexdigest(), size=len(data)))

    with pytest.raises(CheckpointCorruptError) as raised:
        # the driver verified the metadata before the file changed, or loads it now
        loaded = verified_before if not attacker_rewrites_metadata else storage.load(str(state.parents[3]))
        store = OperatorStateStore("agg", G, range(G))
        store.keyed_columns("acc", ["k"]).add_column("acc", object, None)
        SubtaskRestore.of(storage, loaded).restore_store(store, subtask=0, parallelism=1)

    assert not marker.exists(), "a crafted blob was unpickled"
    expected = "HMAC does not match" if attacker_rewrites_metadata else r"has \d+ bytes, \d+ were written"
    assert re.search(expected, str(raised.value)), raised.value
    assert str(metadata_path(storage, 1) if attacker_rewrites_metadata else state) in str(raised.value)


def test_an_intact_object_column_round_trips(storage: CheckpointStorage) -> None:
    metadata = write_checkpoint(storage, 1, tables={"acc": pickled_object_table("acc", {"sum": 3})})
    loaded = storage.load(metadata.directory)
    store = OperatorStateStore("agg", G, range(G))
    columns = store.keyed_columns("acc", ["k"])
    columns.add_column("acc", object, None)
    SubtaskRestore.of(storage, loaded).restore_store(store, subtask=0, parallelism=1)
    slots = columns.slots_for([pa.array([1, 2], pa.int64())])
    assert list(columns.columns["acc"][slots]) == [{"sum": 3}, {"sum": 3}]


# -- malformed, tampered or foreign metadata is a damaged checkpoint -------------------------------------------------
def _signed(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda path: rewrite(path, edit, KEY_A)


MALFORMED: dict[str, tuple[Callable[[Path], None], str]] = {
    "not JSON": (lambda p: p.write_bytes(b"\x80\x04not json"), "not a JSON document"),
    "a JSON list": (lambda p: p.write_bytes(b"[1, 2]"), "holds a JSON list"),
    "NaN constant": (lambda p: p.write_bytes(b'{"format": NaN}'), "not a JSON document"),
    "another format": (lambda p: rewrite(p, lambda d: d.update(format="flink")), "its format is 'flink'"),
    "a newer version": (lambda p: rewrite(p, lambda d: d.update(version=2)), "format version 2"),
    "no HMAC": (lambda p: rewrite(p, lambda d: d.pop("hmac")), "carries no HMAC"),
    "the old crash: a dict where an object was expected": (
        _signed(lambda d: d["checkpoint"].update(acks=[{"directory": "x"}])), "checkpoint.acks[0].source_positions is missing"),
    "a field of the wrong type": (
        _signed(lambda d: d["checkpoint"]["acks"][0].update(subtask="0")), "acks[0].subtask is a str, expected int"),
    "a missing field": (_signed(lambda d: d["checkpoint"].pop("max_key_groups")), "checkpoint.max_key_groups is missing"),
    "an unknown kind": (_signed(lambda d: d["checkpoint"].update(kind="weird")), "checkpoint.kind is 'weird'"),
    "an unregistered dataclass token": (
        _signed(lambda d: d["checkpoint"]["acks"][0]["sink_tokens"]["out"][0].__setitem__(
            1, {"$dataclass": ["os.system", {"command": "touch x"}]})), "'os.system' is not registered"),
    "an unknown tag": (
        _signed(lambda d: d["checkpoint"]["acks"][0]["source_positions"]["in"].update(p0={"$pickle": "gAR="})),
        "must be one tag"),
    "a state path leaving the directory": (
        _signed(lambda d: d["checkpoint"]["acks"][0]["state_files"][0].update(path="../../etc/passwd")),
        "leaves the checkpoint directory"),
    "metadata copied from another checkpoint": (
        lambda p: p.write_bytes((p.parents[1] / "chk-000001" / METADATA).read_bytes()), "describes chk-000001"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_falls_back_with_a_warning_naming_the_file(
    storage: CheckpointStorage, case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2)
    damage, reason = MALFORMED[case]
    damage(metadata_path(storage, 2))

    latest, warnings = latest_with_warnings(storage, caplog)

    assert latest is not None and latest.checkpoint_id == 1
    assert len(warnings) == 1 and str(metadata_path(storage, 2)) in warnings[0], warnings
    assert reason in warnings[0], warnings[0]


def test_tampered_metadata_is_refused(storage: CheckpointStorage) -> None:
    metadata = write_checkpoint(storage, 1)
    rewrite(metadata_path(storage, 1), lambda d: d["checkpoint"]["acks"][0]["source_positions"]["in"].update(p1={"$map": {"offset": 0}}))
    with pytest.raises(CheckpointCorruptError, match="HMAC does not match its contents: the file was altered") as raised:
        storage.load(metadata.directory)
    assert raised.value.path == str(metadata_path(storage, 1))


def test_metadata_written_with_another_key_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    writer = CheckpointStorage(str(tmp_path / "checkpoints"), key=KEY_A)
    metadata = write_checkpoint(writer, 1)
    reader = CheckpointStorage(writer.uri, key=KEY_B)
    with pytest.raises(CheckpointCorruptError, match="written with another checkpoint key") as raised:
        reader.load(metadata.directory)
    message = str(raised.value)
    assert KEY_A.key_id in message and KEY_B.key_id in message and "HEADWATER_CHECKPOINT_KEY" in message
    with pytest.raises(CheckpointCorruptError, match="no complete checkpoint could be restored"):
        reader.latest_valid()


def test_restore_from_a_savepoint_of_another_deployment_fails_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = CheckpointStorage(str(tmp_path / "other"), key=KEY_A)
    state = other.write_state(3, "agg", "acc", 1, 0, table(3), range(G))
    savepoint = other.write_metadata(CheckpointMetadata(4, "flow", "savepoint", G, 0.0, [SubtaskAck(4, 1, 0, 1, state_files=[state])]))
    config = CheckpointConfig(dir=tmp_path / "mine", restore_from=savepoint)

    monkeypatch.setenv(checkpoint_key.ENV_KEY, KEY_B_HEX)
    with pytest.raises(CheckpointCorruptError, match=f"restore_from={savepoint} cannot be restored.*set \\$HEADWATER_CHECKPOINT_KEY"):
        load_restore_point(CheckpointStorage(config.uri), config)

    monkeypatch.setenv(checkpoint_key.ENV_KEY, bytes(range(32)).hex())  # the writer's key: shared on purpose
    found = load_restore_point(CheckpointStorage(config.uri), config)
    assert found is not None and found[0].checkpoint_id == 4


KEY_B_HEX = bytes(range(1, 33)).hex()


# -- the key ------------------------------------------------------------------------------------------------------
def test_the_key_file_is_created_once_with_owner_only_permissions(private_key_file: Path) -> None:
    first = load_key()
    assert private_key_file.exists()
    assert stat.S_IMODE(private_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_key_file.parent.stat().st_mode) == 0o700
    assert load_key() == first, "a second load reads the same key"
    checkpoint_key._create_key_file(private_key_file)  # a racing creator loses: the existing key stays
    assert load_key() == first and not list(private_key_file.parent.glob("*.tmp"))


def test_a_key_file_readable_by_others_is_refused(private_key_file: Path) -> None:
    load_key()
    private_key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {private_key_file}"):
        load_key()


def test_the_environment_key_wins_and_must_be_long_enough(monkeypatch: pytest.MonkeyPatch, private_key_file: Path) -> None:
    monkeypatch.setenv(checkpoint_key.ENV_KEY, base64.b64encode(bytes(range(32))).decode())
    assert load_key() == KEY_A and not private_key_file.exists()
    monkeypatch.setenv(checkpoint_key.ENV_KEY, bytes(range(32)).hex())
    assert load_key() == KEY_A
    monkeypatch.setenv(checkpoint_key.ENV_KEY, "abcd")
    with pytest.raises(ConfigError, match="needs at least 16"):
        load_key()
    monkeypatch.setenv(checkpoint_key.ENV_KEY, "not a key!")
    with pytest.raises(ConfigError, match="neither hex nor base64"):
        load_key()


def test_the_key_travels_with_the_coordinator_only(tmp_path: Path) -> None:
    storage = CheckpointStorage(str(tmp_path / "checkpoints"), key=KEY_A)
    shipped = pickle.loads(pickle.dumps(storage))
    assert bytes(range(32)) not in pickle.dumps(storage)
    with pytest.raises(CheckpointError, match="received no checkpoint key"):
        _ = shipped.key
    coordinator = CheckpointCoordinator(storage, CheckpointConfig(dir=tmp_path / "checkpoints"), "flow", [(0, 0)], G, 1)
    assert pickle.loads(pickle.dumps(coordinator)).storage.key == KEY_A


# -- positions and tokens must be plain data -----------------------------------------------------------------------
def test_a_position_that_is_not_plain_data_fails_the_checkpoint_naming_step_and_type(storage: CheckpointStorage) -> None:
    snapshot = PendingSnapshot(3, 0, 1, 2, range(G), {"src": {"p0": np.array([5])}}, {}, {}, {}, False, 0.0)
    with pytest.raises(CheckpointValueError, match=r"step 'src' \(subtask 1\).*numpy.ndarray is not plain data") as raised:
        persist(snapshot, storage)
    assert raised.value.step_id == "src" and raised.value.transient is False

    class Token:
        pass

    snapshot = PendingSnapshot(3, 0, 1, 2, range(G), {}, {}, {}, {"out": [(3, Token())]}, False, 0.0)
    with pytest.raises(CheckpointValueError, match=r"step 'out'.*Token is not plain data.*prepare\(\) must return plain data"):
        persist(snapshot, storage)


def test_the_coordinator_travels_inline_never_through_the_object_store(tmp_path: Path) -> None:
    """The key rides in the pickled coordinator, an argument of one actor call. Ray inlines arguments up to
    100 KiB in the call's message; a larger one would go through the object store, which can spill to disk."""
    config = CheckpointConfig(dir=tmp_path / "chk")
    storage = CheckpointStorage(config.uri, key=CheckpointKey(b"k" * 32, "test"))
    subtasks = [(stage, i) for stage in range(8) for i in range(64)]  # 512 subtasks
    coordinator = CheckpointCoordinator(storage, config, "a-flow-with-a-long-name" * 4, subtasks, 32_768, 1)
    assert len(pickle.dumps(coordinator)) < 100 * 1024 // 4
