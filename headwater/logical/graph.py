"""What the planner needs of a dataflow: its name, its steps in topological order, and whole-graph checks.

:class:`headwater.Dataflow` is one (the DSL builds it); a hand-built graph for a planner test is another. The
planner depends on this protocol, never on the DSL.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from headwater.logical.base import Step


class LogicalGraph(Protocol):
    """A graph of logical steps. Invariant: ``steps`` is in topological order (a step's inputs come before it),
    and step ids are unique."""

    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> Mapping[str, Step]: ...

    def consumers(self, step_id: str) -> list[str]:
        """The steps that read ``step_id``'s output (any of its ports), in step order."""
        ...

    def validate(self) -> None:
        """Whole-graph checks (a source, a sink, no dangling stream); raises :class:`~headwater.errors.BuildError`."""
        ...
