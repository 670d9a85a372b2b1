"""Sources: where streams begin. Every source follows the partition protocol of :mod:`headwater.sources.base`.

The SQL, HTTP and Kafka sources load their client libraries (SQLAlchemy, httpx, confluent-kafka) on first use
of their names, so that ``import headwater`` — paid by every driver and every Ray worker process at start-up —
does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.core.lazy import lazy_attributes
from headwater.sources.base import Source, SourcePartition
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource
from headwater.sources.kinesis import KinesisShardPosition, KinesisSource
from headwater.sources.nexmark import NexmarkSource
from headwater.sources.postgres_cdc import PostgresCdcPosition, PostgresCdcSource
from headwater.sources.scheduled import ScheduledSource
from headwater.sources.webhook import WebhookPosition, WebhookSource

if TYPE_CHECKING:
    from headwater.sources.http import HttpPosition, HttpSource
    from headwater.sources.kafka import KafkaPosition, KafkaSource
    from headwater.sources.pagination import (
        CursorPagination,
        GraphQLPagination,
        LinkPagination,
        NoPagination,
        PagePagination,
    )
    from headwater.sources.sql import SqlPosition, SqlSource

_LAZY = {
    "HttpPosition": "headwater.sources.http", "HttpSource": "headwater.sources.http",
    "KafkaPosition": "headwater.sources.kafka", "KafkaSource": "headwater.sources.kafka",
    "CursorPagination": "headwater.sources.pagination", "GraphQLPagination": "headwater.sources.pagination",
    "LinkPagination": "headwater.sources.pagination", "NoPagination": "headwater.sources.pagination",
    "PagePagination": "headwater.sources.pagination",
    "SqlPosition": "headwater.sources.sql", "SqlSource": "headwater.sources.sql",
}

__all__ = [
    "CsvSource", "CursorPagination", "GraphQLPagination", "HttpPosition", "HttpSource", "JsonLinesSource",
    "KafkaPosition", "KafkaSource", "KinesisShardPosition", "KinesisSource", "LinkPagination", "NexmarkSource",
    "NoPagination", "PagePagination", "ParquetSource", "PostgresCdcPosition", "PostgresCdcSource", "ScheduledSource", "Source",
    "SourcePartition", "SqlPosition", "SqlSource", "WebhookPosition", "WebhookSource",
]


__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
