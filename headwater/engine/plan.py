"""The physical plan: stages (fused chains of steps, each run as ``parallelism`` subtasks), the edges
(partitioned channels) between them, and the factory of every step's operator. It is plain data, so an executor
can be tested on a hand-built plan; executors build operators from the factories without knowing their classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headwater.core.operator import OperatorFactory
from headwater.core.ports import MAIN_PORT
from headwater.logical import Partitioning, SourceStep, Step


@dataclass(frozen=True)
class Edge:
    """A channel from every subtask of ``src`` to every subtask of ``dst`` (``forward``: subtask i → i only).

    ``input_index`` tells the head step of ``dst`` which of its inputs this edge feeds (unions, joins).
    """

    edge_id: int
    src: int
    dst: int
    partitioning: Partitioning
    keys: tuple[str, ...] = ()
    input_index: int = 0
    columns: tuple[str, ...] | None = None  # projection applied by the sender (None: every column)
    #: the output port this edge carries (see :mod:`headwater.core.ports`) of step ``src_step`` of the stage
    src_port: str = MAIN_PORT
    #: the step of stage ``src`` whose output this is: the stage's last step for the main port, any step of the
    #: chain for a side port ("" means the last step)
    src_step: str = ""


@dataclass(frozen=True)
class Stage:
    """A chain of steps fused into one run loop per subtask: the first step's output feeds the second, etc."""

    stage_id: int
    step_ids: tuple[str, ...]
    parallelism: int
    num_cpus: float | None = None

    @property
    def name(self) -> str:
        return " -> ".join(self.step_ids)

    @property
    def head(self) -> str:
        return self.step_ids[0]

    @property
    def tail(self) -> str:
        return self.step_ids[-1]


@dataclass(frozen=True)
class PhysicalPlan:
    """Everything an executor needs; picklable (sent once to every actor)."""

    flow_name: str
    steps: dict[str, Step]
    stages: tuple[Stage, ...]
    edges: tuple[Edge, ...]
    max_key_groups: int
    source_parts: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: per source step that need not produce every column: the columns it reads (in its schema's order)
    source_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: per step that is not a source: the factory of its operator (one call per subtask)
    operators: dict[str, OperatorFactory] = field(default_factory=dict)

    def inputs_of(self, stage_id: int) -> list[Edge]:
        return [e for e in self.edges if e.dst == stage_id]

    def outputs_of(self, stage_id: int) -> list[Edge]:
        return [e for e in self.edges if e.src == stage_id]

    def is_source(self, stage_id: int) -> bool:
        return isinstance(self.steps[self.stages[stage_id].head], SourceStep)

    def parts_for(self, stage_id: int, subtask: int) -> list[str]:
        """Source partitions subtask ``subtask`` reads: partition ``i`` goes to subtask ``i % parallelism``."""
        parts = self.source_parts[stage_id]
        parallelism = self.stages[stage_id].parallelism
        return [p for i, p in enumerate(parts) if i % parallelism == subtask]

    @property
    def total_subtasks(self) -> int:
        return sum(s.parallelism for s in self.stages)

    def describe(self) -> str:
        """A readable listing of stages, their parallelism and the edges between them."""
        lines = [f"Physical plan for {self.flow_name!r}: {len(self.stages)} stage(s), {self.total_subtasks} subtask(s)"]
        for stage in self.stages:
            cpus = f", num_cpus={stage.num_cpus}" if stage.num_cpus is not None else ""
            lines.append(f"  stage {stage.stage_id} x{stage.parallelism}{cpus}: {stage.name}")
            for step_id in stage.step_ids:
                lines.append(f"      {step_id}: {self.steps[step_id].describe()}")
            if stage.stage_id in self.source_parts:
                parts = self.source_parts[stage.stage_id]
                lines.append(f"      partitions: {len(parts)}")
                if stage.head in self.source_columns:
                    lines.append(f"      reads columns: {', '.join(self.source_columns[stage.head])}")
        for edge in self.edges:
            keys = f" by ({', '.join(edge.keys)})" if edge.keys else ""
            columns = f" columns ({', '.join(edge.columns)})" if edge.columns is not None else ""
            port = f" ({edge.src_port} output)" if edge.src_port != MAIN_PORT else ""
            lines.append(f"  edge {edge.edge_id}: stage {edge.src}{port} -> stage {edge.dst} [{edge.partitioning}{keys}]{columns}")
        return "\n".join(lines)
