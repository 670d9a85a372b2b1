"""Sources: where streams begin. Every source follows the partition protocol of :mod:`headwater.sources.base`."""

from headwater.sources.base import Source, SourcePartition
from headwater.sources.files import CsvSource, JsonLinesSource, ParquetSource
from headwater.sources.nexmark import NexmarkSource
from headwater.sources.postgres_cdc import PostgresCdcPosition, PostgresCdcSource

__all__ = ["CsvSource", "JsonLinesSource", "NexmarkSource", "ParquetSource", "PostgresCdcPosition", "PostgresCdcSource", "Source", "SourcePartition"]
