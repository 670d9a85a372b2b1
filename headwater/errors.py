"""The one error hierarchy of Headwater.

Every error the engine raises on purpose derives from :class:`HeadwaterError`. Two families matter to users:

* :class:`BuildError` — the dataflow or its configuration is wrong. Raised while the dataflow is built or
  planned, before any data moves; the message names the step and says what to fix.
* :class:`RuntimeFailure` subclasses — something went wrong while data was moving: user code raised
  (:class:`UserCodeError`), a source produced data that does not match what it declared
  (:class:`SchemaMismatchError`), or the job lost a worker (:class:`JobFailedError`). They carry the step id
  and the subtask index when one is known.
"""

from __future__ import annotations

import difflib
import pickle
from typing import Any, Sequence


class HeadwaterError(Exception):
    """Root of every error Headwater raises on purpose."""


class BuildError(HeadwaterError):
    """The dataflow or its configuration is invalid; raised before the run starts."""


class DuplicateStepError(BuildError):
    """Two steps of one dataflow share a step id."""


class InvalidStepIdError(BuildError):
    """A step id is empty or contains characters that cannot name state on disk."""


class UnknownColumnError(BuildError):
    """An expression, key or aggregation names a column the input does not have."""


class ExpressionTypeError(BuildError):
    """An expression cannot be evaluated on the input's types (e.g. ``col("name") * 2`` on a string)."""


class ConfigError(BuildError):
    """A configuration value is out of range or inconsistent."""


class PipelineNotFoundError(BuildError):
    """A pipeline file given to the CLI defines no :class:`~headwater.Dataflow` (or several, ambiguously)."""


class RuntimeFailure(HeadwaterError):
    """Base of failures that happen while the job runs; carries where it happened.

    ``transient`` declares whether a restart may cure the failure (``True``: e.g. a broker timeout; ``False``:
    e.g. a record that cannot be decoded); ``None`` leaves it to :func:`headwater.engine.failures.classify`,
    which decides from the error's class and its ``__cause__`` chain.
    """

    def __init__(
        self, message: str, *, step_id: str | None = None, subtask: int | None = None, transient: bool | None = None,
    ) -> None:
        self.step_id = step_id
        self.subtask = subtask
        self.transient = transient
        where = ""
        if step_id is not None:
            where = f"step {step_id!r}"
            if subtask is not None:
                where += f" (subtask {subtask})"
            where += ": "
        super().__init__(where + message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword-only fields and the original exception across pickling (errors travel from Ray actors
        # to the driver); a cause that cannot be pickled is replaced by its text.
        return (_rebuild_failure, (type(self), self.message, self.step_id, self.subtask, _picklable_cause(self),
                                   self.transient))


def _picklable_cause(error: BaseException) -> BaseException | None:
    """``error.__cause__``, or its text when it cannot be pickled."""
    cause = error.__cause__
    if cause is not None:
        try:
            pickle.dumps(cause)
        except Exception:  # noqa: BLE001 - any pickling failure
            cause = Exception(f"{type(cause).__name__}: {cause}")
    return cause


def _rebuild_failure(
    cls: type[RuntimeFailure], message: str, step_id: str | None, subtask: int | None,
    cause: BaseException | None = None, transient: bool | None = None,
) -> RuntimeFailure:
    error = cls(message, step_id=step_id, subtask=subtask)
    error.transient = transient
    error.__cause__ = cause
    return error


class UserCodeError(RuntimeFailure):
    """A user function (UDF, row mapper, source or sink code) raised; the original is ``__cause__``."""


class SchemaMismatchError(RuntimeFailure):
    """A batch does not have the schema its producer declared, or inputs of a union disagree."""


class SourceError(RuntimeFailure):
    """A source could not be read (missing file, unreadable format, lost connection)."""


class ChangelogError(RuntimeFailure):
    """A changelog stream carried a row that cannot be applied: its change-kind column holds an unknown value."""


class SinkError(RuntimeFailure):
    """A sink could not write, prepare or commit its output."""


class SinkProtocolError(SinkError):
    """The engine drove a sink partition through an illegal step of its lifecycle (write → prepare → commit /
    abort; see :mod:`headwater.engine.sink_operator`): e.g. a commit of a checkpoint it never prepared, or a
    write after an abort. An engine bug, never the connector's: deterministic (``transient=False``), as a
    restart would repeat it."""

    def __init__(
        self, message: str, *, step_id: str | None = None, subtask: int | None = None, transient: bool | None = False,
    ) -> None:
        super().__init__(message, step_id=step_id, subtask=subtask, transient=transient)


class JobFailedError(RuntimeFailure):
    """The job stopped because a worker died or the executor itself failed."""


class SimulatedCrashError(RuntimeFailure):
    """Raised by :class:`headwater.testing.TestingSource` at an ``ABORT`` marker to simulate a crash."""


class DeadLetterReplayError(BuildError):
    """Dead letters cannot be replayed as asked (no such directory or step, a source that cannot decode them)."""


class CheckpointError(HeadwaterError):
    """A checkpoint could not be written or read; the storage's own error (e.g. an ``OSError``) is ``__cause__``."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the cause across pickling (from a worker to the driver): its errno tells a full or read-only
        # disk (no restart helps) from a passing I/O error.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__), _picklable_cause(self)))


def _rebuild_error(
    cls: type[HeadwaterError], args: tuple[Any, ...], state: dict[str, Any], cause: BaseException | None,
) -> HeadwaterError:
    error = cls(*args)
    error.__dict__.update(state)
    error.__cause__ = cause
    return error


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is missing, truncated or does not match its recorded checksum; ``path`` names it."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StateCompatibilityError(BuildError):
    """The checkpoint or savepoint being restored does not fit the dataflow (dropped steps, other key groups)."""


class OwnershipConflictError(BuildError):
    """Two sinks of one job, or a sink and the job's checkpoint directory, claim the same or nested directories."""


class DirectoryInUseError(BuildError):
    """Another live run holds the lease on a checkpoint or sink directory; the message names that holder.

    A build-time error, not a runtime failure: it is raised before any data moves, no restart can cure it
    (waiting out another run is a scheduler's job), and the fix is operational or configuration (stop the
    other run, or give this one another directory)."""


class StepStalledError(RuntimeFailure):
    """A call into one step's code (a batch, a watermark, a source read, a sink prepare/commit) has not
    returned for ``RunConfig.stall_timeout``; the job was ended. ``activity`` says what the step was doing and
    ``stalled_s`` for how long.

    Deterministic: a restart from the latest checkpoint replays the same input into the same code, so a
    retry is expected to stall again. Do not restart automatically; fix the step or raise ``stall_timeout``.
    """

    def __init__(
        self, message: str, *, step_id: str | None = None, subtask: int | None = None, activity: str = "",
        stalled_s: float = 0.0,
    ) -> None:
        super().__init__(message, step_id=step_id, subtask=subtask)
        self.activity = activity
        self.stalled_s = stalled_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_stall, (self.message, self.step_id, self.subtask, self.activity, self.stalled_s))


def _rebuild_stall(message: str, step_id: str | None, subtask: int | None, activity: str, stalled_s: float) -> StepStalledError:
    return StepStalledError(message, step_id=step_id, subtask=subtask, activity=activity, stalled_s=stalled_s)


class StopTimeoutError(RuntimeFailure):
    """A stop (``hw.run(timeout=...)``, ``job.stop()``, Ctrl-C) did not end the job within
    ``RunConfig.stop_grace``; its workers were killed. The message names the steps that were busy and with what.

    Deterministic: the run's deadline has passed, so it must not be restarted automatically. With
    checkpointing, nothing is lost: the next run resumes from the latest completed checkpoint."""


class CheckpointValueError(RuntimeFailure):
    """A source position or sink commit token is not plain data, so checkpoint metadata (JSON, never pickle)
    cannot hold it; the message names the step and the type. Deterministic (raised with ``transient=False``):
    the connector must return plain data or register its token dataclass (docs/writing-operators.md)."""


def unknown_column_message(name: str, available: Sequence[str]) -> str:
    """The message of an :class:`UnknownColumnError`: the column, the closest existing name, and all names."""
    hint = difflib.get_close_matches(name, available, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown column {name!r}{suggestion} (available: {', '.join(available)})"


class SchemaEvolutionError(ConfigError):
    """A table in Headwater's store cannot take a schema: only added (nullable) columns are accepted; a removed
    column, a changed type, or another key or time column is refused (see docs/storage.md)."""


class StoreError(HeadwaterError):
    """Headwater's store could not be read or written (a missing table, a damaged metadata file, an I/O error)."""


class TableNotFoundError(StoreError):
    """The store holds no table of that name."""


class SchemaCompatibilityError(ConfigError):
    """A schema breaks its subject's compatibility mode in the schema registry (``backward`` by default): the
    message names the subject, each field and what changed, and the fixes. Raised when a job starts, before any
    worker does (see docs/governance.md, "Schemas")."""


class SchemaRegistryError(BuildError):
    """The schema registry cannot be reached or used (a bad URL, a database error), or a subject or version that
    was asked for does not exist."""


class UnknownSchemaError(SchemaRegistryError):
    """The schema registry holds no such subject, or no such version of it."""
