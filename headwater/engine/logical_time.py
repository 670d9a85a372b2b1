"""Logical steps over event time: windows (tumbling, sliding, session), their late records, window joins,
interval joins, deduplication and lookup (enrichment) joins. See :mod:`headwater.engine.logical` for the
protocol every step follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from headwater.aggregations import Aggregation
from headwater.engine.logical import Step
from headwater.errors import BuildError, ConfigError, UnknownColumnError
from headwater.expressions import _unknown_column_message
from headwater.operators.base import Operator


def _time_type(schema: pa.Schema | None, event_time: tuple[str, int] | None) -> pa.DataType:
    if schema is None or event_time is None or schema.get_field_index(event_time[0]) < 0:
        return pa.int64()
    kind = schema.field(event_time[0]).type
    return pa.timestamp("ms", kind.tz) if pa.types.is_timestamp(kind) else pa.int64()


def _require_event_time(step: Step, inputs: list[Step]) -> tuple[str, int]:
    for upstream in inputs:
        if upstream.event_time is None:
            raise BuildError(
                f"{step.where}: stream {upstream.step_id!r} has no event time; declare it on the source with "
                "flow.source(..., event_time='column') (and keep that column through select)"
            )
    return inputs[0].event_time  # type: ignore[return-value]


@dataclass(eq=False)
class WindowAggregateStep(Step):
    """Tumbling/sliding window aggregation, keyed by ``keys`` (empty: one global window per time range)."""

    keys: tuple[str, ...] = ()
    window: Any = None
    aggregations: tuple[tuple[str, Aggregation], ...] = ()
    allowed_lateness_ms: int = 0
    #: Input rows are partial aggregates from a fused WindowPartialStep (set by the planner).
    merge_partials: bool = False
    early_ms: int | None = None

    def __post_init__(self) -> None:
        self.kind = "window"
        self.fusable = False
        self.has_side_output = True
        if not self.aggregations:
            raise ConfigError(f"{self.where}: aggregate() needs at least one aggregation, e.g. count=hw.count()")
        for name, agg in self.aggregations:
            if not isinstance(agg, Aggregation):
                raise ConfigError(f"{self.where}: {name}={agg!r} is not an aggregation (hw.count(), hw.sum(col), ...)")
            if name in (*self.keys, "window_start", "window_end"):
                raise ConfigError(f"{self.where}: aggregation name {name!r} collides with a key or window column")
        kinds = {agg.kind for _, agg in self.aggregations}
        if "count_distinct" in kinds and "max_by" in kinds:
            raise ConfigError(f"{self.where}: count_distinct() and max_by() cannot share one aggregate; split it")
        self._input_schema: pa.Schema | None = None
        self._time: tuple[str, int] | None = None
        self._time_type: pa.DataType = pa.int64()

    def bind(self, inputs: list[Step]) -> None:
        self._time = _require_event_time(self, inputs)
        self._time_type = _time_type(inputs[0].schema, self._time)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = self._input_schema = input_schemas[0]
        if schema is None:
            return None
        for key in self.keys:
            if schema.get_field_index(key) < 0:
                raise UnknownColumnError(f"{self.where}: key {_unknown_column_message(key, schema.names)}")
        fields = [schema.field(k) for k in self.keys]
        fields += [pa.field(name, agg.output_type(schema, self.where)) for name, agg in self.aggregations]
        return pa.schema([*fields, pa.field("window_start", self._time_type), pa.field("window_end", self._time_type)])

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return ("window_end", -1)  # a window's results happen at its last millisecond

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys or None

    def required_columns(self) -> tuple[str, ...] | None:
        if self.merge_partials:
            return None
        columns = list(self.keys)
        for _, agg in self.aggregations:
            columns += [c for c in agg.input_columns if c not in columns]
        if self._time is not None and self._time[0] not in columns:
            columns.append(self._time[0])
        return tuple(columns)

    @property
    def explicit_parallelism(self) -> int | None:
        return None if self.keys else 1  # a global window is one subtask

    def make_operator(self) -> Operator:
        from headwater.operators.window import WindowAggregateOperator

        assert self._time is not None
        return WindowAggregateOperator(self.keys, self.window, self.aggregations, self._time[0], self._time[1],
                                       self.allowed_lateness_ms, self._input_schema, self._time_type,
                                       self.merge_partials, self.early_ms)

    def local_partial(self) -> WindowPartialStep | None:
        """The fusable pre-aggregation step that can run before this one in the upstream's actors, or ``None``
        when the aggregates cannot be pre-aggregated (distinct counts) or the input schema is unknown."""
        from headwater.operators.accumulators import AccumulatorSet

        if self.merge_partials or self._input_schema is None or self._time is None:
            return None
        if not AccumulatorSet(self.aggregations).combinable:
            return None
        partial = WindowPartialStep(f"{self.step_id}.local", self.inputs, target=self)
        partial.event_time = self._time
        return partial

    def describe(self) -> str:
        aggs = ", ".join(f"{name}={agg!r}" for name, agg in self.aggregations)
        by = f" by {', '.join(self.keys)}" if self.keys else ""
        return f"{self.window!r}{by}: {aggs}"


@dataclass(eq=False)
class LateRecordsStep(Step):
    """The side output of a windowed step: input records too late for every window they belong to."""

    def __post_init__(self) -> None:
        self.kind = "late_records"
        self.fusable = False

    def bind(self, inputs: list[Step]) -> None:
        window_step = inputs[0]
        if not window_step.has_side_output:
            raise BuildError(f"{self.where}: step {window_step.step_id!r} has no late records; use late_records() "
                             "on the result of a window aggregation")
        self._late_schema = getattr(window_step, "_input_schema", None)
        self._late_time = getattr(window_step, "_time", None)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        if self._late_schema is None:
            return None
        return self._late_schema.append(pa.field("late_reason", pa.string())).append(pa.field("lateness_ms", pa.int64()))

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return self._late_time

    def make_operator(self) -> Operator:
        from headwater.operators.stateless import UnionOperator

        return UnionOperator(None)

    def describe(self) -> str:
        return f"late records of {self.inputs[0]}"


@dataclass(eq=False)
class WindowJoinStep(Step):
    """Equi-join of two streams within tumbling event-time windows."""

    left_on: tuple[str, ...] = ()
    right_on: tuple[str, ...] = ()
    window: Any = None

    def __post_init__(self) -> None:
        self.kind = "window_join"
        self.fusable = False
        if not self.left_on or len(self.left_on) != len(self.right_on):
            raise ConfigError(f"{self.where}: join needs as many left keys as right keys, got {self.left_on} and "
                              f"{self.right_on}")
        self._times: tuple[tuple[str, int], ...] = ()
        self._time_type: pa.DataType = pa.int64()
        self._adds_window = True

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.left_on if input_index == 0 else self.right_on

    def bind(self, inputs: list[Step]) -> None:
        _require_event_time(self, inputs)
        self._times = tuple(i.event_time for i in inputs)  # type: ignore[misc]
        self._time_type = _time_type(inputs[0].schema, inputs[0].event_time)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        left, right = input_schemas
        if left is None or right is None:
            return None
        for keys, schema, side in ((self.left_on, left, "left"), (self.right_on, right, "right")):
            for key in keys:
                if schema.get_field_index(key) < 0:
                    raise UnknownColumnError(f"{self.where}: {side} key {_unknown_column_message(key, schema.names)}")
        from headwater.operators.window_join import join_tables

        try:
            joined = join_tables(left.empty_table(), right.empty_table(), self.left_on, self.right_on)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ConfigError(f"{self.where}: cannot join {self.left_on} with {self.right_on}: {exc}") from None
        schema = joined.schema
        self._adds_window = "window_start" not in schema.names and "window_end" not in schema.names
        if self._adds_window:
            schema = schema.append(pa.field("window_start", self._time_type)).append(pa.field("window_end", self._time_type))
        return schema

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return ("window_end", -1)

    def make_operator(self) -> Operator:
        from headwater.operators.window_join import WindowJoinOperator

        return WindowJoinOperator(self.left_on, self.right_on, self.window, self._times, self._time_type,
                                  self._adds_window)

    def describe(self) -> str:
        pairs = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on))
        return f"join on {pairs} within {self.window!r}"


@dataclass(eq=False)
class WindowPartialStep(Step):
    """Local pre-aggregation of a window aggregate, fused into the upstream's actors (inserted by the planner):
    each batch becomes one partial row per (key, pane), so the shuffle carries partials instead of rows."""

    target: Any = None

    def __post_init__(self) -> None:
        self.kind = "window_partial"

    def make_operator(self) -> Operator:
        from headwater.operators.window import WindowPartialOperator

        target = self.target
        return WindowPartialOperator(target.keys, target.window, target.aggregations, target._time[0],
                                     target._time[1], target._input_schema)

    def required_columns(self) -> tuple[str, ...] | None:
        return self.target.required_columns()

    def describe(self) -> str:
        return f"local pre-aggregation for {self.target.step_id}"


@dataclass(eq=False)
class SessionWindowStep(WindowAggregateStep):
    """Session windows per key (see :mod:`headwater.operators.session`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "session_window"
        for name, agg in self.aggregations:
            if agg.kind == "max_by":
                raise ConfigError(f"{self.where}: max_by() is not supported in session windows ({name})")

    def local_partial(self) -> WindowPartialStep | None:
        return None

    def make_operator(self) -> Operator:
        from headwater.operators.session import SessionWindowOperator

        assert self._time is not None
        return SessionWindowOperator(self.keys, self.window, self.aggregations, self._time[0], self._time[1],
                                     self.allowed_lateness_ms, self._input_schema, self._time_type)


@dataclass(eq=False)
class IntervalJoinStep(WindowJoinStep):
    """Equi-join where ``right.time + lower <= left.time <= right.time + upper``."""

    lower_ms: int = 0
    upper_ms: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "interval_join"
        if self.lower_ms > self.upper_ms:
            raise ConfigError(f"{self.where}: interval join lower bound {self.lower_ms} ms exceeds upper {self.upper_ms} ms")

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = super().derive_schema(input_schemas)
        if schema is None or not self._adds_window:
            return schema
        return pa.schema([f for f in schema if f.name not in ("window_start", "window_end")])

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return inputs[0].event_time

    def make_operator(self) -> Operator:
        from headwater.operators.interval_join import IntervalJoinOperator

        return IntervalJoinOperator(self.left_on, self.right_on, self.lower_ms, self.upper_ms, self._times)

    def describe(self) -> str:
        pairs = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on))
        return f"interval join on {pairs}, right time {self.lower_ms:+} .. {self.upper_ms:+} ms"


@dataclass(eq=False)
class DeduplicateStep(Step):
    keys: tuple[str, ...] = ()
    within_ms: int = 0

    def __post_init__(self) -> None:
        self.kind = "deduplicate"
        self.fusable = False
        if self.within_ms <= 0:
            raise ConfigError(f"{self.where}: deduplicate(within=...) needs a positive duration")

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = input_schemas[0]
        if schema is not None:
            for key in self.keys:
                if schema.get_field_index(key) < 0:
                    raise UnknownColumnError(f"{self.where}: key {_unknown_column_message(key, schema.names)}")
        return schema

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys

    def make_operator(self) -> Operator:
        from headwater.operators.dedup import DeduplicateOperator

        return DeduplicateOperator(self.keys, self.within_ms, self.event_time)

    def describe(self) -> str:
        return f"deduplicate by {', '.join(self.keys)} within {self.within_ms} ms"


@dataclass(eq=False)
class LookupJoinStep(Step):
    table: Any = None
    on: tuple[str, ...] = ()
    how: str = "left"
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.kind = "lookup_join"
        if self.how not in ("left", "inner"):
            raise ConfigError(f"{self.where}: how must be 'left' or 'inner', got {self.how!r}")
        if len(self.on) != len(self.table.key):
            raise ConfigError(f"{self.where}: on={self.on} must name as many columns as the table key {self.table.key}")

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = input_schemas[0]
        table = self.table.load()  # at build time: a missing file or a bad query fails here, naming it
        values = [f for f in table.schema if f.name not in self.table.key
                  and (self.columns is None or f.name in self.columns)]
        if schema is None:
            return None
        for key in self.on:
            if schema.get_field_index(key) < 0:
                raise UnknownColumnError(f"{self.where}: key {_unknown_column_message(key, schema.names)}")
        clash = [f.name for f in values if f.name in schema.names]
        if clash:
            raise ConfigError(f"{self.where}: lookup columns {clash} already exist in the stream; pass columns=[...]")
        return pa.schema([*schema, *(f.with_nullable(True) for f in values)])

    def make_operator(self) -> Operator:
        from headwater.operators.lookup import LookupJoinOperator

        return LookupJoinOperator(self.table, self.on, self.how, self.columns)

    def describe(self) -> str:
        return f"lookup join on {', '.join(self.on)}"
