"""Ending worker actors: a failed attempt's workers are confirmed dead before the driver restores."""

from __future__ import annotations

from typing import Any

import pytest

from headwater.engine.ray.actors import await_death, kill_actors

pytestmark = pytest.mark.ray


class _Idle:
    def ping(self) -> bool:
        return True


def test_await_death_returns_once_killed_actors_are_gone_and_not_before(ray_cluster: Any) -> None:
    actor_class = ray_cluster.remote(num_cpus=0)(_Idle)
    doomed = [actor_class.remote() for _ in range(2)]
    survivor = actor_class.remote()
    ray_cluster.get([a.ping.remote() for a in [*doomed, survivor]])
    kill_actors(ray_cluster, doomed)
    assert await_death(ray_cluster, doomed, timeout=20.0)
    for actor in doomed:
        with pytest.raises(ray_cluster.exceptions.RayActorError):
            ray_cluster.get(actor.ping.remote(), timeout=10)
    assert not await_death(ray_cluster, [survivor], timeout=0.5)  # a live actor is never reported dead
    kill_actors(ray_cluster, [survivor])
