"""Where a lookup join's reference table comes from: a Parquet file or directory, or a SQL query.

:class:`LookupTable` is the user's spec (``hw.LookupTable.parquet(...)`` / ``.sql(...)``) and loads the table
when asked: at build time (to check keys and columns) and in every subtask of the join, at start and every
``refresh``. The join itself is :class:`~headwater.operators.joins.lookup.LookupJoinOperator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from headwater.errors import ConfigError, SourceError


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

                assert self.sql_url is not None and self.sql_query is not None  # LookupTable.sql sets both
                engine = sqlalchemy.create_engine(self.sql_url)
                try:
                    with engine.connect() as connection:
                        rows = connection.execute(sqlalchemy.text(self.sql_query)).mappings().all()
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
