"""The scaling section of ``compare.py``: events/s against parallelism, measured and projected.

**Measured**: every engine's median events/s at parallelism 1 and 2, from the throughput section of the same
run (nothing is rerun). On this 2-core machine parallelism 2 is the whole machine.

**Projected** (Headwater only; a model, not a measurement): throughput on N machines ("nodes") like this one,
each given as many events as this one processed (weak scaling, so per-job fixed costs stay per node),

    X(N) = N / (1 / X_node + r * (N - 1) / N * (s + b / B))

* ``X_node``: Headwater's measured events/s of the query at parallelism 2 (one node = these 2 cores, with
  Ray's daemons and the driver on them, and the exchanges between subtasks already paid locally);
* ``r``: rows sent over hash / round-robin / broadcast channels per input event, counted in those same runs
  (``exchanged`` in ``peers/headwater_runner.py``; 0 for q0-q2, whose plans are one fused stage);
  ``b``: their estimated bytes per row (Arrow widths, 36 bytes per string);
* on N nodes a fraction ``(N - 1) / N`` of those rows goes to another node and costs ``s + b / B`` more:
  ``s`` = the CPU time of shuffling one row, measured here by ``peers/headwater_exchange.py`` (Headwater's
  own hash partitioning of a batch plus a pickle-5 round trip with one copy of the buffers, on 104-byte bid
  rows, so an upper bound for the smaller aggregate rows the windowed queries exchange), counted on top of
  the local exchange already in ``X_node``; and ``b / B`` the transfer at ``B`` = 10 Gbit/s (an assumption:
  this machine has no network), not overlapped with computing (conservative).

Assumed, not modelled: an even spread of keys and partitions (>= 2N source partitions; the default events
have 4 files per table), the driver and checkpoint coordinator keeping up, stages that run as one subtask
(q5's max per window, q7's global window) keeping up with ``rows_into_single_subtask_stages`` (reported per
event), and no cross-node scheduling or object-transfer latency. The peers are not projected.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from harness import ENGINES, PEERS, RunnerError, log, run_process

NODE_CORES = 2
NETWORK_BYTES_PER_S = 10e9 / 8
NODES = (1, 2, 4, 8, 16)


def measured(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in summary:
        if "skipped" in row or row.get("note"):
            continue
        out.append({"engine": row["engine"], "query": row["query"], "parallelism": row["parallelism"],
                    "events": row["events"], "events_per_second": row["events_per_second"]["median"],
                    "min": row["events_per_second"]["min"], "max": row["events_per_second"]["max"],
                    "cpu_s": row["cpu_s"]["median"]})
    return out


def exchange_benchmark(args: argparse.Namespace, events_dir: Path, work: Path) -> dict[str, Any]:
    cmd = [str(ENGINES["headwater"][0]), str(PEERS / "headwater_exchange.py"), "--events-dir", str(events_dir),
           "--out", str(work / "exchange.json"), "--repeat", "3"]
    return run_process("headwater exchange benchmark", cmd, work / "exchange.json",
                       work / "logs" / "exchange.log", args.timeout)


def project(summary: list[dict[str, Any]], runs: list[dict[str, Any]], exchange: dict[str, Any],
            queries: list[str]) -> list[dict[str, Any]]:
    s = max(0.0, exchange["cpu_per_row_us"]) * 1e-6
    out = []
    for query in queries:
        rows = {r["parallelism"]: r for r in summary
                if r["engine"] == "headwater" and r["query"] == query and "skipped" not in r}
        if 2 not in rows:
            continue
        x_node = rows[2]["events_per_second"]["median"]
        mine = [r for r in runs if r["engine"] == "headwater" and r["query"] == query and r["parallelism"] == 2
                and "exchanged" in r]
        r_x = statistics.median(r["exchanged"]["rows"] / r["events"] for r in mine) if mine else 0.0
        bytes_per_event = statistics.median(r["exchanged"]["bytes"] / r["events"] for r in mine) if mine else 0.0
        b = bytes_per_event / r_x if r_x else 0.0
        serial = statistics.median(
            sum(e["rows"] for e in r["exchanged"]["edges"] if e.get("to_parallelism") == 1) / r["events"]
            for r in mine) if mine else 0.0
        t_x = s + b / NETWORK_BYTES_PER_S
        projected = {str(n): n / (1 / x_node + r_x * (n - 1) / n * t_x) for n in NODES}
        out.append({
            "query": query, "events": rows[2]["events"],
            "measured": {"p1": rows[1]["events_per_second"]["median"] if 1 in rows else None, "p2": x_node},
            "exchanged_rows_per_event": r_x, "exchanged_bytes_per_row": b, "cross_node_cost_per_row_us": t_x * 1e6,
            "rows_into_single_subtask_stages_per_event": serial,
            "projected": projected, "cores": {str(n): n * NODE_CORES for n in NODES},
            "single_subtask_stage_rows_per_s_at_max": serial * projected[str(NODES[-1])],
        })
    return out


def run_scaling(args: argparse.Namespace, summary: list[dict[str, Any]], runs: list[dict[str, Any]],
                events_dir: Path | None, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "measured": measured(summary),
        "model": {
            "formula": "X(N) = N / (1/X_node + r (N-1)/N (s + b/B))",
            "nodes": list(NODES), "cores_per_node": NODE_CORES, "network_bytes_per_s": NETWORK_BYTES_PER_S,
            "x_node": "Headwater's median events/s at parallelism 2 on this machine",
            "r": "rows over hash/round-robin/broadcast channels per input event (measured at parallelism 2)",
            "s": "CPU per shuffled row: partitioning + serialise/copy/deserialise (peers/headwater_exchange.py)",
            "b": "estimated bytes per exchanged row", "B": "assumed network bandwidth (10 Gbit/s)",
            "label": "projection (model), not measured",
        },
        "exchange_benchmark": None, "projection": [],
    }
    if "headwater" not in args.engines or not summary or events_dir is None:
        return result  # nothing measured to project from
    try:
        exchange = exchange_benchmark(args, events_dir, work)
    except RunnerError as exc:
        log(f"scaling: exchange benchmark failed, no projection: {exc}")
        result["exchange_benchmark"] = {"error": str(exc).splitlines()[0]}
        return result
    result["exchange_benchmark"] = exchange
    result["model"]["s_us"] = max(0.0, exchange["cpu_per_row_us"])
    result["projection"] = project(summary, runs, exchange, args.queries)
    log(f"scaling: shuffling a row costs {exchange['cpu_per_row_us']:.3f} us of CPU "
        f"(runs: {', '.join(f'{v:.3f}' for v in exchange['cpu_per_row_us_runs'])}); "
        f"projected {len(result['projection'])} queries")
    return result
