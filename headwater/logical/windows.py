"""Logical steps over event time: windows (tumbling, sliding, session), their late records, window joins,
interval joins, deduplication and lookup (enrichment) joins. See :mod:`headwater.logical` for the
protocol every step follows."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from headwater.aggregations import Aggregation, AggregationKind
from headwater.core.ports import LATE_PORT, MAIN_PORT
from headwater.errors import BuildError, ConfigError, UnknownColumnError, unknown_column_message
from headwater.logical.base import SideOutputStep, Step, event_time_type, require_event_time
from headwater.windows import SessionWindow, SlidingWindow, TumblingWindow


@dataclass(eq=False)
class WindowAggregateStep(Step):
    """Tumbling/sliding window aggregation, keyed by ``keys`` (empty: one global window per time range)."""

    keys: tuple[str, ...] = ()
    window: TumblingWindow | SlidingWindow | SessionWindow = field(kw_only=True)
    aggregations: tuple[tuple[str, Aggregation], ...] = ()
    allowed_lateness_ms: int = 0
    #: Input rows are partial aggregates from a fused WindowPartialStep (set by the planner).
    merge_partials: bool = False
    early_ms: int | None = None

    def __post_init__(self) -> None:
        self.kind = "window"
        self.fusable = False
        self.output_ports = (MAIN_PORT, LATE_PORT)
        if not self.aggregations:
            raise ConfigError(f"{self.where}: aggregate() needs at least one aggregation, e.g. count=hw.count()")
        for name, agg in self.aggregations:
            if not isinstance(agg, Aggregation):
                raise ConfigError(f"{self.where}: {name}={agg!r} is not an aggregation (hw.count(), hw.sum(col), ...)")
            if name in (*self.keys, "window_start", "window_end"):
                raise ConfigError(f"{self.where}: aggregation name {name!r} collides with a key or window column")
        kinds = {agg.kind for _, agg in self.aggregations}
        if AggregationKind.COUNT_DISTINCT in kinds and AggregationKind.MAX_BY in kinds:
            raise ConfigError(f"{self.where}: count_distinct() and max_by() cannot share one aggregate; split it")
        self.input_schema: pa.Schema | None = None
        self.input_time: tuple[str, int] | None = None
        self.time_type: pa.DataType = pa.int64()

    def bind(self, inputs: list[Step]) -> None:
        self.input_time = require_event_time(self, inputs)
        self.time_type = event_time_type(inputs[0].schema, self.input_time)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = self.input_schema = input_schemas[0]
        if schema is None:
            return None
        for key in self.keys:
            if schema.get_field_index(key) < 0:
                raise UnknownColumnError(f"{self.where}: key {unknown_column_message(key, schema.names)}")
        fields = [schema.field(k) for k in self.keys]
        fields += [pa.field(name, agg.output_type(schema, self.where)) for name, agg in self.aggregations]
        return pa.schema([*fields, pa.field("window_start", self.time_type), pa.field("window_end", self.time_type)])

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return ("window_end", -1)  # a window's results happen at its last millisecond

    def port_schema(self, port: str) -> pa.Schema | None:
        if port != LATE_PORT:
            return super().port_schema(port)
        if self.input_schema is None:
            return None
        return self.input_schema.append(pa.field("late_reason", pa.string())).append(pa.field("lateness_ms", pa.int64()))

    def port_event_time(self, port: str) -> tuple[str, int] | None:
        return self.input_time if port == LATE_PORT else super().port_event_time(port)

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys or None

    def required_columns(self) -> tuple[str, ...] | None:
        if self.merge_partials:
            return None
        columns = list(self.keys)
        for _, agg in self.aggregations:
            columns += [c for c in agg.input_columns if c not in columns]
        if self.input_time is not None and self.input_time[0] not in columns:
            columns.append(self.input_time[0])
        return tuple(columns)

    @property
    def explicit_parallelism(self) -> int | None:
        return None if self.keys else 1  # a global window is one subtask

    def local_partial(self) -> WindowPartialStep | None:
        """The fusable pre-aggregation step that can run before this one in the upstream's actors, or ``None``
        when the aggregates cannot be pre-aggregated (distinct counts) or the input schema is unknown."""
        if self.merge_partials or self.input_schema is None or self.input_time is None:
            return None
        partial = WindowPartialStep(f"{self.step_id}.local", self.inputs, target=self)
        partial.event_time = self.input_time
        return partial

    def describe(self) -> str:
        aggs = ", ".join(f"{name}={agg!r}" for name, agg in self.aggregations)
        by = f" by {', '.join(self.keys)}" if self.keys else ""
        return f"{self.window!r}{by}: {aggs}"


@dataclass(eq=False)
class LateRecordsStep(SideOutputStep):
    """The ``"late"`` port of a window: input records too late for every window they belong to, with a
    ``late_reason`` and their ``lateness_ms`` (``stream.late_records()``)."""

    port: str = LATE_PORT

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "late_records"

    def bind(self, inputs: list[Step]) -> None:
        if self.port not in inputs[0].output_ports:
            raise BuildError(f"{self.where}: step {inputs[0].step_id!r} has no late records; use late_records() "
                             "on the result of a window aggregation")
        super().bind(inputs)

    def describe(self) -> str:
        return f"late records of {self.inputs[0]}"


@dataclass(eq=False)
class WindowPartialStep(Step):
    """Local pre-aggregation of a window aggregate, fused into the upstream's actors (inserted by the planner):
    each batch becomes one partial row per (key, pane), so the shuffle carries partials instead of rows."""

    target: WindowAggregateStep = field(kw_only=True)

    def __post_init__(self) -> None:
        self.kind = "window_partial"

    def required_columns(self) -> tuple[str, ...] | None:
        return self.target.required_columns()

    def describe(self) -> str:
        return f"local pre-aggregation for {self.target.step_id}"


@dataclass(eq=False)
class SessionWindowStep(WindowAggregateStep):
    """Session windows per key (see :mod:`headwater.operators.windows.session`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "session_window"
        for name, agg in self.aggregations:
            if agg.kind is AggregationKind.MAX_BY:
                raise ConfigError(f"{self.where}: max_by() is not supported in session windows ({name})")

    def local_partial(self) -> WindowPartialStep | None:
        return None


