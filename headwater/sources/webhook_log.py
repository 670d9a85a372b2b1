"""The durable log behind :class:`~headwater.sources.webhook.WebhookSource`: payloads appended and fsynced before
they are acknowledged, read back by offset.

Layout: a directory the source owns (``LOCK`` held with ``flock`` while open, so two processes never share it),
holding segment files ``<first offset, 20 digits>.log``. A record is ``length (u32) | crc32 (u32) |
received_ms (u64) | payload``, big-endian. Offsets count records from 0 across segments.

Invariants:

* :meth:`WebhookLog.append` returns only after the record is written and ``fsync``\\ ed (group commit: one fsync
  covers every append written before it, so concurrent appends share it). :attr:`WebhookLog.durable` is the
  offset after the last durable record; readers never read past it.
* Opening the log truncates a torn tail (a record cut short or failing its CRC: a crash during an append that
  was therefore never acknowledged) and fsyncs the directory when it creates a segment.
* :meth:`WebhookLog.truncate_before` deletes only whole segments that end at or before the given offset, never
  the active one.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import BinaryIO

from headwater.errors import SourceError

HEADER = struct.Struct(">IIQ")
SUFFIX = ".log"


def _segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan(path: Path) -> tuple[int, int]:
    """``(records, valid bytes)`` of a segment file: the records up to the first torn or corrupt one."""
    count = good = 0
    with open(path, "rb") as f:
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return count, good
            length, crc, _ = HEADER.unpack(header)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return count, good
            count += 1
            good += HEADER.size + length


class WebhookLog:
    """A segmented append-only log in ``directory`` (created if missing; see the module docstring)."""

    def __init__(self, directory: str | Path, segment_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_file = open(self.directory / "LOCK", "a+b")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SourceError(f"WebhookSource: the log directory {self.directory} is in use by another process "
                              "(another job or source owns it; give each WebhookSource its own log_dir)",
                              transient=True) from None
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._read_hint: tuple[int, int, int] | None = None  # (offset, segment first offset, byte position)
        self._written = 0  # offset after the last record written (maybe not yet durable)
        self.durable = 0
        segments = self.segments()
        if not segments:
            self._start_segment(0)
        else:
            first, path = segments[-1]
            count, good = scan(path)
            if good < path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            self._active_first = first
            self._active: BinaryIO = open(path, "ab")  # noqa: SIM115 - the active segment, closed in close()
            self._active_size = good
            self._written = self.durable = first + count

    def segments(self) -> list[tuple[int, Path]]:
        """``(first offset, path)`` of every segment, in offset order."""
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            stem = path.name[: -len(SUFFIX)]
            if stem.isdigit() and len(stem) == 20:
                found.append((int(stem), path))
        return sorted(found)

    @property
    def first_offset(self) -> int:
        segments = self.segments()
        return segments[0][0] if segments else self.durable

    def _start_segment(self, first: int) -> None:
        path = self.directory / _segment_name(first)
        self._active = open(path, "ab")  # noqa: SIM115 - closed when rolled or in close()
        self._active_first, self._active_size = first, 0
        if self.fsync:
            _fsync_dir(self.directory)

    def append(self, payload: bytes, received_ms: int | None = None) -> int:
        """Append ``payload``; returns its offset once it is durable."""
        stamp = int(time.time() * 1000) if received_ms is None else received_ms
        record = HEADER.pack(len(payload), zlib.crc32(payload), stamp) + payload
        with self._write_lock:
            if self._active_size and self._active_size + len(record) > self.segment_bytes:
                self._sync_active()
                self._active.close()
                self._start_segment(self._written)
            self._active.write(record)
            self._active_size += len(record)
            offset = self._written
            self._written += 1
        self._sync(offset + 1)
        return offset

    def _sync_active(self) -> None:
        self._active.flush()
        if self.fsync:
            os.fsync(self._active.fileno())

    def _sync(self, upto: int) -> None:
        with self._sync_lock:
            if self.durable >= upto:
                return  # another append's fsync covered this record
            with self._write_lock:
                self._active.flush()
                target, active = self._written, self._active
            if self.fsync:
                os.fsync(active.fileno())
            self.durable = max(self.durable, target)

    def read(self, offset: int, max_records: int) -> list[tuple[int, int, bytes]]:
        """Up to ``max_records`` durable records from ``offset`` on, as ``(offset, received_ms, payload)``."""
        end = min(self.durable, offset + max_records)
        if offset >= end:
            return []
        segments = self.segments()
        if not segments or offset < segments[0][0]:
            raise SourceError(f"WebhookSource: the log in {self.directory} no longer holds offset {offset} (it "
                              f"starts at {segments[0][0] if segments else self.durable}); segments before the "
                              "last completed checkpoint are deleted, so an older checkpoint cannot be restored",
                              transient=False)
        out: list[tuple[int, int, bytes]] = []
        index = max(i for i, (first, _) in enumerate(segments) if first <= offset)
        while len(out) < end - offset and index < len(segments):
            first, path = segments[index]
            with open(path, "rb") as f:
                at = first
                hint = self._read_hint
                if hint is not None and hint[1] == first and hint[0] <= offset:
                    at = hint[0]  # sequential reads resume where the last one ended, not at the segment's start
                    f.seek(hint[2])
                while at < end:
                    header = f.read(HEADER.size)
                    if len(header) < HEADER.size:
                        break
                    length, _, stamp = HEADER.unpack(header)
                    if at < offset:
                        f.seek(length, os.SEEK_CUR)
                    else:
                        out.append((at, stamp, f.read(length)))
                    at += 1
                self._read_hint = (at, first, f.tell())
            index += 1
        return out

    def truncate_before(self, offset: int) -> int:
        """Delete the segments whose records all lie before ``offset``; returns how many were deleted."""
        segments = self.segments()
        deleted = 0
        for (first, path), (next_first, _) in zip(segments, segments[1:]):
            if next_first <= offset and first != self._active_first:
                path.unlink(missing_ok=True)
                deleted += 1
        if deleted and self.fsync:
            _fsync_dir(self.directory)
        return deleted

    def close(self) -> None:
        with self._write_lock:
            if not self._active.closed:
                self._active.close()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
