"""The logical step protocol: what a node of a dataflow computes, independent of how it runs.

A step knows its inputs (by step id), derives its output schema from its inputs' schemas when they are known
(this is where build-time checks happen: unknown columns, impossible types), says whether it may be fused
into its upstream's actor, and names its output ports. Steps are inert data: which physical operator runs a
step is decided by the planner (:mod:`headwater.planner.operators`), never by the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from headwater.core.ports import MAIN_PORT
from headwater.errors import BuildError

Partitioning = Literal["forward", "hash", "round_robin", "broadcast"]


@dataclass(eq=False)
class Step:
    """Base of logical steps. ``schema`` is the output schema, ``None`` when it cannot be known before running."""

    step_id: str
    inputs: tuple[str, ...]
    schema: pa.Schema | None = field(default=None, init=False)

    kind: str = field(default="step", init=False)
    #: May run in the same actor as its single upstream when partitioning is forward.
    fusable: bool = field(default=True, init=False)
    #: The stream's event time: (column, offset in ms added to it); ``None`` when it has none.
    event_time: tuple[str, int] | None = field(default=None, init=False)
    #: The step's named outputs: :data:`MAIN_PORT` and any side outputs (a window's ``"late"``). A consumer
    #: reads one port of each input (:meth:`input_port`); an edge carries its port (``Edge.src_port``).
    output_ports: tuple[str, ...] = field(default=(MAIN_PORT,), init=False)

    def bind(self, inputs: list[Step]) -> None:
        """Called once with the input steps before :meth:`derive_schema` (steps that need more than their
        inputs' schemas, e.g. their event time, read it here)."""

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        """Event time of the output: the input's, while its column survives."""
        if not inputs or inputs[0].event_time is None:
            return None
        column = inputs[0].event_time[0]
        if self.schema is not None and self.schema.get_field_index(column) < 0:
            return None
        return inputs[0].event_time

    @property
    def where(self) -> str:
        return f"step {self.step_id!r}"

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        """Check the step against its inputs' schemas and return its output schema (or ``None``)."""
        return input_schemas[0] if input_schemas else None

    def input_port(self, input_index: int) -> str:
        """Which output port of input ``input_index`` this step reads (default: the main output)."""
        return MAIN_PORT

    def port_schema(self, port: str) -> pa.Schema | None:
        """The schema of output ``port`` (``None``: unknown until it runs)."""
        if port == MAIN_PORT:
            return self.schema
        raise BuildError(f"{self.where}: a {self.kind} step has no output {port!r} (it has {', '.join(self.output_ports)})")

    def port_event_time(self, port: str) -> tuple[str, int] | None:
        """The event time of output ``port``."""
        if port == MAIN_PORT:
            return self.event_time
        raise BuildError(f"{self.where}: a {self.kind} step has no output {port!r} (it has {', '.join(self.output_ports)})")

    def describe(self) -> str:
        return self.kind

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        """Key columns its input ``input_index`` must be hash-partitioned by (``None``: no key)."""
        return None

    def required_columns(self) -> tuple[str, ...] | None:
        """The input columns this step reads, when it reads only some (``None``: all). The planner projects
        edges into the step onto these, so shuffles move only what is needed."""
        return None

    def input_columns(self, needed: tuple[str, ...] | None, input_index: int) -> tuple[str, ...] | None:
        """The input columns this step needs so that its output can provide ``needed`` (``None``: all of them).

        Used to push projections into sources. Steps that pass their input through refine it from ``needed``;
        the default is :meth:`required_columns`, which is exact for steps that consume their input.
        """
        return self.required_columns()

    @property
    def explicit_parallelism(self) -> int | None:
        return None

    @property
    def num_cpus(self) -> float | None:
        return None


def event_time_type(schema: pa.Schema | None, event_time: tuple[str, int] | None) -> pa.DataType:
    """The Arrow type of window bounds over ``event_time`` in ``schema``: timestamps in ms, else int64 ms."""
    if schema is None or event_time is None or schema.get_field_index(event_time[0]) < 0:
        return pa.int64()
    kind = schema.field(event_time[0]).type
    return pa.timestamp("ms", kind.tz) if pa.types.is_timestamp(kind) else pa.int64()


def require_event_time(step: Step, inputs: list[Step]) -> tuple[str, int]:
    """The event time of ``step``'s first input; a :class:`BuildError` when any input has none."""
    times = [upstream.event_time for upstream in inputs]
    for upstream, time in zip(inputs, times):
        if time is None:
            raise BuildError(
                f"{step.where}: stream {upstream.step_id!r} has no event time; declare it on the source with "
                "flow.source(..., event_time='column') (and keep that column through select)"
            )
    first = times[0]
    assert first is not None
    return first


@dataclass(eq=False)
class SideOutputStep(Step):
    """Reads output ``port`` of its one input (a side output) and passes those rows on as its own main output.

    A side-output step is never fused (it gets its own edge from the step whose port it reads, which may sit in
    the middle of a chain), and the step whose port of input rows it reads gets its whole input: side outputs
    such as late or quarantined records carry input rows (see the planner)."""

    port: str = MAIN_PORT

    def __post_init__(self) -> None:
        self.kind = "side_output"
        self.fusable = False

    def bind(self, inputs: list[Step]) -> None:
        upstream = inputs[0]
        if self.port == MAIN_PORT or self.port not in upstream.output_ports:
            raise BuildError(f"{self.where}: step {upstream.step_id!r} has no side output {self.port!r} "
                             f"(its outputs: {', '.join(upstream.output_ports)})")
        self._upstream = upstream

    def input_port(self, input_index: int) -> str:
        return self.port

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        return self._upstream.port_schema(self.port)

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return inputs[0].port_event_time(self.port)

    def describe(self) -> str:
        return f"output {self.port!r} of {self.inputs[0]}"
