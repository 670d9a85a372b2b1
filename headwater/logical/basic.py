"""The basic logical steps: sources, sinks, stateless transformations, running aggregates and unions.

See :mod:`headwater.logical.base` for the protocol every step follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pyarrow as pa

from headwater.aggregations import Aggregation, Emit
from headwater.core.arrays import same_columns
from headwater.core.dead_letters import DEAD_LETTER_SCHEMA
from headwater.core.ports import DEAD_LETTER_PORT, MAIN_PORT
from headwater.errors import BuildError, ConfigError, ExpressionTypeError, UnknownColumnError, unknown_column_message
from headwater.expressions import Expr, output_field
from headwater.logical.base import SideOutputStep, Step
from headwater.sinks.base import Sink
from headwater.sources.base import Source


@dataclass(eq=False)
class SourceStep(Step):
    source: Source
    time_column: str | None = None
    out_of_orderness_ms: int = 0
    idle_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        self.kind = "source"
        self.fusable = False
        self.output_ports = (MAIN_PORT, DEAD_LETTER_PORT)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = self.source.schema()
        if self.time_column is not None and schema is not None:
            index = schema.get_field_index(self.time_column)
            if index < 0:
                raise UnknownColumnError(
                    f"{self.where}: event_time {unknown_column_message(self.time_column, schema.names)}"
                )
            kind = schema.field(index).type
            if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind) or pa.types.is_date(kind)):
                raise ConfigError(
                    f"{self.where}: event_time column {self.time_column!r} is {kind}; it must be a timestamp, a date "
                    "or an integer of milliseconds since the epoch"
                )
        return schema

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return (self.time_column, 0) if self.time_column is not None else None

    def port_schema(self, port: str) -> pa.Schema | None:
        return DEAD_LETTER_SCHEMA if port == DEAD_LETTER_PORT else super().port_schema(port)

    def port_event_time(self, port: str) -> tuple[str, int] | None:
        return None if port == DEAD_LETTER_PORT else super().port_event_time(port)

    def describe(self) -> str:
        return f"source {type(self.source).__name__}"


@dataclass(eq=False)
class DeadLettersStep(SideOutputStep):
    """The dead letters of a source step (``stream.dead_letters()``): rows of
    :data:`~headwater.core.dead_letters.DEAD_LETTER_SCHEMA`, one per record the source could not convert."""

    port: str = DEAD_LETTER_PORT

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "dead_letters"

    def bind(self, inputs: list[Step]) -> None:
        if self.port not in inputs[0].output_ports:
            raise BuildError(f"{self.where}: step {inputs[0].step_id!r} is a {inputs[0].kind} step; dead_letters() "
                             "reads the records a source could not convert: call it on a source's stream")
        super().bind(inputs)

    def describe(self) -> str:
        return f"dead letters of {self.inputs[0]}"


@dataclass(eq=False)
class FilterStep(Step):
    predicate: Expr

    def __post_init__(self) -> None:
        self.kind = "filter"

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = input_schemas[0]
        if schema is not None:
            result = output_field(self.predicate, schema, self.where)
            if not pa.types.is_boolean(result.type) and not pa.types.is_null(result.type):
                raise ExpressionTypeError(
                    f"{self.where}: filter needs a boolean expression, but {self.predicate!r} is {result.type}; "
                    "compare it with something (e.g. hw.col('x') > 0)"
                )
        return schema

    def input_columns(self, needed: tuple[str, ...] | None, input_index: int) -> tuple[str, ...] | None:
        return None if needed is None else _ordered_union(needed, self.predicate.columns())

    def describe(self) -> str:
        return f"filter {self.predicate!r}"


@dataclass(eq=False)
class ProjectStep(Step):
    outputs: tuple[tuple[str, Expr], ...] = ()
    keep_input: bool = False

    def __post_init__(self) -> None:
        self.kind = "with_columns" if self.keep_input else "select"
        names = [name for name, _ in self.outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{self.where}: output column(s) {', '.join(duplicates)} given twice; alias one")
        if not self.outputs:
            raise ConfigError(f"{self.where}: {self.kind}() needs at least one column")

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = input_schemas[0]
        if schema is None:
            return None
        computed = [output_field(expr, schema, self.where).with_name(name) for name, expr in self.outputs]
        if not self.keep_input:
            return pa.schema(computed)
        fields = list(schema)
        for f in computed:
            index = schema.get_field_index(f.name)
            if index >= 0:
                fields[index] = f
            else:
                fields.append(f)
        return pa.schema(fields)

    def input_columns(self, needed: tuple[str, ...] | None, input_index: int) -> tuple[str, ...] | None:
        read: set[str] = set().union(*(expr.columns() for _, expr in self.outputs))
        if not self.keep_input:
            return _ordered_union((), read)
        if needed is None:
            return None
        computed = {name for name, _ in self.outputs}
        return _ordered_union(tuple(c for c in needed if c not in computed), read)

    def describe(self) -> str:
        return f"{self.kind} " + ", ".join(f"{name}={expr!r}" for name, expr in self.outputs)


@dataclass(eq=False)
class MapBatchesStep(Step):
    fn: Callable[..., Any] | type
    concurrency: int | None = None
    cpus: float | None = None
    constructor_args: tuple[Any, ...] = ()
    constructor_kwargs: Mapping[str, Any] | None = None
    output_schema: pa.Schema | None = None

    def __post_init__(self) -> None:
        self.kind = "map_batches"
        if not callable(self.fn):
            raise ConfigError(f"{self.where}: map_batches needs a function or a class, got {self.fn!r}")
        if self.concurrency is not None and (not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise ConfigError(f"{self.where}: concurrency must be a positive integer, got {self.concurrency!r}")
        if self.cpus is not None and self.cpus < 0:
            raise ConfigError(f"{self.where}: num_cpus must be >= 0, got {self.cpus!r}")
        if (self.constructor_args or self.constructor_kwargs) and not isinstance(self.fn, type):
            raise ConfigError(f"{self.where}: fn_constructor_args/kwargs only apply when fn is a class")
        # A step that asks for its own resources or actor count gets its own actors.
        self.fusable = self.concurrency is None and self.cpus is None

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        return self.output_schema

    @property
    def explicit_parallelism(self) -> int | None:
        return self.concurrency

    @property
    def num_cpus(self) -> float | None:
        return self.cpus

    def describe(self) -> str:
        return f"map_batches {getattr(self.fn, '__qualname__', repr(self.fn))}"


@dataclass(eq=False)
class MapRowsStep(Step):
    fn: Callable[[dict[str, Any]], Any]
    flat: bool = False
    output_schema: pa.Schema | None = None

    def __post_init__(self) -> None:
        self.kind = "flat_map" if self.flat else "map_rows"
        if not callable(self.fn):
            raise ConfigError(f"{self.where}: {self.kind} needs a function, got {self.fn!r}")

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        return self.output_schema

    def describe(self) -> str:
        return f"{self.kind} {getattr(self.fn, '__qualname__', repr(self.fn))}"


@dataclass(eq=False)
class AggregateStep(Step):
    keys: tuple[str, ...] = ()
    aggregations: tuple[tuple[str, Aggregation], ...] = ()
    emit: Emit = "updates"

    def __post_init__(self) -> None:
        self.kind = "aggregate"
        self.fusable = False
        if not self.aggregations:
            raise ConfigError(f"{self.where}: aggregate() needs at least one aggregation, e.g. count=hw.count()")
        for name, agg in self.aggregations:
            if not isinstance(agg, Aggregation):
                raise ConfigError(
                    f"{self.where}: {name}={agg!r} is not an aggregation; use hw.count(), hw.sum(col), "
                    "hw.min(col), hw.max(col), hw.mean(col), hw.top_k(col, k) or hw.udaf(aggregator, col)"
                )
            if name in self.keys:
                raise ConfigError(f"{self.where}: aggregation {name!r} has the same name as a key column")
        if self.emit not in ("updates", "final"):
            raise ConfigError(f"{self.where}: emit must be 'updates' or 'final', got {self.emit!r}")
        self.input_schema: pa.Schema | None = None

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = input_schemas[0]
        self.input_schema = schema
        if schema is None:
            return None
        for key in self.keys:
            if schema.get_field_index(key) < 0:
                raise UnknownColumnError(f"{self.where}: key {unknown_column_message(key, schema.names)}")
        fields = [schema.field(k) for k in self.keys]
        fields += [pa.field(name, agg.output_type(schema, self.where)) for name, agg in self.aggregations]
        return pa.schema(fields)

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys

    def required_columns(self) -> tuple[str, ...] | None:
        columns = list(self.keys)
        for _, agg in self.aggregations:
            columns += [c for c in agg.input_columns if c not in columns]
        return tuple(columns)

    def describe(self) -> str:
        aggs = ", ".join(f"{name}={agg!r}" for name, agg in self.aggregations)
        return f"aggregate by {', '.join(self.keys)}: {aggs}"


@dataclass(eq=False)
class UnionStep(Step):
    def __post_init__(self) -> None:
        self.kind = "union"
        self.fusable = False

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        known = [s for s in input_schemas if s is not None]
        if len(known) != len(input_schemas):
            return None
        for other, step in zip(known[1:], self.inputs[1:]):
            if not same_columns(other, known[0]):
                raise BuildError(
                    f"{self.where}: union inputs disagree: {self.inputs[0]!r} has schema {known[0]} but "
                    f"{step!r} has {other}; select/cast them to the same columns and types first"
                )
        return known[0]

    def describe(self) -> str:
        return "union of " + ", ".join(self.inputs)


@dataclass(eq=False)
class SinkStep(Step):
    sink: Sink

    def __post_init__(self) -> None:
        self.kind = "sink"

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        if input_schemas and input_schemas[0] is not None:
            try:
                self.sink.check_input_schema(input_schemas[0])
            except ConfigError as exc:
                raise ConfigError(f"{self.where}: {exc}") from exc.__cause__
        return None

    def describe(self) -> str:
        return f"sink {type(self.sink).__name__}"


def _ordered_union(first: tuple[str, ...], more: set[str]) -> tuple[str, ...]:
    return first + tuple(sorted(more - set(first)))

