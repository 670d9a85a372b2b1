"""The kept local Ray's idle watcher: it stops the cluster once no driver has used it for the idle timeout.

``python -m headwater.engine.ray.idle_watch DIR`` is started (in a session of its own) by the driver that
started the kept Ray (:mod:`headwater.engine.ray.kept`). Every poll it

* exits if ``DIR/cluster.json`` is gone or names another watcher (the cluster was stopped or replaced);
* stops the cluster's leftovers and exits if the cluster died by itself (no process carries its marker);
* otherwise notes whether a driver is connected (a driver holds a shared ``flock`` on ``DIR/in-use.lock``
  for as long as it is connected, so a driver killed with SIGKILL lets go too) and, once nobody has been
  connected for the timeout, stops the cluster: holding ``DIR/start.lock`` and an exclusive lock on the
  in-use file, so that no driver can connect while it stops, nor find the cluster half stopped.

Invariant: the cluster is never stopped while a driver holds the in-use lock (only ``headwater local stop``
does that, on purpose). The idle time counts from the latest of: the watcher's start, the last poll that saw a
driver connected, and the mtime of ``DIR/last-used`` (touched by each driver as it disconnects).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path


class IdleClock:
    """How long the kept Ray has been unused; pure (times are passed in), so it is tested on its own."""

    def __init__(self, timeout_s: float, now: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the idle timeout must be positive, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.last_used = now

    def observe(self, in_use: bool, now: float, last_disconnect: float | None = None) -> None:
        """One poll: a connected driver, or the time the last one disconnected, resets the clock."""
        if in_use:
            self.last_used = max(self.last_used, now)
        if last_disconnect is not None:
            self.last_used = max(self.last_used, last_disconnect)

    def idle_for(self, now: float) -> float:
        return max(0.0, now - self.last_used)

    def expired(self, now: float) -> bool:
        return self.idle_for(now) >= self.timeout_s


def poll_interval(timeout_s: float) -> float:
    """A tenth of the timeout, between 0.2 s and 5 s: a stop comes at most ~10 % late, at little cost."""
    return min(5.0, max(0.2, timeout_s / 10))


def try_lock(path: Path, exclusive: bool) -> int | None:
    """A non-blocking ``flock`` on ``path``: the open fd holding it, or ``None`` if another process holds a
    conflicting lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def watch(directory: Path) -> int:
    """The watcher's loop (see the module docstring); returns when the cluster is stopped or gone."""
    from headwater.engine.ray import kept

    state = kept.read_state(directory)
    if state is None or state.watcher_pid != os.getpid():
        time.sleep(1.0)  # the starter writes our pid right after starting us
        state = kept.read_state(directory)
    if state is None:
        return 0
    clock = IdleClock(state.idle_timeout_s, time.time())
    while True:
        time.sleep(poll_interval(clock.timeout_s))
        current = kept.read_state(directory)
        if current is None or current.watcher_pid != os.getpid() or current.session_dir != state.session_dir:
            return 0  # stopped (headwater local stop) or replaced: not ours to touch any more
        if not kept.cluster_alive(current):
            kept.stop(directory, reason="its processes ended")
            return 0
        free = try_lock(kept.in_use_file(directory), exclusive=True)
        in_use = free is None
        if free is not None:
            os.close(free)
        clock.observe(in_use, time.time(), _mtime(kept.last_used_file(directory)))
        if not in_use and clock.expired(time.time()) and kept.stop_if_idle(directory, current):
            return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m headwater.engine.ray.idle_watch STATE_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the driver that started us is not for us
    return watch(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
