"""Feature look-ups: the newest row of one key through a caller's view, optionally as of a time.

With a hot tier (``hot``: :class:`headwater.store.hot.HotTier`, in the Serve app on a Ray cluster) the key's shard
is asked first: it answers from memory when it holds the table's current data version and the answer lies
inside what it holds (the latest row per key; with a row filter or an ``as_of``, its recent rows), and says
*miss* otherwise, when the look-up continues on warm as below. The answer is the same either way (tested).

Without ``as_of`` or a row filter (and without a hot answer) this is :meth:`headwater.store.Store.latest` (the warm tier's key index,
cold files only if they can hold a newer row). With either, the key is a pushed-down filter on a scan (plus the
view's row filter, and ``time < as_of`` as the time range's end), and the newest row is chosen the same way:
largest time, then latest commit. Invariant: the answer is a row the caller may see, projected to its visible
columns, masked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import ConfigError
from headwater.query.errors import QueryError
from headwater.query.planner import table_meta
from headwater.query.views import TableView, mask
from headwater.store import Store, TableMeta
from headwater.store.hot import ABSENT, MISS, HotTier
from headwater.store.metadata import VERSION_COLUMN, to_micros


def parse_key(meta: TableMeta, text: str) -> tuple[Any, ...]:
    """A key from a URL segment: the value itself for one key column, a JSON array for a composite key; each
    value cast to its column's type (QueryError when it does not fit)."""
    if meta.key is None:
        raise QueryError(f"table {meta.name!r} has no key, so it has no feature look-ups")
    if len(meta.key) == 1:
        raw: list[Any] = [text]
    else:
        try:
            raw = json.loads(text)
        except ValueError:
            raw = None  # type: ignore[assignment]  # reported below
        if not isinstance(raw, list) or len(raw) != len(meta.key):
            raise QueryError(f"table {meta.name!r} has a composite key ({', '.join(meta.key)}): give it as a JSON "
                             f"array of {len(meta.key)} values, e.g. [\"a\", 1]")
    values = []
    for column, value in zip(meta.key, raw):
        kind = meta.schema.field(column).type
        try:
            source = pa.array([value if isinstance(value, str) else json.dumps(value)], pa.string())
            values.append(source.cast(kind)[0].as_py() if not pa.types.is_string(kind) else str(value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            raise QueryError(f"key {value!r} is not a value of key column {column!r} ({kind})") from None
    return tuple(values)


@dataclass(frozen=True)
class FeatureLookup:
    """A checked look-up: the table's metadata it was planned on, the typed key, the visible columns, as_of."""

    meta: TableMeta
    key: tuple[Any, ...]
    visible: tuple[str, ...]
    as_of: datetime | None

    @property
    def as_of_us(self) -> int | None:
        return None if self.as_of is None else to_micros(self.as_of, True)


def prepare(store: Store, table: str, key_text: str, view: TableView, as_of: datetime | None) -> FeatureLookup:
    """Check a look-up (QueryError for a key or ``as_of`` that does not fit the table)."""
    meta = table_meta(store, table)
    key = parse_key(meta, key_text)
    if as_of is not None and meta.time is None:
        raise QueryError(f"table {table!r} has no time column, so it takes no as_of")
    return FeatureLookup(meta, key, tuple(view.visible(meta)), as_of)


def resolve(store: Store, lookup: FeatureLookup, view: TableView, found_hot: pa.Table | str) -> dict[str, Any] | None:
    """The answer from the hot tier's answer ``found_hot`` (a row, ABSENT), or read from warm (MISS)."""
    meta, key, visible, as_of = lookup.meta, lookup.key, list(lookup.visible), lookup.as_of
    table = meta.name
    try:
        if isinstance(found_hot, str) and found_hot == ABSENT:
            return None
        if isinstance(found_hot, pa.Table):
            rows = found_hot.select(visible)
        elif as_of is None and not view.row_filter:
            found = store.latest(table, key)
            if found is None:
                return None
            rows = pa.Table.from_pylist([{c: found.get(c) for c in visible}],
                                        schema=pa.schema([meta.schema.field(c) for c in visible]))
        else:
            predicates = [*zip(meta.key or (), ["=="] * len(key), key), *view.row_filter]
            time_range = None if as_of is None else (None, as_of + timedelta(microseconds=1))
            extra = [meta.time] if meta.time is not None and meta.time not in visible else []
            rows = store.scan(table, [*visible, *extra], time_range, predicates, include_version=True)
            if rows.num_rows == 0:
                return None
            rows = rows.take([_newest(rows, meta)]).select(visible)
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    row: dict[str, Any] = mask(rows, [c for c in visible if c in view.masked]).to_pylist()[0]
    return row


def latest_row(store: Store, table: str, key_text: str, view: TableView,
               as_of: datetime | None = None, hot: HotTier | None = None) -> dict[str, Any] | None:
    """The newest visible row of the key given as ``key_text`` (at or before ``as_of``), or ``None``."""
    lookup = prepare(store, table, key_text, view, as_of)
    found_hot = MISS if hot is None else hot.lookup(lookup.meta, lookup.key, lookup.as_of_us, view.row_filter)
    return resolve(store, lookup, view, found_hot)


def _newest(rows: pa.Table, meta: TableMeta) -> int:
    keys = []
    if meta.time is not None:
        keys.append((meta.time, "descending", "at_end"))
    keys.append((VERSION_COLUMN, "descending", "at_end"))
    return int(pc.sort_indices(rows, sort_keys=keys)[0].as_py())
