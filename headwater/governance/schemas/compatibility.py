"""Compatibility modes of the schema registry, and the check of a new schema against the latest version.

The modes are those of Avro/Confluent schema registries, over Arrow's fields (name, type, nullability):

- ``backward`` (the default): readers of the **new** schema can read data written with the **old** one. The new
  schema may remove fields and add *nullable* fields (old rows read them as null), widen a type, and relax
  required → nullable. It may not add a required field, narrow or change a type, or make a nullable field
  required (old rows may hold nulls).
- ``forward``: readers of the **old** schema can read data written with the **new** one (the mirror image): the
  new schema may add fields (old readers ignore them), remove only nullable fields, narrow a type, and make a
  nullable field required.
- ``full``: both.
- ``none``: no check; every new schema becomes a new version.

Checks are against the subject's latest version only (not transitive), as in Confluent's default modes.

Type widening (a reader of the wider type reads the narrower one exactly; :func:`widens`):

- signed integers: int8 → int16 → int32 → int64; unsigned: uint8 → uint16 → uint32 → uint64;
- an unsigned integer into a strictly wider signed one (uint8 → int16, uint32 → int64);
- floats: float16 → float32 → float64; int8/int16/int32 and uint8/uint16/uint32 → float64 (exact); int64 → float64
  is *not* a widening (it loses precision above 2**53);
- string → large_string, binary → large_binary, list → large_list of the same item.

Nested types are checked by the same rules inside: a struct's fields field by field (``before.score``; a CDC
source's ``before``/``after`` structs gain a nullable field when the table gains a column, which ``backward``
allows), a list's items as ``name[]``. Everything else (timestamp units or time zones, decimals, maps) must stay
the same type. A renamed field is a removed field plus an added one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from headwater.errors import ConfigError
from headwater.governance.schemas.codec import type_name

__all__ = ["Compatibility", "Problem", "check_compatible", "reading_problems", "widens"]


class Compatibility(StrEnum):
    """A subject's compatibility mode (see the module docstring)."""

    BACKWARD = "backward"
    FORWARD = "forward"
    FULL = "full"
    NONE = "none"

    @classmethod
    def parse(cls, value: object) -> Compatibility:
        if isinstance(value, Compatibility):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ConfigError(f"unknown schema compatibility mode {value!r}; use one of "
                              f"{', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True)
class Problem:
    """One reason a reader cannot read a writer's data: the field and what changed, in the new schema's terms."""

    field: str
    change: str  # e.g. "type changed int64 → string", "removed (it was required)", "nullable → required"
    direction: str  # "backward" or "forward": which reading fails

    def describe(self) -> str:
        return f"field {self.field!r}: {self.change}"


_SIGNED = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UNSIGNED = [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
_FLOATS = [pa.float16(), pa.float32(), pa.float64()]
_EXACT_IN_FLOAT64 = {pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32()}


def _ladder_widens(ladder: list[pa.DataType], old: pa.DataType, new: pa.DataType) -> bool:
    return old in ladder and new in ladder and ladder.index(old) < ladder.index(new)


def widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether a reader of type ``new`` reads values of type ``old`` exactly (``old != new``)."""
    if old == new:
        return False
    if any(_ladder_widens(ladder, old, new) for ladder in (_SIGNED, _UNSIGNED, _FLOATS)):
        return True
    if old in _UNSIGNED and new in _SIGNED and new.bit_width > old.bit_width:
        return True
    if new == pa.float64() and old in _EXACT_IN_FLOAT64:
        return True
    if (old, new) in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())):
        return True
    return pa.types.is_list(old) and pa.types.is_large_list(new) and old.value_type == new.value_type


def reading_problems(reader: pa.Schema, writer: pa.Schema, direction: str) -> list[Problem]:
    """Why a reader with schema ``reader`` cannot read data written with ``writer`` (empty: it can).

    ``direction`` labels the problems and picks their wording: ``"backward"`` (the reader is the new schema) or
    ``"forward"`` (the reader is the old schema)."""
    return _fields_problems(list(reader), list(writer), direction, "")


def _fields_problems(reader: list[pa.Field], writer: list[pa.Field], direction: str, prefix: str) -> list[Problem]:
    new_is_reader = direction == "backward"
    written_by_name = {f.name: f for f in writer}
    problems: list[Problem] = []
    for field in reader:
        name = prefix + field.name
        written = written_by_name.get(field.name)
        if written is None:
            if not field.nullable:
                change = ("added as required (non-nullable): rows written before have no value for it"
                          if new_is_reader else "removed, but it was required: readers of the older version need it")
                problems.append(Problem(name, change, direction))
            continue
        changed = _type_problems(name, field.type, written.type, direction)
        if changed:
            problems += changed
        elif written.nullable and not field.nullable:
            change = "nullable → required" if new_is_reader else "required → nullable"
            problems.append(Problem(name, change, direction))
    return problems


def _type_problems(name: str, reader: pa.DataType, writer: pa.DataType, direction: str) -> list[Problem]:
    """Why values of type ``writer`` cannot be read as ``reader`` (nested types field by field)."""
    if reader == writer or widens(writer, reader):
        return []
    if pa.types.is_struct(reader) and pa.types.is_struct(writer):
        return _fields_problems(list(reader), list(writer), direction, name + ".")
    if pa.types.is_list(writer) and (pa.types.is_list(reader) or pa.types.is_large_list(reader)) or \
            pa.types.is_large_list(writer) and pa.types.is_large_list(reader):
        return _type_problems(name + "[]", reader.value_type, writer.value_type, direction)
    old, new = (writer, reader) if direction == "backward" else (reader, writer)
    return [Problem(name, f"type changed {type_name(old)} → {type_name(new)}", direction)]


def check_compatible(old: pa.Schema, new: pa.Schema, mode: Compatibility) -> list[Problem]:
    """The problems that make ``new`` break ``mode`` against ``old`` (empty: compatible)."""
    problems: list[Problem] = []
    if mode in (Compatibility.BACKWARD, Compatibility.FULL):
        problems += reading_problems(new, old, "backward")
    if mode in (Compatibility.FORWARD, Compatibility.FULL):
        problems += reading_problems(old, new, "forward")
    return problems
