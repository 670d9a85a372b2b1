"""Checkpoints on a filesystem (local directory or any ``pyarrow.fs`` URI).

Layout::

    <dir>/chk-000042/state/<step_id>/<state>/s<stage>-t<subtask>.arrow   keyed state tables (Arrow IPC)
    <dir>/chk-000042/_metadata                                           written last, atomically
    <dir>/savepoint-000043/...                                           same layout; never pruned

A checkpoint **exists** only once its ``_metadata`` exists: subtasks write their state files first, the
coordinator writes ``_metadata`` (to a temporary name, then renamed) only after every subtask acknowledged.
The metadata records each state file's size and CRC-32, so a restore detects missing, truncated or altered
files (:class:`~headwater.errors.CheckpointCorruptError` naming the file) and falls back to the previous
complete checkpoint instead of restoring part of the state.
"""

from __future__ import annotations

import logging
import pickle
import re
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from headwater.errors import CheckpointCorruptError, CheckpointError

log = logging.getLogger("headwater.checkpoint")

_DIR = re.compile(r"^(chk|savepoint)-(\d{6,})$")
METADATA = "_metadata"


@dataclass(frozen=True)
class StateFile:
    step_id: str
    state_name: str
    path: str  # relative to the storage root (a final snapshot written once is referenced by later checkpoints)
    size: int
    checksum: str  # CRC-32 of the file's bytes, hex
    key_group_range: tuple[int, int]  # [start, stop) owned by the subtask that wrote it


@dataclass
class SubtaskAck:
    """Everything one subtask contributes to checkpoint ``checkpoint_id``.

    ``source_positions`` maps source step → partition → position to resume *after*; ``values`` holds pickled
    non-keyed operator state; ``sink_tokens`` maps sink step → list of ``(checkpoint_id, token)`` prepared but
    not yet known to be committed. ``finished`` marks the final snapshot of a subtask whose input ended.
    """

    checkpoint_id: int
    stage_id: int
    subtask: int
    parallelism: int
    source_positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_files: list[StateFile] = field(default_factory=list)
    values: dict[str, dict[str, bytes]] = field(default_factory=dict)
    sink_tokens: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    finished: bool = False
    drained: bool = False  # a final snapshot taken after operators emitted what they held (end of input)
    bytes_written: int = 0
    sync_ms: float = 0.0  # time the subtask stopped processing to copy its state
    async_ms: float = 0.0  # time spent writing it in the background
    #: the subtask's event-time watermark per step of its chain when it snapshotted (absent: none yet)
    watermarks: dict[str, int] = field(default_factory=dict)


class _ChecksummingWriter:
    """A write-only file object that forwards to ``out`` and keeps the CRC-32 and size of what went through."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.crc = 0
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        self.out.write(data)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True  # the underlying stream is closed by its owner


@dataclass
class CheckpointMetadata:
    checkpoint_id: int
    flow_name: str
    kind: str  # "checkpoint", "final" or "savepoint"
    max_key_groups: int
    created_at: float
    acks: list[SubtaskAck]
    directory: str = ""  # absolute location (set when loaded)

    def source_positions(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for ack in self.acks:
            for step_id, parts in ack.source_positions.items():
                merged.setdefault(step_id, {}).update(parts)
        return merged

    def state_files(self, step_id: str) -> list[StateFile]:
        return [f for ack in self.acks for f in ack.state_files if f.step_id == step_id]

    def steps_with_state(self) -> set[str]:
        steps = {f.step_id for ack in self.acks for f in ack.state_files}
        steps |= {s for ack in self.acks for s, v in ack.values.items() if v}
        steps |= {s for ack in self.acks for s, parts in ack.source_positions.items() if parts}
        return steps

    def sink_tokens(self) -> list[tuple[str, int, int, int, Any]]:
        """(sink step, stage, subtask, parallelism, token) for every token this checkpoint covers."""
        out = []
        for ack in self.acks:
            for step_id, tokens in ack.sink_tokens.items():
                for checkpoint_id, token in tokens:
                    if checkpoint_id <= self.checkpoint_id:
                        out.append((step_id, ack.stage_id, ack.subtask, ack.parallelism, token))
        return out

    @property
    def bytes_written(self) -> int:
        return sum(a.bytes_written for a in self.acks)


class CheckpointStorage:
    """Reads and writes checkpoints under one root (picklable: it travels to the actors)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])  # type: ignore[misc]

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            if "://" in self.uri:
                self._fs, self._root = pafs.FileSystem.from_uri(self.uri)
            else:
                self._fs, self._root = pafs.LocalFileSystem(), self.uri
        return self._fs

    def _path(self, *parts: str) -> str:
        _ = self.fs
        return "/".join([self._root.rstrip("/"), *parts])

    @staticmethod
    def dir_name(checkpoint_id: int, kind: str = "checkpoint") -> str:
        return f"{'savepoint' if kind == 'savepoint' else 'chk'}-{checkpoint_id:06d}"

    # -- writing --------------------------------------------------------------------------------------------
    def write_state(
        self, checkpoint_id: int, step_id: str, state_name: str, stage_id: int, subtask: int,
        table: pa.Table, key_group_range: range,
    ) -> StateFile:
        relative = f"{self.dir_name(checkpoint_id)}/state/{step_id}/{state_name}/s{stage_id}-t{subtask}.arrow"
        path = self._path(relative)
        try:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as out:
                # The IPC writer streams the table's buffers straight into the file (no in-memory copy of the
                # whole file), and the checksum is computed on the way.
                checked = _ChecksummingWriter(out)
                with ipc.new_file(pa.PythonFile(checked, mode="w"), table.schema) as writer:
                    writer.write_table(table)
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"could not write checkpoint state {path}: {exc}") from exc
        digest = f"{checked.crc:08x}"
        return StateFile(step_id, state_name, relative, checked.size, digest, (key_group_range.start, key_group_range.stop))

    def _make_self_contained(self, metadata: CheckpointMetadata, directory: str) -> None:
        """Copy every referenced state file into a savepoint directory, so pruning never breaks it."""
        for ack in metadata.acks:
            copied = []
            for state_file in ack.state_files:
                relative = state_file.path.split("/", 1)[1]
                self.fs.create_dir(f"{directory}/{relative}".rsplit("/", 1)[0], recursive=True)
                self.fs.copy_file(self._path(state_file.path), f"{directory}/{relative}")
                copied.append(replace(state_file, path=relative))
            ack.state_files = copied

    def write_metadata(self, metadata: CheckpointMetadata) -> str:
        """Write ``_metadata`` atomically (temporary name, then rename): the checkpoint now exists."""
        directory = self._path(self.dir_name(metadata.checkpoint_id, metadata.kind))
        if metadata.kind == "savepoint":
            self._make_self_contained(metadata, directory)
        final = f"{directory}/{METADATA}"
        temporary = f"{final}.{time.time_ns()}.tmp"
        try:
            self.fs.create_dir(directory, recursive=True)
            with self.fs.open_output_stream(temporary) as out:
                out.write(pickle.dumps(metadata, protocol=5))
            self.fs.move(temporary, final)
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"could not write checkpoint metadata {final}: {exc}") from exc
        return directory

    # -- reading --------------------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[int, str, str]]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(), allow_not_found=True))
        except (OSError, pa.ArrowException):
            return []
        out = []
        for info in infos:
            match = _DIR.match(info.base_name)
            if match and info.type == pafs.FileType.Directory:
                out.append((int(match.group(2)), match.group(1), info.path))
        return sorted(out)

    def next_id(self) -> int:
        """One more than any checkpoint id ever used here (complete or not), so ids never repeat."""
        entries = self._entries()
        return max((i for i, _, _ in entries), default=0) + 1

    def completed(self, include_savepoints: bool = False) -> list[tuple[int, str]]:
        """(id, directory) of checkpoints whose metadata exists, oldest first."""
        out = []
        for checkpoint_id, kind, path in self._entries():
            if kind == "savepoint" and not include_savepoints:
                continue
            if self.fs.get_file_info(f"{path}/{METADATA}").type == pafs.FileType.File:
                out.append((checkpoint_id, path))
        return out

    def load(self, directory: str) -> CheckpointMetadata:
        """Load and verify a checkpoint directory (every state file present with its recorded size)."""
        metadata_path = f"{directory.rstrip('/')}/{METADATA}"
        try:
            with self.fs.open_input_stream(metadata_path) as stream:
                metadata: CheckpointMetadata = pickle.loads(stream.read())
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"checkpoint metadata {metadata_path} is missing", metadata_path) from exc
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise CheckpointCorruptError(f"checkpoint metadata {metadata_path} is unreadable: {exc}", metadata_path) from exc
        metadata.directory = directory.rstrip("/")
        for ack in metadata.acks:
            for state_file in ack.state_files:
                path = self._state_path(metadata, state_file)
                info = self.fs.get_file_info(path)
                if info.type != pafs.FileType.File:
                    raise CheckpointCorruptError(f"checkpoint state file {path} is missing", path)
                if info.size != state_file.size:
                    raise CheckpointCorruptError(
                        f"checkpoint state file {path} has {info.size} bytes, {state_file.size} were written", path
                    )
        return metadata

    def _state_path(self, metadata: CheckpointMetadata, state_file: StateFile) -> str:
        # Savepoints are self-contained (paths relative to the savepoint); checkpoints share the root.
        if metadata.kind == "savepoint":
            return f"{metadata.directory}/{state_file.path}"
        return self._path(state_file.path)

    def read_state(self, metadata: CheckpointMetadata, state_file: StateFile) -> pa.Table:
        """Read one state file, verifying its checksum."""
        path = self._state_path(metadata, state_file)
        try:
            with self.fs.open_input_stream(path) as stream:
                data = stream.read()
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f"checkpoint state file {path} cannot be read: {exc}", path) from exc
        if f"{zlib.crc32(data):08x}" != state_file.checksum:
            raise CheckpointCorruptError(f"checkpoint state file {path} does not match its checksum", path)
        return ipc.open_file(pa.BufferReader(data)).read_all()

    def verify(self, metadata: CheckpointMetadata) -> None:
        """Check every state file's checksum (restores read each file anyway; this checks before starting)."""
        for ack in metadata.acks:
            for state_file in ack.state_files:
                self.read_state(metadata, state_file)

    def latest_valid(self) -> CheckpointMetadata | None:
        """The newest complete checkpoint or savepoint that verifies, falling back past damaged ones (each
        logged). Ids grow across both, so a job stopped with a savepoint resumes from that savepoint."""
        damaged: list[CheckpointCorruptError] = []
        for _, directory in reversed(self.completed(include_savepoints=True)):
            try:
                metadata = self.load(directory)
                self.verify(metadata)
                return metadata
            except CheckpointCorruptError as exc:
                log.warning("skipping damaged checkpoint %s: %s", directory, exc)
                damaged.append(exc)
        if damaged:
            raise CheckpointCorruptError(
                "no complete checkpoint could be restored: " + "; ".join(str(e) for e in damaged), damaged[0].path
            )
        return None

    # -- retention ------------------------------------------------------------------------------------------
    def prune(self, retain: int) -> None:
        """Keep the newest ``retain`` complete checkpoints and every directory their state files live in;
        delete older checkpoints and abandoned (incomplete) ones older than the oldest kept."""
        complete = self.completed()
        kept = complete[-retain:]
        if not kept:
            return
        oldest_kept = kept[0][0]
        referenced = {path.rsplit("/", 1)[-1] for _, path in kept}
        for _, path in kept:
            try:
                metadata = self.load(path)
            except CheckpointCorruptError:
                continue
            referenced |= {f.path.split("/", 1)[0] for a in metadata.acks for f in a.state_files}
        for checkpoint_id, kind, path in self._entries():
            name = path.rsplit("/", 1)[-1]
            if kind == "savepoint" or name in referenced or checkpoint_id >= oldest_kept:
                continue
            try:
                self.fs.delete_dir(path)
            except (OSError, pa.ArrowException) as exc:
                log.warning("could not delete old checkpoint %s: %s", path, exc)
