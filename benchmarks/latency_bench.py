"""The latency section of ``compare.py``: every engine that can be paced, at fixed input rates, parallelism 1.

For each rate ``R`` of ``--latency-rates`` the events holding exactly ``R x --latency-seconds`` bids are
materialised (the prefix of the same seed-0 sequence). Each engine runs all its paced runs (each query of
``--latency-queries``, each rate in ascending order) in one process of its paced runner
(``peers/<engine>_paced.py``; contract and latency definition in ``peers/paced.py``), so it starts once.
The process first does a discarded warm-up run (the first query, the smallest events, released at the highest
rate: ~1 s of input) so that class loading, JIT compilation and first-job costs (Flink's JVM) are not in the
first reported figures. Ray Data is not paced: it is a batch library with no
streaming source (``docs/benchmarks-peers.md``).

* A run whose source fell ``--max-lag`` seconds behind its schedule, or whose p99 exceeds that, is marked
  ``saturated`` (the engine cannot sustain the rate); the same query is then not run at the higher rates
  (recorded as ``skipped``).
* Every paced run's output is checked: q1 must write one row per bid, and q5's digest must equal the plain-Python
  reference's (``peers/python_runner.py --verify``) on the same events. A run that fell behind its schedule
  (``saturated``) is reported as such and not checked (it stopped early). A failed check ends the benchmark
  with nothing reported, like the throughput verification.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness import PACED, REFERENCE, RunnerError, log, run_paced, run_runner, sequence_length


def latency_datasets(args: argparse.Namespace) -> dict[int, int]:
    """Rate -> length of the event sequence holding ``rate x seconds`` bids."""
    return {rate: sequence_length(int(round(rate * args.latency_seconds))) for rate in args.latency_rates}


def run_latency(args: argparse.Namespace, datasets: dict[int, Path], work: Path, failure: Any) -> dict[str, Any]:
    sizes = latency_datasets(args)
    engines = [e for e in PACED if e in args.engines]
    rates = sorted(args.latency_rates)
    references: dict[str, dict[str, Any]] = {}
    for query in args.latency_queries:
        if query != "q5":
            continue
        for rate in rates:
            n = sizes[rate]
            res = run_runner(REFERENCE, query, 1, datasets[n], True, work / f"latency-reference-{query}-{n}.json",
                             work / "logs" / f"latency-reference-{query}-{n}.log", args.timeout)
            references[f"{query}@{rate}"] = {"digest": res["result_digest"], "rows": res["result_rows"],
                                             "sequence_events": n}
    results: list[dict[str, Any]] = []
    processes: list[dict[str, Any]] = []
    for engine in engines:
        todo = []
        for query in args.latency_queries:
            for rate in rates:
                todo.append((query, float(rate), datasets[sizes[rate]]))
        if not todo:
            continue
        # warm-up, discarded: the first query on the smallest events at the highest rate (~1 s of input), so
        # class loading, JIT and first-job costs are not in the first reported rate's figures
        todo.insert(0, (todo[0][0], float(rates[-1]), datasets[sizes[rates[0]]]))
        timeout = 2 * (len(todo) * (args.latency_seconds + 60) + 120)
        try:
            res = run_paced(engine, todo, args.max_lag, work / f"paced-{engine}.json",
                            work / "logs" / f"paced-{engine}.log", timeout)
        except RunnerError as exc:
            failure.errors.append(str(exc))
            failure.stop({"latency": results})
            raise
        processes.append({**{k: v for k, v in res.items() if k != "runs"}, "warm_up": res["runs"][0]})
        for run in res["runs"][1:]:
            entry = {"engine": engine, "version": res["version"], "parallelism": 1, **run}
            if entry.get("skipped"):
                results.append(entry)
                log(f"latency {run['query']} {engine:<9} @ {run['rate']:>7,.0f}/s: {entry['skipped']}")
                continue
            _check(entry, references, failure)
            results.append(entry)
            lat = {k: "-" if v is None else f"{v:.2f}" for k, v in entry["latency_ms"].items()}
            log(f"latency {run['query']} {engine:<9} @ {run['rate']:>7,.0f}/s: p50 {lat['p50_ms']} ms, "
                f"p99 {lat['p99_ms']} ms, p99.9 {lat['p99_9_ms']} ms ({entry['latency_rows']:,} samples, "
                f"check {entry['checked']}){' SATURATED' if entry.get('saturated') else ''}")
        failure.stop({"latency": results})
    order = {e: k for k, e in enumerate(engines)}
    results.sort(key=lambda r: (args.latency_queries.index(r["query"]), order[r["engine"]], r["rate"]))
    return {"config": {"rates": rates, "seconds": args.latency_seconds, "queries": args.latency_queries,
                       "engines": engines, "parallelism": 1, "max_lag_s": args.max_lag,
                       "sequence_events": {str(r): n for r, n in sizes.items()}},
            "results": results, "references": references, "processes": processes}


def _check(entry: dict[str, Any], references: dict[str, dict[str, Any]], failure: Any) -> None:
    if entry.get("saturated"):
        entry["checked"] = "not checked: saturated"
        return
    what = f"latency {entry['query']} {entry['engine']} @ {entry['rate']:,.0f}/s"
    if entry["query"] == "q5":
        ref = references[f"q5@{int(entry['rate'])}"]
        ok = entry["result_digest"] == ref["digest"]
        if not ok:
            failure.mismatches.append(f"{what}: digest {entry['result_digest']} ({entry['rows_out']} rows) != "
                                      f"{REFERENCE} {ref['digest']} ({ref['rows']} rows)")
    else:
        ok = entry["rows_out"] == entry["rows_in"]
        if not ok:
            failure.mismatches.append(f"{what}: wrote {entry['rows_out']} rows for {entry['rows_in']} bids")
    entry["checked"] = "ok" if ok else "MISMATCH"
