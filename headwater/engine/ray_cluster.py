"""Starting or joining Ray: the embedded default needs nothing running.

* If Ray is already initialised in this process (a test fixture, a notebook), use it as is.
* Else if ``ray_address`` (or ``$RAY_ADDRESS``) is set, join that cluster.
* Else start a local Ray with explicit CPUs, a capped object store and its temp dir under the state dir, and
  shut it down when the run ends.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from headwater.engine.config import RunConfig

# Ray 2.60 enables token auth by default, which breaks local dashboards and `ray status`; usage stats would
# try to reach the internet. Both only apply if the user has not chosen otherwise.
_RAY_ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _prepare_environment() -> None:
    for name, value in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def ray_session(config: RunConfig) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster per the rules above."""
    _prepare_environment()
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    else:
        temp_dir = config.resolved_state_dir() / "ray"
        temp_dir.mkdir(parents=True, exist_ok=True)
        ray.init(
            num_cpus=config.num_cpus or os.cpu_count() or 1,
            object_store_memory=config.object_store_memory,
            include_dashboard=False,
            _temp_dir=str(temp_dir),
            log_to_driver=True,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def ship_user_code(objects: list[Any]) -> None:
    """Make functions and classes defined in user scripts or test files unpicklable-by-reference safe.

    cloudpickle pickles functions of importable modules by reference; a Ray worker cannot import a module that
    lives in a user's script or test directory. Such modules (outside the interpreter's library paths and
    outside Headwater) are registered to be pickled by value.
    """
    from ray import cloudpickle

    library_roots = {Path(p).resolve() for p in sysconfig.get_paths().values() if p}
    package_root = Path(__file__).resolve().parents[1]
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
