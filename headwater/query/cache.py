"""``ResultCache``: answers keyed by the query, the caller's views and the data version of every table it read.

Invariant: an entry is served only for exactly the data versions it was computed on, so a commit (which bumps
the table's ``data_version``) can never be answered from before it. When the engine sees a table at a newer
version it also drops every entry of that table (:meth:`invalidate`), so stale answers do not wait for LRU
eviction to free their memory. Bounded by entries and by Arrow bytes; thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

import pyarrow as pa

Versions = tuple[tuple[str, int], ...]


class ResultCache:
    def __init__(self, max_entries: int = 512, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Hashable, Versions], tuple[pa.Table, bool]] = OrderedDict()
        self._bytes = 0
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: called with True (hit) or False (miss) after every lookup, outside the lock (the Serve app's metrics)
        self.on_lookup: Callable[[bool], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, versions: Versions) -> tuple[pa.Table, bool] | None:
        found = self._get(key, versions)
        if self.on_lookup is not None:
            self.on_lookup(found is not None)
        return found

    def _get(self, key: Hashable, versions: Versions) -> tuple[pa.Table, bool] | None:
        with self._lock:
            for table, version in versions:
                if self._versions.get(table, version) < version:
                    self._invalidate(table, version)
            found = self._entries.get((key, versions))
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end((key, versions))
            self.hits += 1
            return found

    def put(self, key: Hashable, versions: Versions, value: tuple[pa.Table, bool]) -> None:
        size = value[0].nbytes
        if size > self.max_bytes // 4:
            return  # one answer may not take over the cache
        with self._lock:
            for table, version in versions:
                if self._versions.get(table, -1) > version:
                    return  # computed on a version already superseded
                self._versions[table] = version
            if (key, versions) in self._entries:
                return
            self._entries[(key, versions)] = value
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def invalidate(self, table: str, version: int) -> None:
        """Drop the entries that read ``table`` at a version other than ``version`` (it committed)."""
        with self._lock:
            self._invalidate(table, version)

    def _invalidate(self, table: str, version: int) -> None:
        self._versions[table] = version
        for entry in [e for e in self._entries if any(t == table and v != version for t, v in e[1])]:
            self._bytes -= self._entries.pop(entry)[0].nbytes
