"""Sources: where streams begin. Every source follows the partition protocol of :mod:`headwater.sources.base`."""

from headwater.sources.base import Source, SourcePartition
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource
from headwater.sources.kafka import KafkaPosition, KafkaSource
from headwater.sources.kinesis import KinesisShardPosition, KinesisSource
from headwater.sources.nexmark import NexmarkSource
from headwater.sources.postgres_cdc import PostgresCdcPosition, PostgresCdcSource
from headwater.sources.sql import SqlPosition, SqlSource

__all__ = [
    "CsvSource", "JsonLinesSource", "KafkaPosition", "KafkaSource", "KinesisShardPosition", "KinesisSource", "NexmarkSource",
    "ParquetSource", "PostgresCdcPosition", "PostgresCdcSource", "Source", "SourcePartition", "SqlPosition",
    "SqlSource",
]
