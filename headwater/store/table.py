"""Changing one table: a transaction under the table's lock whose one commit point is ``table.json``.

Every change (a TableSink commit, a lifecycle move, retention, an erasure, compaction) runs as::

    with Transaction(...) as tx:     # lock; recover: restore the warm version table.json names, delete
        ...                          #   unlisted cold files (leftovers of a change a crash interrupted)
        tx.save(new_meta)            # the commit point: table.json atomically replaced
    # after: files the change replaced are deleted (a crash here leaves unlisted files the next one sweeps)

so a change killed at any point before ``save`` leaves no trace readers could see, and one killed after it is
complete. Commits are idempotent: :meth:`Transaction.commit_staged` takes staged Arrow IPC files, each with a
*commit id* (its file name, unique per sink partition object); the ids of a commit are recorded in
``table.json`` together with its rows (same atomic write), and a staged file is deleted only after that. A
replayed commit therefore finds its staged file gone (done) or its id recorded (done; the file is deleted now)
or neither recorded nor gone (not done: it is applied). Ids are dropped from the record once their staged file
is gone, so the record stays as small as one checkpoint's commits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Sequence

import pyarrow as pa

from headwater.errors import SchemaEvolutionError, StoreError, TableNotFoundError
from headwater.store import cold
from headwater.store.layout import META_FILE, read_json, table_dir, table_lock, write_json_atomic
from headwater.store.metadata import (
    UNTIMED_POLICY,
    VERSION_COLUMN,
    LifecyclePolicy,
    TableMeta,
    WarmState,
    check_key_and_time,
    evolve_schema,
)
from headwater.store.warm import WarmTier


@dataclass(frozen=True)
class CommitEvent:
    """What a commit made visible: the hot tier is notified with it (after the commit) and the result cache keys
    on ``data_version``. ``data``: the committed rows in the store's row format (with ``_hw_version``), for the
    hot tier's notice; dropped once it is sent."""

    table: str
    data_version: int
    rows: int
    min_time: int | None
    max_time: int | None
    data: pa.Table | None = field(default=None, repr=False, compare=False)


#: parsed ``table.json`` files by path, with the (inode, mtime, ctime, size) they were parsed at: a look-up
#: re-reads the file only when it was replaced (every write is a rename of a new file: a new inode and times)
_PARSED: dict[str, tuple[tuple[int, int, int, int], TableMeta]] = {}


def load_meta(root: str, name: str) -> TableMeta | None:
    path = os.path.join(table_dir(root, name), META_FILE)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    stamp = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    data = read_json(path)
    if data is None:
        return None
    meta = TableMeta.from_json(data, path)
    if len(_PARSED) > 1024:
        _PARSED.clear()
    _PARSED[path] = (stamp, meta)
    return meta


def require_meta(root: str, name: str) -> TableMeta:
    meta = load_meta(root, name)
    if meta is None:
        raise TableNotFoundError(f"store {root}: no table {name!r}")
    return meta


def _crash_point(point: str) -> None:
    """Called at the points of a change where a crash is worst; tests make it raise or exit (no-op here)."""


class Transaction:
    """One change of one table, under its lock (see the module docstring)."""

    def __init__(self, root: str, name: str, warm_uri: str | None = None) -> None:
        self.root = root
        self.name = name
        self.directory = table_dir(root, name)
        self.warm_uri = warm_uri
        self._lock = table_lock(self.directory)
        self.meta: TableMeta | None = None
        self._warm: WarmTier | None = None

    def __enter__(self) -> Transaction:
        self._lock.__enter__()
        try:
            self.meta = load_meta(self.root, self.name)
            if self.meta is not None:
                self._recover(self.meta)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.__exit__(kind, value, tb)

    @property
    def warm(self) -> WarmTier:
        if self._warm is None:
            self._warm = WarmTier(self.directory, self.name, self.warm_uri)
        return self._warm

    def _recover(self, meta: TableMeta) -> None:
        latest = self.warm.recover(meta.warm.version)
        if latest != meta.warm.version:  # restored: name the restored version (same rows) from now on
            self.save(meta.with_changes(warm=WarmState(latest, meta.warm.rows, meta.warm.min_time, meta.warm.max_time,
                                                       meta.warm.indexed)))
        cold.sweep(self.directory, meta.cold)

    def require(self) -> TableMeta:
        if self.meta is None:
            raise TableNotFoundError(f"store {self.root}: no table {self.name!r}")
        return self.meta

    def save(self, meta: TableMeta) -> None:
        """The commit point: atomically replace table.json by ``meta``."""
        write_json_atomic(os.path.join(self.directory, META_FILE), meta.to_json())
        self.meta = meta

    def create(self, schema: pa.Schema, key: Sequence[str] | None, time: str | None,
               policy: LifecyclePolicy | None) -> TableMeta:
        """Create the table (``schema`` without internal columns) or check that it exists with this key/time."""
        check_key_and_time(schema, tuple(key) if key is not None else None, time, self.name)
        if policy is None:
            policy = LifecyclePolicy() if time is not None else UNTIMED_POLICY
        if time is None and (policy.warm_for is not None or policy.retain_for is not None):
            from headwater.errors import ConfigError

            raise ConfigError(f"table {self.name!r} has no time column, so its rows have no age: give it a "
                              "policy without warm_for and retain_for (LifecyclePolicy(warm_for=None)), or a time=")
        if self.meta is not None:
            check_same_identity(self.meta, key, time)
            return self.meta
        stored = schema.append(pa.field(VERSION_COLUMN, pa.int64()))
        version = self.warm.create(stored)
        meta = TableMeta(self.name, schema, tuple(key) if key is not None else None, time, policy, 0,
                         WarmState(version)).with_changes()
        self.save(meta)
        return meta

    def commit_staged(self, staged: Sequence[str]) -> CommitEvent | None:
        """Apply the staged Arrow IPC files ``staged`` (their names are commit ids) that were not applied yet,
        as one new data version; delete them. ``None`` when there was nothing new (a replay)."""
        meta = self.require()
        applied = {cid: path for cid, path in meta.applied.items() if os.path.exists(path)}
        todo = [p for p in staged if os.path.basename(p) not in applied and os.path.exists(p)]
        event = None
        if todo:
            tables = [_read_ipc(p) for p in todo]
            schema = meta.schema
            for table in tables:
                schema = evolve_schema(schema, _user_schema(table.schema), self.name)
            version = meta.warm.version
            added = [f for f in schema if f.name not in meta.schema.names]
            if added:
                version = self.warm.add_columns(added)
            data_version = meta.data_version + 1
            rows = pa.concat_tables([_as_storage(t, schema, data_version) for t in tables])
            _crash_point("commit.before_warm")
            version = self.warm.append(rows)
            low, high = cold.time_bounds(rows, meta.time)
            indexed = meta.warm.indexed
            wanted = [*(meta.key or ()), *((meta.time,) if meta.time else ())]
            if set(wanted) - set(indexed):
                version, indexed = self.warm.ensure_indexes(wanted, indexed)
            warm = WarmState(version, meta.warm.rows + rows.num_rows, _lower(meta.warm.min_time, low),
                             _upper(meta.warm.max_time, high), indexed)
            applied.update({os.path.basename(p): p for p in todo})
            _crash_point("commit.before_meta")
            self.save(meta.with_changes(schema=schema, data_version=data_version, warm=warm, applied=applied))
            event = CommitEvent(self.name, data_version, rows.num_rows, low, high, data=rows)
            _crash_point("commit.after_meta")
        for path in staged:
            if os.path.exists(path):
                os.unlink(path)
        return event


def check_same_identity(meta: TableMeta, key: Sequence[str] | None, time: str | None) -> None:
    wanted_key = tuple(key) if key is not None else None
    if wanted_key != meta.key or time != meta.time:
        raise SchemaEvolutionError(
            f"table {meta.name!r} exists with key={list(meta.key) if meta.key else None} and time={meta.time!r}, "
            f"not key={list(wanted_key) if wanted_key else None} and time={time!r}; a table's key and time column "
            "cannot change: use those, or write to a new table"
        )


def _read_ipc(path: str) -> pa.Table:
    try:
        with pa.memory_map(path) as source:
            return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read the staged file {path}: {exc}") from exc


def _user_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != VERSION_COLUMN])


def _as_storage(table: pa.Table, schema: pa.Schema, data_version: int) -> pa.Table:
    """``table`` with every column of ``schema`` (added columns it lacks as nulls) and the data version."""
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    columns.append(pa.array([data_version] * table.num_rows, pa.int64()))
    out = pa.Table.from_arrays(columns, schema=pa.schema([f.with_nullable(True) for f in schema]).append(
        pa.field(VERSION_COLUMN, pa.int64())))
    return out


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _upper(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
