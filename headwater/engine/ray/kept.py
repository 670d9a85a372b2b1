"""The kept local Ray: one local Ray per user that Headwater starts once and later runs join.

Starting a local Ray costs 5-10 s on a small machine, joining a running one ~0.3 s (measured in
docs/benchmarks-headwater.md, "Start-up"). So, unless ``RunConfig.keep_local_ray`` is off, a run that would
start a local Ray joins the kept one, starting it first if there is none:

* it is started with ``ray start --head`` in a session of its own (so a Ctrl-C of the driver does not reach
  it), token authentication on (:mod:`headwater.engine.ray.auth`: the token file is ``0600``, passed as a
  path, never a value), the dashboard (when on) bound to ``127.0.0.1``, explicit CPUs and object store, its
  temp dir under the state directory below. Every process it starts carries a random marker in its
  environment (as for the :mod:`~headwater.engine.ray.reaper`), which is how it is found and stopped: never
  ``ray stop``, which would stop every Ray of every user on the machine;
* its state directory (``$HEADWATER_LOCAL_RAY_DIR``, default ``~/.headwater/ray/local``, mode ``0700``) holds
  ``cluster.json`` (address, session directory, marker, watcher pid, settings: never the token; mode
  ``0600``), ``start.lock`` (held while a driver checks, starts or stops the cluster, so two drivers never
  start two), ``in-use.lock`` (a shared ``flock`` held by every connected driver) and ``last-used``;
* an idle watcher (:mod:`headwater.engine.ray.idle_watch`) stops it once no driver has been connected for
  ``RunConfig.local_ray_idle_timeout`` (default 10 min; the value of the run that started it applies);
* ``headwater local stop`` (:func:`stop`) stops it at once, also under a running job; ``headwater local
  status`` (:func:`status`) says whether it runs, where, and since when it is idle.

The settings (CPUs, object store, dashboard) are those of the run that started it; a later run asking for
others gets a warning naming ``headwater local stop``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from headwater.engine.config import RunConfig
from headwater.engine.private_files import create_private_file
from headwater.engine.ray.auth import auth_environment, restore_auth_environment, use_token_auth_for_local_ray
from headwater.engine.ray.idle_watch import try_lock
from headwater.engine.ray.reaper import MARKER_ENV, marked_processes, reap
from headwater.errors import LocalRayError

log = logging.getLogger("headwater.ray")

DIR_ENV = "HEADWATER_LOCAL_RAY_DIR"
_START_TIMEOUT_S = 120.0


def default_directory() -> Path:
    """``$HEADWATER_LOCAL_RAY_DIR`` or ``~/.headwater/ray/local``."""
    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else Path.home() / ".headwater" / "ray" / "local"


def state_file(directory: Path) -> Path:
    return directory / "cluster.json"


def in_use_file(directory: Path) -> Path:
    return directory / "in-use.lock"


def start_lock_file(directory: Path) -> Path:
    return directory / "start.lock"


def last_used_file(directory: Path) -> Path:
    return directory / "last-used"


def drivers_directory(directory: Path) -> Path:
    """One empty file per connected driver, named by its pid: a stop spares these processes (their jobs fail,
    they live on to report it), while everything else holding the session's files is stopped."""
    return directory / "drivers"


def _connected_drivers(directory: Path) -> list[int]:
    try:
        return [int(p.name) for p in drivers_directory(directory).iterdir() if p.name.isdigit()]
    except OSError:
        return []


@dataclass(frozen=True)
class KeptRayState:
    """What ``cluster.json`` records of the kept Ray (no secret: the token stays in its own file)."""

    address: str
    session_dir: str
    marker: str
    watcher_pid: int | None
    started_at: float
    idle_timeout_s: float
    num_cpus: int
    object_store_memory: int
    dashboard_url: str | None
    #: the interpreter that started it: Ray starts every worker with it, so a driver of another environment
    #: (another virtualenv) must not join it, or its jobs would run without that environment's packages
    python: str = ""


def read_state(directory: Path) -> KeptRayState | None:
    """The recorded state, or ``None`` if there is none (or it is unreadable: then it is treated as gone)."""
    try:
        data = json.loads(state_file(directory).read_text())
        return KeptRayState(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable kept-Ray state %s (%s)", state_file(directory), exc)
        return None


def write_state(directory: Path, state: KeptRayState) -> None:
    """Replace ``cluster.json`` atomically (a private file renamed into place)."""
    temporary = directory / f".cluster.{os.getpid()}.{secrets.token_hex(4)}.json"
    create_private_file(temporary, json.dumps(asdict(state), indent=1))
    os.replace(temporary, state_file(directory))


def _prepare_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


@contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    """The exclusive lock under which the cluster is checked, started or stopped (blocking)."""
    fd = os.open(start_lock_file(directory), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cluster_alive(state: KeptRayState) -> bool:
    """Whether any process of the kept Ray is still running (found by its marker or its session files)."""
    return bool(marked_processes(state.marker, [state.session_dir]))


def _stop_locked(directory: Path, state: KeptRayState | None) -> list[int]:
    """Stop the cluster and its watcher and forget it (the caller holds the start lock)."""
    if state is None:
        return []
    found = reap(state.marker, [state.session_dir], spare=_connected_drivers(directory))
    watcher = state.watcher_pid
    if watcher is not None and watcher != os.getpid():
        try:
            os.kill(watcher, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    state_file(directory).unlink(missing_ok=True)
    for stale in drivers_directory(directory).glob("*"):
        stale.unlink(missing_ok=True)
    return found


def stop(directory: Path | None = None, reason: str = "headwater local stop") -> KeptRayState | None:
    """Stop the kept Ray at once (connected jobs fail); the state it had, or ``None`` if none was running."""
    directory = directory or default_directory()
    if not directory.exists():
        return None
    with _start_lock(directory):
        state = read_state(directory)
        found = _stop_locked(directory, state)
    if state is not None:
        log.info("stopped the kept local Ray at %s (%s; %d processes)", state.address, reason, len(found))
    return state


def stop_if_idle(directory: Path, state: KeptRayState) -> bool:
    """The idle watcher's stop: only if no driver is connected and the cluster is still ``state``'s."""
    with _start_lock(directory):
        free = try_lock(in_use_file(directory), exclusive=True)
        if free is None:
            return False  # a driver connected meanwhile
        try:
            current = read_state(directory)
            if current is None or current.session_dir != state.session_dir:
                return True  # already stopped or replaced
            _stop_locked(directory, current)
            return True
        finally:
            os.close(free)


@dataclass(frozen=True)
class KeptRayStatus:
    """What ``headwater local status`` prints."""

    directory: Path
    state: KeptRayState | None
    running: bool
    in_use: bool
    idle_since: float | None


def status(directory: Path | None = None) -> KeptRayStatus:
    directory = directory or default_directory()
    state = read_state(directory) if directory.exists() else None
    running = state is not None and cluster_alive(state)
    in_use = False
    idle_since: float | None = None
    if running and state is not None:
        free = try_lock(in_use_file(directory), exclusive=True)
        in_use = free is None
        if free is not None:
            os.close(free)
            try:
                idle_since = max(state.started_at, last_used_file(directory).stat().st_mtime)
            except OSError:
                idle_since = state.started_at
    return KeptRayStatus(directory, state, running, in_use, idle_since)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ray_command() -> list[str]:
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if found:
        return [found]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _start_locked(directory: Path, config: RunConfig, num_cpus: int) -> KeptRayState:
    """``ray start --head`` the kept Ray, start its idle watcher and record it (the caller holds the start lock
    and has put this process's environment in token mode)."""
    temp_dir = directory / "tmp"
    temp_dir.mkdir(mode=0o700, exist_ok=True)
    marker = secrets.token_hex(16)
    dashboard_port = _free_port()
    command = [
        *_ray_command(), "start", "--head", f"--port={_free_port()}",
        f"--ray-client-server-port={_free_port()}", f"--num-cpus={num_cpus}",
        f"--object-store-memory={config.object_store_memory}", f"--temp-dir={temp_dir}",
        f"--include-dashboard={'true' if config.ray_dashboard else 'false'}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={_free_port()}",
        "--disable-usage-stats",
    ]
    env = {**os.environ, MARKER_ENV: marker, "RAY_USAGE_STATS_ENABLED": "0"}
    log_path = directory / "start.log"
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, timeout=_START_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            done = None
    if done is None or done.returncode != 0:
        reap(marker)  # whatever it started before failing
        tail = log_path.read_text(errors="replace")[-2000:]
        raise LocalRayError(f"could not start the kept local Ray (`ray start --head` "
                            f"{'timed out' if done is None else f'exited with {done.returncode}'}); its output "
                            f"(in {log_path}):\n{tail}")
    session_dir = str((temp_dir / "session_latest").resolve())
    address = (temp_dir / "ray_current_cluster").read_text().strip()
    watcher = _start_watcher(directory)
    state = KeptRayState(
        address=address, session_dir=session_dir, marker=marker, watcher_pid=watcher, started_at=time.time(),
        idle_timeout_s=config.local_ray_idle_timeout.total_seconds(), num_cpus=num_cpus,
        object_store_memory=config.object_store_memory,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if config.ray_dashboard else None,
        python=sys.executable,
    )
    write_state(directory, state)
    return state


def _start_watcher(directory: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "headwater.engine.ray.idle_watch", str(directory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env, close_fds=True,
    )
    return process.pid


class KeptRaySession:
    """This driver's connection to the kept Ray: :meth:`close` disconnects and lets the idle clock run."""

    def __init__(self, directory: Path, state: KeptRayState, in_use: int, saved_auth: dict[str, str | None]) -> None:
        self.directory = directory
        self.state = state
        self._in_use: int | None = in_use
        self._saved_auth = saved_auth
        self._driver_file = drivers_directory(directory) / str(os.getpid())
        drivers_directory(directory).mkdir(mode=0o700, exist_ok=True)
        self._driver_file.touch()

    @property
    def dashboard_url(self) -> str | None:
        return self.state.dashboard_url

    def close(self) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self.release()

    def release(self) -> None:
        """Mark the time of use, drop the in-use lock, put the auth environment back."""
        if self._in_use is not None:
            try:
                last_used_file(self.directory).touch()
            except OSError:
                pass
            self._driver_file.unlink(missing_ok=True)
            os.close(self._in_use)
            self._in_use = None
        restore_auth_environment(self._saved_auth)


def _connect_shared(directory: Path) -> int:
    fd = os.open(in_use_file(directory), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # the watcher holds it exclusively only for an instant, or while stopping
    return fd


def _checked_state(directory: Path, config: RunConfig, num_cpus: int, fresh: bool) -> tuple[KeptRayState, int]:
    """Under the start lock: the running kept Ray (started if there is none, or if ``fresh``), and this
    driver's in-use lock on it."""
    with _start_lock(directory):
        state = read_state(directory)
        if state is not None and state.python != sys.executable and cluster_alive(state):
            free = try_lock(in_use_file(directory), exclusive=True)
            if free is None:
                raise LocalRayError(
                    f"the kept local Ray was started by another Python ({state.python}) and is in use; this run "
                    f"({sys.executable}) cannot join it (its workers would lack this environment's packages). "
                    "Run `headwater local stop`, or set keep_local_ray=False (HEADWATER_KEEP_LOCAL_RAY=0) for a "
                    "Ray of this run's own, or HEADWATER_LOCAL_RAY_DIR to keep one per environment"
                )
            os.close(free)
            log.warning("the kept local Ray was started by another Python (%s): restarting it for %s",
                        state.python, sys.executable)
            fresh = True
        if state is not None and (fresh or not cluster_alive(state)):
            _stop_locked(directory, state)
            state = None
        if state is None:
            state = _start_locked(directory, config, num_cpus)
        return state, _connect_shared(directory)


def connect(config: RunConfig, num_cpus: int, **init_options: Any) -> KeptRaySession:
    """Join the kept Ray (starting it if needed) with ``ray.init``; call ``close()`` on the result when done."""
    import ray

    directory = default_directory()
    _prepare_directory(directory)
    saved = auth_environment()
    use_token_auth_for_local_ray()
    in_use: int | None = None
    try:
        for attempt in range(2):
            state, in_use = _checked_state(directory, config, num_cpus, fresh=attempt > 0)
            try:
                ray.init(address=state.address, **init_options)
                break
            except (ConnectionError, RuntimeError, TimeoutError):
                os.close(in_use)
                in_use = None
                if attempt > 0:
                    raise
                log.warning("could not join the kept local Ray at %s; starting a new one", state.address)
        _warn_on_other_settings(state, config, num_cpus)
        assert in_use is not None
        return KeptRaySession(directory, state, in_use, saved)
    except BaseException:
        if in_use is not None:
            os.close(in_use)
        restore_auth_environment(saved)
        raise


def _warn_on_other_settings(state: KeptRayState, config: RunConfig, num_cpus: int) -> None:
    wanted = {"num_cpus": num_cpus, "object_store_memory": config.object_store_memory,
              "dashboard": config.ray_dashboard}
    kept = {"num_cpus": state.num_cpus, "object_store_memory": state.object_store_memory,
            "dashboard": state.dashboard_url is not None}
    differing = [f"{name} {kept[name]} (asked: {wanted[name]})" for name in wanted if wanted[name] != kept[name]]
    if differing:
        log.warning("the kept local Ray runs with %s; run `headwater local stop` for the next run to start one "
                    "with this run's settings", ", ".join(differing))


def describe(current: KeptRayStatus, out: IO[str]) -> None:
    """``headwater local status`` (no secret is printed: the token file is named, never read)."""
    state = current.state
    if state is None or not current.running:
        print(f"no kept local Ray is running (state: {current.directory})", file=out)
        return
    print(f"kept local Ray at {state.address}", file=out)
    print(f"  session dir:   {state.session_dir}", file=out)
    print(f"  started:       {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.started_at))}", file=out)
    print(f"  resources:     {state.num_cpus} CPUs, object store {state.object_store_memory // 2**20} MiB", file=out)
    if state.dashboard_url:
        print(f"  dashboard:     {state.dashboard_url}", file=out)
    if current.in_use:
        print("  in use:        yes (a driver is connected)", file=out)
    elif current.idle_since is not None:
        idle = time.time() - current.idle_since
        print(f"  idle:          {idle:.0f} s of {state.idle_timeout_s:g} s, then it stops itself", file=out)
    print(f"  credential:    token file {os.environ.get('RAY_AUTH_TOKEN_PATH') or _token_file()}", file=out)


def _token_file() -> Path:
    from headwater.engine.ray.auth import default_token_file

    return default_token_file()
