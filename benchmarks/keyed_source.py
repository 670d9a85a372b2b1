"""A synthetic, vectorised source of (key, value, ts) rows with a fixed key cardinality, for state benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from headwater.sources.base import Source, SourcePartition


class KeyedSource(Source):
    """``events`` rows over ``partitions``; row ``n`` has key ``(n * 7919) % keys`` and value ``n % 1000``."""

    def __init__(self, events: int, keys: int, partitions: int = 2, batch_size: int = 65_536) -> None:
        self.events, self.keys, self.partitions, self.batch_size = events, keys, partitions, batch_size

    def schema(self) -> pa.Schema:
        return pa.schema([("key", pa.int64()), ("value", pa.int64())])

    def list_parts(self) -> list[str]:
        return [f"keyed-{k}-of-{self.partitions}" for k in range(self.partitions)]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        k = int(part.split("-")[1])
        return _KeyedPartition(self, k, int(resume_state) if resume_state is not None else k)


class _KeyedPartition(SourcePartition):
    def __init__(self, source: KeyedSource, k: int, next_event: int) -> None:
        self.source, self.k, self.next_event = source, k, next_event

    def next_batch(self) -> pa.RecordBatch:
        s = self.source
        if self.next_event >= s.events:
            raise StopIteration
        n = np.arange(self.next_event, min(s.events, self.next_event + s.batch_size * s.partitions), s.partitions)
        self.next_event = int(n[-1]) + s.partitions
        return pa.record_batch([pa.array((n * 7919) % s.keys), pa.array(n % 1000)], schema=s.schema())

    def snapshot(self) -> int:
        return self.next_event
