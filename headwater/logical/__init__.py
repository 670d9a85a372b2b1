"""Logical steps: the inert graph a dataflow builds (what each node computes, not how it runs).

:mod:`~headwater.logical.base` holds the protocol (:class:`Step`, output ports, side-output steps); the step
types live by concept: :mod:`~headwater.logical.basic` (sources, sinks, stateless steps, running aggregates,
unions), :mod:`~headwater.logical.windows`, :mod:`~headwater.logical.joins`, :mod:`~headwater.logical.dedup`, :mod:`~headwater.logical.quality`.
"""

from headwater.logical.base import Partitioning, SideOutputStep, Step, event_time_type, require_event_time
from headwater.logical.basic import (
    AggregateStep,
    DeadLettersStep,
    FilterStep,
    MapBatchesStep,
    MapRowsStep,
    ProjectStep,
    SinkStep,
    SourceStep,
    UnionStep,
)
from headwater.logical.dedup import DeduplicateStep
from headwater.logical.graph import LogicalGraph
from headwater.logical.joins import ChangelogLookupJoinStep, IntervalJoinStep, LookupJoinStep, WindowJoinStep
from headwater.logical.quality import InvalidRecordsStep, QualityFindingsStep, ValidateStep
from headwater.logical.windows import LateRecordsStep, SessionWindowStep, WindowAggregateStep, WindowPartialStep

__all__ = [
    "AggregateStep", "ChangelogLookupJoinStep", "DeadLettersStep", "DeduplicateStep", "FilterStep", "IntervalJoinStep",
    "InvalidRecordsStep", "QualityFindingsStep", "ValidateStep",
    "LateRecordsStep", "LogicalGraph", "LookupJoinStep", "MapBatchesStep", "MapRowsStep", "Partitioning",
    "ProjectStep", "SessionWindowStep", "SideOutputStep", "SinkStep", "SourceStep", "Step", "UnionStep",
    "WindowAggregateStep", "WindowJoinStep", "WindowPartialStep", "event_time_type", "require_event_time",
]
