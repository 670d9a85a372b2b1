"""The sink protocol: a sink is a factory of per-subtask partitions with a two-phase commit.

Commit order (the engine's side of the contract):

1. :meth:`SinkPartition.write` is called with each batch; output is *staged*, never visible to readers.
2. :meth:`SinkPartition.prepare` is called at a checkpoint (and at the end of a bounded run); it makes the
   staged output durable and returns a small picklable *commit token* that fully describes it.
3. Once the checkpoint is complete, :meth:`SinkPartition.commit` publishes exactly what the token describes.
   ``commit`` must be idempotent: after a crash the same token may be committed again.
4. :meth:`SinkPartition.abort` discards output that was staged but not prepared (after a failure).

A sink that cannot stage (the console) may write directly; it then gives at-least-once, and says so in
:attr:`Sink.exactly_once`.

Ownership: a sink that writes into a directory declares it with :meth:`Sink.owned_locations`. The engine then
refuses (at build time) a job in which two sinks, or a sink and the checkpoint directory, claim the same or
nested locations, and holds a lease on each location for the whole run (:mod:`headwater.engine.leases`), so
no other run writes there meanwhile. The lease covers a run only while it runs, though: a checkpointed job that
crashed after completing a checkpoint still owns the files it prepared for it, and commits them when it
resumes, after other runs may have used the directory. So a sink stages per *owner* (:class:`SinkOwner`, bound
by the planner through :meth:`Sink.staging_as`): the checkpointed job with a given checkpoint directory, or
runs without checkpointing. :meth:`Sink.clean_up` deletes only its own owner's staged files that no token
covers, and those of runs without checkpointing (which have ended: the lease is held), never another
checkpointed job's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Sequence, TypeVar

import pyarrow as pa

from headwater.core.plain_data import PlainData

#: The commit token type of a sink partition.
TokenT = TypeVar("TokenT", bound=PlainData)


@dataclass(frozen=True)
class SinkOwner:
    """Whom a sink stages output for: the checkpointed job whose checkpoint directory is ``checkpoint_dir``, or
    (``checkpoint_dir=None``, key :attr:`UNCHECKED`) runs without checkpointing.

    ``key`` names the owner's staging area; it is derived from the normalised checkpoint directory
    (:func:`headwater.engine.ownership.sink_owner`), so every run and restart of one job has the same key and no
    two jobs share one. Staged files of the unchecked owner are garbage once their run ended: no checkpoint can
    commit them."""

    UNCHECKED: ClassVar[str] = "unchecked"

    key: str = UNCHECKED
    checkpoint_dir: str | None = None

    @property
    def checkpointed(self) -> bool:
        return self.checkpoint_dir is not None


class SinkPartition(ABC, Generic[TokenT]):
    """The writer of one sink subtask; ``TokenT`` is the type of its commit tokens (plain data)."""

    @abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Stage ``batch``; it must not become visible before :meth:`commit`."""

    @abstractmethod
    def prepare(self, checkpoint_id: int) -> TokenT:
        """Make everything staged so far durable and return the token that :meth:`commit` publishes."""

    @abstractmethod
    def commit(self, token: TokenT) -> None:
        """Publish what ``token`` describes; idempotent (committing the same token twice is harmless)."""

    def abort(self) -> None:
        """Discard staged output that no token covers."""

    def close(self) -> None:
        """Release resources; called once, also after failures."""


class Sink(ABC):
    """A factory of sink partitions; holds configuration only and must be picklable."""

    #: False for sinks that write straight through (console): they cannot undo output after a crash.
    exactly_once: bool = True

    @abstractmethod
    def build_part(self, index: int, count: int) -> SinkPartition[Any]:  # each sink has its own token type
        """Build the writer of subtask ``index`` out of ``count``."""

    def check_input_schema(self, schema: pa.Schema) -> None:
        """Build time: raise :class:`~headwater.errors.ConfigError` saying what to fix when the sink cannot take
        batches of ``schema`` (the input's schema, when the planner knows it): e.g. a database sink whose table
        lacks a column. Called while the dataflow is built, in the driver. Default: any schema."""

    def owned_locations(self) -> tuple[str, ...]:
        """The directories (absolute local paths or ``pyarrow.fs`` URIs) this sink writes and no one else may.

        The engine refuses a job in which two owned locations are equal or one lies inside the other, and leases
        each one for the whole run. Default: none (a sink writing to a system with its own isolation, or none)."""
        return ()

    def staging_as(self, owner: SinkOwner) -> Sink:
        """This sink, staging its output for ``owner`` (see the module docstring); the planner calls it for every
        sink of a run. Sinks that stage in a shared place return a copy that stages in ``owner``'s own area.
        Default: ``self`` (nothing staged where another job could find it)."""
        return self

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        """Delete staged output of earlier attempts and runs of this sink's owner that none of ``tokens`` covers,
        and staged output of runs without checkpointing; never another checkpointed job's.

        Called in the driver only while the run holds the leases on :meth:`owned_locations`, after ``tokens``
        (those of the checkpoint being restored, or none) were committed; it must keep committed output and
        every file a token names. Default: nothing to clean."""
