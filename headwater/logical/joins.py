"""The logical step of a lookup join against a changelog stream (``stream.lookup_join(table_stream, ...)``).

Build-time checks happen here, before any data moves: both streams' schemas must be known, the key columns
must exist on both sides with types that compare equal (:func:`~headwater.operators.joins.changelog_lookup.join_key_type`),
the change-kind column must be a string column of the table stream, and the table columns added to the probe
records must not clash with the probe's columns (unless ``suffix`` renames them). The physical operator is
:class:`~headwater.operators.joins.changelog_lookup.ChangelogLookupJoinOperator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from headwater.core.arrays import join_key_type, join_tables
from headwater.core.state.store import KEY_GROUP_COLUMN
from headwater.errors import BuildError, ConfigError, UnknownColumnError, unknown_column_message
from headwater.logical.base import Step, event_time_type, require_event_time
from headwater.sources.lookup_table import LookupTable
from headwater.windows import TumblingWindow


@dataclass(eq=False)
class WindowJoinStep(Step):
    """Equi-join of two streams within tumbling event-time windows."""

    left_on: tuple[str, ...] = ()
    right_on: tuple[str, ...] = ()
    window: TumblingWindow | None = field(default=None, kw_only=True)  # None: an interval join

    def __post_init__(self) -> None:
        self.kind = "window_join"
        self.fusable = False
        if not self.left_on or len(self.left_on) != len(self.right_on):
            raise ConfigError(f"{self.where}: join needs as many left keys as right keys, got {self.left_on} and "
                              f"{self.right_on}")
        self.input_times: tuple[tuple[str, int], ...] = ()
        self.time_type: pa.DataType = pa.int64()
        self.adds_window = True

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.left_on if input_index == 0 else self.right_on

    def bind(self, inputs: list[Step]) -> None:
        require_event_time(self, inputs)
        self.input_times = tuple(i.event_time for i in inputs if i.event_time is not None)
        self.time_type = event_time_type(inputs[0].schema, inputs[0].event_time)

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        left, right = input_schemas
        if left is None or right is None:
            return None
        for keys, schema, side in ((self.left_on, left, "left"), (self.right_on, right, "right")):
            for key in keys:
                if schema.get_field_index(key) < 0:
                    raise UnknownColumnError(f"{self.where}: {side} key {unknown_column_message(key, schema.names)}")

        try:
            joined = join_tables(left.empty_table(), right.empty_table(), self.left_on, self.right_on)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ConfigError(f"{self.where}: cannot join {self.left_on} with {self.right_on}: {exc}") from None
        schema = joined.schema
        self.adds_window = "window_start" not in schema.names and "window_end" not in schema.names
        if self.adds_window:
            schema = schema.append(pa.field("window_start", self.time_type)).append(pa.field("window_end", self.time_type))
        return schema

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return ("window_end", -1)

    def describe(self) -> str:
        pairs = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on))
        return f"join on {pairs} within {self.window!r}"


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
        if schema is None or not self.adds_window:
            return schema
        return pa.schema([f for f in schema if f.name not in ("window_start", "window_end")])

    def derive_event_time(self, inputs: list[Step]) -> tuple[str, int] | None:
        return inputs[0].event_time

    def describe(self) -> str:
        pairs = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on))
        return f"interval join on {pairs}, right time {self.lower_ms:+} .. {self.upper_ms:+} ms"


@dataclass(eq=False)
class LookupJoinStep(Step):
    table: LookupTable = field(kw_only=True)
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
                raise UnknownColumnError(f"{self.where}: key {unknown_column_message(key, schema.names)}")
        clash = [f.name for f in values if f.name in schema.names]
        if clash:
            raise ConfigError(f"{self.where}: lookup columns {clash} already exist in the stream; pass columns=[...]")
        return pa.schema([*schema, *(f.with_nullable(True) for f in values)])

    def describe(self) -> str:
        return f"lookup join on {', '.join(self.on)}"


@dataclass(eq=False)
class ChangelogLookupJoinStep(Step):
    """Enrich input 0 (probe) with the latest row per key of input 1 (the table stream)."""

    on: tuple[str, ...] = ()
    table_key: tuple[str, ...] = ()
    how: str = "left"
    columns: tuple[str, ...] | None = None
    suffix: str | None = None
    changelog_op: str | None = None

    def __post_init__(self) -> None:
        self.kind = "lookup_join"
        self.fusable = False
        if self.how not in ("left", "inner"):
            raise ConfigError(f"{self.where}: how must be 'left' or 'inner', got {self.how!r}")
        if not self.on or len(self.on) != len(self.table_key):
            raise ConfigError(f"{self.where}: on={self.on} must name as many columns as the table key {self.table_key}")
        if self.suffix is not None and (not isinstance(self.suffix, str) or not self.suffix):
            raise ConfigError(f"{self.where}: suffix must be a non-empty string, got {self.suffix!r}")
        self.key_types: list[pa.DataType] = []
        self.table_columns: list[str] = []
        self.value_fields: list[pa.Field] = []

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.on if input_index == 0 else self.table_key

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        probe, table = input_schemas
        for schema, upstream in ((probe, self.inputs[0]), (table, self.inputs[1])):
            if schema is None:
                raise BuildError(
                    f"{self.where}: the schema of stream {upstream!r} is not known before running, and a lookup join "
                    "against a stream needs both schemas to check keys and columns; declare it (TestingSource("
                    "schema=...), map_batches(output_schema=...), map_rows(schema=...))"
                )
        assert probe is not None and table is not None
        self.key_types = [self._key_type(probe, table, a, b) for a, b in zip(self.on, self.table_key)]
        if self.changelog_op is not None:
            if table.get_field_index(self.changelog_op) < 0:
                raise UnknownColumnError(
                    f"{self.where}: changelog_op {unknown_column_message(self.changelog_op, table.names)}")
            kind = table.field(self.changelog_op).type
            kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise ConfigError(f"{self.where}: changelog_op column {self.changelog_op!r} is {kind}; it must hold "
                                  "strings such as 'c', 'u', 'd' (cast or map it with with_columns first)")
        reserved = {*self.table_key, *([self.changelog_op] if self.changelog_op else [])}
        names = [n for n in table.names if n not in reserved]
        if self.columns is not None:
            for name in self.columns:
                if table.get_field_index(name) < 0:
                    raise UnknownColumnError(f"{self.where}: columns= {unknown_column_message(name, table.names)}")
                if name in reserved:
                    raise ConfigError(f"{self.where}: columns= names {name!r}, a key or change-kind column of the "
                                      "table; the probe's keys already carry the key, so leave it out")
            names = [n for n in names if n in self.columns]
        if KEY_GROUP_COLUMN in names:
            raise ConfigError(f"{self.where}: the table column name {KEY_GROUP_COLUMN!r} is reserved for checkpoints; "
                              "rename it or leave it out with columns=[...]")
        outputs = [n + self.suffix if self.suffix is not None and n in probe.names else n for n in names]
        clash = [n for n in outputs if n in probe.names]
        if clash:
            fix = ("pick other table columns with columns=[...], or rename them in the table stream "
                   "(.select(...) / .with_columns(...))")
            if self.suffix is None:
                fix = "pass suffix='_<table>' to rename the table's copies, " + fix
            raise ConfigError(f"{self.where}: table column(s) {clash} of stream {self.inputs[1]!r} already exist in "
                              f"stream {self.inputs[0]!r}; {fix}")
        self.table_columns = names
        self.value_fields = [table.field(n).with_name(o).with_nullable(True) for n, o in zip(names, outputs)]
        return pa.schema([*probe, *self.value_fields])

    def _key_type(self, probe: pa.Schema, table: pa.Schema, probe_key: str, table_key: str) -> pa.DataType:
        for name, schema, side in ((probe_key, probe, self.inputs[0]), (table_key, table, self.inputs[1])):
            if schema.get_field_index(name) < 0:
                raise UnknownColumnError(f"{self.where}: key of stream {side!r}: "
                                         f"{unknown_column_message(name, schema.names)}")
        probe_type, table_type = probe.field(probe_key).type, table.field(table_key).type
        for name, kind in ((probe_key, probe_type), (table_key, table_type)):
            if join_key_type(kind) is None:
                raise ConfigError(f"{self.where}: key column {name!r} has type {kind}, which cannot be a join key; "
                                  "join on integer, string, binary, float, boolean or temporal columns")
        common = join_key_type(probe_type)
        if common != join_key_type(table_type):
            raise ConfigError(
                f"{self.where}: key {probe_key!r} is {probe_type} in stream {self.inputs[0]!r} but {table_key!r} is "
                f"{table_type} in table stream {self.inputs[1]!r}; cast one side first, e.g. "
                f".with_columns({table_key}=hw.col({table_key!r}).cast({str(probe_type)!r}))"
            )
        assert common is not None
        return common

    def describe(self) -> str:
        pairs = ", ".join(a if a == b else f"{a}={b}" for a, b in zip(self.on, self.table_key))
        changelog = f", changes in {self.changelog_op!r}" if self.changelog_op else ""
        return f"{self.how} lookup join on {pairs} against the latest rows of {self.inputs[1]}{changelog}"
