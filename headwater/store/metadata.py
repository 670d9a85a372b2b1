"""A table's metadata and manifest (``table.json``): schema, key, time column, lifecycle policy, data
version, and exactly which warm version and cold files hold its rows.

Format (JSON, never pickle: nothing read from the store is executed; documented in docs/storage.md)::

    {"format": "headwater-table", "format_version": 1, "name": "clicks",
     "schema": {"arrow": "<base64 Arrow IPC schema>", "columns": [{"name": "user", "type": "string",
                "nullable": true}, ...]},
     "key": ["user"] | null, "time": "ts" | null,
     "policy": {"hot_for_s": 3600.0, "warm_for_s": 604800.0 | null, "retain_for_s": null},
     "data_version": 12,
     "warm": {"version": 9, "rows": 1200, "min_time": <µs since epoch> | null, "max_time": ... | null,
              "indexed": ["user", "ts"]},
     "cold": [{"path": "date=2026-01-01/part-....parquet", "rows": 10, "min_time": ..., "max_time": ...}],
     "applied": {"<commit id>": "<staged file>"}, "updated_at": "<ISO 8601>"}

``schema.arrow`` is the authoritative schema (an Arrow IPC schema message: data, not code); ``columns`` is the
same for humans. Times are integers: microseconds since the epoch (UTC for time zone-aware columns).
``data_version`` increases by one with every change of the table's rows (commit, move, retention, erasure);
compaction changes no rows and keeps it. ``applied`` lists the commits whose staged files may still exist, so
a replayed commit is recognised (see :mod:`headwater.store.table`).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from headwater.errors import ConfigError, SchemaEvolutionError, StoreError

FORMAT = "headwater-table"
FORMAT_VERSION = 1
#: Columns the store adds to every row; scans leave them out unless asked.
VERSION_COLUMN = "_hw_version"
INTERNAL_PREFIX = "_hw_"


@dataclass(frozen=True)
class LifecyclePolicy:
    """How long a table's rows stay in each tier, by the age of their time column (now minus its value).

    ``hot_for``: rows younger than this are also held by the hot tier (in memory; warm always has them too).
    ``warm_for``: rows older than this move from warm to cold (``None``: they stay warm).
    ``retain_for``: rows older than this are deleted from every tier (``None``: kept forever).
    Each is a positive ``timedelta``, and ``hot_for <= warm_for <= retain_for`` where set. A table without a time
    column has no ages: its rows stay warm until erased, so it takes no ``warm_for`` or ``retain_for``.
    """

    hot_for: timedelta = timedelta(hours=1)
    warm_for: timedelta | None = timedelta(days=7)
    retain_for: timedelta | None = None

    def __post_init__(self) -> None:
        for name in ("hot_for", "warm_for", "retain_for"):
            value = getattr(self, name)
            if name == "hot_for" and value is None:
                raise ConfigError("LifecyclePolicy: hot_for must be a positive datetime.timedelta, got None")
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise ConfigError(f"LifecyclePolicy: {name} must be a positive datetime.timedelta or None, got {value!r}")
        if self.warm_for is not None and self.warm_for < self.hot_for:
            raise ConfigError(f"LifecyclePolicy: warm_for ({self.warm_for}) is shorter than hot_for ({self.hot_for}); "
                              "rows reach cold only after leaving hot")
        longest = self.warm_for or self.hot_for
        if self.retain_for is not None and self.retain_for < longest:
            raise ConfigError(f"LifecyclePolicy: retain_for ({self.retain_for}) is shorter than warm_for/hot_for "
                              f"({longest}); raise it or lower those")

    def to_json(self) -> dict[str, Any]:
        def seconds(value: timedelta | None) -> float | None:
            return None if value is None else value.total_seconds()

        return {"hot_for_s": seconds(self.hot_for), "warm_for_s": seconds(self.warm_for),
                "retain_for_s": seconds(self.retain_for)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> LifecyclePolicy:
        if not isinstance(data, dict):
            raise StoreError(f"{where}: policy must be an object")

        def delta(name: str) -> timedelta | None:
            value = data.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise StoreError(f"{where}: policy.{name} must be a number of seconds, got {value!r}")
            return timedelta(seconds=value)

        try:
            return cls(hot_for=delta("hot_for_s") or timedelta(hours=1), warm_for=delta("warm_for_s"),
                       retain_for=delta("retain_for_s"))
        except ConfigError as exc:
            raise StoreError(f"{where}: {exc}") from None


#: A table without a time column: nothing moves or expires by age.
UNTIMED_POLICY = LifecyclePolicy(warm_for=None, retain_for=None)


def encode_schema(schema: pa.Schema) -> dict[str, Any]:
    return {"arrow": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
            "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]}


def decode_schema(data: Any, where: str) -> pa.Schema:
    try:
        raw = base64.b64decode(data["arrow"], validate=True)
        return pa.ipc.read_schema(pa.py_buffer(raw))
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise StoreError(f"{where}: schema.arrow is not a base64 Arrow IPC schema ({exc})") from None


def check_key_and_time(schema: pa.Schema, key: tuple[str, ...] | None, time: str | None, table: str) -> None:
    """Build-time checks of a table's key and time columns against ``schema`` (ConfigError saying what to fix)."""
    names = schema.names
    for column in (*(key or ()), *((time,) if time else ())):
        if column not in names:
            raise ConfigError(f"table {table!r}: column {column!r} is not in the input (columns: {', '.join(names)})")
        if column.startswith(INTERNAL_PREFIX):
            raise ConfigError(f"table {table!r}: column names starting with {INTERNAL_PREFIX!r} are reserved")
    for column in key or ():
        kind = schema.field(column).type
        if pa.types.is_nested(kind) or pa.types.is_dictionary(kind) or pa.types.is_floating(kind):
            raise ConfigError(f"table {table!r}: key column {column!r} has type {kind}; keys must be strings, "
                              "integers, booleans, dates, timestamps, decimals or binary")
    if time is not None and not pa.types.is_timestamp(schema.field(time).type):
        raise ConfigError(f"table {table!r}: time column {time!r} has type {schema.field(time).type}; it must be "
                          "a timestamp (cast it, e.g. hw.col(...).cast(pa.timestamp('us', tz='UTC')))")
    for name in names:
        if name.startswith(INTERNAL_PREFIX):
            raise ConfigError(f"table {table!r}: column {name!r}: names starting with {INTERNAL_PREFIX!r} are reserved")


def evolve_schema(current: pa.Schema, incoming: pa.Schema, table: str) -> pa.Schema:
    """The table schema after taking rows of ``incoming``: ``current`` plus ``incoming``'s new columns (as
    nullable), in that order. A column of ``current`` missing from ``incoming`` or of another type is refused:
    older rows could not be read as the new schema without inventing or converting values."""
    missing = [f.name for f in current if f.name not in incoming.names]
    changed = [f"{f.name}: {f.type} -> {incoming.field(f.name).type}" for f in current
               if f.name in incoming.names and not incoming.field(f.name).type.equals(f.type)]
    if missing or changed:
        problems = []
        if missing:
            problems.append(f"column(s) {', '.join(missing)} missing (removing a column is not supported)")
        if changed:
            problems.append(f"type(s) changed ({'; '.join(changed)})")
        raise SchemaEvolutionError(
            f"table {table!r} cannot take this schema: {' and '.join(problems)}. Only added columns are accepted; "
            "cast or select columns before the sink to match the table, or write to a new table"
        )
    added = [f.with_nullable(True) for f in incoming if f.name not in current.names]
    return pa.schema(list(current) + added) if added else current


def to_micros(value: datetime, tz_aware: bool) -> int:
    """Microseconds since the epoch; naive datetimes count as UTC for aware columns (and vice versa)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int((value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


@dataclass(frozen=True)
class ColdFile:
    path: str  # relative to the table's cold directory
    rows: int
    min_time: int | None
    max_time: int | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "min_time": self.min_time, "max_time": self.max_time}


@dataclass(frozen=True)
class WarmState:
    version: int
    rows: int = 0
    min_time: int | None = None
    max_time: int | None = None
    indexed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "rows": self.rows, "min_time": self.min_time, "max_time": self.max_time,
                "indexed": list(self.indexed)}


@dataclass(frozen=True)
class TableMeta:
    """One table's metadata and manifest; immutable: changes make a new one (:func:`dataclasses.replace`)."""

    name: str
    schema: pa.Schema  # the user's columns (no internal columns)
    key: tuple[str, ...] | None
    time: str | None
    policy: LifecyclePolicy
    data_version: int
    warm: WarmState
    cold: tuple[ColdFile, ...] = ()
    applied: dict[str, str] = field(default_factory=dict)
    updated_at: str = ""

    @property
    def time_is_aware(self) -> bool:
        if self.time is None:
            return False
        kind = self.schema.field(self.time).type
        return getattr(kind, "tz", None) is not None

    @property
    def storage_schema(self) -> pa.Schema:
        """The schema rows are stored with: the user's columns and the commit's data version."""
        return self.schema.append(pa.field(VERSION_COLUMN, pa.int64()))

    def with_changes(self, **changes: Any) -> TableMeta:
        return replace(self, updated_at=datetime.now(UTC).isoformat(), **changes)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
                "schema": encode_schema(self.schema), "key": list(self.key) if self.key is not None else None,
                "time": self.time, "policy": self.policy.to_json(), "data_version": self.data_version,
                "warm": self.warm.to_json(), "cold": [c.to_json() for c in self.cold], "applied": dict(self.applied),
                "updated_at": self.updated_at}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> TableMeta:
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{where}: not a {FORMAT} version {FORMAT_VERSION} document (format "
                             f"{data.get('format')!r}, version {data.get('format_version')!r})")
        try:
            warm = data["warm"]
            key = data["key"]
            return cls(
                name=str(data["name"]), schema=decode_schema(data["schema"], where),
                key=tuple(str(k) for k in key) if key is not None else None,
                time=None if data["time"] is None else str(data["time"]),
                policy=LifecyclePolicy.from_json(data["policy"], where), data_version=int(data["data_version"]),
                warm=WarmState(int(warm["version"]), int(warm["rows"]), _opt_int(warm["min_time"]),
                               _opt_int(warm["max_time"]), tuple(str(c) for c in warm.get("indexed", ()))),
                cold=tuple(ColdFile(str(c["path"]), int(c["rows"]), _opt_int(c["min_time"]), _opt_int(c["max_time"]))
                           for c in data["cold"]),
                applied={str(k): str(v) for k, v in dict(data["applied"]).items()},
                updated_at=str(data.get("updated_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: a field is missing or has the wrong type ({type(exc).__name__}: {exc})") from None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
