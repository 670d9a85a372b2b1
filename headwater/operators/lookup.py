"""Lookup (enrichment) join: each record gets the columns of the row with the same key in a reference table.

The table is loaded by every subtask of the step (a broadcast: each holds the whole table) from Parquet or
from a SQL query (SQLAlchemy), and reloaded every ``refresh`` of processing time. Matching is vectorised: each
record's row in the table is found, then ``take`` fetches its columns. How a row is found depends on the table:
a single key column of fewer than ``HASHED_PER_BATCH_MAX_ROWS`` rows goes through ``pyarrow.compute.index_in``
(which hashes the table's keys on every batch: cheap for a small table), anything else through a
:class:`~headwater.operators.key_index.KeyIndex` built once per load (binary search for integer keys, a dict
for others): 1 M integer keys, 65,536 records per batch, 104 ms → 7 ms per batch.

Keys in the table must be unique (a duplicate is an error naming the key). A key with a null in any of its
columns never matches, on either side (as in SQL). ``how="left"`` keeps records without a match (nulls in the
table's columns), ``how="inner"`` drops them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import numpy as np

from headwater.errors import ConfigError, SourceError
from headwater.operators.base import Operator, OperatorContext
from headwater.operators.key_index import KeyIndex, distinct_rows, make_key_index

#: tables with one key column and fewer rows are matched by hashing their keys per batch (see the docstring)
HASHED_PER_BATCH_MAX_ROWS = 32_768


@dataclass(frozen=True)
class LookupTable:
    """Where a lookup join's reference table comes from; build with :meth:`parquet` or :meth:`sql`."""

    key: tuple[str, ...]
    parquet_path: str | None = None
    sql_url: str | None = None
    sql_query: str | None = None
    refresh_s: float | None = None

    @classmethod
    def parquet(cls, path: str | Path, *, key: str | Sequence[str], refresh: timedelta | None = None) -> LookupTable:
        """A Parquet file or directory, reloaded every ``refresh`` (never, by default)."""
        return cls(_keys(key), parquet_path=str(path), refresh_s=_seconds(refresh))

    @classmethod
    def sql(cls, url: str, query: str, *, key: str | Sequence[str], refresh: timedelta | None = None) -> LookupTable:
        """The result of ``query`` on the SQLAlchemy database ``url`` (e.g. ``postgresql://...``)."""
        return cls(_keys(key), sql_url=url, sql_query=query, refresh_s=_seconds(refresh))

    def load(self) -> pa.Table:
        try:
            if self.parquet_path is not None:
                table = pq.read_table(self.parquet_path)
            else:
                import sqlalchemy

                engine = sqlalchemy.create_engine(self.sql_url)  # type: ignore[arg-type]
                try:
                    with engine.connect() as connection:
                        rows = connection.execute(sqlalchemy.text(self.sql_query)).mappings().all()  # type: ignore[arg-type]
                finally:
                    engine.dispose()
                table = pa.Table.from_pylist([dict(r) for r in rows])
        except Exception as exc:  # noqa: BLE001 - any loading failure is a source problem
            where = self.parquet_path or self.sql_url
            raise SourceError(f"cannot load lookup table from {where}: {type(exc).__name__}: {exc}") from exc
        missing = [k for k in self.key if k not in table.column_names]
        if missing and table.num_rows:
            raise SourceError(f"lookup table has no key column(s) {missing}; it has {table.column_names}")
        return table


def _keys(key: str | Sequence[str]) -> tuple[str, ...]:
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys:
        raise ConfigError("a lookup table needs a key column")
    return keys


def _seconds(refresh: timedelta | None) -> float | None:
    if refresh is None:
        return None
    if not isinstance(refresh, timedelta) or refresh <= timedelta(0):
        raise ConfigError(f"refresh must be a positive datetime.timedelta, got {refresh!r}")
    return refresh.total_seconds()


def _complete(columns: Sequence[pa.Array]) -> np.ndarray | None:
    """Which rows have no null in any key column (``None``: all of them)."""
    if not any(c.null_count for c in columns):
        return None
    valid = np.ones(len(columns[0]), dtype=bool)
    for column in columns:
        valid &= np.asarray(column.is_valid(), dtype=bool)
    return valid


class LookupJoinOperator(Operator):
    def __init__(self, table: LookupTable, on: Sequence[str], how: str, columns: Sequence[str] | None) -> None:
        self.table_spec = table
        self.on = tuple(on)
        self.how = how
        self.columns = tuple(columns) if columns is not None else None
        self._keys: pa.Array | None = None  # small single-column tables: the keys, for index_in
        self._index: KeyIndex | None = None  # other tables: key -> slot, and the table row of each slot
        self._row_of_slot: np.ndarray | None = None
        self._rows = 0
        self._values: pa.Table | None = None
        self._next_refresh: float | None = None
        self.loads = 0

    def open(self, ctx: OperatorContext) -> None:
        self._load()

    def _load(self) -> None:
        table = self.table_spec.load()
        keys = [table.column(k).combine_chunks() for k in self.table_spec.key]
        complete = _complete(keys)
        rows = np.arange(table.num_rows, dtype=np.int64) if complete is None else np.flatnonzero(complete)
        if complete is not None:  # rows with a null key can never match: not indexed
            keys = [k.filter(pa.array(complete)) for k in keys]
        value_names = [c for c in table.column_names if c not in self.table_spec.key]
        if self.columns is not None:
            value_names = [c for c in value_names if c in self.columns]
        _check_unique(keys)
        if len(keys) == 1 and len(keys[0]) < HASHED_PER_BATCH_MAX_ROWS:
            self._keys, self._index, self._row_of_slot = keys[0], None, rows
        else:
            index = make_key_index([k.type for k in keys])
            slots = index.slots_for(keys)
            row_of_slot = np.empty(len(rows), dtype=np.int64)
            row_of_slot[slots] = rows
            self._keys, self._index, self._row_of_slot = None, index, row_of_slot
        self._rows = len(rows)
        self._values = table.select(value_names).combine_chunks()
        self.loads += 1
        if self.table_spec.refresh_s is not None:
            self._next_refresh = time.monotonic() + self.table_spec.refresh_s

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self._values is not None and self._row_of_slot is not None
        probe = [batch.column(k) for k in self.on]
        if self._keys is not None:
            positions = np.asarray(pc.fill_null(pc.index_in(probe[0], value_set=self._keys, skip_nulls=True), -1),
                                   dtype=np.int64)
        else:
            assert self._index is not None
            positions = self._index.find(probe) if len(self._index) else np.full(batch.num_rows, -1, np.int64)
            incomplete = _complete(probe)
            if incomplete is not None:
                positions[~incomplete] = -1
        missing = positions < 0
        rows = pa.array(self._row_of_slot[np.where(missing, 0, positions)] if len(self._row_of_slot) else
                        np.zeros(len(positions), np.int64), mask=missing)
        if self.how == "inner":
            matched = pc.is_valid(rows)
            batch, rows = batch.filter(matched), rows.filter(matched)
            if batch.num_rows == 0:
                return []
        looked_up = self._values.take(rows)
        arrays = list(batch.columns) + [looked_up.column(i).combine_chunks() for i in range(looked_up.num_columns)]
        names = list(batch.schema.names) + looked_up.column_names
        return [pa.RecordBatch.from_arrays(arrays, names=names)]

    def next_timer(self) -> float | None:
        return self._next_refresh

    def on_processing_time(self, now: float) -> list[pa.RecordBatch]:
        self._load()
        return []

    def metrics(self) -> dict[str, float]:
        return {"table_rows": float(self._rows), "loads": float(self.loads)}


def _check_unique(keys: Sequence[pa.Array]) -> None:
    """Fail naming a key that appears more than once."""
    if not len(keys[0]):
        return
    first, inverse = distinct_rows(keys)
    if len(first) == len(keys[0]):
        return
    row = int(first[int(np.flatnonzero(np.bincount(inverse) > 1)[0])])
    key = tuple(k[row].as_py() for k in keys)
    raise SourceError(f"lookup table key {key[0] if len(key) == 1 else key!r} appears more than once; keys must "
                      "be unique")
