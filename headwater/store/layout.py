"""Where things live in Headwater's store, and the per-table transaction lock.

Layout of a store root (``$HEADWATER_STORE``, default ``.headwater/store``)::

    <root>/audit.db                                      the hash-chained audit log (SQLite; headwater.store.audit)
    <root>/registry.db                                   the default schema registry (SQLite; headwater.governance.schemas)
    <root>/tables/<table>/table.json                     the table's metadata and manifest (the commit point)
    <root>/tables/<table>/_lock                          transaction lock (flock; never deleted)
    <root>/tables/<table>/_lease                         the engine's run lease of a TableSink writing the table
    <root>/tables/<table>/_staging/<owner>/...           TableSink's staged Arrow IPC files
    <root>/tables/<table>/warm/data.lance/               warm tier: one LanceDB table
    <root>/tables/<table>/cold/date=YYYY-MM-DD/part-*.parquet   cold tier: Parquet, hive-partitioned by date

Invariant: every change to a table happens inside :func:`table_lock`, and becomes visible only when
``table.json`` is atomically replaced (:func:`write_json_atomic`). Everything a change writes before that
(warm versions, cold files) is invisible to readers, who read exactly what ``table.json`` names.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from headwater.errors import ConfigError, StoreError

ENV_STORE = "HEADWATER_STORE"
DEFAULT_STORE = ".headwater/store"
TABLES_DIR = "tables"
META_FILE = "table.json"
LOCK_FILE = "_lock"
STAGING_DIR = "_staging"
WARM_DIR = "warm"
COLD_DIR = "cold"
AUDIT_FILE = "audit.db"
#: Table names become SQL view names in the query layer, so they are identifiers.
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def resolve_root(root: str | os.PathLike[str] | None) -> str:
    """The store root as an absolute path: ``root``, else ``$HEADWATER_STORE``, else ``.headwater/store``."""
    chosen = os.fspath(root) if root is not None else os.environ.get(ENV_STORE) or DEFAULT_STORE
    if "://" in chosen:
        raise ConfigError(
            f"store {chosen!r}: the store root must be a local directory (its metadata is updated under a file "
            "lock, which object stores cannot give); put the warm tier on an object store with warm_uri= instead"
        )
    path = os.path.abspath(os.path.expanduser(chosen))
    if os.path.isfile(path):
        raise ConfigError(f"store {path!r} is a file; give a directory (it is created if missing)")
    return path


def check_table_name(name: object) -> str:
    if not isinstance(name, str) or not TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"table name {name!r} is not an identifier: use letters, digits and '_' (not first a digit), at most "
            "128 characters; it becomes the table's SQL name"
        )
    return name


def table_dir(root: str, name: str) -> str:
    return os.path.join(root, TABLES_DIR, check_table_name(name))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, document: dict[str, Any]) -> None:
    """Replace ``path`` by ``document`` atomically and durably: write a temporary file, fsync, rename, fsync
    the directory. A crash leaves either the old or the new document, never a mix."""
    tmp = f"{path}.tmp-{os.getpid()}"
    data = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True).encode("ascii") + b"\n"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, ``None`` if there is no such file; a damaged file is a StoreError."""
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{path}: not a JSON document ({exc}); restore it from a backup") from None
    if not isinstance(document, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(document).__name__}")
    return document


@contextmanager
def table_lock(directory: str) -> Iterator[None]:
    """Hold the exclusive transaction lock of the table in ``directory`` (blocking).

    A ``flock`` on ``<directory>/_lock``: the kernel drops it when the holder dies, so a killed transaction
    never leaves a stale lock. Locks belong to an open file description, so two threads of one process exclude
    each other too (the in-process executor commits from several threads)."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise ConfigError(f"{directory}: the filesystem supports no file locks; put the store on a local "
                                  "disk") from exc
            raise
        yield
    finally:
        os.close(fd)  # releases the lock
