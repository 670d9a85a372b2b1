"""Shared fixtures: one Ray cluster for the whole session, and a runner that executes a dataflow both
in-process and on Ray so the same test proves both executors.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

import headwater as hw
from headwater.engine.job import JobResult

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A run that starts Ray in a test (or in a program a test starts) gets a Ray of its own, stopped when it ends:
# no kept local Ray outlives the tests, and none is needed. The kept Ray's own tests opt in explicitly.
os.environ["HEADWATER_KEEP_LOCAL_RAY"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _temporary_directories_under_pytest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """TestingSource/TestingSink make temporary directories; keep them under pytest's (cleaned) base."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tempfile.tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Ray with explicit CPUs and a capped object store, shared by every test and shut down at the end.

    Started as Headwater starts one (token authentication on, reaper), so the tests run as users do."""
    import ray

    from headwater.engine.ray.cluster import start_local_ray

    local = None
    if not ray.is_initialized():
        local = start_local_ray(
            num_cpus=2,
            object_store_memory=300 * 1024 * 1024,
            temp_dir=tmp_path_factory.mktemp("ray"),
            configure_logging=False,
            log_to_driver=True,
        )
    yield ray
    if local is not None:
        local.shutdown()
    else:
        ray.shutdown()


Runner = Callable[..., JobResult]


@pytest.fixture(params=["local", "ray"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """``runner(flow, **options)``: run with the in-process executor, then (second param) on Ray."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        request.node.add_marker(pytest.mark.ray)

        def run_on_ray(flow: hw.Dataflow, **options: Any) -> JobResult:
            return hw.run(flow, executor="ray", **options)

        return run_on_ray

    def run_local(flow: hw.Dataflow, **options: Any) -> JobResult:
        return hw.run(flow, executor="local", **options)

    return run_local
