"""Running a checkpointed job: restore, restart after failures, settle sink output.

Each *attempt* starts from the latest complete checkpoint in the checkpoint directory (or the configured
``restore_from`` savepoint when the directory has none yet):

1. The checkpoint is loaded and verified (damaged ones are skipped, falling back to older ones).
2. It is checked against the dataflow: state of steps the dataflow no longer has is refused unless
   ``allow_non_restored_state``; the number of key groups must match.
3. Sinks are *settled*: every commit token the checkpoint covers is committed (idempotent — this finishes a
   commit a crash interrupted), output staged by the failed attempt is aborted, and every staged file that no
   token covers is deleted (the run holds the directories' leases, so no one else is writing there).
4. The job starts with sources at the checkpoint's positions and state restored (re-split by key group when
   the parallelism changed).

Failures that a restart can cure (a worker died, a simulated crash, a source/sink I/O error) restart the job,
up to ``max_restarts`` times; failures of user code or data (``UserCodeError``, ``SchemaMismatchError``) fail
the run at once, since replaying the same input would fail the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from headwater.engine.checkpoint_storage import CheckpointMetadata, CheckpointStorage
from headwater.engine.config import CheckpointConfig
from headwater.engine.job import JobResult
from headwater.engine.logical import SinkStep
from headwater.engine.plan import PhysicalPlan
from headwater.engine.snapshots import SubtaskRestore
from headwater.errors import (
    CheckpointCorruptError,
    CheckpointError,
    JobFailedError,
    SimulatedCrashError,
    SinkError,
    SourceError,
    StateCompatibilityError,
)

log = logging.getLogger("headwater.recovery")

RECOVERABLE = (JobFailedError, SimulatedCrashError, SourceError, SinkError, CheckpointError)


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

    Only called while the run holds the leases of its directories: a staged file no token covers belongs to an
    attempt or run that can never commit it (its checkpoint did not complete, or is older than the one
    restored), not to a concurrent writer."""
    counts: dict[str, int] = {}
    tokens: dict[str, list[Any]] = {}
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
                for subtask in range(max(stage.parallelism, counts.get(step_id, 0))):
                    partition = step.sink.build_part(subtask, stage.parallelism)
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
) -> JobResult:
    """Run attempts until one finishes; restart recoverable failures from the latest checkpoint."""
    storage = CheckpointStorage(config.uri)
    restarts = 0
    started = time.monotonic()
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
        attempt = start_attempt(restore, first_id)
        try:
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            try:
                result = attempt.wait(remaining)
            except BaseException:
                storage.discard_incomplete()  # what the failed attempt wrote for checkpoints it never completed
                raise
            result.restarts = restarts
            return result
        except RECOVERABLE as exc:
            restarts += 1
            if restarts > config.max_restarts:
                raise
            log.warning("job %s failed (%s: %s); restart %d/%d from its latest checkpoint", plan.flow_name,
                        type(exc).__name__, exc, restarts, config.max_restarts)
            time.sleep(config.restart_delay.total_seconds())
