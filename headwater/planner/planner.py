"""Planner: logical graph (:class:`~headwater.logical.LogicalGraph`) → physical plan.

Rules, applied in step order (which is a topological order, since a step can only consume existing steps):

* **Parallelism.** A source runs ``min(parallelism, number of partitions)`` subtasks. A single-input stateless
  step inherits its input's parallelism; ``map_batches(concurrency=n)`` runs ``n``. Keyed steps (aggregate) and
  unions run the default parallelism.
* **Partitioning.** Into a keyed step: ``hash`` by its keys over key groups. Otherwise ``forward`` when the
  parallelism is equal, ``round_robin`` when it differs.
* **Projection pushdown.** An edge into a step that reads only some columns (an aggregate reads its keys and
  aggregated columns) carries that column list; the sender drops the rest before partitioning and sending.
* **Projection into sources.** A source reads only the columns that the steps after it need (see
  :func:`~headwater.planner.rules.source_columns`): a Parquet source then decodes fewer columns, a generator generates fewer.
* **Local pre-aggregation.** A window aggregate gets a fused partial-aggregation step before its shuffle when
  its input has no other consumer and its side outputs (late records) are not read
  (:func:`~headwater.planner.rules.with_local_aggregation`).
* **Side outputs.** An edge carries the output port its consumer reads (``Edge.src_port``, see
  :mod:`headwater.core.ports`); a step whose side port is read gets its whole input (no projection).
* **Operators.** Each step gets its operator factory from :mod:`headwater.planner.operators`, the only place
  that maps a step to an operator.
* **Fusion (chaining).** A step joins its upstream's stage when it is fusable, has one input, the upstream has
  no other consumer of its main output (readers of side ports such as quarantined or late records get edges
  from the middle of the chain, ``Edge.src_step``), and the edge would be ``forward`` — then the two run in one actor and a batch passes
  between them as a function call, not a message.
* **Ownership.** No two sinks, nor a sink and the checkpoint directory, may claim the same or nested
  directories (:mod:`headwater.engine.ownership`): such a job fails here with ``OwnershipConflictError``.
  Every sink of the plan stages for the job's owner (``Sink.staging_as(sink_owner(checkpoint_dir))``).
"""

from __future__ import annotations

import copy

from headwater.core.ports import MAIN_PORT
from headwater.engine.config import RunConfig
from headwater.engine.ownership import check_claims, job_claims, sink_owner
from headwater.engine.plan import Edge, PhysicalPlan, Stage
from headwater.errors import BuildError, ConfigError
from headwater.logical import (
    AggregateStep,
    LogicalGraph,
    Partitioning,
    SinkStep,
    SourceStep,
    Step,
    UnionStep,
    WindowJoinStep,
)
from headwater.planner.operators import operator_factory
from headwater.planner.rules import edge_columns, source_columns, with_local_aggregation


def _wanted_parallelism(step: Step, flow: LogicalGraph, chosen: dict[str, int], default: int) -> int:
    if isinstance(step, SourceStep):
        parts = step.source.list_parts()
        if not parts:
            raise BuildError(f"step {step.step_id!r}: the source has no partitions to read")
        return min(default, len(parts))
    if step.explicit_parallelism is not None:
        return step.explicit_parallelism
    if isinstance(step, (UnionStep, WindowJoinStep)) or step.partition_keys(0):
        return default
    return chosen[step.inputs[0]]


def _partitioning(
    step: Step, input_index: int, upstream_parallelism: int, parallelism: int
) -> tuple[Partitioning, tuple[str, ...]]:
    keys = step.partition_keys(input_index)
    if keys:
        return "hash", keys
    return ("forward" if upstream_parallelism == parallelism else "round_robin"), ()


def plan(
    flow: LogicalGraph, config: RunConfig, default_parallelism: int, checkpoint_dir: str | None = None
) -> PhysicalPlan:
    """Turn ``flow`` into a :class:`PhysicalPlan` with ``default_parallelism`` where nothing else decides;
    ``checkpoint_dir`` (when checkpointing) must not overlap a sink's directory."""
    flow.validate()
    check_claims(job_claims(flow.steps, checkpoint_dir))
    if default_parallelism > config.max_key_groups:
        raise ConfigError(
            f"parallelism {default_parallelism} exceeds max_key_groups {config.max_key_groups}; lower it or raise "
            "max_key_groups"
        )
    parallelism: dict[str, int] = {}
    stage_of: dict[str, int] = {}
    chains: list[list[str]] = []
    stage_cpus: list[float | None] = []
    edge_specs: list[tuple[str, str, Partitioning, tuple[str, ...], int]] = []

    steps = with_local_aggregation(flow.steps, flow.consumers)
    owner = sink_owner(checkpoint_dir)
    for step_id, step in steps.items():
        if isinstance(step, SinkStep):
            bound = copy.copy(step)
            bound.sink = step.sink.staging_as(owner)
            steps[step_id] = bound

    def consumers(step_id: str) -> list[str]:
        return [s.step_id for s in steps.values() if step_id in s.inputs]

    def main_consumers(step_id: str) -> list[str]:
        return [s.step_id for s in steps.values()
                if any(i == step_id and s.input_port(n) == MAIN_PORT for n, i in enumerate(s.inputs))]

    for step in steps.values():
        p = _wanted_parallelism(step, flow, parallelism, default_parallelism)
        if p > config.max_key_groups and isinstance(step, AggregateStep):
            raise ConfigError(f"step {step.step_id!r}: parallelism {p} exceeds max_key_groups {config.max_key_groups}")
        parallelism[step.step_id] = p
        if len(step.inputs) == 1:
            upstream = step.inputs[0]
            partitioning, keys = _partitioning(step, 0, parallelism[upstream], p)
            upstream_stage = stage_of[upstream]
            can_fuse = (
                step.fusable
                and step.input_port(0) == MAIN_PORT
                and partitioning == "forward"
                and chains[upstream_stage][-1] == upstream
                and len(main_consumers(upstream)) == 1  # readers of side ports get their own edges
            )
            if can_fuse:
                chains[upstream_stage].append(step.step_id)
                stage_of[step.step_id] = upstream_stage
                continue
            edge_specs.append((upstream, step.step_id, partitioning, keys, 0))
        else:
            for index, upstream in enumerate(step.inputs):
                partitioning, keys = _partitioning(step, index, parallelism[upstream], p)
                edge_specs.append((upstream, step.step_id, partitioning, keys, index))
        stage_of[step.step_id] = len(chains)
        chains.append([step.step_id])
        stage_cpus.append(step.num_cpus)

    stages = tuple(
        Stage(i, tuple(chain), parallelism[chain[0]], stage_cpus[i]) for i, chain in enumerate(chains)
    )
    for src_step, dst_step, _, _, index in edge_specs:
        if chains[stage_of[src_step]][-1] != src_step and steps[dst_step].input_port(index) == MAIN_PORT:
            raise BuildError(f"internal planning error: step {src_step!r} feeds {dst_step!r} from inside a chain")
    edges = tuple(
        Edge(i, stage_of[src], stage_of[dst], partitioning, keys, index,
             edge_columns(steps, consumers, dst), src_port=steps[dst].input_port(index), src_step=src)
        for i, (src, dst, partitioning, keys, index) in enumerate(edge_specs)
    )
    source_parts = {
        stage.stage_id: tuple(head.source.list_parts())
        for stage in stages
        if isinstance(head := steps[stage.head], SourceStep)
    }
    operators = {step_id: operator_factory(step) for step_id, step in steps.items() if not isinstance(step, SourceStep)}
    return PhysicalPlan(flow.name, steps, stages, edges, config.max_key_groups, source_parts,
                        source_columns(steps, consumers), operators)
