"""File sinks: Parquet, CSV and JSON lines, each writing a *directory* of files with a two-phase commit.

Layout of ``<path>``::

    <path>/_lease                                                       the run holding the directory
    <path>/_staging/<owner>/_owner                                      the checkpoint directory of <owner>
    <path>/_staging/<owner>/inprogress-<subtask:04d>-<uuid>.<ext>       being written (no token covers it)
    <path>/_staging/<owner>/part-<checkpoint:06d>-<subtask:04d>-<n:04d>-<writer>.<ext>   prepared, in a token
    <path>/part-<checkpoint:06d>-<subtask:04d>-<n:04d>-<writer>.<ext>         committed: visible to readers

``<owner>`` is the key of the job the sink stages for (:class:`~headwater.sinks.base.SinkOwner`, bound by the
planner): ``job-<16 hex>`` derived from a checkpointed job's checkpoint directory, or ``unchecked`` for runs
without checkpointing.

Commit order, per subtask:

1. :meth:`FileSinkPartition.write` appends to the subtask's current in-progress file (opened on the first row).
2. :meth:`FileSinkPartition.prepare` closes it, syncs it and renames it inside ``_staging`` to its final name;
   the returned :class:`FileCommitToken` lists ``(staged, final)`` pairs. Prepared files survive a crash.
3. :meth:`FileSinkPartition.commit` publishes each staged file under its final name without ever replacing a
   file there (locally a hard link, then the staged name is removed; see :meth:`_Store.publish`). A pair whose
   staged file is gone and whose final file exists was committed already, and one whose two names are the same
   file was interrupted between link and unlink, so committing a token again (after a crash) is harmless. A
   final name taken by another file is a :class:`~headwater.errors.SinkError`, never an overwrite.
4. :meth:`FileSinkPartition.abort` deletes this subtask's in-progress files (also those of a crashed earlier
   incarnation); prepared files are left to the engine, which commits their tokens or, with the directory's
   lease held, deletes those of its own owner that no token covers (:meth:`FileSink.clean_up`).

Staging per owner: the lease keeps two runs apart only while they run. A checkpointed job that crashed after
completing checkpoint 7 but before its sink committed it still needs its prepared files: it commits them when
it resumes, possibly after another job used the directory. So a run's clean-up deletes only its own owner's
staged files (and those of ended runs without checkpointing, which no checkpoint can commit) and never touches
another job's area; it logs the areas it kept that hold prepared files, naming their job's checkpoint
directory. Delete such an area by hand only once that job will never resume.

File names never collide: ``<writer>`` is a random 64-bit id (16 hex digits) drawn by each partition object,
i.e. per sink, subtask, attempt and run; the checkpoint id, subtask index and file counter keep names sorted
by checkpoint and tell a file's origin. Two sinks, two jobs or two attempts cannot produce the same name even
when checkpoint ids start again at 1 (every run without checkpointing commits "checkpoint" 1).

Ownership and existing files: the sink owns ``<path>`` (:meth:`FileSink.owned_locations`; the engine refuses
two sinks or the checkpoint directory in it and leases it for the run). Files already in the directory are
**kept**, as with Flink's FileSink or Spark's append mode: a run adds files and never deletes, truncates or
replaces a visible file, so two jobs run one after the other leave both outputs, and a resumed run keeps what
it committed before. Point a sink at an empty directory to read back one run's output alone. The sink deletes
only inside ``_staging/`` (its owner's staged files and those of ended unchecked runs).

Readers (``pyarrow.dataset``, Spark, pandas on the listed files, :mod:`headwater.sources.files`) skip
``_``-prefixed paths, so they see committed files only.

File operations go through :class:`_Store`, over ``pyarrow.fs``: ``path`` may be a URI (``s3://bucket/out``)
that ``pyarrow.fs.FileSystem.from_uri`` understands. On object stores a rename is a copy, so the commit there is
idempotent but not atomic per file, and the engine takes no lease there (see :mod:`headwater.engine.leases`).
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import posixpath
import uuid
from abc import abstractmethod
from base64 import b64encode
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Protocol, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from headwater.core import plain_data
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SinkError
from headwater.sinks.base import Sink, SinkOwner, SinkPartition

log = logging.getLogger("headwater.sinks.files")

__all__ = ["CsvSink", "FileCommitToken", "FileSinkPartition", "JsonLinesSink", "ParquetSink"]

STAGING_DIR = "_staging"
OWNER_FILE = "_owner"


@plain_data.register(name="headwater.FileCommitToken")
@dataclass(frozen=True)
class FileCommitToken:
    """What one ``prepare`` staged: ``(staged_path, final_path)`` pairs; empty when no rows were written."""

    checkpoint_id: int
    subtask: int
    files: tuple[tuple[str, str], ...] = ()


class _TakenError(Exception):
    """A final file name is taken by a file this sink did not stage."""


class _Store:
    """The few file operations the sinks need, on a local path or any ``pyarrow.fs`` URI."""

    def __init__(self, path: str) -> None:
        if "://" in path:
            self.fs, root = pafs.FileSystem.from_uri(path)
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root.rstrip("/") or "/"

    def join(self, *parts: str) -> str:
        return os.path.join(*parts) if self.local else posixpath.join(*parts)

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def open_output(self, path: str) -> pa.NativeFile:
        return self.fs.open_output_stream(path)

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def is_file(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def replace(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` to ``dst`` (replacing it) locally; copy-then-delete on object stores."""
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.move(src, dst)

    def publish(self, staged: str, final: str) -> None:
        """Give ``staged`` the name ``final`` without replacing another file there; idempotent.

        Locally a hard link (which fails rather than replace) and then the unlink of ``staged``: a crash between
        the two leaves two names of one file, which a retry recognises. Filesystems without hard links fall back
        to a check, then a rename (no other run writes here: the engine holds the directory's lease). On object
        stores a final object of another size than the staged one is not ours."""
        if self.local:
            try:
                os.link(staged, final)
            except FileExistsError:
                if not os.path.samefile(staged, final):
                    raise _TakenError(final) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(final):
                    raise _TakenError(final) from None
                os.replace(staged, final)
                return
            os.unlink(staged)
            return
        existing = self.fs.get_file_info(final)
        if existing.type == pafs.FileType.NotFound:
            self.fs.move(staged, final)
        elif existing.size == self.fs.get_file_info(staged).size:
            self.fs.delete_file(staged)  # a copy that a crash interrupted before the source was deleted
        else:
            raise _TakenError(final)

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_file(path)

    def list_names(self, directory: str, kind: pafs.FileType = pafs.FileType.File) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in info if i.type == kind)

    def read_text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return bytes(stream.read()).decode("utf-8", "replace")
        except (OSError, pa.ArrowException):
            return None

    def write_text(self, path: str, text: str) -> None:
        with self.fs.open_output_stream(path) as stream:
            stream.write(text.encode("utf-8"))

    def sync(self, path: str) -> None:
        """Flush ``path`` (a file, or a directory after renames in it) to disk; object stores need nothing."""
        if not self.local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Writer(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


class _OpenFile:
    """An in-progress staging file and its format writer."""

    def __init__(self, path: str, stream: pa.NativeFile, writer: _Writer) -> None:
        self.path = path
        self.stream = stream
        self.writer = writer
        self.rows = 0

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            if not self.stream.closed:
                self.stream.close()


class FileSinkPartition(SinkPartition[FileCommitToken]):
    """The writer of one subtask of a file sink; see the module docstring for the commit protocol."""

    def __init__(self, sink: FileSink, index: int) -> None:
        self._sink = sink
        self._index = index
        self._writer = uuid.uuid4().hex[:16]  # in every final name: no two partition objects share one
        self._store = _Store(sink.path)
        self._staging = self._store.join(self._store.root, STAGING_DIR, sink.owner.key)
        self._schema: pa.Schema | None = None
        self._current: _OpenFile | None = None
        self._closed: list[str] = []  # in-progress files full (max_rows_per_file) and closed, not yet prepared
        self._dirs_made = False

    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch`` to the current staging file; the first batch's schema fixes the file schema."""
        if self._schema is None:
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            raise SinkError(
                f"{type(self._sink).__name__} at {self._sink.path!r}: a batch's schema differs from the first "
                f"batch's, which fixes the schema of every file; cast or select columns before the sink.\n"
                f"first batch:\n{self._schema}\nthis batch:\n{batch.schema}", transient=False,
            )
        limit = self._sink.max_rows_per_file
        offset = 0
        try:
            while offset < batch.num_rows:
                current = self._current or self._open_new()
                take = batch.num_rows - offset if limit is None else min(limit - current.rows, batch.num_rows - offset)
                current.writer.write(batch.slice(offset, take))
                current.rows += take
                offset += take
                if limit is not None and current.rows >= limit:
                    self._close_current()
        except (TypeError, ValueError, pa.ArrowInvalid) as exc:
            raise SinkError(
                f"{type(self._sink).__name__} at {self._sink.path!r}: cannot encode a batch: {exc}. Cast the "
                "offending column to a type the format supports before the sink", transient=False,
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            raise self._error("write to", self._current.path if self._current else self._staging, exc) from exc

    def prepare(self, checkpoint_id: int) -> FileCommitToken:
        """Close the current file and stage everything written since the last prepare under its final name."""
        if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int) or checkpoint_id < 0:
            raise SinkError(f"{type(self._sink).__name__}: checkpoint_id must be an int >= 0, got {checkpoint_id!r}")
        files: list[tuple[str, str]] = []
        staged_path = self._staging
        try:
            self._close_current()
            for n, in_progress in enumerate(self._closed):
                name = f"part-{checkpoint_id:06d}-{self._index:04d}-{n:04d}-{self._writer}.{self._sink.extension}"
                staged_path = self._store.join(self._staging, name)
                self._store.sync(in_progress)
                self._store.replace(in_progress, staged_path)
                files.append((staged_path, self._store.join(self._store.root, name)))
            if files:
                self._store.sync(self._staging)
        except OSError as exc:
            raise self._error("stage", staged_path, exc) from exc
        self._closed = []
        return FileCommitToken(checkpoint_id, self._index, tuple(files))

    def commit(self, token: FileCommitToken) -> None:
        """Move the token's staged files to their final names; idempotent (already moved pairs are skipped)."""
        final = self._store.root
        try:
            for staged, final in token.files:
                if self._store.is_file(staged):
                    self._store.publish(staged, final)
                elif not self._store.is_file(final):
                    raise SinkError(
                        f"{type(self._sink).__name__}: cannot commit {final!r}: neither it nor its staged file "
                        f"{staged!r} exists; the staged file was deleted by something other than this job (the "
                        f"sink never deletes a file a token of a job that may resume names), so the rows of "
                        f"checkpoint {token.checkpoint_id} are lost. Restore from an earlier savepoint, or rerun "
                        f"into an empty output directory", transient=False,
                    )
            for directory in sorted({final.rsplit("/", 1)[0] for _, final in token.files}):
                self._store.sync(directory)  # the token's own directory: it may belong to an earlier job
        except _TakenError:
            raise SinkError(
                f"{type(self._sink).__name__}: cannot commit {final!r}: a file this sink did not stage already has "
                f"that name, and commits never overwrite. Something other than this job writes to "
                f"{self._sink.path!r}; give each job its own output directory", transient=False,
            ) from None
        except OSError as exc:
            raise self._error("commit", final, exc) from exc

    def abort(self) -> None:
        """Delete this subtask's in-progress files (of any incarnation); prepared files are not touched."""
        current, self._current = self._current, None
        if current is not None:
            try:
                current.close()
            except (OSError, pa.ArrowException):
                pass  # the file is deleted next
        self._closed = []
        prefix = f"inprogress-{self._index:04d}-"
        try:
            for name in self._store.list_names(self._staging):
                if name.startswith(prefix):
                    self._store.delete(self._store.join(self._staging, name))
        except OSError as exc:
            raise self._error("clean up", self._staging, exc) from exc

    def close(self) -> None:
        """Close the open writer; rows not yet prepared stay in an in-progress file that ``abort`` removes."""
        current, self._current = self._current, None
        if current is not None:
            current.close()

    def _open_new(self) -> _OpenFile:
        assert self._schema is not None
        if not self._dirs_made:
            _make_area(self._store, self._staging, self._sink.owner)
            self._dirs_made = True
        name = f"inprogress-{self._index:04d}-{uuid.uuid4().hex}.{self._sink.extension}"
        path = self._store.join(self._staging, name)
        stream = self._store.open_output(path)
        self._current = _OpenFile(path, stream, self._sink._open_writer(stream, self._schema))
        return self._current

    def _close_current(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.close()
            if current.rows:
                self._closed.append(current.path)
            else:
                self._store.delete(current.path)

    def _error(self, action: str, path: str, exc: BaseException) -> SinkError:
        return SinkError(
            f"{type(self._sink).__name__}: cannot {action} {path!r}: {exc}. Check that the directory "
            f"{self._sink.path!r} is writable and the disk is not full"
        )


def _make_area(store: _Store, area: str, owner: SinkOwner) -> None:
    """Create ``owner``'s staging area; a checkpointed owner's records its checkpoint directory (for the
    warnings of other jobs' clean-ups and for operators)."""
    store.makedirs(area)
    record = store.join(area, OWNER_FILE)
    if owner.checkpoint_dir is not None and store.read_text(record) is None:
        store.write_text(record, json.dumps({"checkpoint_dir": owner.checkpoint_dir}) + "\n")


class FileSink(Sink):
    """Base of the directory-writing sinks: configuration only (picklable), one partition per subtask.

    The sink owns ``path``: no other sink of the job and not the checkpoint directory may be in it or around it
    (refused at build time), and a run holds its lease. Files already there are kept: a run only adds files with
    names no other writer can produce, and never replaces or deletes a visible file (see the module docstring).

    ``max_rows_per_file`` (optional) starts a new file once one holds that many rows; the ``<n>`` part of the
    final name counts the files of one subtask within one checkpoint.
    """

    exactly_once = True
    #: Extension of the written files, without the dot.
    extension: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike[str], *, max_rows_per_file: int | None = None) -> None:
        self.path = os.fspath(path)
        self.owner = SinkOwner()  # set per run by staging_as
        owner = type(self).__name__
        if max_rows_per_file is not None and (
            isinstance(max_rows_per_file, bool) or not isinstance(max_rows_per_file, int) or max_rows_per_file < 1
        ):
            raise ConfigError(f"{owner}: max_rows_per_file must be a positive int or None, got {max_rows_per_file!r}")
        self.max_rows_per_file = max_rows_per_file
        try:
            store = _Store(self.path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ConfigError(f"{owner}: cannot use {self.path!r} as an output directory: {exc}") from exc
        if store.local and store.is_file(store.root):
            raise ConfigError(f"{owner}: {self.path!r} is a file; give a directory (it is created if missing)")

    def build_part(self, index: int, count: int) -> FileSinkPartition:
        if not 0 <= index < count:
            raise ConfigError(f"{type(self).__name__}: subtask index {index} is out of range for {count} subtasks")
        return FileSinkPartition(self, index)

    def owned_locations(self) -> tuple[str, ...]:
        """The output directory: an absolute local path, or the URI as given."""
        store = _Store(self.path)
        return (os.path.realpath(store.root),) if store.local else (self.path.rstrip("/"),)

    def staging_as(self, owner: SinkOwner) -> FileSink:
        """A copy of this sink that stages in ``_staging/<owner.key>/``."""
        bound = copy.copy(self)
        bound.owner = owner
        return bound

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        """Delete the in-progress and prepared files of this sink's owner (any subtask, attempt or earlier run)
        that no token names, and every staged file of runs without checkpointing (they ended: the caller holds
        the directory's lease). Other jobs' staging areas are kept, with a warning when they hold prepared files;
        visible files are never touched. A checkpointed owner's area records its checkpoint directory."""
        store = _Store(self.path)
        staging = store.join(store.root, STAGING_DIR)
        keep = {staged for token in tokens if isinstance(token, FileCommitToken) for staged, _ in token.files}
        try:
            areas = store.list_names(staging, pafs.FileType.Directory)
            for key in {self.owner.key, SinkOwner.UNCHECKED}:
                area = store.join(staging, key)
                for name in store.list_names(area) if key in areas else ():
                    path = store.join(area, name)
                    if name.startswith(("inprogress-", "part-")) and path not in keep:
                        store.delete(path)
            _make_area(store, store.join(staging, self.owner.key), self.owner)
            for key in areas:
                if key not in (self.owner.key, SinkOwner.UNCHECKED):
                    self._report_kept(store, store.join(staging, key))
        except OSError as exc:
            raise SinkError(f"{type(self).__name__}: cannot clean up {staging!r}: {exc}. Check that the directory "
                            f"{self.path!r} is writable") from exc

    def _report_kept(self, store: _Store, area: str) -> None:
        prepared = [name for name in store.list_names(area) if name.startswith("part-")]
        if not prepared:
            return
        try:
            checkpoint_dir = json.loads(store.read_text(store.join(area, OWNER_FILE)) or "{}").get("checkpoint_dir")
        except (ValueError, AttributeError):
            checkpoint_dir = None
        job = f"the job with checkpoint directory {checkpoint_dir!r}" if checkpoint_dir else "another job"
        log.warning("%s at %s: kept %d prepared file(s) in %s, staged by %s; that job commits them when it resumes. "
                    "Delete %s by hand only once that job will never resume", type(self).__name__, self.path,
                    len(prepared), area, job, area)

    @abstractmethod
    def _open_writer(self, stream: pa.NativeFile, schema: pa.Schema) -> _Writer:
        """A format writer of ``schema`` onto ``stream`` (the stream is closed by the caller)."""


class ParquetSink(FileSink):
    """Write Parquet files (one row group per written batch, or more for large batches)."""

    extension = "parquet"

    def __init__(
        self, path: str | os.PathLike[str], compression: str = "zstd", *, max_rows_per_file: int | None = None
    ) -> None:
        super().__init__(path, max_rows_per_file=max_rows_per_file)
        try:
            pa.Codec(compression)
        except (ValueError, pa.ArrowException) as exc:
            raise ConfigError(f"ParquetSink: unknown compression {compression!r} ({exc}); try 'zstd' or 'snappy'") from None
        self.compression = compression

    def _open_writer(self, stream: pa.NativeFile, schema: pa.Schema) -> _Writer:
        return pq.ParquetWriter(stream, schema, compression=self.compression)


class CsvSink(FileSink):
    """Write CSV files with a header row (pyarrow's CSV writer: strings quoted, nulls as empty fields)."""

    extension = "csv"

    def _open_writer(self, stream: pa.NativeFile, schema: pa.Schema) -> _Writer:
        return pacsv.CSVWriter(stream, schema)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return b64encode(value).decode("ascii")
    raise TypeError(f"cannot write a {type(value).__name__} value as JSON")


class _JsonLinesWriter:
    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream

    def write(self, batch: pa.RecordBatch) -> None:
        lines = [json.dumps(row, default=_json_default, ensure_ascii=False) for row in batch.to_pylist()]
        self._stream.write(("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        pass


class JsonLinesSink(FileSink):
    """Write one JSON object per line; temporal values as ISO 8601 strings, decimals as strings, bytes base64."""

    extension = "jsonl"

    def _open_writer(self, stream: pa.NativeFile, schema: pa.Schema) -> _Writer:
        return _JsonLinesWriter(stream)
