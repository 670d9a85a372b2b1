"""Reading a table across its tiers: plan which tiers can hold a time range, push the projection and the
filter into each (Lance ``where`` / ``pyarrow.dataset`` filters), and union the results.

A scan reads exactly what one ``table.json`` names: the warm version and the cold files it lists, so it sees
every committed change entirely or not at all, whichever tier the rows sit in. Tiers are chosen from the
min/max time the manifest keeps per tier (and per cold file): a range that ends before the warm tier's oldest
row never opens the Lance table, and cold files outside it are never opened. A change that deletes a file a
concurrent scan planned on (a move, an erasure) makes that scan start again from the new ``table.json``.

Filters are conjunctions of predicates ``(column, op, value)`` with ``op`` one of ``==``, ``!=``, ``<``,
``<=``, ``>``, ``>=`` and ``in`` (value: a list); they are data, not SQL text, so they translate exactly into
both engines and nothing a caller passes is parsed as code.
"""

from __future__ import annotations

import difflib
import os
from datetime import datetime
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import Expr, lit
from lancedb.expr import col as lcol

from headwater.errors import ConfigError, StoreError
from headwater.store import cold
from headwater.store.metadata import INTERNAL_PREFIX, VERSION_COLUMN, ColdFile, TableMeta, to_micros
from headwater.store.table import require_meta
from headwater.store.warm import WarmTier, key_condition

Predicate = tuple[str, str, Any]
TimeRange = tuple[datetime | None, datetime | None]
OPS = ("==", "!=", "<", "<=", ">", ">=", "in")


def _column(meta: TableMeta, name: str) -> pa.Field:
    if name not in meta.schema.names:
        hint = difflib.get_close_matches(name, meta.schema.names, n=1)
        raise ConfigError(f"table {meta.name!r} has no column {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                          f" (columns: {', '.join(meta.schema.names)})"))
    return meta.schema.field(name)


def _value(meta: TableMeta, field: pa.Field, value: Any) -> Any:
    """``value`` as the column's type (a clear error when it does not fit), as a Python value for Lance."""
    if isinstance(value, datetime) and pa.types.is_timestamp(field.type):
        micros = to_micros(value, True)
        value = pa.scalar(micros, pa.timestamp("us", tz="UTC"))
        value = value.cast(field.type) if field.type.tz else value.cast(pa.timestamp("us")).cast(field.type)
        return value.as_py()
    try:
        return pa.scalar(value, field.type).as_py()
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ConfigError(f"table {meta.name!r}: {value!r} is not a value of column {field.name!r} ({field.type}): "
                          f"{exc}") from None


def _lance_literal(value: Any) -> Expr:
    if isinstance(value, datetime) and value.tzinfo is not None:  # Lance literals are UTC wall clock
        from datetime import UTC

        value = value.astimezone(UTC).replace(tzinfo=None)
    return lit(value)


def compile_filter(meta: TableMeta, predicates: Sequence[Predicate] | None,
                   time_range: TimeRange | None) -> tuple[list[Expr], pc.Expression | None]:
    """The predicates (and the time range, as ``start <= time < end``) for Lance and for pyarrow.dataset."""
    items = list(predicates or ())
    if time_range is not None:
        if meta.time is None:
            raise ConfigError(f"table {meta.name!r} has no time column, so it takes no time_range")
        start, end = time_range
        if start is not None:
            items.append((meta.time, ">=", start))
        if end is not None:
            items.append((meta.time, "<", end))
    lance: list[Expr] = []
    arrow: pc.Expression | None = None
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise ConfigError(f"a filter is a list of (column, op, value) triples, got {item!r}")
        name, op, raw = item
        field = _column(meta, name)
        if op not in OPS:
            raise ConfigError(f"unknown filter operator {op!r}; use one of {', '.join(OPS)}")
        if op == "in":
            if not isinstance(raw, list | tuple | set | frozenset):
                raise ConfigError(f"filter ({name!r}, 'in', ...) needs a list of values, got {raw!r}")
            values = [_value(meta, field, v) for v in raw]
            lance.append(lcol(name).isin([_lance_literal(v) for v in values]))
            condition = pc.field(name).isin(pa.array(values, field.type))
        else:
            value = _value(meta, field, raw)
            left, right = lcol(name), _lance_literal(value)
            lance.append({"==": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
                          ">": left > right, ">=": left >= right}[op])
            scalar = pa.scalar(value, field.type)
            target = pc.field(name)
            condition = {"==": target == scalar, "!=": target != scalar, "<": target < scalar, "<=": target <= scalar,
                         ">": target > scalar, ">=": target >= scalar}[op]
        arrow = condition if arrow is None else arrow & condition
    return lance, arrow


def _overlaps(low: int | None, high: int | None, start: int | None, end: int | None) -> bool:
    if low is None or high is None:
        return True
    return (start is None or high >= start) and (end is None or low < end)


def plan_tiers(meta: TableMeta, time_range: TimeRange | None) -> tuple[bool, list[ColdFile]]:
    """Whether the warm tier can hold rows of ``time_range``, and the cold files that can."""
    start = end = None
    if time_range is not None:
        start = None if time_range[0] is None else to_micros(time_range[0], True)
        end = None if time_range[1] is None else to_micros(time_range[1], True)
    warm = meta.warm.rows > 0 and _overlaps(meta.warm.min_time, meta.warm.max_time, start, end)
    files = [f for f in meta.cold if f.rows > 0 and _overlaps(f.min_time, f.max_time, start, end)]
    return warm, files


def scan(root: str, name: str, columns: Sequence[str] | None = None, time_range: TimeRange | None = None,
         filter: Sequence[Predicate] | None = None, *, warm_uri: str | None = None,
         include_version: bool = False, dictionary_strings: bool = False) -> pa.Table:
    """The committed rows of table ``name`` matching ``filter`` and ``time_range`` (``[start, end)``), with
    ``columns`` (default: all), from every tier that can hold them. Row order is unspecified.
    ``include_version`` adds ``_hw_version``, the data version that committed each row;
    ``dictionary_strings`` returns string columns dictionary-encoded (same values; for the SQL engine, which
    reads them faster and answers plain strings)."""
    for _ in range(5):
        meta = require_meta(root, name)
        try:
            return _scan(root, meta, columns, time_range, filter, warm_uri, include_version, dictionary_strings)
        except (FileNotFoundError, OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, ConfigError) or require_meta(root, name).data_version == meta.data_version and \
                    require_meta(root, name).cold == meta.cold:
                raise
            continue  # a change replaced files this scan planned on: plan again on the new manifest
    raise StoreError(f"table {name!r}: the table kept changing under five scans in a row; try again")


def scan_at(root: str, meta: TableMeta, columns: Sequence[str] | None = None, time_range: TimeRange | None = None,
            filter: Sequence[Predicate] | None = None, *, warm_uri: str | None = None,
            include_version: bool = False) -> pa.Table:
    """Like :func:`scan`, of exactly the state ``meta`` names (no re-planning: a change that deleted a file
    ``meta`` names makes it raise; the hot tier rebuilds at a known data version this way)."""
    return _scan(root, meta, columns, time_range, filter, warm_uri, include_version)


def _scan(root: str, meta: TableMeta, columns: Sequence[str] | None, time_range: TimeRange | None,
          predicates: Sequence[Predicate] | None, warm_uri: str | None, include_version: bool,
          dictionary_strings: bool = False) -> pa.Table:
    wanted = list(columns) if columns is not None else list(meta.schema.names)
    for column in wanted:
        if column != VERSION_COLUMN:
            _column(meta, column)
    if include_version and VERSION_COLUMN not in wanted:
        wanted.append(VERSION_COLUMN)
    storage = meta.storage_schema
    target = pa.schema([storage.field(c).with_nullable(True) for c in wanted])
    encoded = [f.name for f in target if dictionary_strings and pa.types.is_string(f.type)]
    if encoded:
        target = pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in encoded else f
                            for f in target])
    lance_filter, arrow_filter = compile_filter(meta, predicates, time_range)
    use_warm, files = plan_tiers(meta, time_range)
    directory = os.path.join(root, "tables", meta.name)
    def read_warm() -> pa.Table:
        warm = WarmTier(directory, meta.name, warm_uri).read(meta.warm.version, wanted, lance_filter)
        return warm.select(wanted).cast(target)

    def read_cold() -> pa.Table:
        return cold.read(directory, files, storage, wanted, arrow_filter, encoded).cast(target)

    readers = ([read_warm] if use_warm else []) + ([read_cold] if files else [])
    if not readers:
        return target.empty_table()
    # one tier after the other: LanceDB and Arrow's Parquet reader are multi-threaded already (reading both at
    # once in two threads was slower here, on 2 cores)
    return pa.concat_tables([read() for read in readers])


def key_tuple(meta: TableMeta, key: Any) -> tuple[Any, ...]:
    """A key value as a tuple in key-column order: a scalar for one key column, else a tuple or a dict."""
    if meta.key is None:
        raise ConfigError(f"table {meta.name!r} has no key; give TableSink a key=[...] to look rows up by key")
    if isinstance(key, dict):
        missing = [k for k in meta.key if k not in key]
        if missing:
            raise ConfigError(f"table {meta.name!r}: the key needs {', '.join(missing)}")
        values = tuple(key[k] for k in meta.key)
    elif len(meta.key) == 1 and not isinstance(key, tuple | list):
        values = (key,)
    else:
        values = tuple(key)
    if len(values) != len(meta.key):
        raise ConfigError(f"table {meta.name!r}: the key has {len(meta.key)} column(s) ({', '.join(meta.key)}), "
                          f"got {len(values)} value(s)")
    return tuple(_value(meta, meta.schema.field(k), v) for k, v in zip(meta.key, values))


def latest(root: str, name: str, key: Any, *, warm_uri: str | None = None) -> dict[str, Any] | None:
    """The newest committed row of ``key`` (by time column, then by commit), or ``None``.

    Looked up in the warm tier through its key index; cold files are read only when they can hold a newer row
    than the warm tier's (a late row committed after newer ones moved to cold)."""
    meta = require_meta(root, name)
    values = key_tuple(meta, key)
    directory = os.path.join(root, "tables", meta.name)
    storage = meta.storage_schema
    found = []
    if meta.warm.rows:
        found.append(WarmTier(directory, meta.name, warm_uri).read(
            meta.warm.version, storage.names, [key_condition(meta.key or (), [values])]).cast(
                pa.schema([f.with_nullable(True) for f in storage])))
    best_time = _best(found[0], meta)[1] if found and found[0].num_rows else None
    candidates = [f for f in meta.cold if meta.time is None or best_time is None or f.max_time is None
                  or f.max_time >= best_time]
    if candidates:
        condition = None
        for column, value in zip(meta.key or (), values):
            term = pc.field(column) == pa.scalar(value, meta.schema.field(column).type)
            condition = term if condition is None else condition & term
        found.append(cold.read(directory, candidates, storage, None, condition).cast(
            pa.schema([f.with_nullable(True) for f in storage])))
    rows = pa.concat_tables(found) if found else None
    if rows is None or rows.num_rows == 0:
        return None
    index, _ = _best(rows, meta)
    row = rows.slice(index, 1).to_pylist()[0]
    return {k: v for k, v in row.items() if not k.startswith(INTERNAL_PREFIX)}


def _best(rows: pa.Table, meta: TableMeta) -> tuple[int, int | None]:
    """Index of the newest row (max time, then max data version, then last), and its time in µs."""
    versions = rows.column(VERSION_COLUMN).to_pylist()
    times = (pc.cast(pc.cast(rows.column(meta.time), pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
             if meta.time else [0] * rows.num_rows)
    order = max(range(rows.num_rows), key=lambda i: (times[i] if times[i] is not None else -(2**63), versions[i], i))
    return order, times[order] if meta.time else None
