"""Sinks: where streams end. Every sink follows the two-phase commit protocol of :mod:`headwater.sinks.base`."""

from headwater.sinks.base import Sink, SinkOwner, SinkPartition
from headwater.sinks.console import ConsoleSink
from headwater.sinks.files import CsvSink, JsonLinesSink, ParquetSink
from headwater.sinks.kafka import KafkaCommitToken, KafkaSink
from headwater.sinks.null import NullSink
from headwater.sinks.sql import SqlCommitToken, SqlSink
from headwater.sinks.table import TableCommitToken, TableSink

__all__ = ["ConsoleSink", "CsvSink", "JsonLinesSink", "KafkaCommitToken", "KafkaSink", "NullSink", "ParquetSink", "Sink",
           "SinkOwner", "SinkPartition", "SqlCommitToken", "SqlSink", "TableCommitToken", "TableSink"]
