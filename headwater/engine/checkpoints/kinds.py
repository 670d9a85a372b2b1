"""What a checkpoint is for: :class:`CheckpointKind`.

The values are the strings written into ``_metadata`` (``"kind"``), so the enum is a ``str`` (a :class:`~enum.StrEnum`: ``str()``
and f-strings give the value): metadata written before it existed loads unchanged, and what is written now is byte for byte what was written then.
"""

from __future__ import annotations

from enum import StrEnum


class CheckpointKind(StrEnum):
    """The kind of a checkpoint.

    * ``CHECKPOINT`` — a periodic checkpoint, taken while the job runs; pruned by ``CheckpointConfig.retain``.
    * ``FINAL`` — the job's last checkpoint, made only of every subtask's final snapshot (its input ended).
    * ``SAVEPOINT`` — the final checkpoint of a job stopped with ``stop(savepoint=True)``: self-contained, in a
      directory of its own (``savepoint-<id>``), never pruned.

    >>> CheckpointKind("final") is CheckpointKind.FINAL
    True
    >>> f"{CheckpointKind.SAVEPOINT}"
    'savepoint'
    """

    CHECKPOINT = "checkpoint"
    FINAL = "final"
    SAVEPOINT = "savepoint"

    @property
    def is_last(self) -> bool:
        """The job's last checkpoint (final or savepoint): once it exists the job may end."""
        return self is not CheckpointKind.CHECKPOINT

    @property
    def directory_prefix(self) -> str:
        """How the directory of a checkpoint of this kind begins (``chk-000007``, ``savepoint-000009``)."""
        return "savepoint" if self is CheckpointKind.SAVEPOINT else "chk"
