"""The kept local Ray's bookkeeping, without Ray: the idle clock, the locks, the state file, the watcher and the
stop, on a stand-in "cluster" (a sleeping process carrying the cluster's marker, found as Ray's processes are)."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from headwater.cli import main
from headwater.engine.config import RunConfig
from headwater.engine.ray import kept
from headwater.engine.ray.idle_watch import IdleClock, poll_interval, try_lock
from headwater.engine.ray.reaper import MARKER_ENV
from headwater.errors import ConfigError


def test_the_idle_clock_expires_only_after_the_timeout_without_use() -> None:
    clock = IdleClock(10.0, now=100.0)
    assert not clock.expired(109.9) and clock.expired(110.0)
    clock.observe(True, now=105.0)  # a driver seen connected resets it
    assert clock.idle_for(112.0) == 7.0 and not clock.expired(114.9) and clock.expired(115.0)
    clock.observe(False, now=116.0, last_disconnect=113.0)  # the last driver left at 113
    assert not clock.expired(122.9) and clock.expired(123.0)
    clock.observe(False, now=124.0, last_disconnect=90.0)  # an older disconnect changes nothing
    assert clock.expired(124.0)
    with pytest.raises(ValueError):
        IdleClock(0, now=0.0)


def test_the_poll_interval_is_a_tenth_of_the_timeout_within_bounds() -> None:
    assert poll_interval(600) == 5.0 and poll_interval(10) == 1.0 and poll_interval(0.5) == 0.2


def test_an_exclusive_try_lock_fails_while_a_driver_holds_the_shared_one(tmp_path: Path) -> None:
    path = tmp_path / "in-use.lock"
    driver = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(driver, fcntl.LOCK_SH)
    assert try_lock(path, exclusive=True) is None
    other = try_lock(path, exclusive=False)  # two drivers at once are fine
    assert other is not None
    os.close(other)
    os.close(driver)
    free = try_lock(path, exclusive=True)
    assert free is not None
    os.close(free)


def test_config_of_the_kept_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_KEEP_LOCAL_RAY", raising=False)
    monkeypatch.delenv("HEADWATER_LOCAL_RAY_IDLE_TIMEOUT", raising=False)
    assert RunConfig().keep_local_ray and RunConfig().local_ray_idle_timeout == timedelta(minutes=10)
    monkeypatch.setenv("HEADWATER_KEEP_LOCAL_RAY", "off")
    monkeypatch.setenv("HEADWATER_LOCAL_RAY_IDLE_TIMEOUT", "90")
    assert not RunConfig().keep_local_ray and RunConfig().local_ray_idle_timeout == timedelta(seconds=90)
    assert RunConfig().with_overrides(local_ray_idle_timeout=5).local_ray_idle_timeout == timedelta(seconds=5)
    monkeypatch.setenv("HEADWATER_LOCAL_RAY_IDLE_TIMEOUT", "ten minutes")
    with pytest.raises(ConfigError, match="HEADWATER_LOCAL_RAY_IDLE_TIMEOUT must be a number of seconds"):
        RunConfig()
    monkeypatch.delenv("HEADWATER_LOCAL_RAY_IDLE_TIMEOUT")
    with pytest.raises(ConfigError, match="local_ray_idle_timeout must be a positive"):
        RunConfig(local_ray_idle_timeout=timedelta(0))
    with pytest.raises(ConfigError, match="keep_local_ray must be True or False"):
        RunConfig(keep_local_ray="yes")  # type: ignore[arg-type]


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "local"
    path.mkdir(mode=0o700)
    monkeypatch.setenv(kept.DIR_ENV, str(path))
    return path


@pytest.fixture
def stand_in(directory: Path, tmp_path: Path) -> Iterator[kept.KeptRayState]:
    """A process carrying a kept cluster's marker, recorded as the kept Ray (killed at the end if still alive)."""
    marker = "f" * 32
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                               env={**os.environ, MARKER_ENV: marker})
    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    state = kept.KeptRayState(
        address="192.0.2.1:6379", session_dir=str(session), marker=marker, watcher_pid=None,
        started_at=time.time(), idle_timeout_s=600.0, num_cpus=2, object_store_memory=512 * 2**20,
        dashboard_url=None, python=sys.executable,
    )
    kept.write_state(directory, state)
    try:
        yield state
    finally:
        process.kill()
        process.wait()


def test_the_state_file_is_private_and_round_trips(directory: Path, stand_in: kept.KeptRayState) -> None:
    assert kept.read_state(directory) == stand_in
    assert oct(os.stat(kept.state_file(directory)).st_mode & 0o777) == "0o600"
    kept.state_file(directory).write_text("{not json")
    assert kept.read_state(directory) is None  # unreadable: treated as gone (and started anew)


def test_stop_ends_the_cluster_processes_and_forgets_it(directory: Path, stand_in: kept.KeptRayState) -> None:
    assert kept.cluster_alive(stand_in)
    assert kept.stop(directory) == stand_in
    assert not kept.cluster_alive(stand_in)
    assert kept.read_state(directory) is None
    assert kept.stop(directory) is None  # nothing left to stop


def test_the_idle_stop_waits_for_connected_drivers(directory: Path, stand_in: kept.KeptRayState) -> None:
    driver = os.open(kept.in_use_file(directory), os.O_RDWR | os.O_CREAT)
    fcntl.flock(driver, fcntl.LOCK_SH)
    assert not kept.stop_if_idle(directory, stand_in)
    assert kept.cluster_alive(stand_in) and kept.read_state(directory) == stand_in
    os.close(driver)
    assert kept.stop_if_idle(directory, stand_in)
    assert not kept.cluster_alive(stand_in) and kept.read_state(directory) is None


def test_the_watcher_stops_an_idle_cluster_but_not_one_in_use(directory: Path, stand_in: kept.KeptRayState) -> None:
    driver = os.open(kept.in_use_file(directory), os.O_RDWR | os.O_CREAT)
    fcntl.flock(driver, fcntl.LOCK_SH)  # a driver is connected
    watcher = subprocess.Popen([sys.executable, "-m", "headwater.engine.ray.idle_watch", str(directory)])
    try:
        kept.write_state(directory, kept.KeptRayState(**{**stand_in.__dict__, "watcher_pid": watcher.pid,
                                                         "idle_timeout_s": 1.0}))
        time.sleep(4.0)  # well past the timeout: in use, so it must still run
        assert kept.cluster_alive(stand_in) and watcher.poll() is None
        os.close(driver)  # the driver leaves
        assert watcher.wait(timeout=30) == 0
        assert not kept.cluster_alive(stand_in)
        assert kept.read_state(directory) is None
    finally:
        watcher.kill()
        watcher.wait()


def test_the_watcher_leaves_a_replaced_cluster_alone(directory: Path, stand_in: kept.KeptRayState) -> None:
    watcher = subprocess.Popen([sys.executable, "-m", "headwater.engine.ray.idle_watch", str(directory)])
    try:
        kept.write_state(directory, kept.KeptRayState(**{**stand_in.__dict__, "watcher_pid": watcher.pid + 1_000_000}))
        assert watcher.wait(timeout=30) == 0  # not its cluster any more: it exits without stopping anything
        assert kept.cluster_alive(stand_in)
    finally:
        watcher.kill()
        watcher.wait()


def test_status_names_the_cluster_but_never_the_token(directory: Path, stand_in: kept.KeptRayState,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-token-value")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    out = io.StringIO()
    kept.describe(kept.status(directory), out)
    text = out.getvalue()
    assert f"kept local Ray at {stand_in.address}" in text and "idle:" in text and str(token) in text
    assert "s3cr3t" not in text


def test_cli_local_status_and_stop(directory: Path, stand_in: kept.KeptRayState,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "status"]) == 0
    assert f"kept local Ray at {stand_in.address}" in capsys.readouterr().out
    assert main(["local", "stop"]) == 0
    assert f"stopped the kept local Ray at {stand_in.address}" in capsys.readouterr().out
    assert not kept.cluster_alive(stand_in)
    assert main(["local", "stop"]) == 0
    assert "no kept local Ray was running" in capsys.readouterr().out
    assert main(["local", "status"]) == 0
    assert "no kept local Ray is running" in capsys.readouterr().out


def test_runs_join_the_kept_ray_started_once_in_token_mode(directory: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray_session`` with ``keep_local_ray``: the first run starts the kept Ray, both join it with the token,
    and each leaves the auth environment as it found it and the in-use lock free."""
    import ray

    from headwater.engine.ray import auth as ray_auth
    from headwater.engine.ray.cluster import ray_session

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ray_auth.TOKEN_FILE_ENV, str(tmp_path / "keys" / "auth_token"))
    monkeypatch.setattr(ray_auth, "_refresh_ray_config", lambda: None)
    started: list[int] = []
    joins: list[tuple[str, str | None, str | None]] = []

    def start(directory: Path, config: RunConfig, num_cpus: int) -> kept.KeptRayState:
        started.append(num_cpus)
        state = kept.KeptRayState("192.0.2.1:6379", "/nonexistent/session_x", "0" * 32, None, time.time(),
                                  config.local_ray_idle_timeout.total_seconds(), num_cpus,
                                  config.object_store_memory, None, sys.executable)
        kept.write_state(directory, state)
        return state

    monkeypatch.setattr(kept, "_start_locked", start)
    monkeypatch.setattr(kept, "cluster_alive", lambda state: True)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **kw: joins.append(
        (address, os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH"))))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    config = RunConfig(keep_local_ray=True, num_cpus=2)
    for _ in range(2):
        with ray_session(config):
            assert try_lock(kept.in_use_file(directory), exclusive=True) is None  # held while connected
            assert (kept.drivers_directory(directory) / str(os.getpid())).exists()
        assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ
        free = try_lock(kept.in_use_file(directory), exclusive=True)
        assert free is not None
        os.close(free)
    assert started == [2]
    assert joins == [("192.0.2.1:6379", "token", str(tmp_path / "keys" / "auth_token"))] * 2
    assert kept.last_used_file(directory).exists()
    assert not list(kept.drivers_directory(directory).iterdir())


def test_a_driver_of_another_python_does_not_join_a_kept_ray_in_use(directory: Path, stand_in: kept.KeptRayState,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray starts workers with the interpreter that started it: another environment's driver must not join."""
    from headwater.errors import LocalRayError

    kept.write_state(directory, kept.KeptRayState(**{**stand_in.__dict__, "python": "/other/venv/bin/python"}))
    driver = os.open(kept.in_use_file(directory), os.O_RDWR | os.O_CREAT)
    fcntl.flock(driver, fcntl.LOCK_SH)
    try:
        with pytest.raises(LocalRayError, match="started by another Python"):
            kept._checked_state(directory, RunConfig(), 2, fresh=False)
        assert kept.cluster_alive(stand_in)  # in use: left alone
    finally:
        os.close(driver)
    started: list[int] = []
    monkeypatch.setattr(kept, "_start_locked", lambda d, c, n: started.append(n) or stand_in)
    _, in_use = kept._checked_state(directory, RunConfig(), 2, fresh=False)  # idle: replaced
    os.close(in_use)
    assert started == [2] and not kept.cluster_alive(stand_in)
