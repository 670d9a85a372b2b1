"""Failure classification (transient or deterministic) and the restart policy, without Ray and without timing:
the supervisor runs on a fake clock, its pauses are recorded instead of slept."""

from __future__ import annotations

import errno
import json
import logging
import pickle
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import headwater as hw
from headwater.engine.checkpoints.recovery import run_with_recovery
from headwater.engine.config import CheckpointConfig
from headwater.engine.failures import RestartBackoff, classify, is_transient
from headwater.engine.job import JobResult
from headwater.errors import (
    CheckpointCorruptError,
    CheckpointError,
    ConfigError,
    JobFailedError,
    SchemaMismatchError,
    SimulatedCrashError,
    SinkError,
    SourceError,
    StateCompatibilityError,
    StepStalledError,
    UserCodeError,
)
from headwater.runner import plan_flow
from headwater.testing import TestingSink, TestingSource


def caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def arrow_parse_error() -> pa.ArrowInvalid:
    try:
        pacsv.read_csv(pa.py_buffer(b"a,b\n1,2,3\n"))
    except pa.ArrowInvalid as exc:
        return exc
    raise AssertionError("pyarrow parsed a malformed CSV")


def json_error() -> json.JSONDecodeError:
    try:
        json.loads("{")
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("json parsed '{'")


DETERMINISTIC = {
    "csv parse error": lambda: caused(SourceError("cannot read x.csv", step_id="in"), arrow_parse_error()),
    "json decode error in a connector": lambda: caused(SourceError("bad record"), json_error()),
    "checkpoint disk full": lambda: caused(CheckpointError("could not write"), OSError(errno.ENOSPC, "No space left")),
    "checkpoint quota": lambda: caused(CheckpointError("could not write"), OSError(errno.EDQUOT, "Quota exceeded")),
    "read-only file system": lambda: caused(CheckpointError("could not write"), OSError(errno.EROFS, "Read-only")),
    "permission denied in a sink": lambda: caused(SinkError("cannot stage"), PermissionError(errno.EACCES, "denied")),
    "operation not permitted": lambda: caused(SinkError("cannot stage"), OSError(errno.EPERM, "not permitted")),
    "disk full inside a dead worker": lambda: caused(JobFailedError("worker failed"), OSError(errno.ENOSPC, "full")),
    "user code": lambda: caused(UserCodeError("ValueError: 13", step_id="f"), ValueError("13")),
    "schema mismatch": lambda: SchemaMismatchError("other schema", step_id="f"),
    "configuration": lambda: ConfigError("batch_size must be positive"),
    "incompatible state": lambda: StateCompatibilityError("other key groups"),
    "stalled step, even with a timeout as its cause": lambda: caused(StepStalledError("stalled"), TimeoutError()),
    "declared deterministic": lambda: caused(SourceError("undecodable", transient=False), ConnectionError()),
}
TRANSIENT = {
    "worker died": lambda: JobFailedError("the worker hosting step(s) x failed or died (ActorDiedError: ...)"),
    "testing ABORT marker": lambda: SimulatedCrashError("ABORT marker", step_id="in"),
    "broker hiccup": lambda: caused(SourceError("fetch failed"), ConnectionResetError(errno.ECONNRESET, "reset")),
    "timeout": lambda: caused(SinkError("commit timed out"), TimeoutError("timed out")),
    "a UDF calling a flaky service": lambda: caused(UserCodeError("ConnectionError"), ConnectionRefusedError()),
    "I/O error of unknown cause": lambda: caused(SourceError("cannot read"), OSError(errno.EIO, "I/O error")),
    "damaged checkpoint (falls back)": lambda: CheckpointCorruptError("checksum mismatch", "/c/chk-1/x"),
    "declared transient": lambda: caused(SinkError("lock wait", transient=True), PermissionError()),
}


@pytest.mark.parametrize("make", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_deterministic_failures(make: Any) -> None:
    verdict = classify(make())
    assert not verdict.transient and verdict.reason
    assert str(verdict).startswith("deterministic: ")


@pytest.mark.parametrize("make", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_failures(make: Any) -> None:
    assert is_transient(make())


@pytest.mark.parametrize("make", [*DETERMINISTIC.values(), *TRANSIENT.values()],
                         ids=[*DETERMINISTIC.keys(), *TRANSIENT.keys()])
def test_the_verdict_survives_pickling(make: Any) -> None:
    """Errors travel from Ray workers to the driver pickled; the driver must see what the worker saw."""
    error = make()
    assert classify(pickle.loads(pickle.dumps(error))) == classify(error)


def test_checkpoint_error_keeps_its_os_error_and_path_across_pickling() -> None:
    error = caused(CheckpointCorruptError("bad", "/c/chk-000001/_metadata"), OSError(errno.ENOSPC, "full"))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CheckpointCorruptError and copy.path == "/c/chk-000001/_metadata"
    assert isinstance(copy.__cause__, OSError) and copy.__cause__.errno == errno.ENOSPC


def test_declared_transient_is_kept_across_pickling() -> None:
    copy = pickle.loads(pickle.dumps(SourceError("broker down", step_id="in", subtask=1, transient=True)))
    assert copy.transient is True and copy.step_id == "in" and copy.subtask == 1


# -- the backoff schedule ---------------------------------------------------------------------------------------------
def test_delays_double_up_to_the_cap_without_jitter() -> None:
    backoff = RestartBackoff(max_restarts=8, initial=0.2, cap=2.0, reset_after=600, random_fraction=lambda: 0.0)
    delays = [backoff.next_delay(ran_for=1.0, progressed=True) for _ in range(8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0])
    assert backoff.next_delay(ran_for=1.0, progressed=True) is None, "the ninth restart in a row is refused"


def test_jitter_only_shortens_a_delay_by_at_most_its_fraction() -> None:
    backoff = RestartBackoff(max_restarts=3, initial=1.0, cap=10.0, reset_after=600, jitter=0.1,
                             random_fraction=lambda: 0.999)
    assert [round(d, 3) for d in (backoff.next_delay(0, False), backoff.next_delay(0, False))] == [0.9, 1.8]


def test_a_healthy_attempt_resets_delay_and_budget_but_a_long_one_without_progress_does_not() -> None:
    backoff = RestartBackoff(max_restarts=2, initial=1.0, cap=60.0, reset_after=100, random_fraction=lambda: 0.0)
    assert backoff.next_delay(ran_for=5, progressed=True) == 1.0
    assert backoff.next_delay(ran_for=500, progressed=False) == 2.0, "ran long, completed no checkpoint"
    assert backoff.next_delay(ran_for=500, progressed=True) == 1.0, "healthy: a new row"
    assert backoff.next_delay(ran_for=5, progressed=True) == 2.0
    assert backoff.next_delay(ran_for=5, progressed=True) is None


# -- the supervisor ---------------------------------------------------------------------------------------------------
@dataclass
class FakeTime:
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FailingAttempts:
    """``start_attempt`` for run_with_recovery: attempt n raises ``failures[n]`` after running ``ran_for``."""

    def __init__(self, plan: Any, failures: list[BaseException | None], time: FakeTime, ran_for: float = 1.0) -> None:
        self.plan, self.failures, self.time, self.ran_for, self.started = plan, failures, time, ran_for, 0

    def __call__(self, restore: Any, first_id: int) -> FailingAttempts:
        self.started += 1
        return self

    def wait(self, timeout: float | None = None) -> JobResult:
        self.time.now += self.ran_for
        failure = self.failures[self.started - 1]
        if failure is not None:
            raise failure
        return JobResult.merge(self.plan, self.ran_for, [], False)


def supervise(tmp_path: Path, failures: list[BaseException | None], timeout: float | None = None,
              seen: list[Any] | None = None, **options: Any) -> tuple[FailingAttempts, FakeTime]:
    flow = hw.Dataflow("f")
    flow.source("in", TestingSource([{"v": 1}])).sink("out", TestingSink(tmp_path / "out"))
    config = CheckpointConfig(dir=tmp_path / "chk", **options)
    time = FakeTime()
    plan = plan_flow(flow, executor="local")
    attempts = FailingAttempts(plan, failures, time)
    if seen is not None:
        seen.extend([attempts, time])  # for a test whose run raises
    backoff = RestartBackoff(config.max_restarts, config.restart_delay.total_seconds(),
                             config.max_restart_delay.total_seconds(), config.restart_reset_after.total_seconds(),
                             random_fraction=lambda: 0.0)
    run_with_recovery(plan, config, attempts, timeout, backoff=backoff, clock=time.clock, sleep=time.sleep)
    return attempts, time


def test_transient_failures_restart_with_growing_pauses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash = SimulatedCrashError("ABORT marker", step_id="in")
    with caplog.at_level(logging.WARNING, "headwater.recovery"):
        attempts, time = supervise(tmp_path, [crash, crash, crash, None], restart_delay=timedelta(seconds=1),
                                   max_restart_delay=timedelta(seconds=3))
    assert attempts.started == 4 and time.slept == [1.0, 2.0, 3.0]
    restarts = [r.getMessage() for r in caplog.records if "restart" in r.getMessage()]
    assert len(restarts) == 3 and "transient: a simulated crash" in restarts[0] and "in 2.00 s" in restarts[1]


def test_a_deterministic_failure_is_raised_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parse = caused(SourceError("cannot read 'x.csv': CSV parse error", step_id="in"), arrow_parse_error())
    with caplog.at_level(logging.ERROR, "headwater.recovery"), pytest.raises(SourceError) as raised:
        supervise(tmp_path, [parse, None])
    assert raised.value is parse
    assert any("not retried: the data cannot be parsed" in r.getMessage() for r in caplog.records)


def test_spent_budget_raises_the_last_failure(tmp_path: Path) -> None:
    died = JobFailedError("worker died")
    with pytest.raises(JobFailedError):
        supervise(tmp_path, [died] * 4, max_restarts=2, restart_delay=timedelta(0))


def test_no_restart_once_the_runs_timeout_has_passed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash = SimulatedCrashError("ABORT marker", step_id="in")
    # each attempt runs 1 s; restarts pause 1 s: attempt 1 fails at t=1, restarts (t=2), fails at t=3 > 2.5
    with caplog.at_level(logging.ERROR, "headwater.recovery"), pytest.raises(SimulatedCrashError) as raised:
        supervise(tmp_path, [crash, crash, None], timeout=2.5, restart_delay=timedelta(seconds=1))
    assert raised.value is crash
    assert any("not retried: the run's timeout of 2.5 s has passed" in r.getMessage() for r in caplog.records)


def test_a_restart_pause_does_not_run_past_the_runs_timeout(tmp_path: Path) -> None:
    crash = SimulatedCrashError("ABORT marker", step_id="in")
    seen: list[Any] = []
    with pytest.raises(SimulatedCrashError) as raised:
        supervise(tmp_path, [crash, None], timeout=1.5, seen=seen, restart_delay=timedelta(seconds=10),
                  max_restart_delay=timedelta(seconds=10))
    attempts, time = seen
    # the pause is cut at the deadline, and no attempt starts after it (it would end the run later still)
    assert raised.value is crash and attempts.started == 1 and time.slept == [0.5]


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk full (ENOSPC); free space"),
    (errno.EROFS, "read-only file system (EROFS); mount it read-write"),
    (errno.EACCES, "permission denied (EACCES); give the job's user write access"),
])
def test_an_unwritable_checkpoint_directory_fails_at_once_naming_it(tmp_path: Path, code: int, words: str) -> None:
    cause = OSError(code, "os says no")
    write = caused(CheckpointError(f"could not write checkpoint state {tmp_path}/chk/chk-000001/state/x"), cause)
    with pytest.raises(CheckpointError) as raised:
        supervise(tmp_path, [write, None])
    message = str(raised.value)
    assert message.startswith(f"checkpoint directory {tmp_path / 'chk'}: {words}")
    assert "point CheckpointConfig.dir at another directory" in message and "chk-000001/state/x" in message
    assert raised.value.__cause__ is write and write.__cause__ is cause


def test_restart_delays_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="max_restart_delay"):
        CheckpointConfig(dir="/tmp/x", restart_delay=timedelta(seconds=10), max_restart_delay=timedelta(seconds=5))
