"""The lifecycle manager: retention, warm → cold moves by age, erasure by key, and compaction.

Each is one :class:`~headwater.store.table.Transaction` per table, so each is all-or-nothing across a crash
(killed anywhere, a change leaves either no visible trace or its whole effect; the next change of the table
first clears the leftovers) and re-running it is harmless:

* **Retention** (``policy.retain_for``): rows whose time is older than ``now - retain_for`` are deleted from warm
  and cold. Cold files entirely past it are dropped; a file straddling the cut-off is rewritten without those
  rows.
* **Move** (``policy.warm_for``): rows older than ``now - warm_for`` are written to cold Parquet files (one per
  UTC date), then deleted from warm, then ``table.json`` names the new cold files and the new warm version
  together. A move killed before that last write leaves the rows in warm (the warm version ``table.json``
  names still has them) and unlisted cold files the next change deletes; run again, it moves them again.
* **Erasure** (:func:`erase`): every row whose key is one of the given keys is deleted from warm and cold (cold
  files holding one are rewritten without it), and the audit log records who asked, when, for which table,
  a SHA-256 digest of each key (not the key: the log must not keep what was erased) and the rows removed per
  tier: a ``started`` line before the change and a ``completed`` line after it.
* **Compaction** (:func:`compact`): Lance merges the fragments commits add, brings the scalar indexes up to
  date and prunes old versions; the rows and the data version are unchanged.

Tables without a time column have no ages: they hold their rows in warm until they are erased; lifecycle only
compacts them.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col, lit

from headwater.store import cold
from headwater.store import table as table_module
from headwater.store.metadata import ColdFile, TableMeta, WarmState, to_micros
from headwater.store.scan import key_tuple
from headwater.store.table import Transaction, require_meta
from headwater.store.warm import WarmTier, key_condition


@dataclass
class TableReport:
    """What one lifecycle pass did to one table (row counts)."""

    table: str
    moved_to_cold: int = 0
    expired_warm: int = 0
    expired_cold: int = 0
    data_version: int = 0


@dataclass
class LifecycleReport:
    tables: list[TableReport] = field(default_factory=list)


def _cutoff_literal(meta: TableMeta, cutoff: datetime) -> Any:
    assert meta.time is not None
    kind = meta.schema.field(meta.time).type
    value = pa.scalar(to_micros(cutoff, True), pa.timestamp("us", tz="UTC"))
    value = value.cast(kind) if kind.tz else value.cast(pa.timestamp("us")).cast(kind)
    as_py = value.as_py()
    return as_py.astimezone(UTC).replace(tzinfo=None) if getattr(as_py, "tzinfo", None) else as_py


def _warm_bounds(warm: WarmTier, meta: TableMeta, version: int) -> tuple[int, int | None, int | None]:
    times = warm.read(version, [meta.time] if meta.time else ["_hw_version"])
    low, high = cold.time_bounds(times, meta.time)
    return times.num_rows, low, high


def _micros_column(rows: pa.Table, time: str) -> pa.Array:
    return pc.cast(pc.cast(rows.column(time), pa.timestamp("us", tz="UTC")), pa.int64())


def apply_table(root: str, name: str, now: datetime | None = None, *, warm_uri: str | None = None) -> TableReport:
    """Retention, then the warm → cold move, for one table, as of ``now`` (default: the current UTC time)."""
    now = now or datetime.now(UTC)
    report = TableReport(name)
    with Transaction(root, name, warm_uri) as tx:
        meta = tx.require()
        report.data_version = meta.data_version
        if meta.time is None:
            return report
        policy = meta.policy
        data_version = meta.data_version + 1
        version = meta.warm.version
        files = list(meta.cold)
        replaced: list[ColdFile] = []
        if policy.retain_for is not None:
            cut = to_micros(now - policy.retain_for, True)
            before = tx.warm.read(version, ["_hw_version"], [col(meta.time) < lit(_cutoff_literal(meta, now - policy.retain_for))]).num_rows
            if before:
                version = tx.warm.delete(col(meta.time) < lit(_cutoff_literal(meta, now - policy.retain_for)))
                report.expired_warm = before
            kept: list[ColdFile] = []
            for file in files:
                if file.max_time is not None and file.max_time < cut:
                    replaced.append(file)
                    report.expired_cold += file.rows
                elif file.min_time is not None and file.min_time < cut:
                    rows = cold.read_file(tx.directory, file, meta.storage_schema)
                    keep = rows.filter(pc.greater_equal(_micros_column(rows, meta.time), cut))
                    report.expired_cold += rows.num_rows - keep.num_rows
                    replaced.append(file)
                    if keep.num_rows:
                        kept.append(cold.rewrite(tx.directory, file, keep, meta.time, data_version))
                else:
                    kept.append(file)
            files = kept
        if policy.warm_for is not None:
            old = [col(meta.time) < lit(_cutoff_literal(meta, now - policy.warm_for))]
            moving = tx.warm.read(version, meta.storage_schema.names, old)
            if moving.num_rows:
                moving = moving.select(meta.storage_schema.names).cast(meta.storage_schema)
                files += cold.write_partitioned(tx.directory, moving, meta.time, data_version)
                table_module._crash_point("move.cold_written")
                version = tx.warm.delete(old[0])
                table_module._crash_point("move.warm_deleted")
                report.moved_to_cold = moving.num_rows
        if report.moved_to_cold or report.expired_warm or report.expired_cold:
            rows, low, high = _warm_bounds(tx.warm, meta, version)
            tx.save(meta.with_changes(data_version=data_version, cold=tuple(files),
                                      warm=WarmState(version, rows, low, high, meta.warm.indexed)))
            report.data_version = data_version
            table_module._crash_point("move.meta_written")
            cold.sweep(tx.directory, files)
    return report


class Lifecycle:
    """Applies every table's policy in a store; :meth:`run` is one pass (background scheduling comes later)."""

    def __init__(self, root: str, *, warm_uri: str | None = None) -> None:
        self.root = root
        self.warm_uri = warm_uri

    def run(self, now: datetime | None = None, tables: Sequence[str] | None = None) -> LifecycleReport:
        from headwater.store.store import list_tables

        report = LifecycleReport()
        for name in tables if tables is not None else list_tables(self.root):
            report.tables.append(apply_table(self.root, name, now, warm_uri=self.warm_uri))
        return report


def apply_lifecycle(root: str, now: datetime | None = None, tables: Sequence[str] | None = None, *,
                    warm_uri: str | None = None) -> LifecycleReport:
    """One lifecycle pass over ``tables`` (default: all) of the store at ``root``."""
    return Lifecycle(root, warm_uri=warm_uri).run(now, tables)


def compact(root: str, name: str, *, warm_uri: str | None = None) -> int:
    """Compact the warm tier of ``name``; returns the new warm version (rows and data version unchanged)."""
    with Transaction(root, name, warm_uri) as tx:
        meta = tx.require()
        version = tx.warm.compact()
        wanted = [*(meta.key or ()), *((meta.time,) if meta.time else ())]
        version, indexed = tx.warm.ensure_indexes(wanted, meta.warm.indexed)
        tx.save(meta.with_changes(warm=WarmState(version, meta.warm.rows, meta.warm.min_time, meta.warm.max_time,
                                                 indexed)))
        return version


def key_digest(values: tuple[Any, ...]) -> str:
    return hashlib.sha256(json.dumps([str(v) for v in values], ensure_ascii=True).encode()).hexdigest()


def audit(root: str, record: dict[str, Any]) -> None:
    """Append ``record`` (its ``event`` names the entry's kind) to the store's hash-chained audit log, durably."""
    from headwater.store.audit import AuditLog

    fields = dict(record)
    fields.pop("at", None)  # the log stamps its own time
    AuditLog(root).append(str(fields.pop("event")), **fields)


@dataclass(frozen=True)
class ErasureReport:
    table: str
    keys: int
    warm_rows: int
    cold_rows: int
    data_version: int


def erase(root: str, name: str, keys: Sequence[Any], *, actor: str | None = None, reason: str | None = None,
          warm_uri: str | None = None) -> ErasureReport:
    """Remove every row of table ``name`` whose key is one of ``keys`` from every tier, and audit it.

    Rows committed after the erasure (a pipeline still producing the key) are new data and are kept."""
    meta = require_meta(root, name)
    values = list(dict.fromkeys(key_tuple(meta, k) for k in keys))
    who = actor or getpass.getuser()
    base = {"event": "erase", "table": name, "actor": who, "reason": reason, "keys": [key_digest(v) for v in values],
            "key_columns": list(meta.key or ())}
    audit(root, {**base, "status": "started"})
    with Transaction(root, name, warm_uri) as tx:
        meta = tx.require()
        data_version = meta.data_version + 1
        condition = key_condition(meta.key or (), values) if values else None
        warm_rows = tx.warm.read(meta.warm.version, ["_hw_version"], [condition]).num_rows if condition else 0
        version = tx.warm.delete(condition) if warm_rows and condition is not None else meta.warm.version
        files: list[ColdFile] = []
        cold_rows = 0
        for file in meta.cold:
            rows = cold.read_file(tx.directory, file, meta.storage_schema)
            hit = _key_mask(rows, meta, values)
            removed = int(pc.sum(hit).as_py() or 0) if rows.num_rows else 0
            if not removed:
                files.append(file)
                continue
            cold_rows += removed
            keep = rows.filter(pc.invert(hit))
            if keep.num_rows:
                files.append(cold.rewrite(tx.directory, file, keep, meta.time, data_version))
        if warm_rows or cold_rows:
            rows_left, low, high = _warm_bounds(tx.warm, meta, version)
            tx.save(meta.with_changes(data_version=data_version, cold=tuple(files),
                                      warm=WarmState(version, rows_left, low, high, meta.warm.indexed)))
            cold.sweep(tx.directory, files)
        else:
            data_version = meta.data_version
    audit(root, {**base, "status": "completed", "warm_rows": warm_rows,
                 "cold_rows": cold_rows, "data_version": data_version})
    return ErasureReport(name, len(values), warm_rows, cold_rows, data_version)


def _key_mask(rows: pa.Table, meta: TableMeta, values: Sequence[tuple[Any, ...]]) -> pa.Array:
    assert meta.key is not None
    if rows.num_rows == 0:
        return pa.array([], pa.bool_())
    if len(meta.key) == 1:
        column = meta.key[0]
        return pc.fill_null(pc.is_in(rows.column(column), pa.array([v[0] for v in values],
                                                                   meta.schema.field(column).type)), False)
    mask = pa.array([False] * rows.num_rows)
    for value in values:
        one = pa.array([True] * rows.num_rows)
        for column, v in zip(meta.key, value):
            one = pc.and_(one, pc.fill_null(pc.equal(rows.column(column), pa.scalar(v, meta.schema.field(column).type)),
                                            False))
        mask = pc.or_(mask, one)
    return mask


