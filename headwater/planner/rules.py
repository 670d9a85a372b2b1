"""The planner's rewrite and projection rules over logical steps (see :mod:`headwater.planner.planner`).

Side outputs are handled by port, for every kind of side output alike: a step whose side port of input rows
(:data:`~headwater.core.ports.INPUT_ROW_PORTS`, e.g. late records) is read by some consumer reads its *whole*
input, so no projection is pushed through it, and a window whose side port is read keeps its rows un-aggregated
(no local pre-aggregation). Ports of other rows (a source's dead letters) need none of the step's columns.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

from headwater.core.ports import INPUT_ROW_PORTS, MAIN_PORT
from headwater.logical import SourceStep, Step, WindowAggregateStep
from headwater.planner.operators import combines_partials

Consumers = Callable[[str], list[str]]


def side_port_read(steps: Mapping[str, Step], consumers: Consumers, step_id: str) -> bool:
    """Whether some consumer reads a side port of ``step_id`` that carries its input rows (late records)."""
    for consumer_id in consumers(step_id):
        consumer = steps[consumer_id]
        for index, input_id in enumerate(consumer.inputs):
            if input_id == step_id and consumer.input_port(index) in INPUT_ROW_PORTS:
                return True
    return False


def reads_side_port(step: Step) -> bool:
    """Whether ``step`` reads a side port of one of its inputs (it then passes its input's rows through whole)."""
    return any(step.input_port(i) != MAIN_PORT for i in range(len(step.inputs)))


def with_local_aggregation(steps: Mapping[str, Step], consumers: Consumers) -> dict[str, Step]:
    """Rule: a window aggregate whose input has no other consumer, whose side ports nobody reads, whose input
    schema is known and whose aggregations combine from partials gets a local pre-aggregation step fused before
    the shuffle (the aggregate then merges partials)."""
    rewritten: dict[str, Step] = {}
    for step in steps.values():
        if (isinstance(step, WindowAggregateStep) and len(consumers(step.inputs[0])) == 1
                and not side_port_read(steps, consumers, step.step_id) and combines_partials(step)):
            partial = step.local_partial()
            if partial is not None and partial.step_id not in steps:
                merged = copy.copy(step)
                merged.inputs = (partial.step_id,)
                merged.merge_partials = True
                rewritten[partial.step_id] = partial
                rewritten[step.step_id] = merged
                continue
        rewritten[step.step_id] = step
    return rewritten


def edge_columns(steps: Mapping[str, Step], consumers: Consumers, dst: str) -> tuple[str, ...] | None:
    """Rule (projection pushdown): the columns an edge into ``dst`` carries (``None``: all of them)."""
    step = steps[dst]
    if reads_side_port(step) or side_port_read(steps, consumers, dst):
        return None
    return step.required_columns()


def source_columns(steps: Mapping[str, Step], consumers: Consumers) -> dict[str, tuple[str, ...]]:
    """Rule: the columns each source must produce — those its downstream steps need (walking back from the
    sinks, see :meth:`Step.input_columns`), in the source schema's order, plus its event-time column.
    Sources whose every column is needed, or whose schema is unknown, are left out."""
    needed: dict[str, tuple[str, ...] | None] = {}

    def wanted_from(step_id: str) -> tuple[str, ...] | None:
        wanted: list[str] = []
        for consumer_id in consumers(step_id):
            consumer = steps[consumer_id]
            if side_port_read(steps, consumers, consumer_id):
                return None  # the consumer's side output carries its whole input
            for index, input_id in enumerate(consumer.inputs):
                if input_id == step_id and consumer.input_port(index) != MAIN_PORT:
                    if consumer.input_port(index) in INPUT_ROW_PORTS:
                        return None  # late records of this step carry its whole input
                    continue  # e.g. dead letters: rows of their own, none of this step's columns
                if input_id == step_id:
                    columns = consumer.input_columns(needed[consumer_id], index)
                    if columns is None:
                        return None
                    wanted += [c for c in columns if c not in wanted]
        return tuple(wanted)

    for step in reversed(list(steps.values())):  # a step's consumers come after it
        needed[step.step_id] = wanted_from(step.step_id)
    projections: dict[str, tuple[str, ...]] = {}
    for step in steps.values():
        columns = needed.get(step.step_id)
        if not isinstance(step, SourceStep) or step.schema is None or columns is None:
            continue
        keep = tuple(n for n in step.schema.names if n in columns or n == step.time_column)
        if len(keep) < len(step.schema.names):
            projections[step.step_id] = keep
    return projections
