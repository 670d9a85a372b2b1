"""Durable staging of a Kafka sink's encoded records: Arrow IPC files under a directory on ``pyarrow.fs``.

Layout of a sink's area (``<root>/<owner key>/<sink>/``, see :class:`~headwater.sinks.kafka.KafkaSink`)::

    inprogress-<subtask:04d>-<uuid>.arrow                          being written; no token names it
    prepared-<checkpoint:06d>-<subtask:04d>-<writer>.arrow         prepared: named by exactly one commit token

Each file is an Arrow IPC *stream* of ``key`` (binary, nullable) and ``value`` (binary) batches: what the commit
produces, already encoded, so any process (the driver after a crash) can commit a token without the sink's
encoders or the pipeline's code. A prepared file is complete: it was closed, synced and renamed (an atomic
rename on local disks) before its token existed.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

__all__ = ["STAGED_SCHEMA", "StagingArea", "StagingWriter"]

#: the schema of every staged file
STAGED_SCHEMA = pa.schema([pa.field("key", pa.binary()), pa.field("value", pa.binary(), nullable=False)])


class StagingArea:
    """One sink's staging directory (local path or ``pyarrow.fs`` URI) and the few operations on it."""

    def __init__(self, directory: str) -> None:
        if "://" in directory and not directory.startswith("file://"):
            self.fs, path = pafs.FileSystem.from_uri(directory)
            self.local = False
        else:
            self.fs, path = pafs.LocalFileSystem(), os.path.abspath(directory.removeprefix("file://"))
            self.local = True
        self.directory = path.rstrip("/") or "/"
        self._made = False

    def path(self, name: str) -> str:
        return posixpath.join(self.directory, name) if not self.local else os.path.join(self.directory, name)

    def new_writer(self, subtask: int) -> StagingWriter:
        if not self._made:
            self.fs.create_dir(self.directory, recursive=True)
            self._made = True
        return StagingWriter(self, self.path(f"inprogress-{subtask:04d}-{uuid.uuid4().hex}.arrow"))

    def names(self) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in info if i.type == pafs.FileType.File)

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def read(self, path: str) -> Iterator[pa.RecordBatch]:
        """The staged batches of ``path``, one at a time (memory stays at one batch)."""
        with self.fs.open_input_stream(path) as stream:
            reader = ipc.open_stream(stream)
            yield from reader

    def rename(self, src: str, dst: str) -> None:
        """Atomic locally (then the directory is synced); a copy on object stores."""
        if self.local:
            os.replace(src, dst)
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            self.fs.move(src, dst)


class StagingWriter:
    """An in-progress staging file: batches appended as they are written, sealed by :meth:`seal`."""

    def __init__(self, area: StagingArea, path: str) -> None:
        self.area = area
        self.path = path
        self.records = 0
        self._stream = area.fs.open_output_stream(path)
        self._writer = ipc.new_stream(self._stream, STAGED_SCHEMA)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.records += batch.num_rows

    def seal(self, final_path: str) -> None:
        """Close, sync and rename the file to ``final_path``: once this returns, it survives a crash."""
        self.close()
        if self.area.local:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.area.rename(self.path, final_path)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            if not self._stream.closed:
                self._stream.close()
