"""Running a checkpointed job: restore, restart after failures, settle sink output.

Each *attempt* starts from the latest complete checkpoint in the checkpoint directory (or the configured
``restore_from`` savepoint when the directory has none yet):

1. The checkpoint is loaded and verified (damaged ones are skipped, falling back to older ones).
2. It is checked against the dataflow: state of steps the dataflow no longer has is refused unless
   ``allow_non_restored_state``; the number of key groups must match.
3. Sinks are *settled*: every commit token the checkpoint covers is committed (idempotent — this finishes a
   commit a crash interrupted), output staged by the failed attempt is aborted, and every staged file of this
   job (and of ended runs without checkpointing) that no token covers is deleted (the run holds the
   directories' leases, so no one else is writing there; other checkpointed jobs' staged files are kept).
4. The job starts with sources at the checkpoint's positions and state restored (re-split by key group when
   the parallelism changed).

Every failure of an attempt is classified (:func:`headwater.engine.failures.classify`). A *transient* one (a
worker died, a simulated crash, a connection error, an I/O error of unknown cause) restarts the job after an
exponentially growing pause (:class:`~headwater.engine.failures.RestartBackoff`: ``restart_delay`` doubling
up to ``max_restart_delay``), at most ``max_restarts`` times in a row; an attempt that ran healthy for
``restart_reset_after`` starts a new row. A *deterministic* one (bad data, a schema mismatch, user code,
configuration, a full, read-only or forbidden checkpoint directory) fails the run at once with its cause,
since replaying the same input would fail the same way. Each decision is logged with the classification.

A run with a ``timeout`` is not restarted once that deadline has passed (nor is a restart's pause allowed to
run past it): the transient failure is raised as it is, since it, not the clock, is what went wrong.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Protocol

from headwater.core.plain_data import PlainData
from headwater.engine.checkpoints.snapshots import SubtaskRestore
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage
from headwater.engine.config import CheckpointConfig
from headwater.engine.failures import DETERMINISTIC_ERRNOS, RestartBackoff, causes, classify, os_error_in
from headwater.engine.job import JobResult
from headwater.engine.plan import PhysicalPlan
from headwater.errors import CheckpointCorruptError, CheckpointError, HeadwaterError, StateCompatibilityError
from headwater.logical import SinkStep

log = logging.getLogger("headwater.recovery")

class Attempt(Protocol):
    def wait(self, timeout: float | None = None) -> JobResult: ...


def load_restore_point(
    storage: CheckpointStorage, config: CheckpointConfig, own_from: int | None = None
) -> tuple[CheckpointMetadata, CheckpointStorage] | None:
    """The checkpoint to start from, and the storage its state files are read from.

    ``restore_from`` (when set) wins over older checkpoints in the directory; once this run has written
    checkpoints of its own (ids >= ``own_from``), the latest of those wins — that is how a run started from a
    savepoint recovers from a crash. Without ``restore_from`` the latest checkpoint in the directory is used.
    """
    metadata = storage.latest_valid()
    if metadata is not None and (config.restore_from is None or (own_from is not None and metadata.checkpoint_id >= own_from)):
        return metadata, storage
    if config.restore_from is None:
        return None
    location = str(config.restore_from).rstrip("/")
    if "://" not in location:
        location = str(Path(location).resolve())
    source = CheckpointStorage(location.rsplit("/", 1)[0])
    try:
        restored = source.load(location)
        source.verify(restored)
    except CheckpointCorruptError as exc:
        raise CheckpointCorruptError(f"restore_from={location} cannot be restored: {exc}", exc.path) from exc
    return restored, source


def check_compatibility(plan: PhysicalPlan, metadata: CheckpointMetadata, config: CheckpointConfig) -> None:
    if metadata.max_key_groups != plan.max_key_groups:
        raise StateCompatibilityError(
            f"checkpoint {metadata.directory} was taken with max_key_groups={metadata.max_key_groups} but the run "
            f"uses {plan.max_key_groups}; keyed state can only be restored with the same number of key groups"
        )
    dropped = sorted(metadata.steps_with_state() - set(plan.steps))
    if dropped and not config.allow_non_restored_state:
        raise StateCompatibilityError(
            f"checkpoint {metadata.directory} holds state of step(s) {', '.join(map(repr, dropped))} that the "
            "dataflow no longer has; keep those step ids, or pass allow_non_restored_state=True to drop that state"
        )


def settle_sinks(plan: PhysicalPlan, metadata: CheckpointMetadata | None) -> None:
    """Commit what ``metadata`` covers; abort output staged by earlier attempts (every sink subtask index);
    then let each sink delete staged files that no token of ``metadata`` names (:meth:`Sink.clean_up`).

    Only called while the run holds the leases of its directories: a staged file of this job's own area that no
    token covers belongs to an attempt or run that can never commit it (its checkpoint did not complete, or is
    older than the one restored), not to a concurrent writer. The plan's sinks stage for this job's owner
    (the planner binds them), so another checkpointed job's prepared files, which that job commits when it
    resumes, are never deleted here."""
    counts: dict[str, int] = {}
    tokens: dict[str, list[PlainData]] = {}
    if metadata is not None:
        for step_id, _, subtask, parallelism, token in metadata.sink_tokens():
            step = plan.steps.get(step_id)
            if isinstance(step, SinkStep):
                partition = step.sink.build_part(subtask, parallelism)
                try:
                    partition.commit(token)
                finally:
                    partition.close()
                counts[step_id] = max(counts.get(step_id, 0), parallelism)
                tokens.setdefault(step_id, []).append(token)
    for stage in plan.stages:
        for step_id in stage.step_ids:
            step = plan.steps[step_id]
            if isinstance(step, SinkStep):
                # a restore at a lower parallelism (a rescale down) also aborts the staging of the wider
                # attempt's subtasks, as partitions of that attempt's width
                width = max(stage.parallelism, counts.get(step_id, 0))
                for subtask in range(width):
                    partition = step.sink.build_part(subtask, width)
                    try:
                        partition.abort()
                    finally:
                        partition.close()
                step.sink.clean_up(tokens.get(step_id, []))


def run_with_recovery(
    plan: PhysicalPlan,
    config: CheckpointConfig,
    start_attempt: Callable[[SubtaskRestore | None, int], Attempt],
    timeout: float | None = None,
    *,
    backoff: RestartBackoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """Run attempts until one finishes; restart transient failures from the latest checkpoint (with backoff),
    raise deterministic ones at once (see the module docstring). ``backoff``, ``clock`` and ``sleep`` are
    replaceable for tests."""
    storage = CheckpointStorage(config.uri)
    if backoff is None:
        backoff = RestartBackoff(
            config.max_restarts, config.restart_delay.total_seconds(), config.max_restart_delay.total_seconds(),
            config.restart_reset_after.total_seconds(),
        )
    restarts = 0
    started = clock()
    own_from = storage.next_id()  # checkpoints with this id or more are written by this run
    while True:
        found = load_restore_point(storage, config, own_from)
        metadata, restore = None, None
        if found is not None:
            metadata, source = found
            check_compatibility(plan, metadata, config)
            restore = SubtaskRestore.of(source, metadata)
        settle_sinks(plan, metadata)
        # ids never repeat: neither this directory's nor those of the checkpoint restored from elsewhere
        first_id = max(storage.next_id(), metadata.checkpoint_id + 1 if metadata is not None else 1)
        attempt_started = clock()
        attempt = start_attempt(restore, first_id)
        try:
            remaining = None if timeout is None else max(0.0, timeout - (clock() - started))
            try:
                result = attempt.wait(remaining)
            except BaseException:
                storage.discard_incomplete()  # what the failed attempt wrote for checkpoints it never completed
                raise
            result.restarts = restarts
            return result
        except HeadwaterError as exc:
            verdict = classify(exc)
            cause = f"{type(exc).__name__}: {exc}"
            if not verdict.transient:
                log.error("job %s failed; not retried: %s (%s)", plan.flow_name, verdict.reason, cause)
                explained = _explain_checkpoint_storage(exc, config)
                if explained is not None:
                    raise explained from exc
                raise
            if timeout is not None and clock() - started >= timeout:
                log.error("job %s failed (%s; %s); not retried: the run's timeout of %g s has passed",
                          plan.flow_name, verdict, cause, timeout)
                raise
            progressed = any(i >= first_id for i, _ in storage.completed())
            delay = backoff.next_delay(clock() - attempt_started, progressed)
            if delay is None:
                log.error("job %s failed (%s; %s); not retried: %d restarts in a row used up max_restarts=%d",
                          plan.flow_name, verdict, cause, backoff.consecutive - 1, config.max_restarts)
                raise
            restarts += 1
            log.warning("job %s failed (%s; %s); restart %d/%d in %.2f s from its latest checkpoint",
                        plan.flow_name, verdict, cause, backoff.consecutive, config.max_restarts, delay)
            if timeout is not None:
                delay = min(delay, max(0.0, timeout - (clock() - started)))
            sleep(delay)
            if timeout is not None and clock() - started >= timeout:
                log.error("job %s failed (%s; %s); not restarted: the run's timeout of %g s passed during the pause",
                          plan.flow_name, verdict, cause, timeout)
                raise


def _explain_checkpoint_storage(error: HeadwaterError, config: CheckpointConfig) -> CheckpointError | None:
    """For a checkpoint write that failed on a full, read-only or forbidden directory: an error that names the
    directory, the condition and the fix (``None`` for any other failure)."""
    os_error = os_error_in(error)
    if os_error is None or os_error.errno is None or not any(isinstance(link, CheckpointError) for link in causes(error)):
        return None
    condition, fix = DETERMINISTIC_ERRNOS[os_error.errno]
    return CheckpointError(
        f"checkpoint directory {config.uri}: {condition}; {fix}, or point CheckpointConfig.dir at another "
        f"directory (not retried: a restart would fail the same way). {error}"
    )
