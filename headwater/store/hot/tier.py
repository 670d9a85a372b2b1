"""The hot tier on Ray: named actors, one per shard of a keyed table, holding :class:`HotShardState`; and
:class:`HotTier`, the client the Serve app (look-ups) and TableSink (commit notices) use.

Naming: actor ``hot:<store id>:<table>:<shard>`` in the Ray namespace ``headwater`` (``<store id>``: 12 hex of
the SHA-256 of the store root, so two stores on one cluster never share shards), detached (they outlive the
Serve app that made them; :meth:`HotTier.drop` ends them) and restarted by Ray when their process dies
(``max_restarts=-1``). A key's shard is ``stable_hash(key) % shards`` (:mod:`headwater.core.state.key_groups`,
identical in every process).

Invariants: a shard is a cache of the warm tier, never a source of rows: it is built from the store's committed
rows (:meth:`HotShard.refresh`, at start and after a restart), and takes a commit's rows only after that commit
is in ``table.json`` (TableSink notifies after its transaction), once, by data version (:meth:`HotShardState.apply`
ignores a replayed notice). A shard that missed a change (a lost notice, a lifecycle move, an erasure, which are
not notified) sees the gap — a notice or a look-up for a newer data version — and rebuilds from warm in the
background, answering :data:`MISS` until then. Every failure on this path (no Ray, no shard, a timeout, a dead
actor) is a :data:`MISS`: the caller reads warm, so losing the hot tier loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence, cast

import numpy as np
import pyarrow as pa

from headwater.core.state.key_groups import stable_hash
from headwater.store.hot.shard import ABSENT, MISS, HotLimits, HotShardState, micros
from headwater.store.metadata import VERSION_COLUMN, TableMeta
from headwater.store.scan import Predicate, scan_at
from headwater.store.table import CommitEvent, require_meta

log = logging.getLogger("headwater.store.hot")
NAMESPACE = "headwater"


@dataclass(frozen=True)
class HotConfig:
    """How many shards a table gets and each shard's bounds (``hot_for`` comes from the table's policy).

    ``lookup_timeout_s`` is long on purpose: a shard that is there but slow (a loaded machine) is still faster
    than warm, and giving up on it early turned overload into a collapse (every abandoned call still ran in the
    shard, and each fall-back read of warm cost ~8 ms of CPU: 200 req/s fell to 20-30). A shard that is
    missing, dead or not built yet answers at once (a miss), and that is when warm is read."""

    shards: int = 2
    max_recent_rows: int = 1_000_000
    max_keys: int = 1_000_000
    lookup_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        from headwater.errors import ConfigError

        if self.shards < 1 or self.max_recent_rows < 1 or self.max_keys < 1 or self.lookup_timeout_s <= 0:
            raise ConfigError(f"HotConfig needs shards, max_recent_rows, max_keys >= 1 and lookup_timeout_s > 0: "
                              f"{self}")


def shard_of(meta: TableMeta, key: Sequence[Any], shards: int) -> int:
    assert meta.key is not None
    columns = [pa.array([v], meta.schema.field(k).type) for k, v in zip(meta.key, key)]
    return int(stable_hash(columns)[0] % np.uint64(shards))


def split_by_shard(meta: TableMeta, rows: pa.Table, shards: int) -> list[pa.Table]:
    """``rows`` split into the rows of each shard (empty tables for shards without rows)."""
    assert meta.key is not None
    if rows.num_rows == 0:
        return [rows] * shards
    owner = stable_hash([rows.column(k) for k in meta.key]) % np.uint64(shards)
    return [rows.filter(pa.array(owner == np.uint64(i))) for i in range(shards)]


def now_us() -> int:
    return int(time.time() * 1_000_000)


class HotShard:
    """The actor body of one shard (Ray runs it threaded: look-ups do not wait for a rebuild)."""

    def __init__(self, root: str, warm_uri: str | None, table: str, shard: int, config: HotConfig) -> None:
        self.root, self.warm_uri, self.table, self.shard, self.config = root, warm_uri, table, shard, config
        self._lock = threading.Lock()
        self._state: HotShardState | None = None
        self._refreshing = False
        self._answered = self._missed = 0  # look-ups answered from memory / misses (read warm), for status()
        self._refresh_async()

    # ---- building from warm -----------------------------------------------------------------------------
    def _build(self) -> HotShardState:
        meta = require_meta(self.root, self.table)
        if meta.key is None:
            from headwater.errors import ConfigError

            raise ConfigError(f"table {self.table!r} has no key, so it has no hot tier")
        hot_for = meta.policy.hot_for
        limits = HotLimits(None if hot_for is None else int(hot_for.total_seconds() * 1_000_000),
                           self.config.max_recent_rows, self.config.max_keys)
        rows = scan_at(self.root, meta, None, None, None, warm_uri=self.warm_uri, include_version=True)
        mine = split_by_shard(meta, rows, self.config.shards)[self.shard]
        now = now_us()
        window = None if limits.hot_for_us is None else now - limits.hot_for_us
        recent = mine
        if meta.time is not None and window is not None and mine.num_rows:
            import pyarrow.compute as pc

            recent = mine.filter(pc.greater_equal(micros(mine, meta.time), window))
        state = HotShardState(meta, limits)
        state.load(meta, mine, recent, window, now)
        return state

    def refresh(self) -> int:
        """Rebuild from the warm tier now (also what a restarted actor does); returns the data version."""
        for attempt in range(5):
            try:
                state = self._build()
                break
            except Exception:  # a concurrent change replaced files; try again, then give up (misses go to warm)
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        with self._lock:
            if self._state is None or state.version > self._state.version:
                self._state = state
            return self._state.version

    def _refresh_async(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.refresh()
            except Exception:
                log.exception("hot shard %s/%d: rebuild from warm failed (look-ups read warm)", self.table, self.shard)
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name=f"hot-refresh-{self.table}-{self.shard}", daemon=True).start()

    # ---- the actor's calls ------------------------------------------------------------------------------
    def lookup(self, key: tuple[Any, ...], data_version: int, as_of_us: int | None,
               predicates: Sequence[Predicate]) -> pa.Table | str:
        with self._lock:
            state = self._state
            if state is None:
                return MISS
            if data_version == state.version:
                return state.lookup(tuple(key), data_version, as_of_us, predicates)
            behind = data_version > state.version
        if behind:
            self._refresh_async()
        return MISS

    def lookup_row(self, key: tuple[Any, ...], data_version: int, as_of_us: int | None,
                   predicates: Sequence[Predicate]) -> dict[str, Any] | str:
        """:meth:`lookup` in its wire form: the row as a plain dict (a one-row Arrow table costs Ray's Arrow
        serialiser more than the look-up itself)."""
        found = self.lookup(key, data_version, as_of_us, predicates)
        if isinstance(found, str) and found == MISS:
            self._missed += 1
        else:
            self._answered += 1
        if isinstance(found, pa.Table):
            row: dict[str, Any] = found.to_pylist()[0]
            return row
        return found

    def apply(self, data_version: int, rows: pa.Table) -> bool:
        """A committed change's rows of this shard (TableSink, after its commit). Idempotent by data version."""
        with self._lock:
            state = self._state
            if state is None or data_version <= state.version:
                return False  # not built yet (the rebuild reads it) or a duplicate
            if data_version == state.version + 1:
                schema = pa.schema([f for f in rows.schema if f.name != VERSION_COLUMN])
                meta = state.meta.with_changes(data_version=data_version,
                                               schema=schema if len(schema) >= len(state.meta.schema) else
                                               state.meta.schema)
                return state.apply(meta, rows, now_us())
        self._refresh_async()  # a gap: a change this shard did not see
        return False

    def evict(self) -> None:
        with self._lock:
            if self._state is not None:
                self._state.evict(now_us())

    def status(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            if state is None:
                return {"ready": False, "shards": self.config.shards}
            return {"ready": True, "shards": self.config.shards, "version": state.version, "keys": len(state.index),
                    "recent_rows": state.recent.num_rows, "complete": state.complete,
                    "covered_since": state.covered_since, "answered": self._answered, "missed": self._missed}


def _from_wire(meta: TableMeta, found: Any) -> pa.Table | str:
    if isinstance(found, dict):
        return pa.Table.from_pylist([found], schema=pa.schema([f.with_nullable(True) for f in meta.storage_schema]))
    return ABSENT if found == ABSENT else MISS


class HotTier:
    """Client of a store's hot shards (cheap to make; caches actor handles)."""

    def __init__(self, root: str, warm_uri: str | None = None, config: HotConfig | None = None) -> None:
        self.root, self.warm_uri = root, warm_uri
        self.config = config or HotConfig()
        self.store_id = hashlib.sha256(root.encode("utf-8")).hexdigest()[:12]
        self._handles: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def actor_name(self, table: str, shard: int) -> str:
        return f"hot:{self.store_id}:{table}:{shard}"

    def shards(self, table: str, *, create: bool = False) -> list[Any] | None:
        """The actor handles of ``table``'s shards (made when ``create``), or ``None`` when there are none."""
        import ray

        if not ray.is_initialized():
            return None
        found = self._handles.get(table)
        if found is not None:
            return found
        with self._lock:
            found = self._handles.get(table)
            if found is not None:
                return found
            if create:
                actor = ray.remote(HotShard)
                handles = [actor.options(name=self.actor_name(table, i), namespace=NAMESPACE, lifetime="detached",
                                         get_if_exists=True, num_cpus=0, max_concurrency=8, max_restarts=-1,
                                         max_task_retries=0).remote(self.root, self.warm_uri, table, i, self.config)
                           for i in range(self.config.shards)]
            else:
                try:
                    first = ray.get_actor(self.actor_name(table, 0), namespace=NAMESPACE)
                    described = cast(dict[str, Any], ray.get(first.status.remote(), timeout=5))
                    count = int(described["shards"])
                    handles = [first] + [ray.get_actor(self.actor_name(table, i), namespace=NAMESPACE)
                                         for i in range(1, count)]
                except ValueError:
                    return None
            self._handles[table] = handles
            return handles

    def lookup(self, meta: TableMeta, key: Sequence[Any], as_of_us: int | None = None,
               predicates: Sequence[Predicate] = (), *, create: bool = True) -> pa.Table | str:
        """The newest row of ``key`` (see :meth:`HotShardState.lookup`), :data:`ABSENT`, or :data:`MISS` (also on
        any failure of the hot tier: the caller reads warm)."""
        import ray

        try:
            handles = self.shards(meta.name, create=create)
            if not handles or meta.key is None:
                return MISS
            shard = handles[shard_of(meta, key, len(handles))]
            found = ray.get(shard.lookup_row.remote(tuple(key), meta.data_version, as_of_us, list(predicates)),
                            timeout=self.config.lookup_timeout_s)
            return _from_wire(meta, found)
        except Exception as exc:  # noqa: BLE001 - the hot tier is a cache: any trouble means read warm
            log.debug("hot look-up of %s fell back to warm: %s", meta.name, exc)
            if not isinstance(exc, ray.exceptions.GetTimeoutError):
                self._handles.pop(meta.name, None)  # a dead or dropped shard: look it up again next time
            return MISS

    async def lookup_async(self, meta: TableMeta, key: Sequence[Any], as_of_us: int | None = None,
                           predicates: Sequence[Predicate] = (), *, create: bool = True) -> pa.Table | str:
        """:meth:`lookup` for an event loop: the shard's answer is awaited (no thread blocks on it)."""
        import asyncio

        import ray

        try:
            handles = self.shards(meta.name, create=create)
            if not handles or meta.key is None:
                return MISS
            shard = handles[shard_of(meta, key, len(handles))]
            ref = shard.lookup_row.remote(tuple(key), meta.data_version, as_of_us, list(predicates))
            found = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=self.config.lookup_timeout_s)
            return _from_wire(meta, found)
        except Exception as exc:  # noqa: BLE001 - the hot tier is a cache: any trouble means read warm
            log.debug("hot look-up of %s fell back to warm: %s", meta.name, exc)
            if not isinstance(exc, asyncio.TimeoutError | ray.exceptions.GetTimeoutError):
                self._handles.pop(meta.name, None)
            return MISS

    def notify(self, event: CommitEvent, rows: pa.Table) -> bool:
        """Tell ``event.table``'s shards (if it has any) the rows of a commit that is in ``table.json``.
        Fire and forget: a lost notice only makes a shard rebuild. ``True`` if shards were told."""
        try:
            handles = self.shards(event.table)
            if not handles:
                return False
            meta = require_meta(self.root, event.table)
            for handle, part in zip(handles, split_by_shard(meta, rows, len(handles))):
                handle.apply.remote(event.data_version, part)
            return True
        except Exception as exc:  # noqa: BLE001 - best effort: a lost notice only makes the shards rebuild
            log.warning("hot tier of %s not notified of data version %d (its shards will rebuild): %s",
                        event.table, event.data_version, exc)
            return False

    def status(self, table: str) -> list[dict[str, Any]] | None:
        import ray

        handles = self.shards(table)
        return None if handles is None else ray.get([h.status.remote() for h in handles], timeout=30)

    def wait_ready(self, table: str, data_version: int | None = None, timeout_s: float = 60.0) -> None:
        """Block until every shard of ``table`` is built (at ``data_version`` or later, when given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.status(table) or []
            if found and all(s["ready"] and (data_version is None or s["version"] >= data_version) for s in found):
                return
            if time.monotonic() > deadline:
                from headwater.errors import StoreError

                raise StoreError(f"the hot shards of {table!r} were not ready within {timeout_s} s: {found}")
            time.sleep(0.05)

    def drop(self, table: str) -> None:
        """End ``table``'s shards (nothing is lost: they are a cache of warm)."""
        import ray

        handles = self.shards(table)
        for handle in handles or ():
            ray.kill(handle, no_restart=True)
        self._handles.pop(table, None)
