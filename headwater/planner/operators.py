"""Which physical operator runs each logical step: the one place that knows both sides.

Every logical step type has a *builder* registered here (in the spirit of Ray Data's
``register_plan_logical_op_fn``): ``builder(step) -> OperatorFactory``. The planner calls it once per step and
puts the factory into the :class:`~headwater.engine.plan.PhysicalPlan`; each subtask then calls the factory to
get its own operator instance. So logical steps never import operators, and the runtime runs operators without
knowing their classes.

Invariants:
* A factory is plain data for pickle (a class and its constructor arguments, as :class:`functools.partial`):
  the plan travels to Ray workers, which import the operator's module when they unpickle it.
* Calling a factory builds a *new* operator; nothing is shared between subtasks.
* A step type without a builder is a :class:`~headwater.errors.BuildError` at planning time, naming the step.
  Builders are looked up along the step class's MRO, so a subclass inherits its base's builder unless it
  registers its own.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, TypeVar

from headwater.core.operator import Operator, OperatorFactory
from headwater.engine.sink_operator import SinkOperator
from headwater.errors import BuildError
from headwater.logical import (
    AggregateStep,
    ChangelogLookupJoinStep,
    DeduplicateStep,
    FilterStep,
    IntervalJoinStep,
    LookupJoinStep,
    MapBatchesStep,
    MapRowsStep,
    ProjectStep,
    SessionWindowStep,
    SideOutputStep,
    SinkStep,
    Step,
    UnionStep,
    ValidateStep,
    WindowAggregateStep,
    WindowJoinStep,
    WindowPartialStep,
)
from headwater.operators.aggregation.accumulators import AccumulatorSet
from headwater.operators.aggregation.aggregate import RunningAggregateOperator
from headwater.operators.dedup import DeduplicateOperator
from headwater.operators.joins.changelog_lookup import ChangelogLookupJoinOperator
from headwater.operators.joins.interval_join import IntervalJoinOperator
from headwater.operators.joins.lookup import LookupJoinOperator
from headwater.operators.joins.window_join import WindowJoinOperator
from headwater.operators.quality.validate import ValidateOperator
from headwater.operators.stateless import FilterOperator, ProjectOperator, UnionOperator
from headwater.operators.udf import MapBatchesOperator, MapRowsOperator
from headwater.operators.windows.session import SessionWindowOperator
from headwater.operators.windows.window import WindowAggregateOperator, WindowPartialOperator

S = TypeVar("S", bound=Step)
Builder = Callable[[S], OperatorFactory]

_BUILDERS: dict[type[Step], Callable[[Step], OperatorFactory]] = {}


def register_operator(step_type: type[S]) -> Callable[[Builder[S]], Builder[S]]:
    """Register the builder of ``step_type``'s operator (a decorator); one builder per step type."""

    def register(builder: Builder[S]) -> Builder[S]:
        if step_type in _BUILDERS:
            raise ValueError(f"an operator builder for {step_type.__name__} is already registered")
        _BUILDERS[step_type] = builder  # type: ignore[assignment]  # called only with instances of step_type
        return builder

    return register


def operator_factory(step: Step) -> OperatorFactory:
    """The factory of ``step``'s operator (see the module docstring)."""
    for klass in type(step).__mro__:
        builder = _BUILDERS.get(klass)
        if builder is not None:
            return builder(step)
    raise BuildError(f"{step.where}: no operator runs a {type(step).__name__} ({step.kind}) step")


def combines_partials(step: WindowAggregateStep) -> bool:
    """Whether ``step``'s aggregations can be pre-aggregated locally and merged (not so for distinct counts)."""
    return AccumulatorSet(step.aggregations).combinable


def _bound(operator_type: type[Operator], *args: object) -> OperatorFactory:
    return partial(operator_type, *args)


@register_operator(FilterStep)
def _filter(step: FilterStep) -> OperatorFactory:
    return _bound(FilterOperator, step.predicate)


@register_operator(ProjectStep)
def _project(step: ProjectStep) -> OperatorFactory:
    return _bound(ProjectOperator, step.outputs, step.keep_input)


@register_operator(MapBatchesStep)
def _map_batches(step: MapBatchesStep) -> OperatorFactory:
    return _bound(MapBatchesOperator, step.fn, step.constructor_args, step.constructor_kwargs, step.output_schema)


@register_operator(MapRowsStep)
def _map_rows(step: MapRowsStep) -> OperatorFactory:
    return _bound(MapRowsOperator, step.fn, step.flat, step.output_schema)


@register_operator(AggregateStep)
def _aggregate(step: AggregateStep) -> OperatorFactory:
    return _bound(RunningAggregateOperator, step.keys, step.aggregations, step.input_schema, step.emit)


@register_operator(UnionStep)
def _union(step: UnionStep) -> OperatorFactory:
    return _bound(UnionOperator, step.schema)


@register_operator(SideOutputStep)
def _side_output(step: SideOutputStep) -> OperatorFactory:
    return _bound(UnionOperator, None)  # passes the port's rows through, as they come


@register_operator(SinkStep)
def _sink(step: SinkStep) -> OperatorFactory:
    return _bound(SinkOperator, step.sink)


@register_operator(WindowAggregateStep)
def _window(step: WindowAggregateStep) -> OperatorFactory:
    column, offset = _input_time(step)
    return _bound(WindowAggregateOperator, step.keys, step.window, step.aggregations, column, offset,
                  step.allowed_lateness_ms, step.input_schema, step.time_type, step.merge_partials, step.early_ms)


@register_operator(SessionWindowStep)
def _session_window(step: SessionWindowStep) -> OperatorFactory:
    column, offset = _input_time(step)
    return _bound(SessionWindowOperator, step.keys, step.window, step.aggregations, column, offset,
                  step.allowed_lateness_ms, step.input_schema, step.time_type)


@register_operator(WindowPartialStep)
def _window_partial(step: WindowPartialStep) -> OperatorFactory:
    target = step.target
    column, offset = _input_time(target)
    return _bound(WindowPartialOperator, target.keys, target.window, target.aggregations, column, offset,
                  target.input_schema)


@register_operator(WindowJoinStep)
def _window_join(step: WindowJoinStep) -> OperatorFactory:
    return _bound(WindowJoinOperator, step.left_on, step.right_on, step.window, step.input_times, step.time_type,
                  step.adds_window)


@register_operator(IntervalJoinStep)
def _interval_join(step: IntervalJoinStep) -> OperatorFactory:
    return _bound(IntervalJoinOperator, step.left_on, step.right_on, step.lower_ms, step.upper_ms, step.input_times)


@register_operator(DeduplicateStep)
def _deduplicate(step: DeduplicateStep) -> OperatorFactory:
    return _bound(DeduplicateOperator, step.keys, step.within_ms, step.event_time)


@register_operator(LookupJoinStep)
def _lookup_join(step: LookupJoinStep) -> OperatorFactory:
    return _bound(LookupJoinOperator, step.table, step.on, step.how, step.columns)


@register_operator(ChangelogLookupJoinStep)
def _changelog_lookup_join(step: ChangelogLookupJoinStep) -> OperatorFactory:
    return _bound(ChangelogLookupJoinOperator, step.on, step.table_key, step.key_types, step.how, step.table_columns,
                  step.value_fields, step.changelog_op)


@register_operator(ValidateStep)
def _validate(step: ValidateStep) -> OperatorFactory:
    return _bound(ValidateOperator, step.rules, step.checks, step.event_time, step.threshold, step.alert_webhook)


def _input_time(step: WindowAggregateStep) -> tuple[str, int]:
    if step.input_time is None:
        raise BuildError(f"{step.where}: the window has no event time (it was not bound to its input)")
    return step.input_time
