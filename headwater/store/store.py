"""``Store``: Headwater's table store, one object over a store root for readers, the lifecycle manager and
operators (the query layer and the Serve app build on it; TableSink writes through
:class:`~headwater.store.table.Transaction`)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Sequence

import pyarrow as pa

from headwater.store import lifecycle
from headwater.store import scan as scanning
from headwater.store.layout import META_FILE, TABLES_DIR, check_table_name, resolve_root, table_dir
from headwater.store.lifecycle import ErasureReport, LifecycleReport
from headwater.store.metadata import LifecyclePolicy, TableMeta
from headwater.store.scan import Predicate, TimeRange
from headwater.store.table import Transaction, require_meta


def list_tables(root: str) -> list[str]:
    directory = os.path.join(root, TABLES_DIR)
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory)
                  if os.path.isfile(os.path.join(directory, name, META_FILE)))


class Store:
    """The store at ``root`` (default ``$HEADWATER_STORE``, else ``.headwater/store``).

    ``warm_uri`` puts warm tiers under another LanceDB URI (``s3://bucket/warm``, ...) instead of the tables'
    directories; the metadata and the cold tier stay under ``root``, a local directory (it is locked)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, warm_uri: str | None = None) -> None:
        self.root = resolve_root(root)
        self.warm_uri = warm_uri

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def tables(self) -> list[str]:
        """Names of the tables in the store."""
        return list_tables(self.root)

    def table(self, name: str) -> TableMeta:
        """The metadata of table ``name`` (TableNotFoundError if there is none)."""
        return require_meta(self.root, check_table_name(name))

    def directory(self, name: str) -> str:
        return table_dir(self.root, name)

    def create_table(self, name: str, schema: pa.Schema, key: Sequence[str] | None = None, time: str | None = None,
                     policy: LifecyclePolicy | None = None) -> TableMeta:
        """Create table ``name`` (or check that it exists with this key and time column)."""
        with Transaction(self.root, check_table_name(name), self.warm_uri) as tx:
            return tx.create(schema, key, time, policy)

    def set_policy(self, name: str, policy: LifecyclePolicy) -> TableMeta:
        with Transaction(self.root, check_table_name(name), self.warm_uri) as tx:
            meta = tx.require()
            if meta.time is None and (policy.warm_for is not None or policy.retain_for is not None):
                from headwater.errors import ConfigError

                raise ConfigError(f"table {name!r} has no time column: its policy takes no warm_for or retain_for")
            before = meta.policy.to_json()
            tx.save(meta.with_changes(policy=policy))
            changed = tx.require()
        from headwater.store.audit import AuditLog

        AuditLog(self.root).append("lifecycle_policy", table=name, actor=_user(), before=before,
                                   after=changed.policy.to_json())
        return changed

    def scan(self, table: str, columns: Sequence[str] | None = None, time_range: TimeRange | None = None,
             filter: Sequence[Predicate] | None = None, *, include_version: bool = False,
             dictionary_strings: bool = False) -> pa.Table:
        """Committed rows across tiers (see :func:`headwater.store.scan.scan`)."""
        return scanning.scan(self.root, check_table_name(table), columns, time_range, filter,
                             warm_uri=self.warm_uri, include_version=include_version,
                             dictionary_strings=dictionary_strings)

    def latest(self, table: str, key: Any) -> dict[str, Any] | None:
        """The newest row of ``key`` (see :func:`headwater.store.scan.latest`)."""
        return scanning.latest(self.root, check_table_name(table), key, warm_uri=self.warm_uri)

    def erase(self, table: str, keys: Sequence[Any], *, actor: str | None = None,
              reason: str | None = None) -> ErasureReport:
        """Remove ``keys`` from every tier of ``table`` and record it in the audit log."""
        return lifecycle.erase(self.root, check_table_name(table), keys, actor=actor, reason=reason,
                               warm_uri=self.warm_uri)

    def apply_lifecycle(self, now: datetime | None = None, tables: Sequence[str] | None = None) -> LifecycleReport:
        """One lifecycle pass: retention and warm → cold moves (see :mod:`headwater.store.lifecycle`)."""
        return lifecycle.apply_lifecycle(self.root, now, tables, warm_uri=self.warm_uri)

    def compact(self, table: str) -> int:
        return lifecycle.compact(self.root, check_table_name(table), warm_uri=self.warm_uri)

    def rows_per_tier(self, table: str) -> dict[str, int]:
        meta = self.table(table)
        return {"warm": meta.warm.rows, "cold": sum(f.rows for f in meta.cold)}


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return str(os.getuid())
