"""Bytewax 0.21: the Nexmark queries as a Bytewax dataflow (Python operators over Python tuples, one per row).

Run with its own venv: ``benchmarks/.venvs/bytewax/bin/python benchmarks/peers/bytewax_runner.py --query q5 ...``.

* Input: a ``FixedPartitionedSource`` with one partition per Parquet file; each ``next_batch`` decodes one
  Parquet batch with pyarrow and yields its rows as tuples (``date_time`` as int ms, or as an aware UTC
  ``datetime`` for the windowed queries, which Bytewax's ``EventClock`` needs). Only the columns a query uses.
* Parallelism: ``--parallelism 1`` runs the dataflow in this process (``run_main``); ``N > 1`` starts N worker
  processes of one worker each (``cluster_main`` with localhost addresses), Bytewax's way to use several cores
  (its workers are GIL-bound threads within one process).
* Windows: ``EventClock(wait_for_system_duration = N days)``, N whole days above the input's event-time span,
  so no row is late whatever order the partitions are read in, and windows close at end of input (Bytewax
  closes all windows on EOF): final results only. Windows are aligned to the Unix epoch.

  - q5: ``count_window`` (``SlidingWindower`` 10 s / 2 s) keyed by auction, then re-keyed by window and
    ``fold_final`` keeps the auction(s) with the top count of each window (a window's counts are all known
    only at end of input, since every window closes then).
  - q7: ``fold_window`` keyed by the bid's 10 s window start (``TumblingWindower``), keeping the max price and
    the bids with it, so windows spread over the workers.
  - q8: ``join_window`` (``TumblingWindower`` 10 s, ``emit_mode="final"``) of persons keyed by id and auctions
    keyed by seller; a (person, window) with at least one auction yields one row.
  All windowing operators run with ``ordered=False`` (values need no timestamp order; with the large wait an
  ordered operator would buffer every row until the end).

Timing: ``elapsed_s`` runs from the start of ``run_main`` / ``cluster_main`` (the earliest worker) to the end of
the last worker; starting the worker processes (interpreter, imports) is ``startup_s``. The timed run writes
to a sink that counts items; the verification run's sink feeds them to the digest (per worker, merged after).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

BATCH = 65_536
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------- connectors
def _source(events_dir: str, table: str, columns: list[str], aware: bool) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    files = {Path(f).name: f for f in common.table_files(events_dir, table)}

    class ParquetPartition(StatefulSourcePartition):
        def __init__(self, path: str) -> None:
            self._batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=columns, use_threads=False)
            self._rows = 0

        def next_batch(self) -> list[tuple]:
            batch = next(self._batches)  # StopIteration ends the partition
            cols = []
            for name in columns:
                col = batch.column(name)
                if pa.types.is_timestamp(col.type):
                    col = col.cast(pa.timestamp("ms", "UTC")) if aware else col.cast(pa.int64())
                cols.append(col.to_pylist())
            self._rows += batch.num_rows
            return list(zip(*cols))

        def snapshot(self) -> int:
            return self._rows

    class ParquetFiles(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return list(files)

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> ParquetPartition:
            return ParquetPartition(files[for_part])

    return ParquetFiles()


def _sink(query: str, partial_dir: str, verify: bool) -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Collect(StatelessSinkPartition):
        def __init__(self, worker: int) -> None:
            self.worker = worker
            self.rows = 0
            self.digest = common.Digest(query) if verify else None

        def write_batch(self, items: list[tuple]) -> None:
            self.rows += len(items)
            if self.digest is not None:
                self.digest.add_all(items)

        def close(self) -> None:
            partial = self.digest.partial() if self.digest is not None else {"rows": self.rows, "sum": "0"}
            Path(partial_dir, f"sink-{os.getpid()}-{self.worker}.json").write_text(json.dumps(partial))

    class CollectSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Collect:
            return Collect(worker_index)

    return CollectSink()


# ------------------------------------------------------------------------------------------------ queries
def build_flow(query: str, events_dir: str, partial_dir: str, verify: bool) -> Any:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators import windowing as win

    meta = common.manifest(events_dir)
    span_ms = (meta["last_ms"] or 0) - (meta["first_ms"] or 0)
    wait = timedelta(days=span_ms // 86_400_000 + 1)
    windowed = query in common.WINDOWED
    flow = Dataflow(f"nexmark_{query}")
    inputs = {t: op.input(f"in_{t}", flow, _source(events_dir, t, cols, aware=windowed))
              for t, cols in common.INPUT[query].items()}
    sink = _sink(query, partial_dir, verify)

    def clock(ts_index: int) -> Any:
        return win.EventClock(lambda row: row[ts_index], wait_for_system_duration=wait)

    def ms(dt: datetime) -> int:
        return (dt - EPOCH) // timedelta(milliseconds=1)

    if query == "q0":
        out = inputs["bid"]
    elif query == "q1":
        out = op.map("q1", inputs["bid"], lambda b: (b[0], b[1], b[2] * common.Q1_RATE, b[3], b[4]))
    elif query == "q2":
        out = op.filter("q2", inputs["bid"], lambda b: b[0] % common.Q2_MODULUS == 0)
    elif query == "q5":  # rows: (auction, date_time)
        slide, size = timedelta(milliseconds=common.Q5_SLIDE_MS), timedelta(milliseconds=common.Q5_SIZE_MS)
        counts = win.count_window("count", inputs["bid"], clock(1),
                                  win.SlidingWindower(length=size, offset=slide, align_to=EPOCH),
                                  key=lambda b: str(b[0]))
        by_window = op.map("by_window", counts.down,
                           lambda kv: (str(kv[1][0]), (int(kv[0]), kv[1][1])))  # (window id, (auction, n))

        def top(acc: list, v: tuple) -> list:
            if v[1] > acc[0]:
                return [v[1], [v[0]]]
            if v[1] == acc[0]:
                acc[1].append(v[0])
            return acc

        tops = op.fold_final("top", by_window, lambda: [0, []], top)
        slide_ms = common.Q5_SLIDE_MS

        def rows5(kv: tuple) -> Iterable[tuple]:
            start = int(kv[0]) * slide_ms
            return [(start, start + common.Q5_SIZE_MS, a, kv[1][0]) for a in kv[1][1]]

        out = op.flat_map("q5", tops, rows5)
    elif query == "q7":  # rows: (auction, bidder, price, date_time)
        size_ms = common.Q7_SIZE_MS
        keyed = op.key_on("by_window", inputs["bid"], lambda b: str(ms(b[3]) // size_ms))

        def best(acc: list, b: tuple) -> list:
            if b[2] > acc[0]:
                return [b[2], [(b[0], b[1])]]
            if b[2] == acc[0]:
                acc[1].append((b[0], b[1]))
            return acc

        maxes = win.fold_window("max", keyed, clock(3),
                                win.TumblingWindower(length=timedelta(milliseconds=size_ms), align_to=EPOCH),
                                lambda: [-1, []], best, lambda a, b: a, ordered=False)

        def rows7(kv: tuple) -> Iterable[tuple]:
            start = int(kv[0]) * size_ms
            price, bids = kv[1][1]
            return [(start, start + size_ms, a, bidder, price) for a, bidder in bids]

        out = op.flat_map("q7", maxes.down, rows7)
    elif query == "q8":  # persons: (id, name, date_time); auctions: (seller, date_time)
        size_ms = common.Q8_SIZE_MS
        persons = op.key_on("person_id", inputs["person"], lambda p: str(p[0]))
        sellers = op.key_on("seller", inputs["auction"], lambda a: str(a[0]))
        ts_clock = win.EventClock(lambda row: row[-1], wait_for_system_duration=wait)
        joined = win.join_window("join", ts_clock,
                                 win.TumblingWindower(length=timedelta(milliseconds=size_ms), align_to=EPOCH),
                                 persons, sellers, insert_mode="last", emit_mode="final", ordered=False)
        # down: (key, (window id, (person row, auction row))); "final" fills a missing side with None (an
        # outer join), so keep only the windows that saw both a person and an auction (the inner join).
        out = op.filter_map("q8", joined.down,
                            lambda kv: (kv[1][0] * size_ms, kv[1][1][0][0], kv[1][1][0][1])
                            if kv[1][1][0] is not None and kv[1][1][1] is not None else None)
    else:
        raise ValueError(query)
    op.output("out", out, sink)
    return flow


# --------------------------------------------------------------------------------------- running workers
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker_main(argv: list[str]) -> int:
    """``--worker I --addresses A;B --partial-dir D --query Q --events-dir E [--verify]``: one cluster process."""
    import argparse

    from bytewax.testing import cluster_main

    p = argparse.ArgumentParser()
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--addresses", required=True)
    p.add_argument("--partial-dir", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--events-dir", required=True)
    p.add_argument("--verify", action="store_true")
    a = p.parse_args(argv)
    flow = build_flow(a.query, a.events_dir, a.partial_dir, a.verify)
    started = time.time()
    cluster_main(flow, a.addresses.split(";"), a.worker)
    Path(a.partial_dir, f"time-{a.worker}.json").write_text(json.dumps({"start": started, "end": time.time()}))
    return 0


def run(args: Any) -> dict[str, Any]:
    partial_dir = tempfile.mkdtemp(prefix="bytewax-partials-")
    try:
        launched = time.time()
        if args.parallelism == 1:
            from bytewax.testing import run_main

            flow = build_flow(args.query, args.events_dir, partial_dir, args.verify)
            started = time.time()
            run_main(flow)
            times = [{"start": started, "end": time.time()}]
        else:
            ports = _free_ports(args.parallelism)
            addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
            cmd = [sys.executable, __file__, "--worker"]
            procs = [subprocess.Popen([*cmd, str(i), "--addresses", addresses, "--partial-dir", partial_dir,
                                       "--query", args.query, "--events-dir", args.events_dir,
                                       *(["--verify"] if args.verify else [])])
                     for i in range(args.parallelism)]
            codes = [proc.wait() for proc in procs]
            if any(codes):
                raise SystemExit(f"bytewax runner: worker exit codes {codes}")
            times = [json.loads(p.read_text()) for p in Path(partial_dir).glob("time-*.json")]
        start, end = min(t["start"] for t in times), max(t["end"] for t in times)
        digest = common.Digest(args.query, None)
        for path in Path(partial_dir).glob("sink-*.json"):
            digest.merge(json.loads(path.read_text()))
        out: dict[str, Any] = {"elapsed_s": end - start, "startup_s": start - launched,
                               "processes": args.parallelism}
        if args.verify:
            if args.dump:
                out["note"] = "--dump is not supported by the bytewax runner"
            out["digest"] = digest
        else:
            out["result_rows"] = digest.rows
        return out
    finally:
        shutil.rmtree(partial_dir, ignore_errors=True)


def version() -> str:
    from importlib.metadata import version as v

    return v("bytewax")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        raise SystemExit(_worker_main(sys.argv[1:]))
    raise SystemExit(common.main("bytewax", version, run))
