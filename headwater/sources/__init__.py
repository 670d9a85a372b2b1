"""Sources: where streams begin. Every source follows the partition protocol of :mod:`headwater.sources.base`."""

from headwater.sources.base import Source, SourcePartition
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource
from headwater.sources.kafka import KafkaSource
from headwater.sources.nexmark import NexmarkSource

__all__ = ["CsvSource", "JsonLinesSource", "KafkaSource", "NexmarkSource", "ParquetSource", "Source", "SourcePartition"]
