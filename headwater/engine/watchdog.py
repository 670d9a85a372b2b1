"""What every subtask is doing, and the deadlines built on it: stalled steps, stop grace, checkpoint timeouts.

The runtime records one *call* per subtask: the call into step code it is inside right now (``(step_id, fn,
args, since)``), set and restored around every call at the runtime's boundaries (:meth:`SubtaskRuntime._guard`
and source reads). That is one tuple and one clock read per operator call — per batch, never per row — and
it is formatted into words only when someone asks (:func:`describe_call`).

A watcher outside the subtask's thread reads it: the Ray driver through each worker's ``activity`` method,
which runs in its own concurrency group (its own thread and event loop, so it answers while user code blocks
the worker's main loop), and the in-process executor from the caller's thread.

Definitions (stated once, used by both executors):

* **Progress** is a call into step code returning. A subtask *stalls* when its current call has not returned
  for ``RunConfig.stall_timeout``. Waiting is not a call: a source with no input (``next_batch`` returns
  ``None`` at once), a sender awaiting credits, a subtask awaiting input or a checkpoint's completion are never
  stalls, however long they last. Checkpoint state writes (``persist``) are bounded by the checkpoint timeout,
  not by the stall timeout (:data:`EXEMPT`).
* A worker process that does not answer its ``activity`` call at all for ``max(stall_timeout,
  UNANSWERED_MIN_S)`` ends the job (:func:`unanswered`). If it went silent while one of its subtasks was inside
  a call into step code, that is a :class:`~headwater.errors.StepStalledError` (deterministic): a Python loop
  would still let the watch thread answer, so the likeliest cause is code holding the GIL on this input, which
  a restart would meet again. Otherwise (it was idle or waiting, or never answered) nothing says a call is
  stuck — the process may be partitioned away, swapping or dying — and it is a *transient*
  :class:`~headwater.errors.JobFailedError` naming what the worker last reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pyarrow as pa

from headwater.errors import JobFailedError, StepStalledError, StopTimeoutError

log = logging.getLogger("headwater.checkpoint")

#: (step id, the function called, its arguments, time.monotonic() when the call began)
Call = tuple[str, Callable[..., Any], tuple[Any, ...], float]

#: calls bounded by another deadline (the checkpoint timeout), never reported as stalls
EXEMPT = frozenset({"persist"})

#: a worker that does not answer is flagged after the stall timeout, but never before this many seconds
UNANSWERED_MIN_S = 10.0


@dataclass(frozen=True)
class SubtaskActivity:
    """What one subtask was doing when asked: plain data, sent from Ray workers to the driver."""

    stage_id: int
    subtask: int
    step_id: str  # the step whose code runs, or the stage's first step while waiting
    doing: str  # e.g. "map_batches: processing a batch of 65,536 rows", "waiting for input"
    busy_s: float | None = None  # how long the current call has run; None while waiting
    exempt: bool = False  # a checkpoint write: bounded by the checkpoint timeout

    def describe(self) -> str:
        text = f"step {self.step_id!r} (subtask {self.subtask}) {self.doing}"
        return text if self.busy_s is None else f"{text} for {self.busy_s:.1f} s"


def _rows(args: tuple[Any, ...]) -> str:
    batch = args[0] if args else None
    return f"{batch.num_rows:,} rows" if isinstance(batch, (pa.RecordBatch, pa.Table)) else "rows"


_ACTIONS: dict[str, Callable[[tuple[Any, ...]], str]] = {
    "process": lambda a: f"processing a batch of {_rows(a)}",
    "write": lambda a: f"partitioning a batch of {_rows(a)} for the next step",
    "on_watermark": lambda a: f"handling watermark {a[0] if a else ''}",
    "on_processing_time": lambda a: "firing a processing-time timer",
    "finish": lambda a: "finishing (emitting the results it holds)",
    "prepare": lambda a: f"preparing its output for checkpoint {a[0] if a else ''}",
    "commit": lambda a: "committing its output",
    "open": lambda a: "opening",
    "build_part": lambda a: f"opening source partition {a[0]!r}" if a else "opening a source partition",
    "next_batch": lambda a: f"reading a batch from partition {a[0]!r}" if a else "reading a batch",
    "snapshot": lambda a: "recording its source position",
    "observe": lambda a: "computing a batch's event time",
    "restore_store": lambda a: "restoring its state from the checkpoint",
    "persist": lambda a: "writing checkpoint state",
}


def describe_call(kind: str, call: Call) -> str:
    """``"map_batches: processing a batch of 65,536 rows"`` for a step of kind ``map_batches``."""
    _, fn, args, _ = call
    name = getattr(fn, "__name__", "") or type(fn).__name__
    action = _ACTIONS.get(name)
    return f"{kind}: {action(args) if action else f'in {name}()'}"


def activity_of(
    stage_id: int, subtask: int, head: str, kinds: dict[str, str], call: Call | None, waiting: str, now: float,
) -> SubtaskActivity:
    """The activity of a subtask whose current call is ``call`` (``None``: it is ``waiting``)."""
    if call is None:
        return SubtaskActivity(stage_id, subtask, head, waiting)
    step_id, fn, _, since = call
    return SubtaskActivity(
        stage_id, subtask, step_id, describe_call(kinds.get(step_id, "step"), call), max(0.0, now - since),
        getattr(fn, "__name__", "") in EXEMPT,
    )


def find_stall(activities: Iterable[SubtaskActivity], stall_s: float | None) -> StepStalledError | None:
    """The error for the longest-running call that exceeded ``stall_s`` (``None``: nothing stalled)."""
    if stall_s is None:
        return None
    stalled = [a for a in activities if a.busy_s is not None and not a.exempt and a.busy_s >= stall_s]
    if not stalled:
        return None
    worst = max(stalled, key=lambda a: a.busy_s or 0.0)
    assert worst.busy_s is not None
    return StepStalledError(
        f"stalled: {worst.doing} has not returned for {worst.busy_s:.1f} s (RunConfig.stall_timeout is "
        f"{stall_s:g} s); the job was ended. Fix the step's code, or raise stall_timeout if one call may "
        "legitimately take this long",
        step_id=worst.step_id, subtask=worst.subtask, activity=worst.doing, stalled_s=worst.busy_s,
    )


def unanswered(
    steps: list[tuple[str, int]], waited_s: float, last: Iterable[SubtaskActivity],
) -> JobFailedError | StepStalledError:
    """A worker process did not answer ``activity`` for ``waited_s`` (``last``: what its subtasks reported
    before). See the module docstring: a stall when it went silent inside a call into step code, else
    transient."""
    step_id, subtask = steps[0]
    names = ", ".join(f"{s!r} (subtask {i})" for s, i in steps)
    listed = list(last)
    inside = [a for a in listed if a.busy_s is not None and not a.exempt]
    if inside:
        worst = max(inside, key=lambda a: a.busy_s or 0.0)
        stalled_s = (worst.busy_s or 0.0) + waited_s
        return StepStalledError(
            f"stalled: {worst.doing} had run for {worst.busy_s:.1f} s when its worker stopped answering, "
            f"{waited_s:.1f} s ago (code holding the GIL, e.g. a C extension that never returns); the job was "
            "ended. Fix the step's code, or raise stall_timeout if one call may legitimately take this long",
            step_id=worst.step_id, subtask=worst.subtask, activity=worst.doing, stalled_s=stalled_s,
        )
    reported = "; ".join(a.describe() for a in listed) if listed else "nothing (it never answered)"
    return JobFailedError(
        f"the worker hosting step(s) {names} did not answer for {waited_s:.1f} s (its process may be partitioned "
        f"away, swapping, dying, or blocked by native code holding the GIL); the job was ended. It last "
        f"reported: {reported}",
        step_id=step_id, subtask=subtask, transient=True,
    )


def busy_summary(activities: Iterable[SubtaskActivity]) -> str:
    """The subtasks inside a call, longest first (or every subtask's state when none is)."""
    listed = list(activities)
    busy = sorted((a for a in listed if a.busy_s is not None), key=lambda a: -(a.busy_s or 0.0))
    shown = busy or listed
    return "; ".join(a.describe() for a in shown) if shown else "no subtask reported what it was doing"


def stop_timeout(activities: Iterable[SubtaskActivity], grace_s: float, why: str, killed: bool) -> StopTimeoutError:
    """The job was asked to stop (``why``) and did not end within ``grace_s``."""
    listed = list(activities)
    busy = [a for a in listed if a.busy_s is not None]
    first = max(busy, key=lambda a: a.busy_s or 0.0) if busy else None
    ending = ("its workers were killed" if killed else
              "control returns to the caller; the in-process job's thread cannot be killed and stays behind")
    return StopTimeoutError(
        f"the job did not stop within RunConfig.stop_grace ({grace_s:g} s) after {why}; {ending}. "
        f"Busy: {busy_summary(listed)}",
        step_id=first.step_id if first else None, subtask=first.subtask if first else None,
    )


def log_checkpoint_timeout(
    checkpoint_id: int, age_s: float, missing: list[tuple[int, int]], activities: dict[tuple[int, int], SubtaskActivity],
) -> None:
    """Log that checkpoint ``checkpoint_id`` timed out, naming the subtasks that did not acknowledge it and
    what each of them is doing."""
    described = []
    for key in missing:
        activity = activities.get(key)
        described.append(activity.describe() if activity else f"stage {key[0]} subtask {key[1]} (state unknown)")
    log.warning(
        "checkpoint %d timed out after %.1f s and was aborted; not acknowledged by %d subtask(s): %s",
        checkpoint_id, age_s, len(missing), "; ".join(described) or "none", extra={"checkpoint_id": checkpoint_id},
    )
