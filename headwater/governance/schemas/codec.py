"""Arrow schemas as JSON, and their fingerprints: how the schema registry stores a schema.

A registered schema is its fields' names, types and nullability, in order. Schema- and field-level metadata
(pandas' index notes, Parquet's field ids) is not part of it, so that two writers of the same columns agree on
one version. The encoding is plain JSON (never pickle): loading a stored schema runs no code, and a type this
codec does not know is refused on both sides rather than guessed.

Invariant: ``schema_from_json(schema_to_json(s))`` equals ``s`` without its metadata, and
``fingerprint(s)`` depends only on that JSON (sorted keys, no whitespace), so the same schema always has the
same fingerprint, in every process and on every database.

>>> import pyarrow as pa
>>> schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("tags", pa.list_(pa.string()))])
>>> schema_from_json(schema_to_json(schema)) == schema
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from headwater.errors import SchemaRegistryError

__all__ = ["fingerprint", "schema_from_json", "schema_to_json", "type_name"]

# Types without parameters: the JSON name is pyarrow's factory name.
_SIMPLE: dict[str, pa.DataType] = {
    name: getattr(pa, name)()
    for name in (
        "null", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "string", "large_string", "binary", "large_binary", "date32", "date64",
    )
}
_SIMPLE_NAMES = {kind: name for name, kind in _SIMPLE.items()}


def type_to_json(kind: pa.DataType) -> dict[str, Any]:
    """The JSON form of one Arrow type (``{"type": name, ...parameters}``)."""
    name = _SIMPLE_NAMES.get(kind)
    if name is not None:
        return {"type": name}
    if pa.types.is_timestamp(kind):
        return {"type": "timestamp", "unit": kind.unit, "tz": kind.tz}
    if pa.types.is_time32(kind) or pa.types.is_time64(kind):
        return {"type": "time32" if pa.types.is_time32(kind) else "time64", "unit": kind.unit}
    if pa.types.is_duration(kind):
        return {"type": "duration", "unit": kind.unit}
    if pa.types.is_decimal(kind):
        return {"type": f"decimal{kind.bit_width}", "precision": kind.precision, "scale": kind.scale}
    if pa.types.is_fixed_size_binary(kind):
        return {"type": "fixed_size_binary", "byte_width": kind.byte_width}
    if pa.types.is_fixed_size_list(kind):
        return {"type": "fixed_size_list", "item": field_to_json(kind.value_field), "size": kind.list_size}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return {"type": "list" if pa.types.is_list(kind) else "large_list", "item": field_to_json(kind.value_field)}
    if pa.types.is_struct(kind):
        return {"type": "struct", "fields": [field_to_json(kind.field(i)) for i in range(kind.num_fields)]}
    if pa.types.is_map(kind):
        return {"type": "map", "key": field_to_json(kind.key_field), "item": field_to_json(kind.item_field),
                "keys_sorted": kind.keys_sorted}
    if pa.types.is_dictionary(kind):
        return {"type": "dictionary", "index": type_to_json(kind.index_type), "value": type_to_json(kind.value_type),
                "ordered": kind.ordered}
    raise SchemaRegistryError(f"the schema registry cannot store Arrow type {kind}; cast the column to a plain type "
                              "(string, integers, floats, timestamps, decimals, lists, structs, maps, dictionaries)")


def type_from_json(data: dict[str, Any]) -> pa.DataType:
    """The Arrow type of :func:`type_to_json`'s output."""
    try:
        name = data["type"]
        if name in _SIMPLE:
            return _SIMPLE[name]
        if name == "timestamp":
            return pa.timestamp(data["unit"], data["tz"])
        if name in ("time32", "time64", "duration"):
            return getattr(pa, name)(data["unit"])
        if name in ("decimal32", "decimal64", "decimal128", "decimal256"):
            return getattr(pa, name)(data["precision"], data["scale"])
        if name == "fixed_size_binary":
            return pa.binary(data["byte_width"])
        if name == "fixed_size_list":
            return pa.list_(field_from_json(data["item"]), data["size"])
        if name == "list":
            return pa.list_(field_from_json(data["item"]))
        if name == "large_list":
            return pa.large_list(field_from_json(data["item"]))
        if name == "struct":
            return pa.struct([field_from_json(f) for f in data["fields"]])
        if name == "map":
            return pa.map_(field_from_json(data["key"]), field_from_json(data["item"]), data["keys_sorted"])
        if name == "dictionary":
            return pa.dictionary(type_from_json(data["index"]), type_from_json(data["value"]), data["ordered"])
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise SchemaRegistryError(f"stored schema type {data!r} is malformed: {exc}") from exc
    raise SchemaRegistryError(f"stored schema type {data!r} is unknown to this version of Headwater")


def field_to_json(field: pa.Field) -> dict[str, Any]:
    return {"name": field.name, "nullable": field.nullable, **type_to_json(field.type)}


def field_from_json(data: dict[str, Any]) -> pa.Field:
    try:
        return pa.field(data["name"], type_from_json(data), nullable=bool(data["nullable"]))
    except (KeyError, TypeError) as exc:
        raise SchemaRegistryError(f"stored schema field {data!r} is malformed: {exc}") from exc


def schema_to_json(schema: pa.Schema) -> str:
    """The canonical JSON text of ``schema`` (its fields; metadata dropped): sorted keys, no whitespace."""
    return json.dumps({"fields": [field_to_json(f) for f in schema]}, sort_keys=True, separators=(",", ":"))


def schema_from_json(text: str) -> pa.Schema:
    try:
        data = json.loads(text)
        fields = data["fields"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SchemaRegistryError(f"stored schema is not valid schema JSON: {exc}") from exc
    return pa.schema([field_from_json(f) for f in fields])


def fingerprint(schema: pa.Schema) -> str:
    """SHA-256 (hex) of :func:`schema_to_json`: equal schemas (ignoring metadata) have equal fingerprints."""
    return hashlib.sha256(schema_to_json(schema).encode()).hexdigest()


def type_name(kind: pa.DataType) -> str:
    """How messages name a type: Arrow's spelling (``int64``, ``timestamp[ms, tz=UTC]``), but floats by their
    factory names (``float32``, not Arrow's ``float``), as hw.col(...).cast() spells them."""
    return _FLOAT_NAMES.get(kind) or str(kind)


_FLOAT_NAMES = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}
