"""Headwater's query layer: read-only SQL (DuckDB over Arrow) and structured JSON queries over the store's
tiers, for a caller described by :class:`TableView`s, with a result cache keyed by data version.

Layered above ``headwater.store`` and below ``headwater.access`` and ``headwater.serve``; it knows nothing of
tokens or roles. See docs/serving.md.
"""

from headwater.query.cache import ResultCache
from headwater.query.engine import Answer, EngineConfig, QueryEngine
from headwater.query.errors import QueryError, QueryRefusedError, QueryTimeoutError
from headwater.query.features import latest_row, parse_key
from headwater.query.planner import ScanPlan, plan_scan
from headwater.query.sql import SqlCheck, check_sql, locked_connection
from headwater.query.structured import Aggregate, Filter, Order, Query, TimeRangeModel
from headwater.query.views import MASK, TableView

__all__ = ["MASK", "Aggregate", "Answer", "EngineConfig", "Filter", "Order", "Query", "QueryEngine", "QueryError",
           "QueryRefusedError", "QueryTimeoutError", "ResultCache", "ScanPlan", "SqlCheck", "TableView",
           "TimeRangeModel", "check_sql", "latest_row", "locked_connection", "parse_key", "plan_scan"]
