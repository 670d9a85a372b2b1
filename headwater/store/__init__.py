"""Headwater's table store: tables with a warm tier (LanceDB) and a cold tier (Parquet by date), one
``table.json`` per table as the commit point, a lifecycle manager and a read API across tiers.

Layered below the connectors (``headwater.sinks.TableSink`` writes here) and above ``clients``/``core``; the
query layer, the Serve app and the hot tier sit above it. See docs/storage.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.store.lifecycle import ErasureReport, Lifecycle, LifecycleReport, TableReport, apply_lifecycle, erase
    from headwater.store.metadata import LifecyclePolicy, TableMeta
    from headwater.store.scan import Predicate, TimeRange
    from headwater.store.store import Store
    from headwater.store.table import CommitEvent

#: where each public name lives; imported on first use, so ``import headwater`` does not load LanceDB (1.4 s
#: of start-up measured here) unless a table is touched
_HOMES = {
    "ErasureReport": "lifecycle", "Lifecycle": "lifecycle", "LifecycleReport": "lifecycle", "TableReport": "lifecycle",
    "apply_lifecycle": "lifecycle", "erase": "lifecycle", "LifecyclePolicy": "metadata", "TableMeta": "metadata",
    "Predicate": "scan", "TimeRange": "scan", "Store": "store", "CommitEvent": "table",
}

__all__ = ["CommitEvent", "ErasureReport", "Lifecycle", "LifecycleReport", "LifecyclePolicy", "Predicate", "Store",
           "TableMeta", "TableReport", "TimeRange", "apply_lifecycle", "erase"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'headwater.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"headwater.store.{home}"), name)
    globals()[name] = value
    return value
