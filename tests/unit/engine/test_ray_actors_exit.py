"""A killed worker counts as gone only once its process is: the local /proc check of
:mod:`headwater.engine.ray.actors` (the Ray path is covered by tests/integration/test_exactly_once.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from headwater.engine.ray.actors import _running_here


def test_a_running_process_counts_as_running() -> None:
    assert _running_here(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _running_here(child.pid)
    finally:
        child.kill()
        child.wait()


def test_an_exited_process_does_not_count_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while _running_here(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not yet waited for: a zombie, which runs no code
    assert not _running_here(child.pid)
    assert os.path.exists(f"/proc/{child.pid}"), "the zombie is still there: only its state tells it ended"
    child.wait()
    assert not _running_here(child.pid)
