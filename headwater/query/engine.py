"""``QueryEngine``: the query layer's entry point, answering SQL and structured queries over a store for a
caller described by their table views, through the result cache.

Invariants: a caller reads only the tables in its ``views`` mapping, each through its view (the planner and
:mod:`headwater.query.sql` enforce the columns, row filters and masks); an answer is cached under the query, the
views' fingerprints and the data version of every table read, so it is served again only while none of them
committed (see :mod:`headwater.query.cache`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

import pyarrow as pa

from headwater.query.cache import ResultCache, Versions
from headwater.query.errors import QueryRefusedError
from headwater.query.features import latest_row, prepare, resolve
from headwater.query.planner import ScanPlan, execute, plan_scan, table_meta
from headwater.query.pushdown import pushable, single_table
from headwater.query.sql import check_sql, run_sql
from headwater.query.structured import MAX_ROWS, Query, plan_query, run_query
from headwater.query.views import TableView
from headwater.store import Store
from headwater.store.hot import MISS, HotTier


@dataclass(frozen=True)
class Answer:
    """A query's rows, whether they were cut at the row limit, whether they came from the cache, and the scans."""

    table: pa.Table
    truncated: bool = False
    cached: bool = False
    plans: tuple[ScanPlan, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = MAX_ROWS
    timeout_s: float = 30.0
    threads: int = 2
    cache_entries: int = 512
    cache_bytes: int = 128 * 1024 * 1024


#: no cached answer (``None`` is a cached answer: the key has no row)
_UNCACHED = object()


class QueryEngine:
    def __init__(self, store: Store, config: EngineConfig | None = None, hot: HotTier | None = None) -> None:
        self.store = store
        self.hot = hot  # the hot tier's client, when the Serve app runs on a Ray with one
        self.config = config or EngineConfig()
        self.cache = ResultCache(self.config.cache_entries, self.config.cache_bytes)

    def _versions(self, tables: list[str]) -> Versions:
        return tuple(sorted((name, table_meta(self.store, name).data_version) for name in tables))

    def query(self, query: Query, view: TableView) -> Answer:
        """Answer a structured query through ``view`` (a view of ``query.table``)."""
        versions = self._versions([query.table])
        key = ("query", query.model_dump_json(), view.fingerprint())
        hit = self.cache.get(key, versions)
        if hit is not None:
            return Answer(hit[0], hit[1], cached=True)
        plan = plan_query(self.store, query, view)
        rows = run_query(self.store, query, view, plan)
        truncated = query.limit is None and rows.num_rows >= self.config.max_rows
        self.cache.put(key, ((plan.table, plan.data_version),), (rows, truncated))
        return Answer(rows, truncated, plans=(plan,))

    def sql(self, sql: str, views: Mapping[str, TableView]) -> Answer:
        """Answer one read-only SELECT over the tables of ``views`` (the caller's grants)."""
        check = check_sql(sql)
        outside = [t for t in check.tables if t not in views]
        if outside:
            raise QueryRefusedError(f"table {outside[0]!r} is not granted to you (or does not exist); "
                                    f"your tables: {', '.join(sorted(views)) or 'none'}")
        metas = {name: table_meta(self.store, name) for name in check.tables}
        versions = tuple(sorted((name, meta.data_version) for name, meta in metas.items()))
        key = ("sql", sql, tuple(views[t].fingerprint() for t in check.tables))
        hit = self.cache.get(key, versions)
        if hit is not None:
            return Answer(hit[0], hit[1], cached=True)
        plans = []
        single = single_table(check.tree)
        for name, meta in metas.items():
            view = views[name]
            visible = view.visible(meta)
            hidden = sorted(c for c in check.columns if c in meta.schema.names and c not in visible
                            and c not in check.aliases)
            if hidden:
                raise QueryRefusedError(f"column {hidden[0]!r} of table {name!r} is not granted to you")
            columns = visible if check.star else [c for c in visible if c in check.columns] or visible[:1]
            predicates, time_range = pushable(meta, view, name, single[1], single[2]) if single and \
                single[0] == name else ([], None)
            plans.append(plan_scan(self.store, meta, view, columns, predicates, time_range))
        tables = {plan.table: execute(self.store, plan, dictionary_strings=True) for plan in plans}
        rows, truncated = run_sql(sql, tables, timeout_s=self.config.timeout_s, max_rows=self.config.max_rows,
                                  threads=self.config.threads)
        self.cache.put(key, tuple(sorted((p.table, p.data_version) for p in plans)), (rows, truncated))
        return Answer(rows, truncated, plans=tuple(plans))

    def feature(self, table: str, key: str, view: TableView, as_of: datetime | None = None) -> dict[str, Any] | None:
        """The newest visible row of ``key`` (see :func:`headwater.query.features.latest_row`), through the cache:
        a commit to the table bumps its data version, so a cached row is never served after one."""
        cached, remember = self._cached_feature(table, key, view, as_of)
        if cached is not _UNCACHED:
            return cached
        return remember(latest_row(self.store, table, key, view, as_of, self.hot))

    def _cached_feature(self, table: str, key: str, view: TableView, as_of: datetime | None
                        ) -> tuple[Any, Callable[[dict[str, Any] | None], dict[str, Any] | None]]:
        """The cached answer of a feature look-up (:data:`_UNCACHED` when there is none) and the function that
        caches a fresh one under the table's data version read *before* the look-up (returning it)."""
        versions = self._versions([table])
        cache_key = ("feature", table, key, None if as_of is None else as_of.isoformat(), view.fingerprint())
        hit = self.cache.get(cache_key, versions)
        cached: Any = _UNCACHED
        if hit is not None:
            rows = hit[0].to_pylist()
            cached = rows[0] if rows else None

        def remember(row: dict[str, Any] | None) -> dict[str, Any] | None:
            self.cache.put(cache_key, versions, (pa.Table.from_pylist([row] if row is not None else []), False))
            return row

        return cached, remember

    async def feature_async(self, table: str, key: str, view: TableView,
                            as_of: datetime | None = None) -> dict[str, Any] | None:
        """:meth:`feature` for an event loop (the Serve app): the hot shard is awaited, not waited for in a
        thread, and only a read of warm (a hot miss) runs in a worker thread. Same answers, same cache."""
        cached, remember = self._cached_feature(table, key, view, as_of)
        if cached is not _UNCACHED:
            return cached
        lookup = prepare(self.store, table, key, view, as_of)
        found = MISS if self.hot is None else await self.hot.lookup_async(lookup.meta, lookup.key, lookup.as_of_us,
                                                                          view.row_filter)
        if isinstance(found, str) and found == MISS:
            row = await asyncio.to_thread(resolve, self.store, lookup, view, found)
        else:
            row = resolve(self.store, lookup, view, found)
        return remember(row)
