"""The kept local Ray (headwater.engine.ray.kept): later runs join it, it refuses callers without the token,
it stops itself when idle, and ``headwater local stop`` stops it at once.

Each test runs its pipelines in fresh subprocesses, as users do, against a kept Ray in a state directory of
its own, and stops that Ray at the end whatever happens: no kept Ray outlives the tests. Speed is not asserted
here (benchmarks/startup.py measures it); what is asserted is behaviour.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from headwater.engine.ray import kept
from headwater.engine.ray.reaper import marked_processes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_PIPELINE = textwrap.dedent(
    """
    import os, sys
    import headwater as hw
    from headwater.sinks import NullSink
    from headwater.testing import TestingSource

    OUT = sys.argv[1]

    def record(batch):
        with open(OUT, "a") as out:
            for value in batch.column("v").to_pylist():
                out.write(f"{value}\\n")
        return batch

    flow = hw.Dataflow("kept-ray-three-rows")
    flow.source("in", TestingSource([{"v": i} for i in range(3)])).map_batches(record).sink("out", NullSink())
    if __name__ == "__main__":
        hw.run(flow, metrics_port=None)
    """
)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state directory (Ray's socket paths under it must stay below 108 characters), its kept Ray
    stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="hwkept-", dir="/tmp"))
    try:
        yield directory
    finally:
        kept.stop(directory, reason="test teardown")
        shutil.rmtree(directory, ignore_errors=True)


def _env(directory: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HEADWATER_KEEP_LOCAL_RAY="1", HEADWATER_LOCAL_RAY_DIR=str(directory), HEADWATER_METRICS_PORT="off",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _run_pipeline(directory: Path, tmp_path: Path, name: str, **extra: str) -> list[int]:
    script = tmp_path / "pipeline.py"
    script.write_text(_PIPELINE)
    out = tmp_path / f"{name}.out"
    done = subprocess.run([sys.executable, str(script), str(out)], env=_env(directory, **extra),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return sorted(int(line) for line in out.read_text().split())


def _driver_logs(session_dir: str) -> set[str]:
    return {p.name for p in (Path(session_dir) / "logs").glob("python-core-driver-*")}


def _wait_gone(state: kept.KeptRayState, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not marked_processes(state.marker, [state.session_dir]):
            return True
        time.sleep(0.5)
    return False


def test_later_runs_join_the_kept_ray_which_refuses_strangers_and_stops_when_idle(
    state_dir: Path, tmp_path: Path
) -> None:
    assert _run_pipeline(state_dir, tmp_path, "first", HEADWATER_LOCAL_RAY_IDLE_TIMEOUT="40",
                         HEADWATER_RAY_DASHBOARD="1") == [0, 1, 2]
    first = kept.read_state(state_dir)
    assert first is not None and kept.cluster_alive(first), "the kept Ray did not outlive the run"
    assert oct(os.stat(kept.state_file(state_dir)).st_mode & 0o777) == "0o600"
    token = Path(os.path.expanduser(os.environ.get("HEADWATER_RAY_TOKEN_FILE", "~/.headwater/ray/auth_token")))
    secret = token.read_text().strip()
    for path in (kept.state_file(state_dir), state_dir / "start.log", *Path(first.session_dir, "logs").glob("*")):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), f"the token is in {path}"
    assert first.python == sys.executable
    drivers = _driver_logs(first.session_dir)

    assert _run_pipeline(state_dir, tmp_path, "second") == [0, 1, 2]
    second = kept.read_state(state_dir)
    assert second == first  # the same cluster: same GCS address, session directory and watcher
    assert len(_driver_logs(first.session_dir) - drivers) == 1, "the second run's driver did not join it"

    # Without the token: the dashboard (job submission, logs) answers 401 ...
    assert first.dashboard_url is not None and first.dashboard_url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{first.dashboard_url}/api/jobs/", timeout=30)
    assert denied.value.code in (401, 403)
    authorised = urllib.request.Request(f"{first.dashboard_url}/api/jobs/",
                                        headers={"Authorization": f"Bearer {token.read_text().strip()}"})
    with urllib.request.urlopen(authorised, timeout=30) as answer:  # the control: the token holder gets in
        assert answer.status == 200
        json.loads(answer.read())

    # ... and a Ray client cannot connect, so it runs nothing.
    marker = tmp_path / "ran"
    intruder = textwrap.dedent(
        """
        import sys, ray
        ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
        @ray.remote(num_cpus=0)
        def touch(path):
            open(path, "w").write("ran")
        ray.get(touch.remote(sys.argv[2]), timeout=30)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "HEADWATER_RAY"))}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    refused = _refused(intruder, first.address, marker, env)
    assert "InvalidAuthToken" in refused or "Unauthenticated" in refused, refused[-2000:]
    assert not marker.exists(), "a client without the token ran a task"
    # Idle: the watcher stops it 40 s after the last driver left (polling every 4 s).
    assert _wait_gone(first, 90), "the kept Ray did not stop itself after its idle timeout"
    assert kept.read_state(state_dir) is None


def test_headwater_local_stop_stops_it_at_once(state_dir: Path, tmp_path: Path) -> None:
    assert _run_pipeline(state_dir, tmp_path, "only", HEADWATER_RAY_DASHBOARD="0") == [0, 1, 2]
    state = kept.read_state(state_dir)
    assert state is not None and kept.cluster_alive(state)
    status = subprocess.run([sys.executable, "-m", "headwater.cli", "local", "status"], env=_env(state_dir),
                            capture_output=True, text=True, timeout=60)
    assert f"kept local Ray at {state.address}" in status.stdout, status.stdout + status.stderr
    token = Path(os.path.expanduser(os.environ.get("HEADWATER_RAY_TOKEN_FILE", "~/.headwater/ray/auth_token")))
    assert token.read_text().strip() not in status.stdout + status.stderr
    done = subprocess.run([sys.executable, "-m", "headwater.cli", "local", "stop"], env=_env(state_dir),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"stopped the kept local Ray at {state.address}" in done.stdout
    assert not marked_processes(state.marker, [state.session_dir]), "processes of the kept Ray are left"
    assert kept.read_state(state_dir) is None
    assert not _pid_alive(state.watcher_pid)


def _refused(code: str, address: str, marker: Path, env: dict[str, str]) -> str:
    """Run a client that tries to use the cluster; its stderr once it failed, or after 20 s of being refused
    (Ray's client keeps retrying a GCS that rejects it for minutes)."""
    client = subprocess.Popen([sys.executable, "-c", code, address, str(marker)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = client.communicate(timeout=20)
        assert client.returncode != 0, "a client without the token connected and ran its task"
    except subprocess.TimeoutExpired:
        client.kill()
        _, stderr = client.communicate()
    return stderr


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    for _ in range(40):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return False  # exited, not yet reaped by its parent (the first pipeline's process is gone)
        except FileNotFoundError:
            return False
        time.sleep(0.25)
    return True
