"""Headwater: the Nexmark queries built with the Headwater DSL over ``ParquetSource``, run on a local Ray.

Run with the project's venv: ``.venv/bin/python benchmarks/peers/headwater_runner.py --query q1 ...``.

* q0-q2 are the builders of ``examples/nexmark_queries.py`` (the ones ``benchmarks/nexmark.py`` times).
* q5/q7/q8 come from ``examples/nexmark_windowed.py`` **if that module exists**: ``q5(flow, bids, sink)``,
  ``q7(flow, bids, sink)`` and ``q8(flow, persons, auctions, sink)`` taking sources (event time
  ``date_time``, per-partition watermarks, i.e. per Parquet file), whose sink input holds (at least) the
  columns of ``common.OUTPUT`` (q5: window_start, window_end, auction, num; q7: window_start, window_end,
  auction, bidder, price; q8: window_start, id, name). Without the module the result says
  ``"skipped": "windows not yet available"``.

Timing: Ray is started first (``ray.init``: all CPUs, 1 GiB object store, no dashboard, as
``benchmarks/nexmark.py`` does) and that is ``startup_s``; ``elapsed_s`` is the wall time of ``hw.run`` (planning,
actor start-up, the query, the final commit). The timed run writes to ``NullSink``; the verification run to
``TestingSink`` (Arrow IPC files in a temporary directory), read back after the run for the digest.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
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

from headwater.core.ports import MAIN_PORT  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402

BATCH_SIZE = 131_072  # as benchmarks/nexmark.py (twice the engine default)


STEP_IDS = {"bid": "bids", "person": "persons", "auction": "auctions"}  # the source step ids the examples use


def _windowed_module() -> Any | None:
    path = ROOT / "examples" / "nexmark_windowed.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("nexmark_windowed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nexmark_windowed"] = module
    spec.loader.exec_module(module)
    return module


def _builder(query: str) -> Any:
    if query in ("q0", "q1", "q2"):
        from nexmark_queries import QUERIES

        return QUERIES[query]
    module = _windowed_module()
    if module is None:
        raise common.SkipQuery("windows not yet available (examples/nexmark_windowed.py does not exist)")
    fn = getattr(module, query, None)
    if fn is None:
        raise common.SkipQuery(f"examples/nexmark_windowed.py defines no {query}")
    return fn


def build(flow: Any, query: str, events_dir: str, sink: Any) -> None:
    """q0-q2: ``QUERIES[q](flow.source("bids", src), sink)``; q5/q7: ``q(flow, bid_src, sink)``;
    q8: ``q8(flow, person_src, auction_src, sink)`` (the signatures of the two example modules)."""
    from headwater.sources import ParquetSource

    fn = _builder(query)
    sources = {table: ParquetSource(common.table_path(events_dir, table), batch_size=BATCH_SIZE, columns=columns)
               for table, columns in common.INPUT[query].items()}
    if query in ("q0", "q1", "q2"):
        fn(flow.source(STEP_IDS["bid"], sources["bid"]), sink)
    elif query == "q8":
        fn(flow, sources["person"], sources["auction"], sink)
    else:
        fn(flow, sources["bid"], sink)


STRING_BYTES = 32  # assumed width of a string value in an exchanged row (+ 4 bytes of offset)


def _value_bytes(kind: Any) -> int:
    import pyarrow as pa

    try:
        return max(1, kind.bit_width // 8)
    except ValueError:  # variable width
        return STRING_BYTES + 4 if pa.types.is_string(kind) or pa.types.is_binary(kind) else 16


def exchange_stats(result: Any) -> dict[str, Any]:
    """Rows (and estimated bytes) that crossed a non-forward channel (hash / round-robin / broadcast): the
    rows a run on several machines would send over the network. Forward channels stay on their machine."""
    plan = result.plan
    stages = {stage.stage_id: stage for stage in plan.stages}
    edges, rows, nbytes = [], 0, 0.0
    for edge in plan.edges:
        if edge.partitioning == "forward" or edge.src_port != MAIN_PORT:
            continue
        tail = stages[edge.src].tail
        sent = result.rows_out(tail)
        schema = getattr(plan.steps[tail], "schema", None)
        if schema is None:  # a planner-made pre-aggregation step: its rows look like the step it feeds
            schema = getattr(plan.steps[stages[edge.dst].head], "schema", None)
        width = None
        if schema is not None:
            width = sum(_value_bytes(schema.field(c).type) for c in (edge.columns or schema.names))
        edges.append({"from": tail, "to": stages[edge.dst].head, "partitioning": edge.partitioning,
                      "rows": sent, "row_bytes": width, "to_parallelism": stages[edge.dst].parallelism})
        rows += sent
        nbytes += sent * (width or 0)
    return {"edges": edges, "rows": rows, "bytes": nbytes}


def run(args: Any) -> dict[str, Any]:
    _builder(args.query)  # skip before starting Ray if the query is not available
    import ray

    import headwater as hw
    from headwater.engine.metrics import peak_rss_mb
    from headwater.sinks import NullSink
    from headwater.testing import TestingSink

    started = time.perf_counter()
    start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1024 * 1024 * 1024,  # token auth, reaper
             configure_logging=False, log_to_driver=False)
    startup = time.perf_counter() - started
    sink_dir = None
    try:
        flow = hw.Dataflow(f"nexmark-{args.query}")
        if args.verify:
            sink = TestingSink()
            sink_dir = sink.directory
        else:
            sink = NullSink()
        build(flow, args.query, args.events_dir, sink)
        started = time.perf_counter()
        result = hw.run(flow, parallelism=args.parallelism, batch_size=BATCH_SIZE)
        elapsed = time.perf_counter() - started
    finally:
        ray.shutdown()
    read = sum(result.rows_out(STEP_IDS[table]) for table in common.INPUT[args.query])
    expected = common.input_rows(args.events_dir, args.query)
    if read != expected:
        raise SystemExit(f"headwater runner: the query read {read} rows, expected {expected}")
    latency = result.latency.summary()
    out: dict[str, Any] = {
        "elapsed_s": elapsed, "startup_s": startup, "result_rows": result.rows_in("sink"),
        "latency_ms": {k: latency[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "engine_peak_rss_mb": result.peak_rss_mb() + peak_rss_mb(),
        "exchanged": exchange_stats(result),
    }
    if args.verify:
        digest = common.Digest(args.query, args.dump)
        table = sink.table()
        if table is not None:
            digest.add_arrow(table)
        out["digest"] = digest
        shutil.rmtree(sink_dir, ignore_errors=True)
    return out


def version() -> str:
    import headwater

    return headwater.__version__


if __name__ == "__main__":
    raise SystemExit(common.main("headwater", version, run))
