"""Avro schemas and their Arrow equivalents, shared by the decoding (sources) and encoding (sinks) sides.

Only flat records map automatically: primitive fields, ``["null", T]`` unions as nullable ``T`` and the
``timestamp-millis``/``timestamp-micros`` logical types; anything else needs an explicit Arrow schema.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from headwater.errors import ConfigError

__all__ = ["AVRO_PRIMITIVES", "arrow_schema_of_avro"]

AVRO_PRIMITIVES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(), "int": pa.int32(), "long": pa.int64(), "float": pa.float32(), "double": pa.float64(),
    "bytes": pa.binary(), "string": pa.string(),
}


def arrow_schema_of_avro(avro_schema: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a flat Avro record: primitive fields, ``["null", T]`` unions as nullable ``T``, the
    ``timestamp-millis``/``timestamp-micros`` logical types as timestamps. Anything else: pass ``schema=``."""
    fields = []
    for field_ in avro_schema.get("fields", []):
        kind = field_["type"]
        nullable = False
        if isinstance(kind, list):
            others = [k for k in kind if k != "null"]
            nullable = len(others) < len(kind)
            if len(others) != 1:
                raise ConfigError(f"Avro field {field_['name']!r}: union {kind} has no Arrow equivalent; pass schema=")
            kind = others[0]
        if isinstance(kind, dict) and kind.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            unit = "ms" if kind["logicalType"] == "timestamp-millis" else "us"
            fields.append(pa.field(field_["name"], pa.timestamp(unit, tz="UTC"), nullable=nullable))
            continue
        if not isinstance(kind, str) or kind not in AVRO_PRIMITIVES:
            raise ConfigError(f"Avro field {field_['name']!r} of type {kind!r} has no automatic Arrow type; pass schema=")
        fields.append(pa.field(field_["name"], AVRO_PRIMITIVES[kind], nullable=nullable))
    return pa.schema(fields)
