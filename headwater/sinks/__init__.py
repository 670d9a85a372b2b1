"""Sinks: where streams end. Every sink follows the two-phase commit protocol of :mod:`headwater.sinks.base`.

The Kafka and SQL sinks load their client libraries (confluent-kafka, SQLAlchemy: ~0.25 s together) on first
use of their names, so that ``import headwater`` — paid by every driver and every Ray worker process at
start-up — does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.core.lazy import lazy_attributes
from headwater.sinks.base import Sink, SinkOwner, SinkPartition
from headwater.sinks.console import ConsoleSink
from headwater.sinks.files import CsvSink, JsonLinesSink, ParquetSink
from headwater.sinks.null import NullSink
from headwater.sinks.table import TableCommitToken, TableSink

if TYPE_CHECKING:
    from headwater.sinks.kafka import KafkaCommitToken, KafkaSink
    from headwater.sinks.sql import SqlCommitToken, SqlSink

_LAZY = {"KafkaCommitToken": "headwater.sinks.kafka", "KafkaSink": "headwater.sinks.kafka",
         "SqlCommitToken": "headwater.sinks.sql", "SqlSink": "headwater.sinks.sql"}

__all__ = ["ConsoleSink", "CsvSink", "JsonLinesSink", "KafkaCommitToken", "KafkaSink", "NullSink", "ParquetSink", "Sink",
           "SinkOwner", "SinkPartition", "SqlCommitToken", "SqlSink", "TableCommitToken", "TableSink"]


__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
