"""Logical steps of data quality: validation, its quarantined rows and its statistical findings.

A :class:`ValidateStep` passes the rows that satisfy every rule on its main output; the rows that fail go to
its ``"invalid"`` port (:data:`~headwater.core.ports.INVALID_PORT`) with two added columns, ``rule`` (the name
of the first rule the row failed) and ``reason``; drift findings go to its ``"findings"`` port. Side-output steps
(:class:`InvalidRecordsStep`, :class:`QualityFindingsStep`) read those ports, as late records are read from a
window. A step with a :func:`~headwater.rules.unique_within` rule is keyed by that rule's columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from headwater.core.ports import FINDINGS_PORT, INVALID_PORT, MAIN_PORT
from headwater.errors import BuildError, ConfigError
from headwater.logical.base import SideOutputStep, Step
from headwater.rules import FINDINGS_SCHEMA, DriftCheck, Rule

QUARANTINE_COLUMNS = ("rule", "reason")


@dataclass(eq=False)
class ValidateStep(Step):
    rules: tuple[Rule, ...] = ()
    checks: tuple[DriftCheck, ...] = ()
    #: Alert when the dataset's quality score (share of rows passing) drops below this.
    threshold: float = 0.99
    alert_webhook: str | None = None

    def __post_init__(self) -> None:
        self.kind = "validate"
        self.output_ports = (MAIN_PORT, INVALID_PORT, FINDINGS_PORT)
        if not self.rules and not self.checks:
            raise ConfigError(f"{self.where}: validate() needs at least one rule, e.g. hw.rules.not_null('price')")
        for rule in self.all_rules:
            if not isinstance(rule, (Rule, DriftCheck)):
                raise ConfigError(f"{self.where}: {rule!r} is not a rule; use the functions of hw.rules "
                                  "(not_null, between, one_of, matches, unique_within, fresh_within, check, drift)")
        names = [r.name for r in self.all_rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{self.where}: two rules are named {', '.join(map(repr, repeated))}; give one of "
                              "them another name with name=... (quarantined rows and metrics are labelled by it)")
        keyed = {r.columns for r in self.rules if r.stateful}
        if len(keyed) > 1:
            raise ConfigError(f"{self.where}: unique_within() rules over different columns ({sorted(keyed)}) cannot "
                              "share one validate step (it is partitioned by them); split it into two validate steps")
        self.fusable = not keyed
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold <= 1:
            raise ConfigError(f"{self.where}: threshold is a share of rows between 0 and 1, got {self.threshold!r}")
        if self.alert_webhook is not None and (
                not isinstance(self.alert_webhook, str) or not self.alert_webhook.startswith(("http://", "https://"))):
            raise ConfigError(f"{self.where}: alert_webhook must be an http:// or https:// URL, got {self.alert_webhook!r}")
        self.input_schema: pa.Schema | None = None

    def derive_schema(self, input_schemas: list[pa.Schema | None]) -> pa.Schema | None:
        schema = self.input_schema = input_schemas[0]
        if schema is None:
            return None
        for rule in self.all_rules:
            rule.bind(schema, self.where)
        clash = [c for c in QUARANTINE_COLUMNS if schema.get_field_index(c) >= 0]
        if clash:
            raise ConfigError(f"{self.where}: the input already has column(s) {', '.join(map(repr, clash))}, which "
                              "quarantined rows add; rename them with select(...) before validate()")
        return schema

    def port_schema(self, port: str) -> pa.Schema | None:
        if port == FINDINGS_PORT:
            return FINDINGS_SCHEMA
        if port != INVALID_PORT:
            return super().port_schema(port)
        if self.input_schema is None:
            return None
        return self.input_schema.append(pa.field("rule", pa.string())).append(pa.field("reason", pa.string()))

    def port_event_time(self, port: str) -> tuple[str, int] | None:
        if port == INVALID_PORT:
            return self.event_time
        if port == FINDINGS_PORT:
            return None
        return super().port_event_time(port)

    @property
    def all_rules(self) -> tuple[Rule | DriftCheck, ...]:
        return (*self.rules, *self.checks)

    @property
    def keys(self) -> tuple[str, ...]:
        return next((r.columns for r in self.rules if r.stateful), ())

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys or None

    def input_columns(self, needed: tuple[str, ...] | None, input_index: int) -> tuple[str, ...] | None:
        if needed is None:
            return None
        columns = list(needed)
        for rule in self.all_rules:
            for c in (rule.columns if isinstance(rule, Rule) else (rule.column,)):
                if c not in columns:
                    columns.append(c)
        if self.event_time is not None and self.event_time[0] not in columns:
            columns.append(self.event_time[0])
        return tuple(columns)

    def describe(self) -> str:
        return f"validate {', '.join(r.name for r in self.all_rules)}"


@dataclass(eq=False)
class InvalidRecordsStep(SideOutputStep):
    """The ``"invalid"`` port of a validation: input rows that failed a rule, with ``rule`` and ``reason``
    (``stream.invalid_records()``)."""

    port: str = field(default=INVALID_PORT)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "invalid_records"

    def bind(self, inputs: list[Step]) -> None:
        if not isinstance(inputs[0], ValidateStep):
            raise BuildError(f"{self.where}: step {inputs[0].step_id!r} validates nothing; use invalid_records() on "
                             "the result of stream.validate(...)")
        super().bind(inputs)

    def describe(self) -> str:
        return f"invalid records of {self.inputs[0]}"


@dataclass(eq=False)
class QualityFindingsStep(SideOutputStep):
    """The ``"findings"`` port of a validation: one row per statistic that drifted from its baseline window
    (``stream.quality_findings()``)."""

    port: str = field(default=FINDINGS_PORT)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "quality_findings"

    def bind(self, inputs: list[Step]) -> None:
        upstream = inputs[0]
        if not isinstance(upstream, ValidateStep) or not upstream.checks:
            raise BuildError(f"{self.where}: step {upstream.step_id!r} has no statistical checks; use "
                             "quality_findings() on the result of stream.validate(..., hw.rules.drift(column))")
        super().bind(inputs)

    def describe(self) -> str:
        return f"quality findings of {self.inputs[0]}"
