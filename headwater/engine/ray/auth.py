"""Ray token authentication for the local Ray that Headwater starts.

Ray's gRPC servers (GCS, raylet, core workers) listen on every interface and Ray rewrites ``127.0.0.1`` to the
host's address, so binding cannot keep other machines out: the credential does. Ray 2.60 checks a bearer token
on every gRPC call when ``RAY_AUTH_MODE=token``; this module makes sure that is the mode of every local Ray
Headwater starts, with a token only the current user can read.

Invariants:

* The token file is created with mode ``0600`` in a directory of mode ``0700`` (default
  ``~/.headwater/ray/auth_token``, or ``$HEADWATER_RAY_TOKEN_FILE``); an existing file with wider permissions is
  tightened to ``0600`` with a warning. Ray's own default (``~/.ray/auth_token``) is created ``0644``, which is
  why Headwater does not let Ray generate it.
* A token the user chose wins: ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH`` are used as they are.
* The token is passed to Ray (and so to every Ray process and to Headwater's own Ray clients, such as the
  benchmark subprocesses) as a *path* in ``$RAY_AUTH_TOKEN_PATH``, never as its value, so it appears in no
  command line, environment dump or log line.
* Joining an existing cluster (``RAY_ADDRESS``) never touches the auth mode: the cluster's operator decides.
  The variables set for a local Ray are restored when it shuts down (:func:`restore_auth_environment`).
* ``RAY_AUTH_MODE=disabled`` set explicitly by the user is respected for a local Ray, with a warning that anyone
  who can reach this machine can then run code on it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from headwater.engine.private_files import create_private_file

log = logging.getLogger("headwater.ray")

TOKEN_FILE_ENV = "HEADWATER_RAY_TOKEN_FILE"


def default_token_file() -> Path:
    """``$HEADWATER_RAY_TOKEN_FILE`` or ``~/.headwater/ray/auth_token``."""
    configured = os.environ.get(TOKEN_FILE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".headwater" / "ray" / "auth_token"


def ensure_token_file(path: Path | None = None) -> Path:
    """The token file, created (random 256-bit token) if missing, readable by its owner only."""
    path = path or default_token_file()
    created = create_private_file(path, secrets.token_hex(32))
    parent_mode = stat.S_IMODE(path.parent.stat().st_mode)
    if parent_mode & 0o077:
        os.chmod(path.parent, parent_mode & 0o700)
    if created:
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("Ray token file %s had mode %o; tightened to 0600", path, mode)
        os.chmod(path, 0o600)
    if not path.read_text().strip():
        raise PermissionError(f"Ray token file {path} is empty; delete it to have a new token made")
    return path


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def auth_environment() -> dict[str, str | None]:
    """The auth variables as they are now, for :func:`restore_auth_environment`."""
    return {name: os.environ.get(name) for name in AUTH_ENV}


def restore_auth_environment(saved: dict[str, str | None]) -> None:
    """Put the auth variables back as they were before a local Ray was started: a later ``ray_address=`` run in
    this process, or a program it starts, must not inherit the local Ray's mode and token."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _refresh_ray_config()


def use_token_auth_for_local_ray() -> bool:
    """Put this process (and the Ray processes it starts) in token mode; False if the user disabled auth."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() == "disabled":
        log.warning(
            "RAY_AUTH_MODE=disabled: the local Ray runs without token authentication, and anyone who can reach "
            "this machine's Ray ports can run code on it. Unset RAY_AUTH_MODE to keep token authentication on."
        )
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(ensure_token_file())
    _refresh_ray_config()
    return True


def _refresh_ray_config() -> None:
    """Ray caches its configuration (and the token) when first imported: make it read the environment again,
    as Ray itself does when it turns token mode on (``authentication_token_setup._enable_token_auth``)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, no stubs
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
