"""A decoder of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

``pgoutput`` is the output plugin built into PostgreSQL (10+); what it sends for a publication is, per
transaction, in commit order::

    Begin(final_lsn, commit_time, xid)
    Relation(oid, schema, table, replica identity, columns)   before the first change of a table in a session,
                                                              and again after its schema changed
    Insert(oid, new) | Update(oid, [old | key], new) | Delete(oid, old | key) | Truncate(oids)  ...
    Commit(commit_lsn, end_lsn, commit_time)

Values come in PostgreSQL's text format (``t``), as ``NULL`` (``n``) or as an unchanged TOASTed value that the
server did not send (``u``, :data:`UNCHANGED`). This module turns bytes into small Python objects and does no type
conversion (:mod:`headwater.sources.postgres_cdc.convert` does, vectorised). Column values stay ``bytes``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

#: PostgreSQL timestamps count microseconds from 2000-01-01; Unix time from 1970-01-01.
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_BEGIN = struct.Struct("!QqI")  # final_lsn, commit time, xid
_COMMIT = struct.Struct("!bQQq")  # flags, commit_lsn, end_lsn, commit time


class _Unchanged:
    """An unchanged TOASTed value: the server did not send it (pgoutput's ``u``)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

#: One tuple's values: text bytes, ``None`` for NULL, :data:`UNCHANGED` for a TOASTed value not sent.
Values = tuple["bytes | None | _Unchanged", ...]


class PgOutputError(ValueError):
    """A message is not valid pgoutput (truncated, unknown tag); the message stays a dead letter."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    """A table as of a point in the WAL. ``raw`` is the message itself (kept with dead letters so that a change
    can be decoded again without the stream)."""

    oid: int
    schema: str
    table: str
    replica_identity: str  # 'd' default (primary key), 'f' full, 'i' index, 'n' nothing
    columns: tuple[Column, ...]
    raw: bytes

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Begin:
    commit_lsn: int
    commit_time_us: int  # Unix microseconds
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True)
class Change:
    """An insert (``"I"``), update (``"U"``) or delete (``"D"``) of relation ``oid``. ``old`` is the old row
    (``old_kind`` ``"O"``: REPLICA IDENTITY FULL) or only its key (``"K"``), ``None`` when not sent."""

    kind: str
    oid: int
    new: Values | None
    old: Values | None
    old_kind: str | None


@dataclass(frozen=True)
class Truncate:
    oids: tuple[int, ...]


@dataclass(frozen=True)
class Other:
    """A message that carries no change (Origin, Type, logical decoding message)."""

    tag: str


Message = Begin | Commit | Relation | Change | Truncate | Other


def _cstring(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(0, at)
    return data[at:end].decode("utf-8"), end + 1


def _tuple(data: bytes, at: int) -> tuple[Values, int]:
    (count,) = _I16.unpack_from(data, at)
    at += 2
    values: list[bytes | None | _Unchanged] = []
    append = values.append
    for _ in range(count):
        kind = data[at]
        at += 1
        if kind == 116:  # 't'
            (length,) = _I32.unpack_from(data, at)
            at += 4
            append(data[at:at + length])
            at += length
        elif kind == 110:  # 'n'
            append(None)
        elif kind == 117:  # 'u'
            append(UNCHANGED)
        else:
            raise PgOutputError(f"unknown tuple value kind {chr(kind)!r} at byte {at - 1}")
    return tuple(values), at


def decode(payload: bytes) -> Message:
    """The message in ``payload``; raises :class:`PgOutputError` when it is not valid pgoutput."""
    try:
        return _decode(payload)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, PgOutputError):
            raise
        raise PgOutputError(f"malformed pgoutput message {payload[:1]!r}: {exc}") from None


def _decode(data: bytes) -> Message:
    tag = chr(data[0])
    if tag in "IUD":
        (oid,) = _U32.unpack_from(data, 1)
        at = 5
        old: Values | None = None
        old_kind: str | None = None
        new: Values | None = None
        if data[at] in (75, 79):  # 'K', 'O'
            old_kind = chr(data[at])
            old, at = _tuple(data, at + 1)
        if tag != "D":
            if data[at] != 78:  # 'N'
                raise PgOutputError(f"{tag} message without a new tuple ('N') at byte {at}")
            new, at = _tuple(data, at + 1)
        elif old is None:
            raise PgOutputError("D message without an old tuple ('K' or 'O')")
        return Change(tag, oid, new, old, old_kind)
    if tag == "B":
        lsn, time_us, xid = _BEGIN.unpack_from(data, 1)
        return Begin(lsn, time_us + PG_EPOCH_OFFSET_US, xid)
    if tag == "C":
        _, lsn, end, time_us = _COMMIT.unpack_from(data, 1)
        return Commit(lsn, end, time_us + PG_EPOCH_OFFSET_US)
    if tag == "R":
        (oid,) = _U32.unpack_from(data, 1)
        schema, at = _cstring(data, 5)
        table, at = _cstring(data, at)
        identity = chr(data[at])
        (count,) = _I16.unpack_from(data, at + 1)
        at += 3
        columns = []
        for _ in range(count):
            flags = data[at]
            name, at = _cstring(data, at + 1)
            (type_oid,) = _U32.unpack_from(data, at)
            (typmod,) = _I32.unpack_from(data, at + 4)
            at += 8
            columns.append(Column(name, type_oid, typmod, bool(flags & 1)))
        return Relation(oid, schema, table, identity, tuple(columns), bytes(data))
    if tag == "T":
        (count,) = _I32.unpack_from(data, 1)
        return Truncate(tuple(_U32.unpack_from(data, 6 + 4 * i)[0] for i in range(count)))
    if tag in "OYM":
        return Other(tag)
    raise PgOutputError(f"unknown pgoutput message tag {tag!r}")


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The inverse of :func:`format_lsn`."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
