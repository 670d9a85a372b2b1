"""How Headwater starts or joins Ray: joining never changes a cluster's auth mode; a local Ray uses a token."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import ray

from headwater.engine.config import RunConfig
from headwater.engine.ray import auth as ray_auth
from headwater.engine.ray.cluster import ray_session


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """ray.init records its arguments and the auth environment instead of starting or joining anything."""
    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> None:
        calls.append({"kwargs": kwargs, "mode": os.environ.get("RAY_AUTH_MODE"),
                      "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH")})

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray_auth, "_refresh_ray_config", lambda: None)
    # no Ray session is started here: the reaper must not be told the session directory of a Ray this test
    # process may host (the suite's shared cluster), or it would stop that cluster when the test ends
    monkeypatch.setattr("headwater.engine.ray.cluster._session_dir", lambda ray: None)
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize("mode", [None, "disabled", "token"])
def test_joining_a_cluster_keeps_its_auth_mode(fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                               mode: str | None) -> None:
    if mode is not None:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with ray_session(RunConfig(ray_address="10.0.0.5:6379")):
        pass
    assert fake_ray[0]["kwargs"]["address"] == "10.0.0.5:6379"
    assert fake_ray[0]["mode"] == mode
    assert fake_ray[0]["token_path"] is None


def test_a_local_ray_runs_with_a_private_token(fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv(ray_auth.TOKEN_FILE_ENV, str(tmp_path / "keys" / "auth_token"))
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        pass
    call = fake_ray[0]
    assert call["mode"] == "token"
    assert call["token_path"] == str(tmp_path / "keys" / "auth_token")
    assert (tmp_path / "keys" / "auth_token").stat().st_mode & 0o077 == 0
    assert call["kwargs"]["dashboard_host"] == "127.0.0.1"


def test_a_token_the_user_chose_wins(fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "mine"))
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        pass
    assert fake_ray[0]["token_path"] == str(tmp_path / "mine")


def test_explicitly_disabled_auth_is_respected_loudly(fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        pass
    assert fake_ray[0]["mode"] == "disabled"
    assert "anyone who can reach" in caplog.text


def test_the_auth_environment_is_restored_after_a_local_ray(fake_ray: list[dict[str, Any]],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A later run that joins a cluster (or a program this process starts) must not inherit the local token."""
    monkeypatch.setenv(ray_auth.TOKEN_FILE_ENV, str(tmp_path / "keys" / "auth_token"))
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        assert os.environ["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ
    with ray_session(RunConfig(ray_address="10.0.0.5:6379")):
        pass
    assert fake_ray[1]["mode"] is None and fake_ray[1]["token_path"] is None


def test_a_local_ray_runs_its_dashboard_on_loopback_and_prints_its_url(
        fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HEADWATER_RAY_DASHBOARD", raising=False)

    def init(**kwargs: Any) -> Any:
        fake_ray.append({"kwargs": kwargs})
        return type("Context", (), {"dashboard_url": "127.0.0.1:8265"})()

    monkeypatch.setattr(ray, "init", init)
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        pass
    assert fake_ray[0]["kwargs"]["include_dashboard"] is True
    assert fake_ray[0]["kwargs"]["dashboard_host"] == "127.0.0.1"
    assert "Ray dashboard at http://127.0.0.1:8265" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["0", "off"])
def test_the_dashboard_can_be_turned_off(fake_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path, setting: str) -> None:
    monkeypatch.setenv("HEADWATER_RAY_DASHBOARD", setting)
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1)):
        pass
    with ray_session(RunConfig(state_dir=tmp_path / "state", num_cpus=1, ray_dashboard=True)):
        pass
    assert [c["kwargs"]["include_dashboard"] for c in fake_ray] == [False, True]
