"""Starting or joining Ray: the embedded default needs nothing running.

* If Ray is already initialised in this process (a test fixture, a notebook), use it as is.
* Else if ``ray_address`` (or ``$RAY_ADDRESS``) is set, join that cluster. Its auth mode is the cluster
  operator's: nothing here changes it (a token, if the cluster needs one, comes from ``$RAY_AUTH_TOKEN`` or
  ``$RAY_AUTH_TOKEN_PATH``).
* Else, with ``RunConfig.keep_local_ray`` (the default), join the *kept* local Ray, starting it if none runs
  (:mod:`headwater.engine.ray.kept`: same security, but it outlives the run, up to an idle timeout, so the
  next run joins in ~0.3 s instead of starting Ray again); the driver disconnects when the run ends.
* Else (``keep_local_ray=False``) start a local Ray for this run (:func:`start_local_ray`): explicit CPUs, a capped object store, its temp dir under the
  state dir, token authentication on (:mod:`headwater.engine.ray.auth`), the dashboard (when on) bound to
  127.0.0.1 (on by default, ``RunConfig.ray_dashboard``; its URL is printed), and a reaper (:mod:`headwater.engine.ray.reaper`) that stops every Ray process it started within
  seconds of the driver's end, even a SIGKILL. It is shut down when the run ends.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from headwater.engine import logs
from headwater.engine.config import RunConfig
from headwater.engine.ray import kept
from headwater.engine.ray.auth import auth_environment, restore_auth_environment, use_token_auth_for_local_ray
from headwater.engine.ray.kept import KeptRaySession
from headwater.engine.ray.reaper import Reaper


def _prepare_environment() -> None:
    # Usage stats would try to reach the internet; only if the user has not chosen otherwise.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class LocalRay:
    """A local Ray started by :func:`start_local_ray`; :meth:`shutdown` stops it and undoes what starting it
    changed in this process (the reaper's watch, the auth environment)."""

    def __init__(self, reaper: Reaper, saved_auth: dict[str, str | None]) -> None:
        self.reaper = reaper
        self.saved_auth = saved_auth
        #: the dashboard's URL when it runs (``http://127.0.0.1:<port>``)
        self.dashboard_url: str | None = None

    def shutdown(self) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self.release()

    def release(self) -> None:
        """Let the reaper sweep and exit, and put the auth environment back (also when ``ray.init`` failed)."""
        self.reaper.finish()
        restore_auth_environment(self.saved_auth)


def start_local_ray(
    *, num_cpus: int, object_store_memory: int, temp_dir: Path | str | None = None, include_dashboard: bool = False,
    **init_options: Any,
) -> LocalRay:
    """``ray.init`` a local Ray the secure way (see the module docstring); call ``shutdown()`` on the result
    instead of ``ray.shutdown()``. A process that just exits is fine too: the reaper sees it go.

    Tests and benchmarks that start their own local Ray use this too, so they run as users do."""
    _prepare_environment()
    saved_auth = auth_environment()
    use_token_auth_for_local_ray()
    import ray

    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        init_options["_temp_dir"] = str(temp_dir)
    local = LocalRay(Reaper(), saved_auth)
    local.reaper.start()
    try:
        context = ray.init(  # address="local": always a new cluster, never one named by $RAY_ADDRESS (the reaper stops it)
            address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
            include_dashboard=include_dashboard, dashboard_host="127.0.0.1", **init_options,
        )
        url = getattr(context, "dashboard_url", None) if include_dashboard else None
        if url:
            local.dashboard_url = url if "://" in url else f"http://{url}"
    except BaseException:
        local.release()
        raise
    local.reaper.started_ray(_session_dir(ray))
    return local


def global_node(ray: ModuleType) -> Any | None:
    """Ray's node object of this process's session (private API: ``None`` when a Ray version lacks it)."""
    return getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)


def _session_dir(ray: ModuleType) -> str | None:
    node = global_node(ray)
    try:
        return str(node.get_session_dir_path()) if node is not None else None
    except Exception:  # noqa: BLE001 - a Ray without it: the environment marker alone
        return None


@contextmanager
def ray_session(config: RunConfig) -> Iterator[ModuleType]:
    """Yield the ``ray`` module connected to a cluster per the rules above."""
    _prepare_environment()
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    num_cpus = config.num_cpus or os.cpu_count() or 1
    local: LocalRay | KeptRaySession
    if config.keep_local_ray:
        local = kept.connect(config, num_cpus, log_to_driver=True, configure_logging=False)
    else:
        local = start_local_ray(
            num_cpus=num_cpus,
            object_store_memory=config.object_store_memory,
            temp_dir=config.resolved_state_dir() / "ray",
            include_dashboard=config.ray_dashboard,
            log_to_driver=True,
            configure_logging=False,
        )
    if local.dashboard_url:
        notice = (f"headwater: Ray dashboard at {local.dashboard_url} (jobs, actors, logs; token in "
                  f"{os.environ.get('RAY_AUTH_TOKEN_PATH', 'the Ray token file')})")
        if logs.installed():  # Headwater's handler formats it (a JSON line by default)
            logging.getLogger("headwater.ray").info(notice)
        else:  # the application configured logging itself: it is still printed, as before
            print(notice, file=sys.stderr)
    try:
        yield ray
    finally:
        local.close() if isinstance(local, KeptRaySession) else local.shutdown()


def ship_user_code(objects: list[Any]) -> None:
    """Make functions and classes defined in user scripts or test files unpicklable-by-reference safe.

    cloudpickle pickles functions of importable modules by reference; a Ray worker cannot import a module that
    lives in a user's script or test directory. Such modules (outside the interpreter's library paths and
    outside Headwater) are registered to be pickled by value.
    """
    from ray import cloudpickle

    library_roots = {Path(p).resolve() for p in sysconfig.get_paths().values() if p}
    # headwater/ itself, found from this module's own dotted name (so it stays right if the module moves)
    package_root = Path(__file__).resolve().parents[len(__name__.split(".")) - 2]
    for obj in objects:
        module_name = getattr(obj, "__module__", None)
        module = sys.modules.get(module_name or "")
        path = getattr(module, "__file__", None)
        if module is None or path is None or module_name == "__main__":
            continue  # __main__ is pickled by value already
        resolved = Path(path).resolve()
        if resolved.is_relative_to(package_root) or any(resolved.is_relative_to(r) for r in library_roots):
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass  # already registered
