"""Nexmark benchmark: run a query on N generated bids on Ray and report throughput, latency and memory.

    python benchmarks/nexmark.py --query q1 --events 20000000 --parallelism 2 --json
    python benchmarks/nexmark.py --query q1 --events 2000000 --parallelism 2 --reference
    python benchmarks/nexmark.py --query q1 --events 1000000 --rate 50000 --json    # latency at a fixed rate

What is measured:
* ``events`` is the number of events the query reads: bids for q0-q2, q5 and q7 (the generator's sequence is
  sized so that exactly this many bids are in it; its persons and auctions are not generated), persons plus
  auctions for q8.
* ``events_per_second`` = events / wall time of ``hw.run`` with Ray already started: it includes planning,
  worker start-up and the final commit, and the generation of the events (vectorised, inside the sources).
  The first run starts new worker processes (~0.6 s); with ``--repeat``, later runs reuse the previous run's
  workers as any driver's next job does (``RunConfig.reuse_workers``), unless ``--fresh-workers``.
* ``latency_*_ms``: source-to-sink latency of each batch's oldest row, weighted by rows (2.5 % buckets).
* ``peak_rss_mb``: sum over the actor processes of each one's peak RSS, plus the driver's.
* ``--metrics ab``: the cost of Prometheus metrics, runs alternating in the same invocation: ``off`` (no metrics
  server: ``metrics_port=None``) and ``on`` (a server on an ephemeral port, scraped every ``--scrape-interval``
  seconds by a thread of the driver for the whole run, as Prometheus would, only harder); the report has both
  medians and ``metrics_cost`` = 1 - on/off. The counting inside the subtasks is always on: compare it across
  commits with separate invocations.
* ``--observability ab``: the cost of all of it, runs alternating the same way: ``off`` (no metrics server, no
  tracing, plain-text logs, no job registry) and ``on`` (the metrics server scraped as above, tracing at the default
  sampling share ``RunConfig.trace_sample`` into the in-process memory exporter, JSON logs, the job registry's
  heartbeat); ``observability_cost`` = 1 - on/off.
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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import nexmark_windowed as windowed  # noqa: E402
import pyarrow as pa  # noqa: E402
from nexmark_queries import QUERIES, REFERENCES  # noqa: E402

import headwater as hw  # noqa: E402
from headwater.engine import tracing  # noqa: E402
from headwater.engine.metrics import peak_rss_mb  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks import NullSink  # noqa: E402
from headwater.sources import NexmarkSource  # noqa: E402
from headwater.sources.base import drain  # noqa: E402

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


WINDOWED = {"q5", "q7", "q8"}


def sources_for(query: str, events: int, parallelism: int, rate: float | None, batch_size: int) -> dict[str, NexmarkSource]:
    """The query's sources, sized so that together they yield exactly ``events`` rows."""
    if query != "q8":
        return {"bids": bid_source(events, parallelism, rate, batch_size)}
    # persons are event 0 and auctions events 1-3 of every 50: 4 rows per 50 events
    full, rest = divmod(events, 4)
    length = full * 50 + rest
    pace = None if rate is None else rate * 50 / 4
    return {name: NexmarkSource(table, events=length, partitions=parallelism, batch_size=batch_size, rate=pace)
            for name, table in (("persons", "person"), ("auctions", "auction"))}


def build(query: str, sources: dict[str, NexmarkSource]) -> hw.Dataflow:
    flow = hw.Dataflow(f"nexmark-{query}")
    if query in QUERIES:
        QUERIES[query](flow.source("bids", sources["bids"]), NullSink())
    elif query == "q8":
        windowed.q8(flow, sources["persons"], sources["auctions"], NullSink())
    else:
        getattr(windowed, query)(flow, sources["bids"], NullSink())
    return flow


def _scrape_until(url: str, every: float, done: threading.Event, scrapes: list[int]) -> None:
    import urllib.request

    while not done.wait(every):
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
        scrapes[0] += 1


def run_headwater(query: str, events: int, parallelism: int, rate: float | None, batch_size: int,
                  fresh_workers: bool = False, metrics: bool = False, scrape_interval: float = 1.0,
                  traces_and_logs: bool | None = None) -> dict[str, Any]:
    """One run; with ``metrics``, its metrics server is scraped every ``scrape_interval`` s while it runs. With
    ``traces_and_logs`` True/False, tracing (default sampling, memory exporter), JSON logs and the job registry
    are on/off (``None``: the defaults of the environment)."""
    sources = sources_for(query, events, parallelism, rate, batch_size)
    flow = build(query, sources)
    scrapes = [0]
    options: dict[str, Any] = {}
    if traces_and_logs is not None:
        options = {"trace_exporter": "memory" if traces_and_logs else "none",
                   "log_format": "json" if traces_and_logs else "text"}
        os.environ["HEADWATER_REGISTRY_DIR"] = os.path.join(tempfile.gettempdir(), "headwater-bench-registry") if traces_and_logs else "off"
    started = time.perf_counter()
    job = hw.start(flow, parallelism=parallelism, batch_size=batch_size, reuse_workers=not fresh_workers,
                   metrics_port=0 if metrics else None, **options)
    done = threading.Event()
    scraper = None
    if job.metrics_url is not None:
        scraper = threading.Thread(target=_scrape_until, args=(job.metrics_url, scrape_interval, done, scrapes))
        scraper.start()
    try:
        result = job.wait()
    finally:
        done.set()
        if scraper is not None:
            scraper.join()
    elapsed = time.perf_counter() - started
    read = sum(result.rows_out(step) for step in sources)
    if read != events:
        raise SystemExit(f"benchmark error: the query read {read} events, expected {events}")
    latency = result.latency.summary()
    return {
        "elapsed_s": elapsed,
        "events_per_second": events / elapsed,
        "rows_out": result.rows_in("sink"),
        "latency_p50_ms": latency["p50_ms"],
        "latency_p99_ms": latency["p99_ms"],
        "latency_max_ms": latency["max_ms"],
        "peak_rss_mb": result.peak_rss_mb() + peak_rss_mb(),
        "metrics": metrics,
        "traced_batches": sum(1 for s in tracing.finished_spans(clear=True) if s.name == tracing.SOURCE_SPAN),
        "scrapes": scrapes[0],
    }


#: the columns each reference loop reads, per query and source
REFERENCE_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    **{q: {"bids": ("auction", "bidder", "price", "date_time", "extra")} for q in ("q0", "q1", "q2")},
    "q5": {"bids": ("auction", "date_time")},
    "q7": {"bids": ("auction", "bidder", "price", "date_time")},
    "q8": {"persons": ("id", "name", "date_time"), "auctions": ("seller", "date_time")},
}


def _rows(partition: Any, columns: tuple[str, ...]):
    for batch in drain(partition):
        if batch is None:
            continue
        arrays = [batch.column(c) for c in columns]
        yield batch.num_rows, [(a.cast("int64") if pa.types.is_timestamp(a.type) else a).to_pylist() for a in arrays]


def _reference_worker(args: tuple[str, int, int, int, int]) -> tuple[int, Any]:
    """One process's share of the plain-Python reference: the query's per-row loop over its partition(s)."""
    query, events, parallelism, k, batch_size = args
    sources = sources_for(query, events, parallelism, None, batch_size)
    # The loop generates only the columns it reads, as Headwater's sources do (projection pushdown).
    sources = {name: source.project(REFERENCE_COLUMNS.get(query, {}).get(name, source.schema().names))
               for name, source in sources.items()}
    parts = {name: source.build_part(source.list_parts()[k], None) for name, source in sources.items()}
    produced = 0
    if query in REFERENCES:
        loop = REFERENCES[query]
        for rows, cols in _rows(parts["bids"], ("auction", "bidder", "price", "date_time", "extra")):
            loop(*cols)
            produced += rows
        return produced, None
    partial: dict[Any, Any] = {}
    if query == "q5":
        for rows, (auction, t) in _rows(parts["bids"], ("auction", "date_time")):
            for a, ts in zip(auction, t):
                last = ts - ts % 2000
                for start in range(last, ts - 10000, -2000):
                    partial[(start, a)] = partial.get((start, a), 0) + 1
            produced += rows
    elif query == "q7":
        for rows, (auction, bidder, price, t) in _rows(parts["bids"], ("auction", "bidder", "price", "date_time")):
            for a, b, p, ts in zip(auction, bidder, price, t):
                start = ts - ts % 10000
                best = partial.get(start)
                if best is None or p > best[0]:
                    partial[start] = (p, a, b)
            produced += rows
    else:
        persons: dict[Any, str] = {}
        sellers: set[Any] = set()
        for rows, (pid, name, t) in _rows(parts["persons"], ("id", "name", "date_time")):
            for i, n, ts in zip(pid, name, t):
                persons[(i, ts - ts % 10000)] = n
            produced += rows
        for rows, (seller, t) in _rows(parts["auctions"], ("seller", "date_time")):
            for s_, ts in zip(seller, t):
                sellers.add((s_, ts - ts % 10000))
            produced += rows
        partial = {"persons": persons, "sellers": sellers}
    return produced, partial


def _reference_merge(query: str, partials: list[Any]) -> int:
    """Combine the processes' partial results (what a shuffle does for the engines); returns output rows."""
    if query == "q5":
        counts: dict[Any, int] = {}
        for part in partials:
            for key, n in part.items():
                counts[key] = counts.get(key, 0) + n
        best: dict[int, int] = {}
        for (start, _), n in counts.items():
            best[start] = max(best.get(start, 0), n)
        return sum(1 for (start, _), n in counts.items() if n == best[start])
    if query == "q7":
        windows: dict[int, Any] = {}
        for part in partials:
            for start, row in part.items():
                if start not in windows or row[0] > windows[start][0]:
                    windows[start] = row
        return len(windows)
    if query == "q8":
        persons = {k: v for part in partials for k, v in part["persons"].items()}
        sellers = set().union(*(part["sellers"] for part in partials))
        return sum(1 for key in persons if key in sellers)
    return 0


def run_reference(query: str, events: int, parallelism: int, batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(parallelism) as pool:
        results = pool.map(_reference_worker, [(query, events, parallelism, k, batch_size) for k in range(parallelism)])
    if query in WINDOWED:
        _reference_merge(query, [partial for _, partial in results])
    elapsed = time.perf_counter() - started
    read = sum(count for count, _ in results)
    if read != events:
        raise SystemExit(f"reference error: read {read} events, expected {events}")
    return {"elapsed_s": elapsed, "events_per_second": events / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", choices=sorted([*QUERIES, *WINDOWED]), default="q1")
    parser.add_argument("--events", type=int, default=10_000_000,
                        help="events the query reads (bids; for q8 persons + auctions)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=131_072)
    parser.add_argument("--rate", type=float, default=None, help="bids/s (rate-limited source, for latency)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is reported")
    parser.add_argument("--reference", action="store_true", help="also time the plain-Python reference loop")
    parser.add_argument("--fresh-workers", action="store_true",
                        help="start new worker processes for every run (default: runs after the first reuse them)")
    parser.add_argument("--metrics", choices=["off", "on", "ab"], default="off",
                        help="no metrics server, a scraped one, or both alternating (the cost of metrics)")
    parser.add_argument("--observability", choices=["ab"], default=None,
                        help="ab: alternate runs with metrics, tracing, JSON logs and the registry all off / all on")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (--metrics on/ab)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
    else:
        start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1024 * 1024 * 1024,  # token auth, reaper
                 configure_logging=False, log_to_driver=False)
    try:
        full = args.observability == "ab"
        modes = [False, True] if full else {"off": [False], "on": [True], "ab": [False, True]}[args.metrics]
        if (args.metrics == "ab" or full) and not args.fresh_workers:  # a first run starts the workers: not compared
            run_headwater(args.query, args.events, args.parallelism, args.rate, args.batch_size)
        runs = [run_headwater(args.query, args.events, args.parallelism, args.rate, args.batch_size,
                              args.fresh_workers, metrics, args.scrape_interval, metrics if full else None)
                for _ in range(args.repeat) for metrics in modes]
    finally:
        ray.shutdown()
    by_mode = {m: [r for r in runs if r["metrics"] == m] for m in set(modes)}
    medians = {m: statistics.median(r["events_per_second"] for r in rs) for m, rs in by_mode.items()}
    runs = by_mode[modes[-1]]  # the figures below are of the last mode (metrics on, for ab)
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
        "fresh_workers": args.fresh_workers,
        "events_per_second": median,
        "events_per_second_runs": [r["events_per_second"] for r in runs],
        **{k: v for k, v in best.items() if k != "events_per_second"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    if full:
        report["observability_off_events_per_second"] = medians[False]
        report["observability_on_events_per_second"] = medians[True]
        report["observability_off_runs"] = [r["events_per_second"] for r in by_mode[False]]
        report["observability_cost"] = 1 - medians[True] / medians[False]
        report["traced_batches_runs"] = [r["traced_batches"] for r in by_mode[True]]
        report["trace_sample"] = hw.RunConfig().trace_sample
        report["scrape_interval_s"] = args.scrape_interval
    elif args.metrics == "ab":
        report["metrics_off_events_per_second"] = medians[False]
        report["metrics_on_events_per_second"] = medians[True]
        report["metrics_off_runs"] = [r["events_per_second"] for r in by_mode[False]]
        report["metrics_cost"] = 1 - medians[True] / medians[False]
        report["scrape_interval_s"] = args.scrape_interval
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
