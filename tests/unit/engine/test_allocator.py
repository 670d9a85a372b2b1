"""Worker allocator settings (headwater.engine.ray.allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwater.engine.config import RunConfig
from headwater.errors import ConfigError


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_thresholds_are_set_in_a_fresh_process() -> None:
    # In a child process: the pytest process keeps glibc's defaults.
    code = "from headwater.engine.ray.allocator import keep_batches_on_heap; print(keep_batches_on_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.parametrize("flag", ["tune_allocator", "reuse_workers"])
def test_worker_flags_must_be_bools(flag: str) -> None:
    with pytest.raises(ConfigError, match=f"{flag} must be True or False"):
        RunConfig(**{flag: "yes"})
    assert getattr(RunConfig(**{flag: False}), flag) is False
