"""The store's append-only, hash-chained audit log (SQLAlchemy: ``<store>/audit.db``, SQLite, by default; any
SQLAlchemy URL, e.g. PostgreSQL shared by several Serve replicas and drivers, with ``url=`` or
``$HEADWATER_AUDIT_URL``).

Each entry is a row ``(seq, at, event, body, prev_hash, hash)``: ``body`` is the entry's fields as canonical JSON
(sorted keys, no spaces, ASCII) and ``hash = sha256(prev_hash + canonical JSON of {seq, at, event, body})``, the
first entry chaining to :data:`GENESIS`. Invariants:

* Append-only: this module only ever inserts. Editing, deleting, reordering or inserting a row breaks the chain at
  that row (its hash, or its successor's ``prev_hash``, no longer matches, or ``seq`` has a gap), which
  :meth:`AuditLog.verify` reports by ``seq``. Removing the *newest* entries leaves a shorter valid chain: compare
  the head hash ``verify`` prints with one kept elsewhere to detect that.
* Serialised appends across processes: one transaction reads the last row and inserts the next, under SQLite's
  ``BEGIN IMMEDIATE`` (the database's write lock) or PostgreSQL's transaction-scoped advisory lock, so two writers
  can never chain to the same predecessor (the unique ``seq`` is the backstop).
* No secrets: every string in an entry passes :func:`scrub` (API tokens and passwords in URLs are masked) before
  it is hashed and stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Iterator, Mapping

import sqlalchemy as sa

from headwater.errors import StoreError
from headwater.store.layout import AUDIT_FILE, resolve_root

AUDIT_DB = AUDIT_FILE
ENV_AUDIT_URL = "HEADWATER_AUDIT_URL"
DEFAULT_TABLE = "headwater_audit"
GENESIS = "0" * 64
#: the advisory lock key PostgreSQL appends take (any constant; "hwaudit" in ASCII)
PG_LOCK_KEY = 0x6877617564697400
MAX_TEXT = 4000

_TOKEN = re.compile(r"\bhw_([0-9a-f]{8})_[A-Za-z0-9_\-]+")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*):[^@\s/]*@")
_KV_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)\s*=\s*('[^']*'|\"[^\"]*\"|[^\s&;]+)")


def scrub(text: str) -> str:
    """``text`` without secrets: Headwater API tokens keep only their id (``hw_<id>_***``), URLs lose their
    password (``scheme://user:***@host``), ``password=...``-style pairs (DSNs, query strings) their value."""
    text = _TOKEN.sub(r"hw_\1_***", text)
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}=***", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value[:MAX_TEXT])
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value)[:MAX_TEXT])


def canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(prev_hash: str, seq: int, at: str, event: str, body: str) -> str:
    payload = canonical({"seq": seq, "at": at, "event": event, "body": body})
    return hashlib.sha256((prev_hash + payload).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    event: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The entry as one flat record: ``{"seq", "at", "event", **fields, "hash"}``."""
        return {**self.fields, "seq": self.seq, "at": self.at, "event": self.event, "hash": self.hash}


@dataclass(frozen=True)
class Verification:
    """What :meth:`AuditLog.verify` found: ``ok``, the entries checked, the head hash, and the first broken entry
    (its ``seq``, and why) when not ok."""

    ok: bool
    entries: int
    head: str
    broken_seq: int | None = None
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit log intact: {self.entries} entries, head hash {self.head}"
        return f"audit log BROKEN at entry seq {self.broken_seq}: {self.problem} ({self.entries} entries before it verified)"


def _table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_ENGINES.clear)  # a forked child opens its own connections


def _engine(url: str) -> sa.Engine:
    """One engine per URL and process (its pool); SQLite gets a busy timeout and ``BEGIN IMMEDIATE``."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            from headwater.clients.sql import SqlClientSettings

            settings = SqlClientSettings.build(url, owner="audit log")
            engine = settings.create_engine()
            if settings.dialect == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_wal)
            _ENGINES[url] = engine
        return engine


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging with a sync at every commit: one fsync per append instead of the rollback journal's
    several, still durable when the append returns; readers never block the writer."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class AuditLog:
    """The audit log of store ``root`` (or of the database at ``url``). Cheap to make: engines are shared."""

    def __init__(self, root: str | None = None, *, url: str | None = None, table: str = DEFAULT_TABLE) -> None:
        chosen = url or os.environ.get(ENV_AUDIT_URL)
        if chosen is None:
            directory = resolve_root(root)
            os.makedirs(directory, exist_ok=True)
            chosen = "sqlite:///" + os.path.join(directory, AUDIT_DB)
        self.url = chosen
        self.engine = _engine(chosen)
        self.table = _table(sa.MetaData(), table)
        self._created = False

    def _create(self) -> None:
        if not self._created:
            try:
                self.table.create(self.engine, checkfirst=True)
            except sa.exc.DBAPIError:  # another process created it between the check and the create
                if not sa.inspect(self.engine).has_table(self.table.name):
                    raise
            self._created = True

    def append(self, event: str, **fields: Any) -> AuditEntry:
        """Append one entry (secrets scrubbed) and return it; it is committed (durable) when this returns."""
        if not event or len(event) > 64:
            raise StoreError(f"audit event name {event!r}: give 1 to 64 characters")
        body = canonical(_clean(fields))
        at = datetime.now(UTC).isoformat()
        self._create()
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
                last = conn.execute(sa.select(self.table.c.seq, self.table.c.hash)
                                    .order_by(self.table.c.seq.desc()).limit(1)).first()
                seq, prev = (1, GENESIS) if last is None else (int(last.seq) + 1, str(last.hash))
                digest = entry_hash(prev, seq, at, event, body)
                conn.execute(self.table.insert().values(seq=seq, at=at, event=event, body=body, prev_hash=prev,
                                                        hash=digest))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot append to the audit log ({self.describe()}): {type(exc).__name__}: "
                             f"{scrub(str(exc).splitlines()[0])}") from None
        return AuditEntry(seq, at, event, json.loads(body), prev, digest)

    def describe(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _rows(self) -> Iterator[Any]:
        self._create()
        with self.engine.connect() as conn:
            yield from conn.execute(sa.select(self.table).order_by(self.table.c.seq))

    def entries(self, since: datetime | None = None, event: str | None = None) -> list[AuditEntry]:
        """Entries oldest first, optionally only those at or after ``since`` and of one ``event`` kind."""
        out = []
        for row in self._rows():
            if event is not None and row.event != event:
                continue
            if since is not None and datetime.fromisoformat(row.at) < since:
                continue
            try:
                fields = json.loads(row.body)
            except ValueError:
                fields = {"unreadable_body": row.body[:200]}
            out.append(AuditEntry(int(row.seq), row.at, row.event, fields, row.prev_hash, row.hash))
        return out

    def verify(self) -> Verification:
        """Walk the chain from the first entry; the first entry whose ``seq``, ``prev_hash`` or hash does not
        follow is reported."""
        prev, expected, count = GENESIS, 1, 0
        for row in self._rows():
            seq = int(row.seq)
            if seq != expected:
                return Verification(False, count, prev, seq, f"expected seq {expected} (entries missing or inserted)")
            if row.prev_hash != prev:
                return Verification(False, count, prev, seq, "prev_hash does not match the previous entry's hash "
                                                             "(an entry before it was removed, reordered or replaced)")
            if entry_hash(prev, seq, row.at, row.event, row.body) != row.hash:
                return Verification(False, count, prev, seq, "its hash does not match its content (edited)")
            prev, expected, count = row.hash, expected + 1, count + 1
        return Verification(True, count, prev)
