"""Column lineage from the logical graph: for each sink, which source dataset columns feed each output column.

Honest by construction: a column gets lineage only where the step that makes it says which input columns it reads,
and every step on the way back to a source does too:

* pass-through steps (filter, deduplicate, validate and its quarantine, late records, sinks) keep each column's
  lineage (columns they add, such as ``rule``/``reason``, have none);
* projections (``select``/``with_columns``): ``col("a")`` (or its alias) is IDENTITY, any other expression a
  TRANSFORMATION of exactly the columns it reads (``Expr.columns()``);
* aggregates and windows: keys keep their lineage, ``sum(price)`` is an AGGREGATION of ``price``; ``count()``
  reads no column and window bounds come from event time, so they get none;
* union: a column's lineage is that of the same-named column of every input;
* anything the plan cannot see into (``map_batches``, ``map_rows``, ``flat_map``, joins, lookups' table columns)
  ends the trail: the columns after it get no column lineage (table-level lineage still holds).

A column's transformation is the strongest along its path (AGGREGATION > TRANSFORMATION > IDENTITY).
"""

from __future__ import annotations

from typing import Any, Mapping

from headwater.expressions import Alias, Col
from headwater.governance.lineage.datasets import DatasetRef
from headwater.logical import (
    AggregateStep,
    DeduplicateStep,
    FilterStep,
    InvalidRecordsStep,
    LateRecordsStep,
    ProjectStep,
    SinkStep,
    SourceStep,
    Step,
    UnionStep,
    ValidateStep,
    WindowAggregateStep,
)

IDENTITY, TRANSFORMATION, AGGREGATION = "IDENTITY", "TRANSFORMATION", "AGGREGATION"
_RANK = {IDENTITY: 0, TRANSFORMATION: 1, AGGREGATION: 2}
#: output column -> {(input dataset, input column): subtype}
Columns = dict[str, dict[tuple[DatasetRef, str], str]]
_PASS = (FilterStep, DeduplicateStep, ValidateStep, LateRecordsStep, InvalidRecordsStep, SinkStep)


def _through(found: Mapping[tuple[DatasetRef, str], str], subtype: str) -> dict[tuple[DatasetRef, str], str]:
    return {k: subtype if _RANK[subtype] > _RANK[v] else v for k, v in found.items()}


def _merge(into: dict[tuple[DatasetRef, str], str], more: Mapping[tuple[DatasetRef, str], str]) -> None:
    for k, v in more.items():
        into[k] = v if k not in into or _RANK[v] > _RANK[into[k]] else into[k]


def _reads(columns: Columns, names: set[str], subtype: str) -> dict[tuple[DatasetRef, str], str] | None:
    """The lineage of an output computed from input columns ``names`` (None: one of them has none)."""
    out: dict[tuple[DatasetRef, str], str] = {}
    for name in names:
        if name not in columns:
            return None
        _merge(out, _through(columns[name], subtype))
    return out or None


def _step_columns(step: Step, inputs: list[Columns], sources: Mapping[str, list[DatasetRef]]) -> Columns:
    if isinstance(step, SourceStep):
        datasets = sources.get(step.step_id, [])
        if len(datasets) != 1 or step.schema is None:
            return {}  # several tables behind one stream (CDC, a replay): a column's table is not known
        return {f: {(datasets[0], f): IDENTITY} for f in step.schema.names}
    if not inputs:
        return {}
    first = inputs[0]
    if isinstance(step, _PASS):
        names = step.schema.names if step.schema is not None else list(first)
        return {n: dict(first[n]) for n in names if n in first}
    if isinstance(step, ProjectStep):
        out: Columns = {n: dict(v) for n, v in first.items()} if step.keep_input else {}
        for name, expr in step.outputs:
            target = expr.operand if isinstance(expr, Alias) else expr
            subtype = IDENTITY if isinstance(target, Col) else TRANSFORMATION
            found = _reads(first, expr.columns(), subtype)
            if found is None:
                out.pop(name, None)
            else:
                out[name] = found
        return out
    if isinstance(step, (AggregateStep, WindowAggregateStep)):
        out = {k: dict(first[k]) for k in step.keys if k in first}
        for name, agg in step.aggregations:
            found = _reads(first, set(agg.input_columns), AGGREGATION)
            if found is not None:
                out[name] = found
        return out
    if isinstance(step, UnionStep):
        common = set.intersection(*(set(c) for c in inputs)) if inputs else set()
        out = {}
        for name in common:
            merged: dict[tuple[DatasetRef, str], str] = {}
            for columns in inputs:
                _merge(merged, columns[name])
            out[name] = merged
        return out
    return {}  # a step the plan cannot see into


def column_lineage(steps: Mapping[str, Step], sources: Mapping[str, list[DatasetRef]]) -> dict[str, Columns]:
    """Per sink step id, its input columns' lineage back to the source datasets (``steps`` in topological order,
    as ``Dataflow.steps`` keeps them; ``sources``: each source step's datasets)."""
    known: dict[str, Columns] = {}
    for step_id, step in steps.items():
        known[step_id] = _step_columns(step, [known.get(i, {}) for i in step.inputs], sources)
    return {step_id: known[step_id] for step_id, step in steps.items() if isinstance(step, SinkStep)}


def column_lineage_facet(columns: Columns) -> dict[str, Any] | None:
    """The ``columnLineage`` facet's ``fields`` for one output dataset (None when no column is known)."""
    fields: dict[str, Any] = {}
    for name, found in sorted(columns.items()):
        if not found:
            continue
        fields[name] = {"inputFields": [
            {"namespace": ds.namespace, "name": ds.name, "field": col,
             "transformations": [{"type": "DIRECT", "subtype": subtype}]}
            for (ds, col), subtype in sorted(found.items())]}
    return fields or None
