"""Nexmark benchmark: run a query on N generated bids on Ray and report throughput, latency and memory.

    python benchmarks/nexmark.py --query q1 --events 20000000 --parallelism 2 --json
    python benchmarks/nexmark.py --query q1 --events 2000000 --parallelism 2 --reference
    python benchmarks/nexmark.py --query q1 --events 1000000 --rate 50000 --json    # latency at a fixed rate

What is measured:
* ``events`` is the number of **bids** the query reads (the generator's sequence is sized so that exactly this
  many bids are in it; persons and auctions of the sequence are not generated for bid-only queries).
* ``events_per_second`` = events / wall time of ``hw.run`` with Ray already started: it includes planning,
  actor start-up and the final commit, and the generation of the events (vectorised, inside the sources).
* ``latency_*_ms``: source-to-sink latency of each batch's oldest row, weighted by rows (2.5 % buckets).
* ``peak_rss_mb``: sum over the actor processes of each one's peak RSS, plus the driver's.
* ``--reference``: the same query as a plain-Python per-row loop in ``parallelism`` processes over the same
  generated events (generation included, as for Headwater), timed in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import headwater as hw  # noqa: E402
from headwater.engine.metrics import peak_rss_mb  # noqa: E402
from headwater.sinks import NullSink  # noqa: E402
from headwater.sources import NexmarkSource  # noqa: E402
from nexmark_queries import QUERIES, REFERENCES  # noqa: E402

BID_SHARE = 46 / 50


def sequence_length(bids: int) -> int:
    """Smallest event-sequence length that contains ``bids`` bids (events 4..49 of every 50 are bids)."""
    full, rest = divmod(bids, 46)
    return full * 50 + (rest + 4 if rest else 0)


def bid_source(bids: int, parallelism: int, rate: float | None, batch_size: int) -> NexmarkSource:
    events = sequence_length(bids)
    return NexmarkSource(
        "bid", events=events, partitions=parallelism, batch_size=batch_size,
        rate=None if rate is None else rate / BID_SHARE,
    )


def run_headwater(query: str, bids: int, parallelism: int, rate: float | None, batch_size: int) -> dict[str, Any]:
    flow = hw.Dataflow(f"nexmark-{query}")
    stream = flow.source("bids", bid_source(bids, parallelism, rate, batch_size))
    QUERIES[query](stream, NullSink())
    started = time.perf_counter()
    result = hw.run(flow, parallelism=parallelism, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    read = result.rows_out("bids")
    if read != bids:
        raise SystemExit(f"benchmark error: the query read {read} bids, expected {bids}")
    latency = result.latency.summary()
    return {
        "elapsed_s": elapsed,
        "events_per_second": bids / elapsed,
        "rows_out": result.rows_in("sink"),
        "latency_p50_ms": latency["p50_ms"],
        "latency_p99_ms": latency["p99_ms"],
        "latency_max_ms": latency["max_ms"],
        "peak_rss_mb": result.peak_rss_mb() + peak_rss_mb(),
    }


def _reference_worker(args: tuple[str, int, int, int, int]) -> int:
    query, bids, parallelism, k, batch_size = args
    source = bid_source(bids, parallelism, None, batch_size)
    partition = source.build_part(source.list_parts()[k], None)
    loop = REFERENCES[query]
    produced = 0
    while True:
        try:
            batch = partition.next_batch()
        except StopIteration:
            return produced
        if batch is None:
            continue
        columns = [batch.column(name) for name in ("auction", "bidder", "price", "date_time", "extra")]
        columns[3] = columns[3].cast("int64")
        loop(*(c.to_pylist() for c in columns))
        produced += batch.num_rows


def run_reference(query: str, bids: int, parallelism: int, batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(parallelism) as pool:
        counts = pool.map(_reference_worker, [(query, bids, parallelism, k, batch_size) for k in range(parallelism)])
    elapsed = time.perf_counter() - started
    if sum(counts) != bids:
        raise SystemExit(f"reference error: read {sum(counts)} bids, expected {bids}")
    return {"elapsed_s": elapsed, "events_per_second": bids / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", choices=sorted(QUERIES), default="q1")
    parser.add_argument("--events", type=int, default=10_000_000, help="bids the query reads")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=131_072)
    parser.add_argument("--rate", type=float, default=None, help="bids/s (rate-limited source, for latency)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is reported")
    parser.add_argument("--reference", action="store_true", help="also time the plain-Python reference loop")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), object_store_memory=1024 * 1024 * 1024, include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
    try:
        runs = [run_headwater(args.query, args.events, args.parallelism, args.rate, args.batch_size)
                for _ in range(args.repeat)]
    finally:
        ray.shutdown()
    median = statistics.median(r["events_per_second"] for r in runs)
    best = min(runs, key=lambda r: abs(r["events_per_second"] - median))
    report: dict[str, Any] = {
        "engine": "headwater",
        "query": args.query,
        "parallelism": args.parallelism,
        "events": args.events,
        "rate": args.rate,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "events_per_second": median,
        "events_per_second_runs": [r["events_per_second"] for r in runs],
        **{k: v for k, v in best.items() if k != "events_per_second"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    if args.reference:
        reference = [run_reference(args.query, args.events, args.parallelism, args.batch_size)
                     for _ in range(args.repeat)]
        ref_median = statistics.median(r["events_per_second"] for r in reference)
        report["reference_events_per_second"] = ref_median
        report["ratio_vs_reference"] = median / ref_median if ref_median else math.nan
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            if isinstance(value, float):
                value = f"{value:,.2f}"
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
