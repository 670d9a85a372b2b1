"""The schema registry: versioned Arrow schemas per subject, in a SQL database (SQLAlchemy).

Where it lives: ``RunConfig.schema_registry`` (default ``$HEADWATER_SCHEMA_REGISTRY``, else
``<store>/registry.db``, SQLite, where ``<store>`` is ``$HEADWATER_STORE`` or ``.headwater/store``). Give a
SQLAlchemy URL for another database, e.g. ``postgresql://registry@db:5432/headwater`` on a cluster, so every
driver shares one registry; keep the password out of the URL (``PGPASSWORD`` or ``~/.pgpass``).

Two tables (created when missing):

- ``headwater_schema_subjects``: one row per subject, with its compatibility mode (``backward`` by default);
- ``headwater_schema_versions``: one row per version, ``UNIQUE (subject, version)`` and
  ``UNIQUE (subject, fingerprint)``.

Invariants:

- **Idempotent**: registering a schema a subject already holds returns that version and writes nothing.
- **No duplicates under concurrency**: two drivers registering at once both read the latest version and try to
  insert the next; the unique constraints let exactly one insert win, and the other retries from a fresh read
  (finding the winner's version when the schema is the same, or checking against it when it is not). SQLite's
  "database is locked" is retried the same way.
- **A version, once written, never changes**; versions of a subject are 1, 2, 3, ... without gaps.
- A new version is written only when it keeps the subject's mode against the latest version
  (:mod:`headwater.governance.schemas.compatibility`).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import pyarrow as pa

from headwater.errors import SchemaCompatibilityError, SchemaRegistryError, UnknownSchemaError
from headwater.governance.schemas.codec import fingerprint, schema_from_json, schema_to_json
from headwater.governance.schemas.compatibility import Compatibility, Problem, check_compatible

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["REGISTRY_FILE", "RegisteredSchema", "SchemaRegistry", "incompatibility_message", "registry_url"]

REGISTRY_FILE = "registry.db"
_ATTEMPTS = 20
T = TypeVar("T")


def registry_url(location: str) -> str:
    """A SQLAlchemy URL for ``location``: a URL as it is, a file path as SQLite at that (absolute) path."""
    if "://" in location:
        return location
    return "sqlite:///" + os.path.abspath(os.path.expanduser(location))


@dataclass(frozen=True)
class RegisteredSchema:
    """One version of a subject's schema."""

    subject: str
    version: int
    schema: pa.Schema
    fingerprint: str
    registered_at: datetime
    registered_by: str  # the dataflow (job) that registered it, or "" when registered directly

    def to_json(self) -> dict[str, Any]:
        import json

        return {"subject": self.subject, "version": self.version, "fingerprint": self.fingerprint,
                "registered_at": self.registered_at.isoformat(), "registered_by": self.registered_by,
                "schema": json.loads(schema_to_json(self.schema))}


def incompatibility_message(subject: str, latest: int, mode: Compatibility, problems: list[Problem],
                            registry: str | None = None) -> str:
    """The message of a :class:`SchemaCompatibilityError`: the subject, each field and change, and the fixes."""
    changes = "; ".join(p.describe() for p in problems)
    fixes = []
    if any("required" in p.change for p in problems):
        fixes.append("make added or changed fields nullable (they read as null where data has no value)")
    if any("type changed" in p.change for p in problems):
        fixes.append("keep the type or widen it (int32 → int64, float32 → float64; see docs/governance.md)")
    fixes += ["register the change under a new subject (a new step id or table name)",
              f"or set the subject's mode: headwater schemas mode {subject} none"
              + (f" --registry {registry}" if registry else "")]
    return (f"schema registry: subject {subject!r} ({mode.value} compatibility): the new schema is incompatible "
            f"with version {latest}: {changes}. Fix: {'; '.join(fixes)}")


class SchemaRegistry:
    """Versioned schemas per subject (see the module docstring). ``url``: a SQLAlchemy URL or a SQLite file path."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from headwater.governance.schemas import tables

        self.url = registry_url(url)
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise SchemaRegistryError(f"schema registry URL is not a SQLAlchemy URL: {exc}") from None
        if parsed.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3; psycopg2 is the one pinned
            parsed = parsed.set(drivername="postgresql+psycopg2")
        #: the URL without its password, for messages
        self.display_url = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            os.makedirs(os.path.dirname(parsed.database) or ".", exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        try:
            self._engine: Engine = sa.create_engine(parsed, **options)
            self._tables = tables
            self._retry(lambda: tables.METADATA.create_all(self._engine))
        except SchemaRegistryError as exc:
            raise SchemaRegistryError(f"{exc}. The registry cannot be opened: check its URL (RunConfig.schema_registry, "
                                      "$HEADWATER_SCHEMA_REGISTRY) and that the database is reachable") from None
        except (sa.exc.SQLAlchemyError, ImportError, OSError) as exc:
            raise SchemaRegistryError(f"schema registry {self.display_url}: cannot open it: {_short(exc)}") from None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SchemaRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------------------------
    def subjects(self) -> list[tuple[str, Compatibility, int]]:
        """Every subject, its mode and its latest version (0: none yet), sorted by name."""
        import sqlalchemy as sa

        t = self._tables
        query = (sa.select(t.SUBJECTS.c.subject, t.SUBJECTS.c.mode, sa.func.max(t.VERSIONS.c.version))
                 .select_from(t.SUBJECTS.outerjoin(t.VERSIONS, t.VERSIONS.c.subject == t.SUBJECTS.c.subject))
                 .group_by(t.SUBJECTS.c.subject, t.SUBJECTS.c.mode).order_by(t.SUBJECTS.c.subject))
        rows = self._read(lambda c: c.execute(query).all())
        return [(row[0], Compatibility(row[1]), row[2] or 0) for row in rows]

    def mode(self, subject: str) -> Compatibility:
        """The subject's mode (``backward`` for a subject not seen yet)."""
        row = self._read(lambda c: self._subject_row(c, subject))
        return Compatibility.BACKWARD if row is None else Compatibility(row)

    def versions(self, subject: str) -> list[RegisteredSchema]:
        """Every version of ``subject``, oldest first; :class:`UnknownSchemaError` for an unknown subject."""
        import sqlalchemy as sa

        v = self._tables.VERSIONS

        def read(c: Connection) -> tuple[str | None, list[Any]]:
            return self._subject_row(c, subject), list(c.execute(
                sa.select(v).where(v.c.subject == subject).order_by(v.c.version)).all())

        mode, rows = self._read(read)
        if mode is None:
            raise UnknownSchemaError(self._unknown_subject(subject))
        return [self._version(row) for row in rows]

    def get(self, subject: str, version: int | None = None) -> RegisteredSchema:
        """Version ``version`` of ``subject`` (``None``: the latest)."""
        versions = self.versions(subject)
        if not versions:
            raise UnknownSchemaError(f"schema registry: subject {subject!r} has no versions yet (only its mode is set)")
        if version is None:
            return versions[-1]
        for registered in versions:
            if registered.version == version:
                return registered
        raise UnknownSchemaError(f"schema registry: subject {subject!r} has no version {version} "
                                 f"(it has {versions[0].version}..{versions[-1].version})")

    def check(self, subject: str, schema: pa.Schema) -> list[Problem]:
        """Why ``schema`` cannot become ``subject``'s next version under its mode (empty: it can); writes nothing."""
        return self._read(lambda c: self._problems(c, subject, schema)[1])

    # -- writing ----------------------------------------------------------------------------------------------
    def set_mode(self, subject: str, mode: Compatibility | str) -> None:
        """Set ``subject``'s compatibility mode (creating the subject when it has no versions yet)."""
        import sqlalchemy as sa

        chosen = Compatibility.parse(mode)
        s = self._tables.SUBJECTS

        def write(c: Connection) -> None:
            if self._subject_row(c, subject) is None:
                c.execute(sa.insert(s).values(subject=subject, mode=chosen.value, created_at=_now()))
            else:
                c.execute(sa.update(s).where(s.c.subject == subject).values(mode=chosen.value))

        self._write(write)

    def register(self, subject: str, schema: pa.Schema, registered_by: str = "") -> int:
        """Record ``schema`` under ``subject`` and return its version (an existing one when it holds it already).

        Raises :class:`SchemaCompatibilityError` when the schema breaks the subject's mode against the latest
        version (a schema the subject held before is checked too: going back may break the latest)."""
        import sqlalchemy as sa

        t = self._tables
        print_ = fingerprint(schema)
        text = schema_to_json(schema)

        def write(c: Connection) -> int:
            (mode, latest), problems = self._problems(c, subject, schema)
            existing = c.execute(sa.select(t.VERSIONS.c.version).where(
                t.VERSIONS.c.subject == subject, t.VERSIONS.c.fingerprint == print_)).scalar()
            if existing is not None and (existing == latest or not problems):
                return int(existing)
            if problems:
                raise SchemaCompatibilityError(incompatibility_message(subject, latest, mode, problems, self.display_url))
            if self._subject_row(c, subject) is None:
                c.execute(sa.insert(t.SUBJECTS).values(subject=subject, mode=mode.value, created_at=_now()))
            c.execute(sa.insert(t.VERSIONS).values(
                subject=subject, version=latest + 1, fingerprint=print_, schema_json=text, registered_at=_now(),
                registered_by=registered_by))
            return latest + 1

        return self._write(write)

    # -- internals --------------------------------------------------------------------------------------------
    def _problems(self, c: Connection, subject: str, schema: pa.Schema) -> tuple[tuple[Compatibility, int], list[Problem]]:
        import sqlalchemy as sa

        v = self._tables.VERSIONS
        stored = self._subject_row(c, subject)
        mode = Compatibility.BACKWARD if stored is None else Compatibility(stored)
        row = c.execute(sa.select(v).where(v.c.subject == subject).order_by(v.c.version.desc()).limit(1)).first()
        if row is None:
            return (mode, 0), []
        if mode is Compatibility.NONE:
            return (mode, int(row.version)), []
        return (mode, int(row.version)), check_compatible(schema_from_json(row.schema_json), schema, mode)

    def _subject_row(self, c: Connection, subject: str) -> str | None:
        import sqlalchemy as sa

        s = self._tables.SUBJECTS
        return c.execute(sa.select(s.c.mode).where(s.c.subject == subject)).scalar()

    def _unknown_subject(self, subject: str) -> str:
        import difflib

        names = [name for name, _, _ in self.subjects()]
        hint = difflib.get_close_matches(subject, names, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        listing = f" (subjects: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''})" if names else " (it is empty)"
        return f"schema registry {self.display_url}: no subject {subject!r}{suggestion}{listing}"

    @staticmethod
    def _version(row: Any) -> RegisteredSchema:
        at = row.registered_at if row.registered_at.tzinfo else row.registered_at.replace(tzinfo=UTC)
        return RegisteredSchema(row.subject, int(row.version), schema_from_json(row.schema_json), row.fingerprint,
                                at, row.registered_by or "")

    def _read(self, fn: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._engine.connect() as c:
                return fn(c)

        return self._retry(attempt)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._engine.begin() as c:
                return fn(c)

        return self._retry(attempt)

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, again after a lost race (a unique constraint another writer filled first) or a
        locked SQLite database, with a short random back-off; other database errors become SchemaRegistryError."""
        import sqlalchemy as sa

        for n in range(_ATTEMPTS):
            try:
                return attempt()
            except sa.exc.IntegrityError:
                pass  # another writer inserted this version (or created the subject) first: read again
            except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
                # SQLite's lock, or two drivers creating the tables at once (PostgreSQL: "already exists")
                if not any(word in str(exc) for word in ("locked", "busy", "already exists")):
                    raise SchemaRegistryError(f"schema registry {self.display_url}: {_short(exc)}") from None
            except sa.exc.SQLAlchemyError as exc:
                raise SchemaRegistryError(f"schema registry {self.display_url}: {_short(exc)}") from None
            time.sleep(random.uniform(0.005, 0.05) * (n + 1))
        raise SchemaRegistryError(f"schema registry {self.display_url}: gave up after {_ATTEMPTS} attempts that each "
                                  "lost a race with another writer or found the database locked")


def _now() -> datetime:
    return datetime.now(UTC)


def _short(exc: BaseException) -> str:
    """The first line of a database error (SQLAlchemy appends the statement and a link)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
