"""The Ray job's coordinator service without Ray: its watch-group paths (the timer, ``take_expired`` behind
``activity``, ``prepare_stop``) never wait for the lock a checkpoint completion holds in its thread."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from headwater.engine.checkpoints.coordinator import CheckpointCoordinator, Expired
from headwater.engine.checkpoints.storage import CheckpointStorage, SubtaskAck
from headwater.engine.config import CheckpointConfig
from headwater.engine.ray.coordinator import CoordinatorService

SUBTASKS = [(0, 0), (1, 0)]


def _service(tmp_path: Path) -> CoordinatorService:
    config = CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(milliseconds=50),
                              timeout=timedelta(milliseconds=300))
    service = CoordinatorService(CheckpointCoordinator(CheckpointStorage(config.uri), config, "flow", SUBTASKS, 128, 1))
    service.connect([], [], SimpleNamespace(hosts={}))  # type: ignore[arg-type]  # no sources to trigger
    return service


def _slow_completion(service: CoordinatorService, monkeypatch: pytest.MonkeyPatch, seconds: float
                     ) -> threading.Event:
    """Make writing checkpoint metadata take ``seconds`` (as a slow disk or a large read-back does); the event
    is set once the write has begun."""
    writing = threading.Event()
    write = service.checkpoints.core.storage.write_metadata

    def slow_write(*args: Any, **kwargs: Any) -> str:
        writing.set()
        time.sleep(seconds)
        return write(*args, **kwargs)

    monkeypatch.setattr(service.checkpoints.core.storage, "write_metadata", slow_write)
    return writing


def _complete_in_a_thread(service: CoordinatorService, checkpoint_id: int) -> threading.Thread:
    """The last ack arrives; as in the worker, the coordinator's work runs in a thread under the lock."""
    for stage, subtask in SUBTASKS[:-1]:
        service.checkpoints.ack(SubtaskAck(checkpoint_id, stage, subtask, 2))
    stage, subtask = SUBTASKS[-1]
    thread = threading.Thread(target=service.checkpoints.ack, args=(SubtaskAck(checkpoint_id, stage, subtask, 2),))
    thread.start()
    return thread


def test_the_watch_loop_keeps_answering_and_timing_out_while_a_completion_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    writing = _slow_completion(service, monkeypatch, seconds=2.0)

    async def watch_loop() -> tuple[float, float, list[Expired]]:
        timer = asyncio.ensure_future(service.run_timer())
        while service.checkpoints.core.pending is None:  # the timer began checkpoint 1
            await asyncio.sleep(0.01)
        completing = _complete_in_a_thread(service, service.checkpoints.core.pending.checkpoint_id)
        await asyncio.to_thread(writing.wait, 5)
        started = time.monotonic()
        await asyncio.sleep(0.05)  # the loop still runs: the timer is not blocked on the lock
        assert service.take_expired() == []
        answered = time.monotonic() - started
        await asyncio.to_thread(completing.join)
        assert service.checkpoints.core.stats.completed == 1
        # the timer goes on: checkpoint 2 begins, nobody acknowledges it, it times out and is reported
        deadline = time.monotonic() + 5
        expired: list[Expired] = []
        while not expired and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            expired = service.take_expired()
        service.closed = True
        await timer
        return answered, completing.is_alive(), expired

    answered, still_completing, expired = asyncio.run(watch_loop())
    assert answered < 1.0, f"the watch loop was blocked for {answered:.1f} s by the checkpoint completion"
    assert not still_completing
    assert [(e.checkpoint_id, e.missing) for e in expired] == [(2, SUBTASKS)] and expired[0].age_s >= 0.3


def test_prepare_stop_does_not_wait_for_a_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(tmp_path)
    writing = _slow_completion(service, monkeypatch, seconds=2.0)
    completing = _complete_in_a_thread(service, service.checkpoints.core.begin())
    assert writing.wait(5)
    started = time.monotonic()
    service.prepare_stop(savepoint=True)
    took = time.monotonic() - started
    completing.join()
    assert took < 0.5, f"prepare_stop waited {took:.1f} s for the checkpoint completion"
    assert service.checkpoints.stopping and service.checkpoints.core.final_kind == "savepoint"
    assert service.checkpoints.core.stats.completed == 1
