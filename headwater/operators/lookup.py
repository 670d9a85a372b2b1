"""Lookup (enrichment) join: each record gets the columns of the row with the same key in a reference table.

The table is loaded by every subtask of the step (a broadcast: each holds the whole table) from Parquet or
from a SQL query (SQLAlchemy), and reloaded every ``refresh`` of processing time. Matching is vectorised:
``pyarrow.compute.index_in`` finds each record's row in the table, ``take`` fetches its columns. Keys in the
table must be unique (a duplicate is an error naming the key). ``how="left"`` keeps records without a match
(nulls in the table's columns), ``how="inner"`` drops them.
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

from headwater.errors import ConfigError, SourceError
from headwater.operators.base import Operator, OperatorContext


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


def _combined_key(columns: Sequence[pa.Array]) -> pa.Array:
    if len(columns) == 1:
        return columns[0]
    return pc.binary_join_element_wise(*[pc.cast(c, pa.string()) for c in columns], "\x1f")


class LookupJoinOperator(Operator):
    def __init__(self, table: LookupTable, on: Sequence[str], how: str, columns: Sequence[str] | None) -> None:
        self.table_spec = table
        self.on = tuple(on)
        self.how = how
        self.columns = tuple(columns) if columns is not None else None
        self._keys: pa.Array | None = None
        self._values: pa.Table | None = None
        self._next_refresh: float | None = None
        self.loads = 0

    def open(self, ctx: OperatorContext) -> None:
        self._load()

    def _load(self) -> None:
        table = self.table_spec.load()
        keys = _combined_key([table.column(k).combine_chunks() for k in self.table_spec.key])
        if len(pc.unique(keys)) != len(keys):
            counts = pc.value_counts(keys)
            duplicate = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
            raise SourceError(f"lookup table key {duplicate!r} appears more than once; keys must be unique")
        value_names = [c for c in table.column_names if c not in self.table_spec.key]
        if self.columns is not None:
            value_names = [c for c in value_names if c in self.columns]
        self._keys, self._values = keys, table.select(value_names).combine_chunks()
        self.loads += 1
        if self.table_spec.refresh_s is not None:
            self._next_refresh = time.monotonic() + self.table_spec.refresh_s

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self._keys is not None and self._values is not None
        probe = _combined_key([batch.column(k) for k in self.on])
        rows = pc.index_in(probe, value_set=self._keys)
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
        return {"table_rows": float(len(self._keys) if self._keys is not None else 0), "loads": float(self.loads)}
