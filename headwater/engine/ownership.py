"""Which directories a job claims, and the build-time check that no two claims overlap.

A job claims its checkpoint directory and the directories its sinks declare
(:meth:`~headwater.sinks.base.Sink.owned_locations`). Two writers of one directory overwrite or delete each
other's files (two sinks both wrote ``part-000001-0000-0000.parquet``; a sink's clean-up would delete the
other's staging files), and a sink writing into the checkpoint directory mixes output with state. So the
planner refuses, with :class:`~headwater.errors.OwnershipConflictError`, a job in which two claims are

* the same location, or
* nested: one lies inside the other (a reader of the outer directory sees the inner one's files too, and the
  outer sink's clean-up walks into it).

Locations are compared after normalisation (:func:`location`): local paths are made absolute with symlinks
resolved, and ``file://`` URIs are local paths; other URIs compare by scheme, authority (bucket) and path with
``.``/``..`` and repeated slashes removed. Two different spellings of one object-store location through
different endpoints are not recognised as one.

A sink stages for the job that owns its output (:func:`sink_owner`): the key of a checkpointed job is derived
from its normalised checkpoint directory, so a job's staged files stay its own across runs and restarts, and
another job on the same sink directory (one at a time: the lease) never deletes them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from headwater.errors import ConfigError, OwnershipConflictError
from headwater.logical import SinkStep, Step
from headwater.sinks.base import SinkOwner


@dataclass(frozen=True)
class Location:
    """A normalised directory: ``scheme`` is ``""`` for the local filesystem; ``parts`` are its path segments."""

    scheme: str
    parts: tuple[str, ...]

    @property
    def local(self) -> bool:
        return self.scheme == ""

    @property
    def path(self) -> str:
        """The local path (local locations) or the URI, as shown in messages."""
        joined = "/".join(self.parts)
        return "/" + joined if self.local else f"{self.scheme}://{joined}"

    def contains(self, other: Location) -> bool:
        """``other`` is this location or lies inside it."""
        return self.scheme == other.scheme and other.parts[: len(self.parts)] == self.parts


def location(text: str | os.PathLike[str]) -> Location:
    """Normalise a local path or URI (see the module docstring)."""
    raw = os.fspath(text)
    if not raw:
        raise ConfigError("an output or checkpoint location must not be empty")
    if "://" not in raw:
        return Location("", _segments(os.path.realpath(os.path.abspath(raw))))
    split = urlsplit(raw)
    scheme = split.scheme.lower()
    if scheme == "file":
        return Location("", _segments(os.path.realpath(unquote(split.path) or "/")))
    path = posixpath.normpath("/" + split.path) if split.path else "/"
    return Location(scheme, (split.netloc, *_segments(path)))


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.replace(os.sep, "/").split("/") if part)


def sink_owner(checkpoint_dir: str | os.PathLike[str] | None) -> SinkOwner:
    """The owner a run's sinks stage for: ``job-<16 hex of SHA-256 of the normalised checkpoint directory>``,
    or the unchecked owner for a run without checkpointing."""
    if checkpoint_dir is None:
        return SinkOwner()
    where = location(checkpoint_dir)
    digest = hashlib.sha256(f"{where.scheme}\0{where.path}".encode()).hexdigest()[:16]
    return SinkOwner(f"job-{digest}", where.path)


@dataclass(frozen=True)
class Claim:
    """``owner`` (as named in messages, e.g. ``"sink step 'out'"``) claims ``where``."""

    owner: str
    where: Location
    step_id: str | None = None  # the sink step; None for the checkpoint directory


def job_claims(steps: Mapping[str, Step], checkpoint_dir: str | os.PathLike[str] | None) -> list[Claim]:
    """The checkpoint directory (when checkpointing) and every location each sink step declares."""
    claims = [Claim("the checkpoint directory", location(checkpoint_dir))] if checkpoint_dir is not None else []
    for step in steps.values():
        if isinstance(step, SinkStep):
            owner = f"sink step {step.step_id!r}"
            try:
                declared = {location(where) for where in step.sink.owned_locations()}
            except ConfigError as exc:
                raise ConfigError(f"{owner}: {exc}") from exc
            claims += [Claim(owner, where, step.step_id) for where in sorted(declared, key=lambda w: w.parts)]
    return claims


def check_claims(claims: Iterable[Claim]) -> None:
    """Raise :class:`OwnershipConflictError` for the first two claims that are equal or nested."""
    seen: list[Claim] = []
    for claim in claims:
        for earlier in seen:
            if earlier.where.contains(claim.where) or claim.where.contains(earlier.where):
                raise OwnershipConflictError(_conflict(earlier, claim))
        seen.append(claim)


def _conflict(first: Claim, second: Claim) -> str:
    if first.where == second.where:
        relation = f"both use {first.where.path!r}"
    elif first.where.contains(second.where):
        relation = f"overlap: {second.where.path!r} ({second.owner}) lies inside {first.where.path!r} ({first.owner})"
    else:
        relation = f"overlap: {first.where.path!r} ({first.owner}) lies inside {second.where.path!r} ({second.owner})"
    if first.step_id is not None and second.step_id is not None:
        fix = (
            "two sinks in one directory overwrite and delete each other's files; give each sink a directory of "
            "its own, side by side (e.g. out/a and out/b)"
        )
    else:
        fix = (
            "a sink must not write into the checkpoint directory, nor the checkpoints into a sink's output; "
            "keep them apart (e.g. state/checkpoints/<job> and out/<job>)"
        )
    return f"{first.owner} and {second.owner} {relation}; {fix}"
