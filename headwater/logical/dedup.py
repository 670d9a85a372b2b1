"""Deduplication: the first record per key within an event-time horizon passes, repeats are dropped."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from headwater.errors import ConfigError, UnknownColumnError, unknown_column_message
from headwater.logical.base import Step


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
                    raise UnknownColumnError(f"{self.where}: key {unknown_column_message(key, schema.names)}")
        return schema

    def partition_keys(self, input_index: int) -> tuple[str, ...] | None:
        return self.keys

    def describe(self) -> str:
        return f"deduplicate by {', '.join(self.keys)} within {self.within_ms} ms"
