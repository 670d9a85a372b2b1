"""Headwater, paced: the query of ``headwater_runner.py`` fed by a source that releases the bids on schedule.

Run with the project's venv: ``.venv/bin/python benchmarks/peers/headwater_paced.py --query q1 --rate 10000:DIR ...``
(contract and latency definition: ``paced.py``).

* :class:`PacedSource` is a Headwater ``Source`` with one partition holding the bids in memory (decoded from
  the Parquet files when the partition is built, before the schedule starts). ``next_batch`` returns the rows
  that are due (``None`` if none is) and ``next_awake`` tells the engine when the next row will be, so the
  source subtask sleeps instead of spinning; the schedule starts at the first poll. The event time is
  ``date_time`` with the engine's default watermarking (``max_out_of_orderness = 0``).
* :class:`LatencySink` stamps every batch it is given (``SinkPartition.write``) with ``time.time()`` and
  keeps the batch's ``date_time`` / ``window_end`` column; for q5 it also digests the rows.
* Everything else is the engine's defaults (``RunConfig``: 20 ms linger of output buffers, 20 ms watermark
  interval), the batch size of the throughput runs, and parallelism 1. Ray is started once for all rates.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import common  # noqa: E402
import paced  # noqa: E402
import pyarrow as pa  # noqa: E402

from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks.base import Sink, SinkPartition  # noqa: E402
from headwater.sources.base import Source, SourcePartition  # noqa: E402

BATCH_SIZE = 131_072  # as the throughput runs
COLUMNS = {"q1": ["auction", "bidder", "price", "date_time", "extra"], "q5": ["auction", "date_time"]}


class PacedPartition(SourcePartition):
    def __init__(self, src: PacedSource) -> None:
        self.src = src
        self.table = paced.load_bids(src.events_dir, src.columns)
        self.batch = self.table.to_batches()[0] if self.table.num_rows else None
        self.times = paced.event_ms(self.table)
        self.schedule = paced.Schedule(src.rate, self.times)
        self.releaser = paced.Releaser(self.schedule, self.times, src.max_lag)
        self.started = False

    def next_batch(self) -> pa.RecordBatch | None:
        i, j = self.releaser.take()
        if not self.started:
            self.started = True
            Path(self.src.state_dir, "schedule.json").write_text(json.dumps(self.schedule.to_dict()))
        if j > i:
            assert self.batch is not None
            return self.batch.slice(i, j - i)
        if self.releaser.done:
            Path(self.src.state_dir, "source.json").write_text(json.dumps(self.releaser.summary()))
            raise StopIteration
        return None

    def next_awake(self) -> float | None:
        due = self.releaser.next_due()
        return None if due is None else time.monotonic() + max(0.0, due - time.time())

    def snapshot(self) -> Any:
        return self.releaser.next


class PacedSource(Source):
    """The bids of ``events_dir``, released at ``rate`` rows/s; one partition."""

    def __init__(self, events_dir: str, columns: list[str], rate: float, max_lag: float, state_dir: str) -> None:
        self.events_dir, self.columns, self.rate, self.max_lag = events_dir, columns, rate, max_lag
        self.state_dir = state_dir

    def schema(self) -> pa.Schema:
        import pyarrow.parquet as pq

        full = pq.read_schema(common.table_files(self.events_dir, "bid")[0])
        return pa.schema([full.field(c) for c in self.columns])

    def list_parts(self) -> list[str]:
        return ["paced"]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        return PacedPartition(self)


class LatencyPartition(SinkPartition):
    def __init__(self, sink: LatencySink, index: int) -> None:
        self.sink = sink
        self.index = index
        self.chunks: list[tuple[float, list[int]]] = []
        self.rows = 0
        self.digest = common.Digest(sink.query) if sink.digest else None

    def write(self, batch: pa.RecordBatch) -> None:
        written = time.time()
        col = batch.column(self.sink.key)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("ms", col.type.tz)).cast(pa.int64())
        self.chunks.append((written, col.to_pylist()))
        self.rows += batch.num_rows
        if self.digest is not None:
            self.digest.add_arrow(batch)

    def prepare(self, checkpoint_id: int) -> None:
        data = {"chunks": self.chunks, "rows": self.rows,
                "digest": self.digest.partial() if self.digest is not None else None}
        Path(self.sink.state_dir, f"sink-{self.index}.json").write_text(json.dumps(data))

    def commit(self, token: Any) -> None:
        """Nothing to publish: the figures are written by ``prepare``."""


class LatencySink(Sink):
    def __init__(self, query: str, state_dir: str) -> None:
        self.query, self.state_dir = query, state_dir
        self.key = paced.key_column(query)
        self.digest = query in common.WINDOWED

    def build_part(self, index: int, count: int) -> SinkPartition:
        return LatencyPartition(self, index)


def setup() -> None:

    # the source and sink classes travel to Ray's workers, which must import `paced` and `common` too
    path = [str(HERE), str(ROOT / "examples"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1024 * 1024 * 1024,  # token auth, reaper
             configure_logging=False, log_to_driver=False)


def teardown() -> None:
    import ray

    ray.shutdown()


def run_rate(args: Any, rate: float, events_dir: str) -> dict[str, Any]:
    from headwater_runner import STEP_IDS, _builder

    import headwater as hw

    state_dir = tempfile.mkdtemp(prefix="headwater-paced-")
    try:
        source = PacedSource(events_dir, COLUMNS[args.query], rate, args.max_lag, state_dir)
        sink = LatencySink(args.query, state_dir)
        flow = hw.Dataflow(f"paced-{args.query}")
        fn = _builder(args.query)
        if args.query in common.WINDOWED:
            fn(flow, source, sink)
        else:
            fn(flow.source(STEP_IDS["bid"], source), sink)
        result = hw.run(flow, parallelism=1, batch_size=BATCH_SIZE)
        schedule = paced.Schedule.from_dict(json.loads(Path(state_dir, "schedule.json").read_text()))
        log = paced.LatencyLog()
        digest = common.Digest(args.query) if sink.digest else None
        rows = 0
        for path in Path(state_dir).glob("sink-*.json"):
            data = json.loads(path.read_text())
            log.extend([(w, k) for w, k in data["chunks"]])
            rows += data["rows"]
            if digest is not None and data["digest"] is not None:
                digest.merge(data["digest"])
        out: dict[str, Any] = {"schedule": schedule, "log": log, "rows_out": rows,
                               **json.loads(Path(state_dir, "source.json").read_text()),
                               "engine_latency_ms": {k: v for k, v in result.latency.summary().items()
                                                     if k in ("p50_ms", "p99_ms", "max_ms")}}
        if digest is not None:
            out["digest"] = digest
        return out
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def version() -> str:
    import headwater

    return headwater.__version__


if __name__ == "__main__":
    raise SystemExit(paced.main("headwater", version, run_rate, setup=setup, teardown=teardown))
