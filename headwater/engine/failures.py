"""Which failures a restart can cure, and how long to wait before one.

A checkpointed job restarts from its latest checkpoint after a failure (:mod:`headwater.engine.checkpoints.recovery`).
That only helps when the cause is gone by the time the job runs again: a worker or node died, a broker or
database hiccuped, a network call timed out. It never helps when the job would meet the same cause again:
replaying the same input through the same code hits the same parse error, the same schema mismatch, the same
full or read-only disk. Those failures are *deterministic*; retrying them only delays the error by minutes and
buries it under restart logs. :func:`classify` tells the two apart, in this one place, from the error and its
``__cause__`` chain (which :class:`~headwater.errors.RuntimeFailure` keeps across pickling, so a verdict on
the driver sees what the worker saw):

1. **Declared**: an error that says ``transient=True`` or ``transient=False`` (a constructor flag of
   :class:`~headwater.errors.RuntimeFailure`) is taken at its word — the outermost declaration wins. That is
   how a connector marks a broker timeout transient and a message it cannot decode deterministic.
2. **Decided by its class, whatever the cause**: build and configuration errors, schema mismatches, invalid
   changelog rows, a stalled step, a stop that timed out — deterministic.
3. **Evidence in the chain**: an ``OSError`` whose errno says disk full, quota exceeded, read-only file
   system or permission denied; a parse or type error of the data (``pyarrow`` ``ArrowInvalid`` and its
   siblings, ``UnicodeDecodeError``, ``json.JSONDecodeError``) — deterministic. A connection error or a
   timeout (``ConnectionError``, ``TimeoutError``, ``socket.gaierror``) — transient, even inside a
   :class:`~headwater.errors.UserCodeError` (a UDF calling a flaky service).
4. **The wrapper's class**: :class:`~headwater.errors.UserCodeError` — deterministic (the same code on the same
   input raises again); a worker death (:class:`~headwater.errors.JobFailedError`), the testing ``ABORT``
   marker (:class:`~headwater.errors.SimulatedCrashError`), source, sink and checkpoint I/O errors, a damaged
   checkpoint (the restart falls back to an older one) — transient.
5. Anything else is transient: a bounded number of restarts costs little when in doubt.

Restarts of transient failures back off exponentially (:class:`RestartBackoff`).
"""

from __future__ import annotations

import errno
import json
import random
import socket
from dataclasses import dataclass
from typing import Callable, Iterator

import pyarrow as pa

from headwater.errors import (
    BuildError,
    ChangelogError,
    CheckpointCorruptError,
    CheckpointError,
    HeadwaterError,
    JobFailedError,
    SchemaMismatchError,
    SimulatedCrashError,
    SinkError,
    SourceError,
    StepStalledError,
    StopTimeoutError,
    UserCodeError,
)

__all__ = ["Verdict", "RestartBackoff", "classify", "is_transient", "os_error_in"]

#: errno -> (what it means, what to do about it); a restart cannot change any of them
DETERMINISTIC_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full (ENOSPC)", "free space"),
    errno.EDQUOT: ("disk quota exceeded (EDQUOT)", "free space or raise the quota"),
    errno.EFBIG: ("file too large (EFBIG)", "raise the file size limit"),
    errno.EROFS: ("read-only file system (EROFS)", "mount it read-write"),
    errno.EACCES: ("permission denied (EACCES)", "give the job's user write access"),
    errno.EPERM: ("operation not permitted (EPERM)", "give the job's user write access"),
}

#: errors the class alone decides, whatever their cause (step 2 of the module docstring)
_BY_CLASS: tuple[tuple[type[BaseException], bool, str], ...] = (
    (StepStalledError, False, "a step stalled; a replay feeds it the same input"),
    (StopTimeoutError, False, "the run's deadline has passed"),
    (BuildError, False, "the dataflow or its configuration is invalid"),
    (SchemaMismatchError, False, "a schema mismatch; a replay produces the same batches"),
    (ChangelogError, False, "an invalid changelog row; a replay reads the same row"),
)

#: wrappers whose cause chain held no evidence (step 4)
_BY_WRAPPER: tuple[tuple[type[BaseException], bool, str], ...] = (
    (UserCodeError, False, "user code raised; the same code raises again on the same input"),
    (CheckpointCorruptError, True, "a damaged checkpoint; the restart falls back to an older one"),
    (JobFailedError, True, "a worker or the executor died"),
    (SimulatedCrashError, True, "a simulated crash (testing ABORT marker)"),
    (SourceError, True, "a source could not be read"),
    (SinkError, True, "a sink could not write or commit"),
    (CheckpointError, True, "a checkpoint could not be written or read"),
)

_DATA_ERRORS: tuple[type[BaseException], ...] = (
    pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError, json.JSONDecodeError,
)
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.gaierror)


@dataclass(frozen=True)
class Verdict:
    """The classification of one failure: may a restart cure it, and why (for the log and the error)."""

    transient: bool
    reason: str

    def __str__(self) -> str:
        return f"{'transient' if self.transient else 'deterministic'}: {self.reason}"


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, its ``__cause__``, that one's cause, ... (explicit causes only; cycles end the walk)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__


def os_error_in(error: BaseException) -> OSError | None:
    """The first ``OSError`` with a deterministic errno in ``error``'s cause chain (``None``: none)."""
    for link in causes(error):
        if isinstance(link, OSError) and link.errno in DETERMINISTIC_ERRNOS:
            return link
    return None


def _evidence(link: BaseException) -> Verdict | None:
    if isinstance(link, OSError) and link.errno in DETERMINISTIC_ERRNOS:
        what = DETERMINISTIC_ERRNOS[link.errno][0]
        return Verdict(False, f"{what}; the storage stays that way until someone acts")
    if isinstance(link, _DATA_ERRORS):
        return Verdict(False, f"the data cannot be parsed or converted ({type(link).__name__}); a replay reads the same data")
    if isinstance(link, _NETWORK_ERRORS):
        return Verdict(True, f"a connection failed or timed out ({type(link).__name__})")
    return None


def classify(error: BaseException) -> Verdict:
    """Whether a restart may cure ``error`` (see the module docstring for the rules, in their order)."""
    chain = list(causes(error))
    for link in chain:
        declared = getattr(link, "transient", None) if isinstance(link, HeadwaterError) else None
        if isinstance(declared, bool):
            return Verdict(declared, f"{type(link).__name__} declared itself {'transient' if declared else 'deterministic'}")
    for link in chain:
        for kind, transient, reason in _BY_CLASS:
            if isinstance(link, kind):
                return Verdict(transient, reason)
    for link in chain:
        found = _evidence(link)
        if found is not None:
            return found
    for link in chain:
        for kind, transient, reason in _BY_WRAPPER:
            if isinstance(link, kind):
                return Verdict(transient, reason)
    return Verdict(True, f"unclassified failure ({type(error).__name__}); assumed transient")


def is_transient(error: BaseException) -> bool:
    """``classify(error).transient``: may a restart cure it?"""
    return classify(error).transient


class RestartBackoff:
    """Delays before the restarts of a job, and when to give up.

    The n-th consecutive restart waits ``initial * 2 ** (n - 1)`` seconds, at most ``cap``, less a random
    jitter of up to ``jitter`` of it (so jobs that failed together, e.g. on one broker outage, do not return
    in lockstep; the delay never exceeds the doubling or the cap). After ``max_restarts`` consecutive
    restarts the next failure is final (:meth:`next_delay` returns ``None``).

    An attempt that ran *healthy* — at least ``reset_after`` seconds and completed a checkpoint of its own —
    resets the count: the next failure is the first of a new streak, restarted after ``initial`` again with
    the whole budget. An attempt that ran long without completing a checkpoint made no progress (it will
    replay the same input), so it does not reset anything.
    """

    def __init__(
        self, max_restarts: int, initial: float, cap: float, reset_after: float, jitter: float = 0.1,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.max_restarts = max_restarts
        self.initial = initial
        self.cap = max(cap, initial)
        self.reset_after = reset_after
        self.jitter = jitter
        self.random_fraction = random_fraction
        #: restarts since the last healthy attempt
        self.consecutive = 0

    def next_delay(self, ran_for: float, progressed: bool) -> float | None:
        """Seconds to wait before restarting after an attempt that ran ``ran_for`` seconds and did (or did not)
        complete a checkpoint; ``None`` once the restart budget is spent."""
        if progressed and ran_for >= self.reset_after:
            self.consecutive = 0
        self.consecutive += 1
        if self.consecutive > self.max_restarts:
            return None
        base = min(self.cap, self.initial * 2 ** min(self.consecutive - 1, 64))
        return base * (1.0 - self.jitter * self.random_fraction())
