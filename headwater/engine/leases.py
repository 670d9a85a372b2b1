"""Leases: one run at a time owns a job's checkpoint directory and each of its sinks' output directories.

Two runs on one checkpoint directory both restore, both commit and both clean up: every key was published
twice, and one run's clean-up deleted the other's in-progress file. The driver of a run therefore takes a
lease on each directory the job claims (:mod:`headwater.engine.ownership`) before anything is settled or
started, holds it through every restart attempt, and releases it when the run ends, also on failure.

How (local filesystems, ``file://`` URIs included):

* The lease is an exclusive ``fcntl.flock`` on ``<dir>/_lease`` (readers skip ``_``-prefixed names). The
  kernel drops the lock when the holder's process dies, however it dies (SIGKILL, OOM, power loss of the
  process), so a crashed holder's successor takes the lease over at once: there is no stale lease to guess
  about, no expiry to wait for, and no clock involved.
* The holder writes who it is into the file (job, run id, host, pid, start time); a refused run reads it and
  names the holder in its :class:`~headwater.errors.DirectoryInUseError`. The record is informative only;
  the lock alone decides.
* ``flock`` locks belong to an open file description, so a second run in the *same* process (a second
  ``hw.start`` on the directory) is refused as well; a sequence of runs in one process takes and releases the
  lease in turn. The lock file is never deleted: unlinking it would let a waiting opener lock an orphaned
  inode while a newcomer locks a fresh file, and both would "hold" the lease. The descriptor is not inherited
  by programs the driver starts (Python opens it close-on-exec); a child made with a bare ``fork()`` would
  share the lock until it exits.
* Linux implements ``flock`` on NFS (v4) as a POSIX lock the server arbitrates, so drivers on different
  machines sharing such a directory exclude each other too. A filesystem that supports no locks is refused
  with a :class:`~headwater.errors.ConfigError` rather than run unprotected.

Object stores (``s3://``, ``gs://``, ...) have no locks, and ``pyarrow.fs`` offers no conditional (create-if-
absent) write to build one from; a renewed lease with an expiry would still let two runs that read "free" at
the same moment both take it. So no lease is taken there: the run logs a warning, and keeping to one run per
prefix is the operator's job. File names that carry a per-writer id
(:mod:`headwater.sinks.files`) still keep two runs from overwriting each other's files there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import uuid
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Iterable

from headwater.engine.ownership import Claim, Location
from headwater.errors import ConfigError, DirectoryInUseError

log = logging.getLogger("headwater.leases")

LEASE_FILE = "_lease"


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as recorded in the lease file."""

    job: str
    run_id: str
    host: str
    pid: int
    started_at: str  # ISO 8601, UTC

    @classmethod
    def this_process(cls, job: str, run_id: str | None = None) -> LeaseHolder:
        return cls(job, run_id or uuid.uuid4().hex[:16], socket.gethostname(), os.getpid(),
                   datetime.now(UTC).isoformat(timespec="seconds"))

    def describe(self) -> str:
        here = " (this process)" if self.pid == os.getpid() and self.host == socket.gethostname() else ""
        return (f"job {self.job!r} (run {self.run_id}, pid {self.pid}{here} on host {self.host!r}, "
                f"since {self.started_at})")


class DirectoryLease:
    """An exclusive lease on one local directory through an ``flock`` on ``<dir>/_lease``."""

    def __init__(self, claim: Claim, holder: LeaseHolder) -> None:
        if not claim.where.local:
            raise ConfigError(f"{claim.owner}: no lease can be taken on {claim.where.path!r} (not a local path)")
        self.claim = claim
        self.holder = holder
        self.path = os.path.join(claim.where.path, LEASE_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lease or raise :class:`DirectoryInUseError` naming the holder; never waits."""
        if self._fd is not None:
            return
        directory = self.claim.where.path
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.claim.owner}: cannot create the lease file {self.path!r}: {exc}. Check that "
                              f"{directory!r} is a writable directory") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            record = _read_record(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryInUseError(self._in_use(record)) from None
            raise ConfigError(f"{self.claim.owner}: cannot lock {self.path!r} ({exc}); the filesystem of "
                              f"{directory!r} supports no file locks, so no lease can protect it: use a local "
                              "disk or an NFSv4 mount") from exc
        try:
            data = json.dumps({"role": self.claim.owner, **asdict(self.holder)}).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)  # unlocks
            raise ConfigError(f"{self.claim.owner}: cannot write the lease file {self.path!r}: {exc}") from exc
        self._fd = fd

    def release(self) -> None:
        """Give the lease up (empties the record, then unlocks by closing); harmless when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock is what matters, and closing releases it
        finally:
            os.close(fd)

    def _in_use(self, record: dict[str, object] | None) -> str:
        where = self.claim.where.path
        if record is None:
            holder = "another run that has not recorded itself yet (it is starting)"
        else:
            try:
                holder = LeaseHolder(**{k: record[k] for k in ("job", "run_id", "host", "pid", "started_at")}).describe()  # type: ignore[arg-type]  # unvalidated JSON
            except (KeyError, TypeError):
                holder = f"another run (its lease record is unreadable: {record!r})"
        return (
            f"{self.claim.owner}: {where!r} is in use by {holder}, which holds the lease {self.path!r}. One run at a "
            "time may use a checkpoint or output directory: wait for that run to end or stop it, or give this run "
            "another directory. (A crashed run holds nothing: its lease ends with its process.)"
        )


def _read_record(fd: int) -> dict[str, object] | None:
    try:
        text = os.pread(fd, 64 * 1024, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class JobLeases(AbstractContextManager["JobLeases"]):
    """The leases of one run: all taken on enter (or none: a refusal releases those already taken), all
    released on exit. Claims on object stores are skipped with a warning (see the module docstring)."""

    def __init__(self, claims: Iterable[Claim], holder: LeaseHolder) -> None:
        self.holder = holder
        self.leases: list[DirectoryLease] = []
        self.unprotected: list[Location] = []
        for claim in claims:
            if claim.where.local:
                self.leases.append(DirectoryLease(claim, holder))
            else:
                self.unprotected.append(claim.where)

    def __enter__(self) -> JobLeases:
        try:
            for lease in self.leases:
                lease.acquire()
        except BaseException:
            self.release()
            raise
        for where in self.unprotected:
            log.warning("job %s: no lease on %s (object stores have no locks); make sure no other run uses it "
                        "at the same time", self.holder.job, where.path)
        return self

    def release(self) -> None:
        for lease in reversed(self.leases):
            lease.release()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
