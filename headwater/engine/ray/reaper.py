"""Stop every process of a local Ray once the driver that started it is gone, however it went.

``ray.init()`` starts the GCS, the raylet, agents and workers as children of the driver. When the driver is
killed with SIGKILL, Ray's own cleanup never runs; the GCS and raylet notice and exit, but the dashboard agent
and the runtime-env agent were seen to outlive it for good, still listening (measured here, Ray 2.60).

:class:`Reaper` closes that gap. Before ``ray.init`` the driver starts ``python -m headwater.engine.ray.reaper
MARKER`` in a session of its own with a pipe on its stdin, and puts the random marker into its environment,
which every Ray process it starts inherits. Once Ray is up, the driver writes the Ray session directory into
the pipe. The reaper then blocks reading; end of file means the driver exited (normally, by an exception, or
killed — the kernel closes the pipe in every case). It sends SIGTERM to every process of the same user that
holds a file open under the session directory (every Ray process keeps its logs there) or whose environment
holds the marker, waits briefly, and SIGKILLs what is left. Both signs are needed: Ray's processes rename
themselves (``ray::DashboardAgent``), which overwrites the start of their environment as ``/proc`` shows it,
so the marker alone was missed about one run in three.

Invariants: the reaper never signals its own process nor the driver (after a normal ``ray.shutdown()`` the
driver lives on, and it keeps its own Ray log files open); it looks only under directories named like Ray
session directories (``session_*``); the driver drops the marker from its own environment
right after ``ray.init`` so that processes it starts later (user subprocesses) are never reaped for it. A
process of the user that merely has a Ray log open (``tail -f``) is stopped too. Linux only (``/proc``);
elsewhere :meth:`Reaper.start` does nothing.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

MARKER_ENV = "HEADWATER_RAY_OWNER"
_GRACE_S = 2.0


def marked_processes(marker: str, directories: Sequence[str] = (), spare: Sequence[int] = ()) -> list[int]:
    """Pids of this user's processes (never our own, nor ``spare``) whose environment holds
    ``MARKER_ENV=marker`` or that hold a file open under one of ``directories`` (Ray session directories only:
    a path whose last part does not start with ``session_`` is ignored)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    prefixes = tuple(d.rstrip("/") + "/" for d in directories if Path(d).name.startswith("session_"))
    skip = {os.getpid(), *spare}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        if _has_marker(entry, needle) or (prefixes and _holds_file_under(entry, prefixes)):
            pids.append(int(entry.name))
    return pids


def _has_marker(entry: Path, needle: bytes) -> bool:
    try:
        return needle in (entry / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def _holds_file_under(entry: Path, prefixes: tuple[str, ...]) -> bool:
    try:
        for fd in (entry / "fd").iterdir():
            try:
                if os.readlink(fd).startswith(prefixes):
                    return True
            except OSError:
                continue
    except OSError:  # gone, or another user's
        return False
    return False


def reap(marker: str, directories: Sequence[str] = (), spare: Sequence[int] = (), grace: float = _GRACE_S
         ) -> list[int]:
    """SIGTERM the processes of :func:`marked_processes`, then SIGKILL those still alive after ``grace``;
    returns the pids found."""
    found = marked_processes(marker, directories, spare)
    for pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = found
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in marked_processes(marker, directories, spare) if pid in found]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Reaper:
    """The driver's side: make the marker, start the reaper process, tell it when the driver is done."""

    def __init__(self) -> None:
        self.marker = secrets.token_hex(16)
        self._pipe: IO[bytes] | None = None

    def start(self) -> None:
        """Start the reaper and put the marker into this process's environment (call before ``ray.init``)."""
        if not Path("/proc/self/environ").exists():
            return
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        process = subprocess.Popen(
            [sys.executable, "-m", "headwater.engine.ray.reaper", self.marker],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env, close_fds=True,
        )
        self._pipe = process.stdin
        os.environ[MARKER_ENV] = self.marker

    def started_ray(self, session_dir: str | None = None) -> None:
        """Ray is up: tell the reaper its session directory; later children of the driver must not carry the
        marker."""
        os.environ.pop(MARKER_ENV, None)
        if self._pipe is not None and session_dir:
            try:
                self._pipe.write(f"{session_dir}\n".encode())
                self._pipe.flush()
            except OSError:
                pass

    def finish(self) -> None:
        """The driver shut Ray down: let the reaper sweep what is left and exit (does not wait for it)."""
        os.environ.pop(MARKER_ENV, None)
        if self._pipe is not None:
            try:
                self._pipe.close()
            except OSError:
                pass
            self._pipe = None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m headwater.engine.ray.reaper MARKER", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver must not end the watch
    driver = os.getppid()  # the driver started us; after a normal ray.shutdown() it is still alive
    directories = [line.decode(errors="replace").strip() for line in sys.stdin.buffer]  # until EOF: driver gone
    reap(argv[0], [d for d in directories if d.startswith("/")], spare=[driver])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
