"""Sources: where streams begin. Every source follows the partition protocol of :mod:`headwater.sources.base`."""

from headwater.sources.base import Source, SourcePartition
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource
from headwater.sources.http import HttpPosition, HttpSource
from headwater.sources.kafka import KafkaPosition, KafkaSource
from headwater.sources.kinesis import KinesisShardPosition, KinesisSource
from headwater.sources.nexmark import NexmarkSource
from headwater.sources.pagination import (
    CursorPagination,
    GraphQLPagination,
    LinkPagination,
    NoPagination,
    PagePagination,
)
from headwater.sources.postgres_cdc import PostgresCdcPosition, PostgresCdcSource
from headwater.sources.scheduled import ScheduledSource
from headwater.sources.sql import SqlPosition, SqlSource
from headwater.sources.webhook import WebhookPosition, WebhookSource

__all__ = [
    "CsvSource", "CursorPagination", "GraphQLPagination", "HttpPosition", "HttpSource", "JsonLinesSource",
    "KafkaPosition", "KafkaSource", "KinesisShardPosition", "KinesisSource", "LinkPagination", "NexmarkSource",
    "NoPagination", "PagePagination", "ParquetSource", "PostgresCdcPosition", "PostgresCdcSource", "ScheduledSource", "Source",
    "SourcePartition", "SqlPosition", "SqlSource", "WebhookPosition", "WebhookSource",
]
