"""The Python DSL: an inert dataflow of uniquely named steps.

Example::

    import headwater as hw
    from headwater.sources import NexmarkSource
    from headwater.sinks import ParquetSink

    flow = hw.Dataflow("auctions")
    bids = flow.source("bids", NexmarkSource(events=1_000_000))
    eur = bids.filter(hw.col("price") > 100).with_columns(price_eur=hw.col("price") * 0.908)
    per_auction = eur.key_by("auction").aggregate(bids=hw.count(), top=hw.max("price_eur"))
    per_auction.sink("out", ParquetSink("out/per_auction"))
    hw.run(flow)

Building a dataflow runs nothing: it records steps, checks each one against its inputs' schemas as soon as it
is added (unknown columns and impossible expressions fail right there, naming the step), and can be printed
or drawn as Mermaid. Step ids are unique and stable: checkpoints key state on them, so give stateful steps an
explicit ``step_id`` before you rely on restoring state across pipeline changes. Steps without an explicit id
are named ``<operation>_<n>`` in order of creation.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

from headwater.aggregations import Aggregation, Emit
from headwater.errors import (
    BuildError,
    ConfigError,
    DuplicateStepError,
    InvalidStepIdError,
    UnknownColumnError,
    unknown_column_message,
)
from headwater.expressions import Expr, col, lit
from headwater.logical import (
    AggregateStep,
    ChangelogLookupJoinStep,
    DeadLettersStep,
    DeduplicateStep,
    FilterStep,
    IntervalJoinStep,
    InvalidRecordsStep,
    LateRecordsStep,
    LookupJoinStep,
    MapBatchesStep,
    MapRowsStep,
    ProjectStep,
    QualityFindingsStep,
    SessionWindowStep,
    SinkStep,
    SourceStep,
    Step,
    UnionStep,
    ValidateStep,
    WindowAggregateStep,
    WindowJoinStep,
)
from headwater.rules import DriftCheck, Rule
from headwater.sinks.base import Sink
from headwater.sources.base import Source
from headwater.sources.lookup_table import LookupTable
from headwater.windows import SessionWindow, SlidingWindow, TumblingWindow, Window

_STEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class Dataflow:
    """A named graph of steps. Create streams with :meth:`source`; run with ``hw.run(flow)``."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _STEP_ID.match(name):
            raise InvalidStepIdError(
                f"dataflow name {name!r} is invalid: use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        self.name = name
        self.steps: dict[str, Step] = {}
        self._counters: dict[str, int] = {}
        #: step ids this dataflow generated (``filter_1``) rather than the user chose; the schema registry
        #: versions only chosen ones (generated ids are renumbered when the dataflow changes)
        self.generated_ids: set[str] = set()

    # -- building -------------------------------------------------------------------------------------------
    def source(
        self, step_id: str, source: Source, *, event_time: str | None = None,
        max_out_of_orderness: timedelta = timedelta(0), idle_timeout: timedelta | None = None,
    ) -> Stream:
        """Add a source step; returns the stream of its batches.

        ``event_time`` names the column holding each record's event time (a timestamp, or integer
        milliseconds); watermarks then follow it per source partition, trailing the largest time seen by
        ``max_out_of_orderness``. A partition without data for ``idle_timeout`` stops holding the watermark back.
        """
        if not isinstance(source, Source):
            raise ConfigError(
                f"step {step_id!r}: {source!r} is not a headwater Source; use one from headwater.sources "
                "or subclass headwater.sources.base.Source"
            )
        for name, value in (("max_out_of_orderness", max_out_of_orderness), ("idle_timeout", idle_timeout)):
            if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
                raise ConfigError(f"step {step_id!r}: {name} must be a non-negative datetime.timedelta, got {value!r}")
        step = SourceStep(
            self._check_id(step_id), (), source=source, time_column=event_time,
            out_of_orderness_ms=int(max_out_of_orderness / timedelta(milliseconds=1)),
            idle_timeout_ms=None if idle_timeout is None else int(idle_timeout / timedelta(milliseconds=1)),
        )
        return self._add(step)

    def with_source(self, step_id: str, source: Source) -> Dataflow:
        """A copy of this dataflow in which source step ``step_id`` reads ``source`` instead (same step id, event
        time and everything downstream), e.g. to replay dead letters. ``source`` must have the same schema."""
        step = self.steps.get(step_id)
        if not isinstance(step, SourceStep):
            sources = [s for s, v in self.steps.items() if isinstance(v, SourceStep)]
            raise ConfigError(f"dataflow {self.name!r} has no source step {step_id!r} (its sources: {', '.join(sources)})")
        if not isinstance(source, Source):
            raise ConfigError(f"step {step_id!r}: {source!r} is not a headwater Source")
        if source.schema() != step.source.schema():
            raise ConfigError(f"step {step_id!r}: the new source's schema {source.schema()} differs from the "
                              f"step's {step.source.schema()}")
        copied = Dataflow(self.name)
        copied.steps = dict(self.steps)
        replaced = copy.copy(step)
        replaced.source = source
        copied.steps[step_id] = replaced
        copied._counters = dict(self._counters)
        copied.generated_ids = set(self.generated_ids)
        return copied

    def _auto_id(self, kind: str) -> str:
        n = self._counters.get(kind, 0)
        while True:
            n += 1
            candidate = f"{kind}_{n}"
            if candidate not in self.steps:
                self._counters[kind] = n
                self.generated_ids.add(candidate)
                return candidate

    def _check_id(self, step_id: str) -> str:
        if not isinstance(step_id, str) or not _STEP_ID.match(step_id):
            raise InvalidStepIdError(
                f"step id {step_id!r} is invalid: use 1-128 letters, digits, '_', '-' or '.', starting with a "
                "letter or digit (step ids name checkpoint state on disk)"
            )
        if step_id in self.steps:
            raise DuplicateStepError(
                f"step {step_id!r} already exists in dataflow {self.name!r}; two steps with the same id? "
                "Give each step a unique step_id"
            )
        return step_id

    def _add(self, step: Step) -> Stream:
        bind = getattr(step, "bind", None)
        if bind is not None:
            bind([self.steps[i] for i in step.inputs])
        step.schema = step.derive_schema([self.steps[i].schema for i in step.inputs])
        step.event_time = step.derive_event_time([self.steps[i] for i in step.inputs])
        self.steps[step.step_id] = step
        return Stream(self, step.step_id)

    # -- inspecting -----------------------------------------------------------------------------------------
    def consumers(self, step_id: str) -> list[str]:
        return [s.step_id for s in self.steps.values() if step_id in s.inputs]

    def validate(self) -> None:
        """Whole-graph checks done before planning: at least one source and one sink, no dangling streams."""
        if not any(isinstance(s, SourceStep) for s in self.steps.values()):
            raise BuildError(f"dataflow {self.name!r} has no source; add one with flow.source(step_id, source)")
        if not any(isinstance(s, SinkStep) for s in self.steps.values()):
            raise BuildError(
                f"dataflow {self.name!r} has no sink, so it would compute nothing visible; end a stream with "
                ".sink(step_id, sink) (headwater.sinks.ConsoleSink() prints)"
            )
        dangling = [s.step_id for s in self.steps.values() if not isinstance(s, SinkStep) and not self.consumers(s.step_id)]
        if dangling:
            raise BuildError(
                f"dataflow {self.name!r}: the output of step(s) {', '.join(map(repr, dangling))} goes nowhere; "
                "end each stream with .sink(step_id, sink) or remove the step"
            )

    def __str__(self) -> str:
        lines = [f"Dataflow {self.name!r}"]
        for step in self.steps.values():
            source = f" <- {', '.join(step.inputs)}" if step.inputs else ""
            lines.append(f"  {step.step_id}: {step.describe()}{source}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Dataflow({self.name!r}, steps={list(self.steps)})"

    def to_mermaid(self) -> str:
        """The logical graph as a Mermaid flowchart (paste into any Markdown that renders Mermaid)."""
        lines = ["flowchart LR"]
        ids = {step_id: f"s{i}" for i, step_id in enumerate(self.steps)}
        for step in self.steps.values():
            label = f"{step.step_id}<br/>{step.describe()}".replace('"', "'")
            lines.append(f'  {ids[step.step_id]}["{label}"]')
        for step in self.steps.values():
            for upstream in step.inputs:
                lines.append(f"  {ids[upstream]} --> {ids[step.step_id]}")
        return "\n".join(lines)


def _as_expr(value: Expr | str) -> Expr:
    return col(value) if isinstance(value, str) else value


class Stream:
    """The output of one step; every method adds a step and returns the new stream."""

    def __init__(self, flow: Dataflow, step_id: str) -> None:
        self.flow = flow
        self.step_id = step_id

    @property
    def schema(self) -> pa.Schema | None:
        """The stream's schema when known before running."""
        return self.flow.steps[self.step_id].schema

    def _next_id(self, kind: str, step_id: str | None) -> str:
        return self.flow._check_id(step_id) if step_id is not None else self.flow._auto_id(kind)

    def filter(self, predicate: Expr, *, step_id: str | None = None) -> Stream:
        """Keep rows where ``predicate`` holds, e.g. ``hw.col("price") > 100``."""
        if not isinstance(predicate, Expr):
            raise ConfigError(f"filter() takes an expression such as hw.col('price') > 100, got {predicate!r}")
        return self.flow._add(FilterStep(self._next_id("filter", step_id), (self.step_id,), predicate=predicate))

    def select(self, *columns: Expr | str, step_id: str | None = None, **named: Expr) -> Stream:
        """Output exactly these columns: names, expressions (``expr.alias("x")``) or ``name=expr``."""
        outputs = [(_as_expr(c).default_name(), _as_expr(c)) for c in columns]
        outputs += [(name, _as_expr(expr)) for name, expr in named.items()]
        new_id = self._next_id("select", step_id)
        return self.flow._add(ProjectStep(new_id, (self.step_id,), outputs=tuple(outputs), keep_input=False))

    def with_columns(self, *columns: Expr, step_id: str | None = None, **named: Expr | Any) -> Stream:
        """Add or replace columns, keeping the others: ``with_columns(price_eur=hw.col("price") * 0.908)``."""
        outputs = [(c.default_name(), c) for c in columns]
        outputs += [(name, _as_expr_or_literal(expr)) for name, expr in named.items()]
        new_id = self._next_id("with_columns", step_id)
        return self.flow._add(ProjectStep(new_id, (self.step_id,), outputs=tuple(outputs), keep_input=True))

    def map_batches(
        self,
        fn: Callable[[pa.RecordBatch], Any] | type,
        *,
        concurrency: int | None = None,
        num_cpus: float | None = None,
        fn_constructor_args: Sequence[Any] = (),
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        output_schema: pa.Schema | None = None,
        step_id: str | None = None,
    ) -> Stream:
        """Apply a vectorised function (or a class, constructed once per actor) to every batch.

        ``concurrency`` sets the number of actors for this step and ``num_cpus`` the CPUs each reserves; with
        either, the step runs on its own actors (an actor pool, as in Ray Data) instead of being fused.
        """
        step = MapBatchesStep(
            self._next_id("map_batches", step_id), (self.step_id,), fn=fn, concurrency=concurrency,
            cpus=num_cpus, constructor_args=tuple(fn_constructor_args),
            constructor_kwargs=fn_constructor_kwargs, output_schema=output_schema,
        )
        return self.flow._add(step)

    def map_rows(
        self, fn: Callable[[dict[str, Any]], dict[str, Any] | None], *, schema: pa.Schema | None = None,
        step_id: str | None = None,
    ) -> Stream:
        """Per-row convenience: ``fn(row_dict) -> dict`` (``None`` drops the row). Costs Python per row."""
        return self.flow._add(MapRowsStep(self._next_id("map_rows", step_id), (self.step_id,), fn=fn,
                                          output_schema=schema))

    def flat_map(
        self, fn: Callable[[dict[str, Any]], Any], *, schema: pa.Schema | None = None, step_id: str | None = None
    ) -> Stream:
        """Per-row convenience: ``fn(row_dict) -> iterable of dicts``."""
        return self.flow._add(MapRowsStep(self._next_id("flat_map", step_id), (self.step_id,), fn=fn, flat=True,
                                          output_schema=schema))

    def key_by(self, *columns: str | Sequence[str]) -> KeyedStream:
        """Partition by the given key column(s) for a keyed, stateful step (``aggregate``)."""
        flat: list[str] = []
        for c in columns:
            flat.extend([c] if isinstance(c, str) else list(c))
        if not flat or not all(isinstance(c, str) and c for c in flat):
            raise ConfigError(f"key_by() takes column names, got {columns!r}")
        schema = self.schema
        if schema is not None:
            for c in flat:
                if schema.get_field_index(c) < 0:
                    raise UnknownColumnError(
                        f"key_by after step {self.step_id!r}: {unknown_column_message(c, schema.names)}"
                    )
                kind = schema.field(c).type
                if pa.types.is_nested(kind) or pa.types.is_null(kind):
                    raise ConfigError(
                        f"key_by after step {self.step_id!r}: column {c!r} has type {kind}, which cannot be a key; "
                        "key by primitive, temporal or string columns"
                    )
        return KeyedStream(self, tuple(flat))

    def union(self, *others: Stream, step_id: str | None = None) -> Stream:
        """Merge this stream with ``others`` (same schema) into one."""
        for other in others:
            if not isinstance(other, Stream) or other.flow is not self.flow:
                raise ConfigError("union() takes streams of the same dataflow")
        inputs = (self.step_id, *(o.step_id for o in others))
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"union() got the same stream twice: {inputs}")
        return self.flow._add(UnionStep(self._next_id("union", step_id), inputs))

    def window(
        self, window: Window, *, allowed_lateness: timedelta = timedelta(0), early_interval: timedelta | None = None
    ) -> WindowedStream:
        """Group the whole stream into event-time windows (one global window per time range; runs as one
        subtask — key_by(...) first to parallelise)."""
        return WindowedStream(self, (), window, allowed_lateness, early_interval)

    def late_records(self, *, step_id: str | None = None) -> Stream:
        """The records a window aggregation dropped as too late, with ``late_reason`` and ``lateness_ms``."""
        return self.flow._add(LateRecordsStep(self._next_id("late_records", step_id), (self.step_id,)))

    def validate(
        self, *rules: Rule | DriftCheck, step_id: str | None = None, threshold: float = 0.99,
        alert_webhook: str | None = None,
    ) -> Stream:
        """The rows that pass every rule of :mod:`hw.rules <headwater.rules>`; :meth:`invalid_records` of the
        result are the rows that fail, with ``rule`` (the first rule failed) and ``reason``, and
        :meth:`quality_findings` the drift of ``hw.rules.drift(...)`` checks. Counts per rule are in the job's
        metrics (``JobResult.quality``); when a subtask's share of passing rows drops below ``threshold`` it
        logs a warning and, with ``alert_webhook``, POSTs the figures there (see docs/governance.md)."""
        step = ValidateStep(
            self._next_id("validate", step_id), (self.step_id,),
            rules=tuple(r for r in rules if not isinstance(r, DriftCheck)),
            checks=tuple(r for r in rules if isinstance(r, DriftCheck)), threshold=threshold,
            alert_webhook=alert_webhook,
        )
        return self.flow._add(step)

    def invalid_records(self, *, step_id: str | None = None) -> Stream:
        """The rows a :meth:`validate` step quarantined: its input rows plus ``rule`` and ``reason``."""
        return self.flow._add(InvalidRecordsStep(self._next_id("invalid_records", step_id), (self.step_id,)))

    def quality_findings(self, *, step_id: str | None = None) -> Stream:
        """The statistical findings of a :meth:`validate` step's drift checks (:data:`hw.rules.FINDINGS_SCHEMA
        <headwater.rules.FINDINGS_SCHEMA>`)."""
        return self.flow._add(QualityFindingsStep(self._next_id("quality_findings", step_id), (self.step_id,)))

    def dead_letters(self, *, step_id: str | None = None) -> Stream:
        """The records this source could not decode or convert, one row each with the raw ``payload`` and
        ``key``, ``source_step``, ``partition``, ``position``, ``reason``, ``error``, ``event_time`` and
        ``dead_lettered_at`` (:data:`headwater.core.dead_letters.DEAD_LETTER_SCHEMA`). Sink it anywhere; the
        pipeline keeps running. ``headwater dlq replay`` feeds stored dead letters back in."""
        return self.flow._add(DeadLettersStep(self._next_id("dead_letters", step_id), (self.step_id,)))

    def join(
        self, other: Stream, *, window: TumblingWindow, on: str | Sequence[str] | None = None,
        left_on: str | Sequence[str] | None = None, right_on: str | Sequence[str] | None = None,
        step_id: str | None = None,
    ) -> Stream:
        """Inner equi-join with ``other``: rows with equal keys whose event times fall in the same tumbling
        ``window``. Keys: ``on`` (same names on both sides) or ``left_on``/``right_on``."""
        if not isinstance(other, Stream) or other.flow is not self.flow:
            raise ConfigError("join() takes a stream of the same dataflow")
        if not isinstance(window, TumblingWindow):
            raise ConfigError("join() supports TumblingWindow windows")
        if on is not None:
            left_on = right_on = on
        if left_on is None or right_on is None:
            raise ConfigError("join() needs on=... or both left_on=... and right_on=...")
        left = (left_on,) if isinstance(left_on, str) else tuple(left_on)
        right = (right_on,) if isinstance(right_on, str) else tuple(right_on)
        step = WindowJoinStep(self._next_id("join", step_id), (self.step_id, other.step_id), left_on=left,
                              right_on=right, window=window)
        return self.flow._add(step)

    def interval_join(
        self, other: Stream, *, lower: timedelta, upper: timedelta, on: str | Sequence[str] | None = None,
        left_on: str | Sequence[str] | None = None, right_on: str | Sequence[str] | None = None,
        step_id: str | None = None,
    ) -> Stream:
        """Inner equi-join with ``other`` where ``other.time + lower <= self.time <= other.time + upper``; matches
        are emitted as soon as both rows arrived."""
        if not isinstance(other, Stream) or other.flow is not self.flow:
            raise ConfigError("interval_join() takes a stream of the same dataflow")
        if on is not None:
            left_on = right_on = on
        if left_on is None or right_on is None:
            raise ConfigError("interval_join() needs on=... or both left_on=... and right_on=...")
        for name, value in (("lower", lower), ("upper", upper)):
            if not isinstance(value, timedelta):
                raise ConfigError(f"interval_join() {name} must be a datetime.timedelta, got {value!r}")
        step = IntervalJoinStep(
            self._next_id("interval_join", step_id), (self.step_id, other.step_id),
            left_on=(left_on,) if isinstance(left_on, str) else tuple(left_on),
            right_on=(right_on,) if isinstance(right_on, str) else tuple(right_on),
            window=None, lower_ms=int(lower / timedelta(milliseconds=1)), upper_ms=int(upper / timedelta(milliseconds=1)),
        )
        return self.flow._add(step)

    def lookup_join(
        self, table: LookupTable | Stream, *, on: str | Sequence[str], how: str = "left",
        columns: Sequence[str] | None = None, table_key: str | Sequence[str] | None = None,
        changelog_op: str | None = None, suffix: str | None = None, step_id: str | None = None,
    ) -> Stream:
        """Enrich each record with the columns of the row of ``table`` whose key equals ``on``; ``how="left"``
        keeps records without a row (nulls), ``how="inner"`` drops them. ``columns`` picks the table columns
        to add.

        ``table`` is either a :class:`headwater.LookupTable` (Parquet or SQL, reloaded on a timer), or a
        stream of this dataflow — a changelog such as a CDC stream of ``users`` rows. Then the step keeps the
        latest row per key as checkpointed keyed state, both streams are hash-partitioned by their keys, and
        each record gets the row current when it is processed (no waiting for a row that has not arrived).
        Options of the stream form: ``table_key`` (the table stream's key columns, default ``on``),
        ``changelog_op`` (a column of change kinds: ``"d"``/``"delete"``/``"-D"`` remove the key's row,
        ``"c"``/``"r"``/``"u"``/``"insert"``/``"update"``/``"upsert"``/``"+I"``/``"+U"`` replace it, ``"-U"``
        is skipped; without it every row is an upsert), ``suffix`` (appended to table columns whose names the
        stream already has; without it such a clash fails at build time). Example::

            users = flow.source("users_cdc", users_source)
            orders.lookup_join(users, on="user_id", changelog_op="op", step_id="with_user")
        """
        if isinstance(table, Stream):
            if table.flow is not self.flow:
                raise ConfigError("lookup_join() takes a stream of the same dataflow as its table")
            if table.step_id == self.step_id:
                raise ConfigError(f"lookup_join(): stream {self.step_id!r} cannot be its own table")
            probe_keys = (on,) if isinstance(on, str) else tuple(on)
            keys = probe_keys if table_key is None else (table_key,) if isinstance(table_key, str) else tuple(table_key)
            changelog = ChangelogLookupJoinStep(
                self._next_id("lookup_join", step_id), (self.step_id, table.step_id), on=probe_keys, table_key=keys,
                how=how, columns=tuple(columns) if columns is not None else None, suffix=suffix,
                changelog_op=changelog_op,
            )
            return self.flow._add(changelog)
        if not isinstance(table, LookupTable):
            raise ConfigError("lookup_join() takes a hw.LookupTable (LookupTable.parquet(...) or LookupTable.sql(...)) "
                              "or a stream of the same dataflow")
        for name, value in (("table_key", table_key), ("changelog_op", changelog_op), ("suffix", suffix)):
            if value is not None:
                raise ConfigError(f"lookup_join(): {name}= applies when the table is a stream; a LookupTable "
                                  "names its key with LookupTable.parquet/sql(key=...)")
        step = LookupJoinStep(self._next_id("lookup_join", step_id), (self.step_id,), table=table,
                              on=(on,) if isinstance(on, str) else tuple(on), how=how,
                              columns=tuple(columns) if columns is not None else None)
        return self.flow._add(step)

    def sink(self, step_id: str, sink: Sink) -> None:
        """Write the stream to ``sink`` (a terminal step)."""
        if not isinstance(sink, Sink):
            raise ConfigError(
                f"step {step_id!r}: {sink!r} is not a headwater Sink; use one from headwater.sinks"
            )
        self.flow._add(SinkStep(self.flow._check_id(step_id), (self.step_id,), sink=sink))

    def __repr__(self) -> str:
        return f"Stream({self.flow.name}.{self.step_id})"


def _as_expr_or_literal(value: Any) -> Expr:
    return value if isinstance(value, Expr) else lit(value)


class KeyedStream:
    """A stream partitioned by key: the input of keyed, stateful steps."""

    def __init__(self, stream: Stream, keys: tuple[str, ...]) -> None:
        self.stream = stream
        self.keys = keys

    def aggregate(self, *, step_id: str | None = None, emit: Emit = "updates", **aggregations: Aggregation) -> Stream:
        """Running aggregates per key: ``aggregate(bids=hw.count(), total=hw.sum("price"))``.

        ``emit="updates"`` (default) emits each touched key's current values after every batch (a changelog:
        the last row per key is its result); ``emit="final"`` emits one row per key when the input ends.
        """
        flow = self.stream.flow
        step = AggregateStep(
            self.stream._next_id("aggregate", step_id), (self.stream.step_id,), keys=self.keys,
            aggregations=tuple(aggregations.items()), emit=emit,
        )
        return flow._add(step)

    def deduplicate(self, *, within: timedelta, step_id: str | None = None) -> Stream:
        """Drop records whose key already passed less than ``within`` earlier (event time if the stream has
        one, else arrival time)."""
        if not isinstance(within, timedelta):
            raise ConfigError(f"deduplicate(within=...) takes a datetime.timedelta, got {within!r}")
        step = DeduplicateStep(self.stream._next_id("deduplicate", step_id), (self.stream.step_id,),
                               keys=self.keys, within_ms=int(within / timedelta(milliseconds=1)))
        return self.stream.flow._add(step)

    def window(
        self, window: Window, *, allowed_lateness: timedelta = timedelta(0), early_interval: timedelta | None = None
    ) -> WindowedStream:
        """Per-key event-time windows: ``.window(hw.TumblingWindow(seconds=10)).aggregate(n=hw.count())``.

        ``allowed_lateness`` keeps windows open for late records (re-emitting updated results);
        ``early_interval`` also emits open windows' current results periodically (processing time)."""
        return WindowedStream(self.stream, self.keys, window, allowed_lateness, early_interval)

    def __repr__(self) -> str:
        return f"KeyedStream({self.stream!r}, keys={self.keys})"


class WindowedStream:
    """A stream grouped into event-time windows (optionally per key), awaiting ``aggregate``."""

    def __init__(
        self, stream: Stream, keys: tuple[str, ...], window: Window, allowed_lateness: timedelta,
        early_interval: timedelta | None = None,
    ) -> None:
        if not isinstance(window, (TumblingWindow, SlidingWindow, SessionWindow)):
            raise ConfigError(f"window() takes hw.TumblingWindow, hw.SlidingWindow or hw.SessionWindow, got {window!r}")
        if not isinstance(allowed_lateness, timedelta) or allowed_lateness < timedelta(0):
            raise ConfigError(f"allowed_lateness must be a non-negative datetime.timedelta, got {allowed_lateness!r}")
        self.stream = stream
        self.keys = keys
        self.window = window
        self.allowed_lateness_ms = int(allowed_lateness / timedelta(milliseconds=1))
        if early_interval is not None and (not isinstance(early_interval, timedelta) or early_interval <= timedelta(0)):
            raise ConfigError(f"early_interval must be a positive datetime.timedelta, got {early_interval!r}")
        if early_interval is not None and isinstance(window, SessionWindow):
            raise ConfigError("early_interval is not supported for session windows")
        self.early_ms = None if early_interval is None else int(early_interval / timedelta(milliseconds=1))

    def aggregate(self, *, step_id: str | None = None, **aggregations: Aggregation) -> Stream:
        """Aggregates per window (and key), emitted when the watermark passes the window's end; results carry
        ``window_start`` and ``window_end``."""
        if isinstance(self.window, SessionWindow):
            step: Step = SessionWindowStep(
                self.stream._next_id("session_window", step_id), (self.stream.step_id,), keys=self.keys,
                window=self.window, aggregations=tuple(aggregations.items()),
                allowed_lateness_ms=self.allowed_lateness_ms,
            )
        else:
            step = WindowAggregateStep(
                self.stream._next_id("window", step_id), (self.stream.step_id,), keys=self.keys,
                window=self.window, aggregations=tuple(aggregations.items()),
                allowed_lateness_ms=self.allowed_lateness_ms, early_ms=self.early_ms,
            )
        return self.stream.flow._add(step)

    def __repr__(self) -> str:
        return f"WindowedStream({self.stream!r}, keys={self.keys}, {self.window!r})"
