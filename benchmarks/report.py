"""The summary of ``compare.py``'s runs and the Markdown tables of ``benchmarks/results/latest.md``.

* :func:`summarize`: per (query, parallelism, engine) the median and spread (min/max) of events/s over the
  rounds, events/s including start-up, peak RSS, CPU seconds, the event count, the Headwater/engine ratio.
* :func:`markdown`: throughput, latency and scaling tables of a whole report (``compare.py``'s JSON).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

REFERENCE = "python"


def stats(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "spread_pct": None}
    med = statistics.median(present)
    return {"median": med, "min": min(present), "max": max(present),
            "spread_pct": (max(present) - min(present)) / med * 100 if med else None}


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]],
              skipped: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    rows = []
    for query in args.queries:
        for p in args.parallelism:
            hw: dict[str, Any] | None = None
            block = []
            for engine in args.engines:
                if (engine, query) in skipped:
                    block.append({"engine": engine, "query": query, "parallelism": p,
                                  "skipped": skipped[(engine, query)]})
                    continue
                source_p = args.parallelism[0] if engine == REFERENCE else p
                mine = [r for r in runs if r["engine"] == engine and r["query"] == query
                        and r["parallelism"] == source_p]
                if not mine:
                    continue
                eps = stats([r["events_per_second"] for r in mine])
                row: dict[str, Any] = {
                    "engine": engine, "version": mine[0]["version"], "query": query, "parallelism": p,
                    "events": mine[0]["events"], "sequence_events": mine[0].get("sequence_events"),
                    "runs": len(mine), "verified": all(r.get("verified", True) for r in mine),
                    "verified_in_timed_runs": all("verified" in r for r in mine),
                    "events_per_second": eps,
                    "events_per_second_runs": [r["events_per_second"] for r in mine],
                    "events_per_second_incl_startup": stats([r["events_per_second_total"] for r in mine]),
                    "elapsed_s": stats([r["elapsed_s"] for r in mine]),
                    "startup_s": stats([r.get("startup_s") for r in mine]),
                    "total_s": stats([r["total_s"] for r in mine]),
                    "peak_rss_mb": stats([r["peak_rss_mb"] for r in mine]),
                    "cpu_s": stats([r.get("cpu_s") for r in mine]),
                }
                if any(r.get("engine_runtime_s") for r in mine):  # the engine's own figure (Flink's net runtime)
                    row["engine_runtime_s"] = stats([r.get("engine_runtime_s") for r in mine])
                    row["events_per_second_engine_runtime"] = stats(
                        [r["events"] / r["engine_runtime_s"] for r in mine if r.get("engine_runtime_s")])
                if engine == REFERENCE and p != source_p:
                    row["note"] = f"single process: the runs at parallelism {source_p}"
                if any("exchanged" in r for r in mine):
                    row["exchanged_rows_per_event"] = statistics.median(
                        r["exchanged"]["rows"] / r["events"] for r in mine if "exchanged" in r)
                    row["exchanged_bytes_per_event"] = statistics.median(
                        r["exchanged"]["bytes"] / r["events"] for r in mine if "exchanged" in r)
                if engine == "headwater":
                    hw = row
                block.append(row)
            for row in block:
                med = row.get("events_per_second", {}).get("median") if "skipped" not in row else None
                hw_med = hw["events_per_second"]["median"] if hw else None
                row["ratio_headwater_to_this"] = hw_med / med if hw_med and med else None
                row["ratio_same_events"] = bool(hw) and "skipped" not in row and hw["events"] == row["events"]
            rows += block
    return rows


def _si(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.0f} k"
    return f"{value:.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def throughput_table(report: dict[str, Any]) -> list[str]:
    meta, summary = report["meta"], report["summary"]
    capped = {k: v for k, v in meta["events_per_engine_query"].items() if v != meta["events"]}
    lines = [
        f"Events: {meta['events']:,} in the sequence (seed {meta['seed']}) for every engine and query"
        + (" except " + ", ".join(f"{k} = {v:,}" for k, v in capped.items()) if capped else "") + ". "
        f"Median of {meta['repeat']} interleaved runs; spread = (max - min) / median. Every row was verified "
        "against the plain-Python reference on the same events (q0/q1 in a separate run, the others in every "
        "timed run).",
        "",
        "| query | par. | engine | events read | events/s (median) | spread | events/s incl. start-up "
        "| peak RSS MB | CPU s | Headwater / this |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        if "skipped" in r:
            lines.append(f"| {r['query']} | {r['parallelism']} | {r['engine']} | | skipped: {r['skipped']} "
                         "| | | | | |")
            continue
        eps, tot, rss = r["events_per_second"], r["events_per_second_incl_startup"], r["peak_rss_mb"]
        cpu = r["cpu_s"]["median"]
        ratio = r["ratio_headwater_to_this"]
        note = " (1 process)" if r.get("note") else ""
        ratio_text = "" if ratio is None else f"{ratio:.2f}" + ("" if r["ratio_same_events"] else " *")
        cpu_text = "" if cpu is None else f"{cpu:.1f}"
        lines.append(
            f"| {r['query']} | {r['parallelism']} | {r['engine']}{note} | {r['events']:,} | {_si(eps['median'])} | "
            f"{eps['spread_pct']:.0f} % | {_si(tot['median'])} | {rss['median']:,.0f} | {cpu_text} | {ratio_text} |")
    if any(not r.get("ratio_same_events", True) and r.get("ratio_headwater_to_this") for r in summary):
        lines += ["", "\\* the two engines read different event counts (see `--caps`); the ratio compares rates."]
    return lines


def latency_table(latency: dict[str, Any]) -> list[str]:
    lines = [
        f"Paced runs, parallelism 1, {latency['config']['seconds']:g} s of input per rate; latency = sink write "
        "time - time the input was due (q1: the row's bid; q5: the event that closed the window), ms.",
        "",
        "| query | rate (bids/s) | engine | p50 | p99 | p99.9 | max | samples | note |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in latency["results"]:
        if r.get("skipped"):
            lines.append(f"| {r['query']} | {r['rate']:,.0f} | {r['engine']} | | | | | | {r['skipped']} |")
            continue
        lat = r["latency_ms"]
        note = "saturated" if r.get("saturated") else ""
        lines.append(f"| {r['query']} | {r['rate']:,.0f} | {r['engine']} | {_ms(lat['p50_ms'])} | {_ms(lat['p99_ms'])} "
                     f"| {_ms(lat['p99_9_ms'])} | {_ms(lat['max_ms'])} | {r['latency_rows']:,} | {note} |")
    return lines


def scaling_table(scaling: dict[str, Any]) -> list[str]:
    model = scaling["model"]
    nodes = model["nodes"]
    lines = [
        "Measured (parallelism 1 and 2 on this machine) and **projected** Headwater events/s on N nodes of 2 "
        f"cores, each node given as many events as this one: {model['formula']}, with s = "
        f"{model['s_us']:.3f} us measured. A projection, not a measurement; model and assumptions in "
        "docs/benchmarks-peers.md.",
        "",
        "| query | measured p1 | measured p2 | p2/p1 | exchanged rows/event | "
        + " | ".join(f"projected {n} node{'s' if n > 1 else ''}" for n in nodes)
        + f" | rows/s into single-subtask stages at {nodes[-1]} nodes |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(nodes) + "---:|",
    ]
    for q in scaling["projection"]:
        m = q["measured"]
        ratio = m["p2"] / m["p1"] if m.get("p1") and m.get("p2") else None
        lines.append(f"| {q['query']} | {_si(m.get('p1'))} | {_si(m.get('p2'))} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {q['exchanged_rows_per_event']:.3f} | "
                     + " | ".join(_si(q["projected"][str(n)]) for n in nodes)
                     + f" | {_si(q['single_subtask_stage_rows_per_s_at_max']) or '0'} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if report.get("summary"):
        lines += ["### Throughput", ""] + throughput_table(report) + [""]
    if report.get("latency"):
        lines += ["### Latency at fixed rates", ""] + latency_table(report["latency"]) + [""]
    if report.get("scaling") and report["scaling"].get("projection"):
        lines += ["### Scaling", ""] + scaling_table(report["scaling"]) + [""]
    return "\n".join(lines) + "\n"
