"""Who can use the local Ray Headwater starts: nobody without its token; nothing outlives a killed driver."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from headwater.engine.ray.auth import ensure_token_file
from headwater.engine.ray.reaper import MARKER_ENV, marked_processes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_INTRUDER = textwrap.dedent(
    """
    import sys, ray
    address, marker = sys.argv[1], sys.argv[2]
    ray.init(address=address, log_to_driver=False, configure_logging=False)

    @ray.remote(num_cpus=0)
    def write_file(path):
        open(path, "w").write("ran")
        return True

    print(ray.get(write_file.remote(marker), timeout=30))
    """
)


def _intruder_env(home: Path, auth_mode: str | None, with_token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "HEADWATER_RAY"))}
    env["HOME"] = str(home)  # no ~/.ray/auth_token, no ~/.headwater token to find
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if auth_mode is not None:
        env["RAY_AUTH_MODE"] = auth_mode
    if with_token is not None:
        env["RAY_AUTH_TOKEN_PATH"] = with_token
    return env


def _run_intruder(address: str, marker: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _INTRUDER, address, str(marker)], env=env, capture_output=True, text=True,
        timeout=120,
    )


def _non_loopback_gcs_address(ray: Any) -> str:
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    node_ip = ray.util.get_node_ip_address()
    address = f"{node_ip}:{port}"
    if node_ip.startswith("127."):
        pytest.skip(f"this machine has no non-loopback address to test from (node address {node_ip})")
    return address


@pytest.mark.parametrize("client_mode", [None, "disabled"], ids=["auth-unset", "auth-disabled"])
def test_a_client_without_the_token_cannot_run_a_task(ray_cluster: Any, tmp_path: Path, client_mode: str | None) -> None:
    address = _non_loopback_gcs_address(ray_cluster)
    marker = tmp_path / "ran"
    result = _run_intruder(address, marker, _intruder_env(tmp_path, client_mode))
    assert result.returncode != 0, result.stdout
    assert not marker.exists(), "a client without Ray's token ran a task on the local Ray"


def test_the_token_holder_can_run_a_task(ray_cluster: Any, tmp_path: Path) -> None:
    """The control for the test above: the same client, given Headwater's token file, gets in."""
    address = _non_loopback_gcs_address(ray_cluster)
    marker = tmp_path / "ran"
    token = os.environ["RAY_AUTH_TOKEN_PATH"]
    result = _run_intruder(address, marker, _intruder_env(tmp_path, "token", with_token=token))
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.read_text() == "ran"


def test_token_file_is_private(tmp_path: Path) -> None:
    path = ensure_token_file(tmp_path / "hw" / "ray" / "auth_token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64
    os.chmod(path, 0o644)
    assert ensure_token_file(path).read_text() == token  # kept, and tightened again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


_DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import headwater as hw
    from headwater.sinks import NullSink
    from headwater.sources import NexmarkSource

    flow = hw.Dataflow("killed_driver")
    flow.source("bids", NexmarkSource("bid", events=None, partitions=2, rate=2000)).sink("out", NullSink())

    job = hw.start(flow, num_cpus=2, object_store_memory=150 * 1024 * 1024, parallelism=2, state_dir=sys.argv[1])
    import ray
    print("RUNNING", ray._private.worker.global_worker.node.get_session_dir_path(), flush=True)
    time.sleep(600)
    """
)


def _processes_using(directory: str) -> list[int]:
    """Pids of processes holding a file open under ``directory`` (Ray's processes all keep logs there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(directory) for link in links):
            pids.append(int(entry.name))
    return pids


def test_no_ray_process_outlives_a_killed_driver(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", MARKER_ENV)}
    state = tempfile.mkdtemp(prefix="hw-", dir="/tmp")  # Ray's socket paths must stay under 107 characters
    stderr = (tmp_path / "driver.err").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, state], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )
    try:
        assert driver.stdout is not None
        session_dir = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = driver.stdout.readline()
            if line.startswith("RUNNING"):
                session_dir = line.split(" ", 1)[1].strip()
                break
            if not line and driver.poll() is not None:
                break
        assert session_dir, "the driver did not start its job: " + (tmp_path / "driver.err").read_text()[-3000:]
        assert len(_processes_using(session_dir)) >= 4  # gcs, raylet, agents, workers
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _processes_using(session_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_using(session_dir)
        names = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid in left if Path(f"/proc/{pid}").exists()]
        assert not left, f"Ray processes outlived the killed driver by 10 s: {names}"
    finally:
        if driver.poll() is None:
            driver.kill()
        stderr.close()
        shutil.rmtree(state, ignore_errors=True)


def test_marked_processes_finds_only_marked_ones() -> None:
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              env={**os.environ, MARKER_ENV: "m1"})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, MARKER_ENV: "m2"})
    try:
        deadline = time.monotonic() + 5
        while marked.pid not in marked_processes("m1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked_processes("m1") == [marked.pid]
    finally:
        marked.kill()
        other.kill()


def test_processes_holding_a_file_under_the_session_directory_are_found(tmp_path: Path) -> None:
    """Ray's processes rename themselves, which can overwrite the marker in their environment: the reaper
    also finds them by the log files they keep open in the session directory."""
    session = tmp_path / "session_1"
    (session / "logs").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(session / 'logs' / 'a.log')!r}, 'w');"
                               "import time; time.sleep(30)"])
    other = subprocess.Popen([sys.executable, "-c", f"f = open({str(tmp_path / 'elsewhere.log')!r}, 'w');"
                              "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while holder.pid not in marked_processes("none", [str(session)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = marked_processes("none", [str(session)])
        assert holder.pid in found and other.pid not in found
        # the driver is spared (it lives on after a normal shutdown and holds its own Ray logs), and only
        # directories named like Ray sessions count (a stray "/tmp" must never make it stop everything)
        assert holder.pid not in marked_processes("none", [str(session)], spare=[holder.pid])
        assert holder.pid not in marked_processes("none", [str(tmp_path)])
    finally:
        holder.kill()
        other.kill()
