"""Sinks: where streams end. Every sink follows the two-phase commit protocol of :mod:`headwater.sinks.base`."""

from headwater.sinks.base import Sink, SinkOwner, SinkPartition
from headwater.sinks.console import ConsoleSink
from headwater.sinks.files import CsvSink, JsonLinesSink, ParquetSink
from headwater.sinks.null import NullSink

__all__ = ["ConsoleSink", "CsvSink", "JsonLinesSink", "NullSink", "ParquetSink", "Sink", "SinkOwner", "SinkPartition"]
