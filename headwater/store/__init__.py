"""Headwater's table store: tables with a warm tier (LanceDB) and a cold tier (Parquet by date), one
``table.json`` per table as the commit point, a lifecycle manager and a read API across tiers.

Layered below the connectors (``headwater.sinks.TableSink`` writes here) and above ``clients``/``core``; the
query layer, the Serve app and the hot tier sit above it. See docs/storage.md.
"""

from headwater.store.lifecycle import ErasureReport, Lifecycle, LifecycleReport, TableReport, apply_lifecycle, erase
from headwater.store.metadata import LifecyclePolicy, TableMeta
from headwater.store.scan import Predicate, TimeRange
from headwater.store.store import Store
from headwater.store.table import CommitEvent

__all__ = ["CommitEvent", "ErasureReport", "Lifecycle", "LifecycleReport", "LifecyclePolicy", "Predicate", "Store",
           "TableMeta", "TableReport", "TimeRange", "apply_lifecycle", "erase"]
