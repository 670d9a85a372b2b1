"""Checkpoints on a filesystem (local directory or any ``pyarrow.fs`` URI).

Layout::

    <dir>/chk-000042/state/<step_id>/<state>/s<stage>-t<subtask>.arrow   keyed state tables (Arrow IPC)
    <dir>/chk-000042/_metadata                                           written last, atomically
    <dir>/savepoint-000043/...                                           same layout; never pruned

A checkpoint **exists** only once its ``_metadata`` exists and verifies: subtasks write their state files
first, the coordinator writes ``_metadata`` (authenticated JSON, see :mod:`headwater.engine.checkpoints.metadata`;
to a temporary name, then renamed) only after every subtask acknowledged, then reads it and every state file it
names back from the filesystem and checks them (size, SHA-256) before the checkpoint counts as complete.

Invariants:

* Nothing read from a checkpoint directory is unpickled or executed before it is authenticated: the metadata
  by its HMAC under the deployment key (:mod:`headwater.engine.checkpoints.key`), each state file by the SHA-256
  the authenticated metadata records for it. A restore detects missing, truncated, altered or foreign files
  (:class:`~headwater.errors.CheckpointCorruptError` naming the file) and falls back to the previous complete
  checkpoint instead of restoring part of the state.
* A checkpoint that fails (a write error, failed verification, a timeout) leaves no files: its own files are
  deleted at once (:meth:`CheckpointStorage.discard`); files a subtask finishes writing after that are deleted
  when its late acknowledgement arrives; what a killed attempt left is deleted by
  :meth:`CheckpointStorage.discard_incomplete` before the next attempt, and :meth:`CheckpointStorage.prune`
  deletes every unreferenced directory older than the newest complete checkpoint.
* Errors keep the ``OSError`` that caused them as ``__cause__`` (its ``errno`` tells disk full from a glitch).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from headwater.engine.checkpoints.key import CheckpointKey, load_key
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.engine.checkpoints.metadata import (
    CheckpointMetadata,
    MetadataError,
    StateFile,
    SubtaskAck,
    decode_metadata,
    encode_metadata,
)
from headwater.errors import CheckpointCorruptError, CheckpointError, HeadwaterError

__all__ = ["METADATA", "CheckpointMetadata", "CheckpointStorage", "StateFile", "SubtaskAck"]

log = logging.getLogger("headwater.checkpoint")

_DIR = re.compile(r"^(chk|savepoint)-(\d{6,})$")
METADATA = "_metadata"
_READ_CHUNK = 4 << 20


class _HashingWriter:
    """A write-only file object that forwards to ``out`` and keeps the SHA-256 and size of what went through."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
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


class CheckpointStorage:
    """Reads and writes checkpoints under one root (picklable: it travels to the actors).

    ``key`` authenticates metadata; by default it is loaded (or created) on first use from the environment or
    the key file (:func:`~headwater.engine.checkpoints.key.load_key`). A storage unpickled in another process
    carries no key and never loads one: subtasks only write and read state files (checked against metadata the
    driver verified); the coordinator's worker gets the key with the coordinator (:meth:`attach_key`).
    """

    def __init__(self, uri: str, key: CheckpointKey | None = None) -> None:
        self.uri = uri
        self._fs: pafs.FileSystem | None = None
        self._root = ""
        self._key = key
        self._may_load_key = True

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri}  # never the key: it must not travel with every subtask

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])  # type: ignore[misc]  # deliberate: rebuild from the URI alone
        self._may_load_key = False

    @property
    def key(self) -> CheckpointKey:
        if self._key is None:
            if not self._may_load_key:
                raise CheckpointError(
                    f"checkpoint storage {self.uri}: this process received no checkpoint key (only the driver and "
                    "the coordinator's worker hold it)"
                )
            self._key = load_key()
        return self._key

    def attach_key(self, key: CheckpointKey) -> None:
        self._key = key

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
    def dir_name(checkpoint_id: int, kind: CheckpointKind = CheckpointKind.CHECKPOINT) -> str:
        return f"{kind.directory_prefix}-{checkpoint_id:06d}"

    # -- writing --------------------------------------------------------------------------------------------
    def write_state(
        self, checkpoint_id: int, step_id: str, state_name: str, stage_id: int, subtask: int,
        table: pa.Table, key_group_range: range,
    ) -> StateFile:
        relative = f"{self.dir_name(checkpoint_id)}/state/{step_id}/{state_name}/s{stage_id}-t{subtask}.arrow"
        path = self._path(relative)
        try:
            checked = self._write_table(path, table)
        except (OSError, pa.ArrowException) as exc:
            self._delete_file(path)  # a partial file (disk full) must not stay behind
            raise CheckpointError(f"could not write checkpoint state {path}: {exc}") from exc
        digest = checked.hash.hexdigest()
        return StateFile(step_id, state_name, relative, checked.size, digest, (key_group_range.start, key_group_range.stop))

    def _write_table(self, path: str, table: pa.Table) -> _HashingWriter:
        for attempt in (1, 2):
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            try:
                out = self.fs.open_output_stream(path)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue  # the directory of an aborted checkpoint was removed meanwhile: create it again
            with out:
                # The IPC writer streams the table's buffers straight into the file (no in-memory copy of the
                # whole file), and the digest is computed on the way.
                checked = _HashingWriter(out)
                with ipc.new_file(pa.PythonFile(checked, mode="w"), table.schema) as writer:
                    writer.write_table(table)
            return checked
        raise AssertionError("unreachable")

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

    def write_metadata(self, metadata: CheckpointMetadata, verified: set[tuple[str, str]] | None = None) -> str:
        """Write ``_metadata`` atomically (temporary name, then rename), read it and every state file it names
        back and verify them; only then does the checkpoint exist. Returns its directory.

        ``verified`` holds (path, digest) of state files verified before (a finished subtask's final snapshot
        stands in for every later checkpoint: it is read back once); final snapshots verified now are added to
        it (no other file recurs, so the set holds at most one entry per subtask and state).
        A write error raises :class:`CheckpointError` (the ``OSError`` as cause), failed verification
        :class:`CheckpointCorruptError`; either way the checkpoint's own files are deleted first."""
        directory = self._path(self.dir_name(metadata.checkpoint_id, metadata.kind))
        final = f"{directory}/{METADATA}"
        temporary = f"{final}.{time.time_ns()}.tmp"
        metadata.directory = directory
        try:
            if metadata.kind is CheckpointKind.SAVEPOINT:
                self._make_self_contained(metadata, directory)
            data = encode_metadata(metadata, self.key)
            self.fs.create_dir(directory, recursive=True)
            with self.fs.open_output_stream(temporary) as out:
                out.write(data)
            self.fs.move(temporary, final)
        except (OSError, pa.ArrowException) as exc:
            self._delete_file(temporary)
            self.discard(metadata)
            raise CheckpointError(f"could not write checkpoint metadata {final}: {exc}") from exc
        try:
            self._verify_written(metadata, final, data, verified)
        except CheckpointCorruptError:
            self.discard(metadata)
            raise
        return directory

    def _verify_written(
        self, metadata: CheckpointMetadata, final: str, data: bytes, verified: set[tuple[str, str]] | None,
    ) -> None:
        try:
            with self.fs.open_input_stream(final) as stream:
                written = stream.read()
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f"checkpoint metadata {final} cannot be read back: {exc}", final) from exc
        if written != data:
            raise CheckpointCorruptError(f"checkpoint metadata {final} read back differs from what was written", final)
        for ack in metadata.acks:
            for state_file in ack.state_files:
                path = self._state_path(metadata, state_file)
                if verified is not None and (path, state_file.sha256) in verified:
                    continue
                self._check_file(path, state_file)
                if verified is not None and ack.finished:
                    verified.add((path, state_file.sha256))  # only these recur: the set stays bounded

    def discard(self, metadata: CheckpointMetadata) -> None:
        """Delete the files of a checkpoint that failed: its metadata and the state files written for it. A
        finished subtask's final snapshot is kept (it stands in for later checkpoints); a savepoint directory
        holds only copies and goes entirely."""
        directory = self._path(self.dir_name(metadata.checkpoint_id, metadata.kind))
        if metadata.kind is CheckpointKind.SAVEPOINT:
            self._delete_dir(directory)
            return
        self._delete_file(f"{directory}/{METADATA}")
        for ack in metadata.acks:
            if not ack.finished:
                self.delete_state_files(ack)
        self._delete_temporaries_and_empty_dirs(directory)

    def delete_state_files(self, ack: SubtaskAck) -> None:
        """Delete the state files of ``ack`` (an acknowledgement of an aborted checkpoint)."""
        for state_file in ack.state_files:
            self._delete_file(self._path(state_file.path))

    def _delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            log.warning("could not delete checkpoint file %s: %s", path, exc)

    def _delete_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            log.warning("could not delete checkpoint directory %s: %s", path, exc)

    def _delete_temporaries_and_empty_dirs(self, directory: str) -> None:
        """Remove temporary files and the directories left empty under ``directory`` (and it, if empty)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException):
            return
        dirs = [directory]
        for info in infos:
            if info.type == pafs.FileType.Directory:
                dirs.append(info.path)
            elif info.base_name.endswith(".tmp"):
                self._delete_file(info.path)
        for path in sorted(dirs, key=lambda p: -p.count("/")):
            try:
                if not self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                    self.fs.delete_dir(path)
            except (OSError, pa.ArrowException):
                pass  # not empty (a writer is still at work) or already gone

    # -- reading --------------------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[int, bool, str]]:
        """(id, is a savepoint, path) of every checkpoint directory here, oldest first."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(), allow_not_found=True))
        except (OSError, pa.ArrowException):
            return []
        out = []
        for info in infos:
            match = _DIR.match(info.base_name)
            if match and info.type == pafs.FileType.Directory:
                savepoint = match.group(1) == CheckpointKind.SAVEPOINT.directory_prefix
                out.append((int(match.group(2)), savepoint, info.path))
        return sorted(out)

    def next_id(self) -> int:
        """One more than any checkpoint id ever used here (complete or not), so ids never repeat."""
        entries = self._entries()
        return max((i for i, _, _ in entries), default=0) + 1

    def completed(self, include_savepoints: bool = False) -> list[tuple[int, str]]:
        """(id, directory) of checkpoints whose metadata exists, oldest first."""
        out = []
        for checkpoint_id, savepoint, path in self._entries():
            if savepoint and not include_savepoints:
                continue
            if self.fs.get_file_info(f"{path}/{METADATA}").type == pafs.FileType.File:
                out.append((checkpoint_id, path))
        return out

    def load(self, directory: str) -> CheckpointMetadata:
        """Load and authenticate a checkpoint directory's metadata, and check that every state file it names is
        present with its recorded size (:meth:`verify` checks their digests). Anything wrong raises
        :class:`CheckpointCorruptError` naming the file; nothing is unpickled."""
        directory = directory.rstrip("/")
        metadata_path = f"{directory}/{METADATA}"
        try:
            with self.fs.open_input_stream(metadata_path) as stream:
                data = stream.read()
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"checkpoint metadata {metadata_path} is missing", metadata_path) from exc
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f"checkpoint metadata {metadata_path} cannot be read: {exc}", metadata_path) from exc
        try:
            metadata = decode_metadata(data, self.key)
        except MetadataError as exc:
            raise CheckpointCorruptError(f"checkpoint metadata {metadata_path} is damaged: {exc}", metadata_path) from None
        except Exception as exc:  # noqa: BLE001 - untrusted input: any failure to parse it means a damaged file
            raise CheckpointCorruptError(
                f"checkpoint metadata {metadata_path} is damaged: {type(exc).__name__}: {exc}", metadata_path
            ) from None
        name = _DIR.match(directory.rsplit("/", 1)[-1])
        if name is not None and (int(name.group(2)) != metadata.checkpoint_id
                                 or name.group(1) != metadata.kind.directory_prefix):
            raise CheckpointCorruptError(
                f"checkpoint metadata {metadata_path} describes {self.dir_name(metadata.checkpoint_id, metadata.kind)}, "
                "not the directory it is in (was it copied from another checkpoint?)", metadata_path,
            )
        metadata.directory = directory
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
        if metadata.kind is CheckpointKind.SAVEPOINT:
            return f"{metadata.directory}/{state_file.path}"
        return self._path(state_file.path)

    def _read_checked(self, path: str, state_file: StateFile, keep: bool) -> bytes:
        """The bytes of a state file (``keep``; else only hashed in chunks), refused unless they have the size
        and SHA-256 that the authenticated metadata records."""
        digest = hashlib.sha256()
        chunks = []
        size = 0
        try:
            with self.fs.open_input_stream(path) as stream:
                while chunk := stream.read(_READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if keep:
                        chunks.append(chunk)
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f"checkpoint state file {path} cannot be read: {exc}", path) from exc
        if size != state_file.size:
            raise CheckpointCorruptError(f"checkpoint state file {path} has {size} bytes, {state_file.size} were written", path)
        if digest.hexdigest() != state_file.sha256:
            raise CheckpointCorruptError(
                f"checkpoint state file {path} does not match its SHA-256 digest: refused before reading any state "
                "from it", path,
            )
        return b"".join(chunks)

    def _check_file(self, path: str, state_file: StateFile) -> None:
        self._read_checked(path, state_file, keep=False)

    def read_state(self, metadata: CheckpointMetadata, state_file: StateFile) -> pa.Table:
        """Read one state file, verifying its digest before anything in it is used (or unpickled)."""
        path = self._state_path(metadata, state_file)
        data = self._read_checked(path, state_file, keep=True)
        try:
            return ipc.open_file(pa.BufferReader(data)).read_all()
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(f"checkpoint state file {path} is not an Arrow IPC file: {exc}", path) from exc

    def verify(self, metadata: CheckpointMetadata) -> None:
        """Check every state file's size and digest (restores read each file anyway; this checks before
        starting)."""
        for ack in metadata.acks:
            for state_file in ack.state_files:
                self._check_file(self._state_path(metadata, state_file), state_file)

    def latest_valid(self) -> CheckpointMetadata | None:
        """The newest complete checkpoint or savepoint that verifies, falling back past damaged ones (each
        logged, naming the file). Ids grow across both, so a job stopped with a savepoint resumes from that
        savepoint."""
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

    # -- retention and cleanup ------------------------------------------------------------------------------
    def _references(self, checkpoints: list[tuple[int, str]]) -> tuple[set[str], int]:
        """Directory names the state files of ``checkpoints`` live in, and the highest id among those whose
        metadata could not be loaded (their references are unknown: nothing below them is deleted)."""
        referenced = {path.rsplit("/", 1)[-1] for _, path in checkpoints}
        unknown_below = 0
        for checkpoint_id, path in checkpoints:
            try:
                metadata = self.load(path)
            except CheckpointCorruptError:
                unknown_below = max(unknown_below, checkpoint_id)
                continue
            referenced |= {f.path.split("/", 1)[0] for a in metadata.acks for f in a.state_files}
        return referenced, unknown_below

    def prune(self, retain: int) -> None:
        """Keep the newest ``retain`` complete checkpoints, every directory their state files live in, every
        savepoint and every directory newer than the newest complete checkpoint (a checkpoint in flight, a final
        snapshot being written); delete the rest: older checkpoints and abandoned (failed, aborted) ones.

        Called when a checkpoint completed: at that moment no subtask writes into an older directory, except one
        still finishing the write of an aborted checkpoint, whose late acknowledgement deletes its files."""
        complete = self.completed()
        kept = complete[-retain:]
        if not kept:
            return
        newest = kept[-1][0]
        referenced, unknown_below = self._references(kept)
        for checkpoint_id, savepoint, path in self._entries():
            name = path.rsplit("/", 1)[-1]
            if savepoint or name in referenced or checkpoint_id > newest or checkpoint_id < unknown_below:
                continue
            self._delete_dir(path)

    def discard_incomplete(self) -> list[str]:
        """Delete checkpoint directories without metadata that no complete checkpoint references — what a failed
        attempt left (its workers are gone). Returns the deleted paths. Directories older than a complete
        checkpoint whose metadata cannot be read are kept (its references are unknown)."""
        complete = self.completed(include_savepoints=True)
        try:
            referenced, unknown_below = self._references(complete)
        except HeadwaterError as exc:  # no usable key: references unknown, keep everything
            log.warning("not deleting incomplete checkpoints in %s: %s", self.uri, exc)
            return []
        done = {path for _, path in complete}
        deleted = []
        for checkpoint_id, _, path in self._entries():
            name = path.rsplit("/", 1)[-1]
            if path in done or name in referenced or checkpoint_id < unknown_below:
                continue
            self._delete_dir(path)
            deleted.append(path)
        if deleted:
            log.info("deleted %d incomplete checkpoint(s) of a failed attempt: %s", len(deleted), ", ".join(deleted))
        return deleted
