r"""Headwater against its peers on the same Nexmark events: throughput, latency at fixed rates, scaling.

The one command (measured 19 min 40 s on the idle 2-core benchmark machine with the peer venvs installed;
installing them on a fresh clone adds 3 min 40 s)::

    python3 benchmarks/compare.py

It is the same as the defaults spelled out::

    python3 benchmarks/compare.py --events 750000 --caps bytewax:q5=250000,pathway:q5=250000 --repeat 2 \
        --queries q0,q1,q2,q5,q7,q8 --parallelism 1,2 --engines headwater,bytewax,flink,pathway,raydata,python \
        --sections throughput,latency,scaling --latency-rates 10000,50000,100000 --latency-seconds 10 \
        --latency-queries q1,q5

Any ``python3`` works: the script re-executes itself with Headwater's venv (``.venv/``, created by
``scripts/setup.sh`` if missing). Larger runs: ``--events 5000000 --caps none --repeat 3`` (every engine on
every query at the same size; about 2 h here). Steps, in one process tree:

1. ``benchmarks/setup_peers.sh <peers>``: one virtualenv per peer at pinned versions (idempotent).
2. ``benchmarks/materialize.py``: the events written once as Parquet per size used (reused when present).
   ``--events`` is the sequence length every (engine, query) reads, except the pairs listed in ``--caps``,
   which read ``min(--events, cap)`` events (by default Bytewax and Pathway on q5, the two slowest pairs at
   ~25-40 k events/s). Every report row states its event count.
3. Reference digests: the plain-Python reference (``peers/python_runner.py --verify``) for every query at every
   size used.
4. **Verification**, with the rule that an engine is checked on exactly the events it is timed on and any
   mismatch or runner failure exits non-zero with nothing reported (``latest.json`` untouched):
   q0 and q1 (one output row per input row) are verified by a separate, untimed ``--verify`` run of every
   engine at every parallelism before any timing; q2, q5, q7 and q8 (small outputs: at 1 M events 6,823,
   54, 10 and 8,449 rows) are verified in *every* timed run, which collects and digests its output.
5. **Timed runs** (section ``throughput``): per (query, parallelism) the engines in turn, ``--repeat`` rounds,
   the order rotated each round, each run a fresh process.
6. **Latency** (section ``latency``, ``latency_bench.py``): each engine that can be paced (all but Ray Data)
   reads bids released at each fixed rate for ``--latency-seconds`` seconds, parallelism 1; p50/p99/p99.9 of
   (sink write time - time the input was due). Outputs are checked (q1 row counts, q5 digests).
7. **Scaling** (section ``scaling``, ``scaling.py``): events/s at parallelism 1 and 2 from step 5, Headwater's
   exchange cost measured, and a labelled projection to more nodes.
8. Report: ``benchmarks/results/compare-<UTC time>.json`` and ``latest.json``, ``latest.md`` (the tables) and
   ``throughput.png``, ``latency.png``, ``scaling.png``.

``events`` (and events/s) counts the input rows a query reads: the bids for q0-q7, persons + auctions for q8.
See docs/benchmarks-peers.md for what each engine runs and what is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    ALL_QUERIES,
    BENCH,
    ENGINES,
    HW_PY,
    HW_VENV,
    NO_DUMP,
    PEER_VENVS,
    REFERENCE,
    RESULTS,
    ROOT,
    RunnerError,
    csv_arg,
    log,
    machine,
    run_runner,
    source_commit,
)

DEFAULT_EVENTS = 750_000
DEFAULT_CAPS = "bytewax:q5=250000,pathway:q5=250000"
SEPARATE_VERIFY = ("q0", "q1")  # output as large as the input: verified in untimed runs of their own
SECTIONS = ("throughput", "latency", "scaling")


def ensure_headwater_python() -> None:
    """Re-execute with ``.venv/bin/python`` (running ``scripts/setup.sh`` first if it is missing)."""
    if Path(sys.prefix).resolve() == HW_VENV.resolve():
        return
    if not HW_PY.exists():
        log("compare: Headwater's venv is missing; running scripts/setup.sh")
        subprocess.run([str(ROOT / "scripts" / "setup.sh")], check=True)
    os.execv(str(HW_PY), [str(HW_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


def parse_caps(text: str) -> dict[tuple[str, str], int]:
    if text.strip().lower() in ("", "none"):
        return {}
    caps = {}
    for item in text.split(","):
        pair, _, value = item.partition("=")
        engine, _, query = pair.partition(":")
        if engine not in ENGINES or query not in ALL_QUERIES or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--caps expects engine:query=events[,...] or none, got {item!r}")
        caps[(engine, query)] = int(value)
    return caps


def events_for(args: argparse.Namespace, engine: str, query: str) -> int:
    return min(args.events, args.caps.get((engine, query), args.events))


class Failure:
    """Collects runner errors and digest mismatches; :meth:`stop` ends the run without reporting numbers."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.errors: list[str] = []
        self.mismatches: list[str] = []

    def stop(self, details: dict[str, Any]) -> None:
        if not (self.errors or self.mismatches):
            return
        (self.work / "verification-failed.json").write_text(json.dumps(details, indent=1))
        log("\ncompare: FAILED — no results are reported.")
        for line in self.errors:
            log(f"  runner failed: {line}")
        for line in self.mismatches:
            log(f"  results disagree: {line}")
        log(f"  details: {self.work / 'verification-failed.json'}")
        raise SystemExit(1)


# --------------------------------------------------------------------------------------------- verification
def reference_digests(args: argparse.Namespace, datasets: dict[int, Path], work: Path) -> dict[tuple[str, int], dict]:
    """The plain-Python reference's digest of every query at every size some engine reads it at."""
    refs: dict[tuple[str, int], dict] = {}
    for query in args.queries:
        for n in sorted({events_for(args, e, query) for e in args.engines} | {events_for(args, REFERENCE, query)}):
            name = f"{REFERENCE}-{query}-{n}"
            res = run_runner(REFERENCE, query, 1, datasets[n], True, work / f"reference-{name}.json",
                             work / "logs" / f"reference-{name}.log", args.timeout)
            refs[(query, n)] = {"digest": res["result_digest"], "rows": res["result_rows"], "events": res["events"],
                                "sequence_events": n}
            log(f"reference {query} at {n:,} events: {res['result_digest']} ({res['result_rows']:,} rows)")
    return refs


def check_digest(failure: Failure, refs: dict, engine: str, query: str, p: int, n: int, res: dict,
                 entry: dict[str, Any], args: argparse.Namespace, datasets: dict[int, Path], work: Path) -> bool:
    ref = refs[(query, n)]
    ok = res["result_digest"] == ref["digest"]
    entry.update({"digest": res["result_digest"], "rows": res["result_rows"], "agrees": ok, "sequence_events": n})
    if not ok:
        failure.mismatches.append(f"{query}: {engine} p={p} at {n:,} events: digest {res['result_digest']} "
                                  f"({res['result_rows']} rows) != {REFERENCE} {ref['digest']} ({ref['rows']} rows)")
        if args.dump_mismatches and engine not in NO_DUMP:
            _dump_diff(args, engine, query, p, datasets[n], work)
    return ok


def verify_separately(args: argparse.Namespace, datasets: dict[int, Path], refs: dict, work: Path,
                      failure: Failure) -> tuple[dict, dict[tuple[str, str], str]]:
    """Untimed ``--verify`` runs of every engine at every parallelism for the queries of SEPARATE_VERIFY."""
    report: dict[str, Any] = {}
    skipped: dict[tuple[str, str], str] = {}
    for query in args.queries:
        report[query] = {"reference": {"engine": REFERENCE, **{f"{n}": r for (q, n), r in refs.items() if q == query}},
                         "engines": {}, "verified": "separately" if query in SEPARATE_VERIFY else "in every timed run"}
        if query not in SEPARATE_VERIFY:
            continue
        for p in args.parallelism:
            for engine in args.engines:
                if engine == REFERENCE or (engine, query) in skipped:
                    continue
                n = events_for(args, engine, query)
                name = f"{engine}-{query}-p{p}"
                try:
                    res = run_runner(engine, query, p, datasets[n], True, work / f"verify-{name}.json",
                                     work / "logs" / f"verify-{name}.log", args.timeout)
                except RunnerError as exc:
                    failure.errors.append(str(exc))
                    report[query]["engines"][f"{engine}@{p}"] = {"error": str(exc).splitlines()[0]}
                    log(f"verify {query} p={p} {engine}: ERROR {str(exc).splitlines()[0]}")
                    continue
                if res.get("skipped"):
                    skipped[(engine, query)] = res["skipped"]
                    report[query]["engines"][f"{engine}@{p}"] = {"skipped": res["skipped"]}
                    log(f"verify {query} p={p} {engine}: skipped ({res['skipped']})")
                    continue
                entry: dict[str, Any] = {"seconds": round(res["total_s"], 2)}
                ok = check_digest(failure, refs, engine, query, p, n, res, entry, args, datasets, work)
                report[query]["engines"][f"{engine}@{p}"] = entry
                log(f"verify {query} p={p} {engine}: {res['result_digest']} ({res['result_rows']:,} rows) "
                    f"{'ok' if ok else 'MISMATCH'}")
    failure.stop(report)
    return report, skipped


def _dump_diff(args: argparse.Namespace, engine: str, query: str, p: int, events_dir: Path, work: Path) -> None:
    paths = {}
    for eng, par in ((REFERENCE, 1), (engine, p)):
        paths[eng] = work / f"dump-{eng}-{query}-p{par}.txt"
        run_runner(eng, query, par, events_dir, True, work / f"dump-{eng}-{query}-p{par}.json",
                   work / "logs" / f"dump-{eng}-{query}-p{par}.log", args.timeout, dump=paths[eng])
    ref = set(paths[REFERENCE].read_text().splitlines())
    got = set(paths[engine].read_text().splitlines())
    log(f"  {query} {engine} p={p}: {len(got - ref)} rows only in {engine}, {len(ref - got)} only in {REFERENCE}")
    for line in sorted(got - ref)[:5]:
        log(f"    + {line!r}")
    for line in sorted(ref - got)[:5]:
        log(f"    - {line!r}")


# ------------------------------------------------------------------------------------------------- timing
def timed_runs(args: argparse.Namespace, datasets: dict[int, Path], refs: dict, work: Path,
               skipped: dict[tuple[str, str], str], verification: dict, failure: Failure) -> list[dict[str, Any]]:
    blocks = [(q, p) for q in args.queries for p in args.parallelism]
    plan: list[tuple[str, int, int, str]] = []
    for query, p in blocks:
        engines = [e for e in args.engines if (e, query) not in skipped
                   and not (e == REFERENCE and p != args.parallelism[0])]  # one process: time it once
        for rep in range(args.repeat):
            k = rep % len(engines) if engines else 0
            plan += [(query, p, rep, e) for e in engines[k:] + engines[:k]]
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, (query, p, rep, engine) in enumerate(plan, 1):
        if (engine, query) in skipped:
            continue
        n = events_for(args, engine, query)
        inline = query not in SEPARATE_VERIFY
        name = f"{engine}-{query}-p{p}-r{rep}"
        try:
            res = run_runner(engine, query, p, datasets[n], inline, work / f"timed-{name}.json",
                             work / "logs" / f"timed-{name}.log", args.timeout)
        except RunnerError as exc:
            failure.errors.append(str(exc))
            failure.stop(verification)
            raise
        if res.get("skipped"):
            skipped[(engine, query)] = res["skipped"]
            verification[query]["engines"][f"{engine}"] = {"skipped": res["skipped"]}
            log(f"[{i}/{len(plan)}] {query} {engine}: skipped ({res['skipped']})")
            continue
        res["repeat_index"] = rep
        res["sequence_events"] = n
        check = ""
        if inline:
            entry: dict[str, Any] = {"seconds": round(res["total_s"], 2)}
            ok = check_digest(failure, refs, engine, query, p, n, res, entry, args, datasets, work)
            verification[query]["engines"][f"{engine}@{p}#r{rep}"] = entry
            res["verified"] = ok
            check = "  digest ok" if ok else "  digest MISMATCH"
            failure.stop(verification)
        runs.append(res)
        spent = time.perf_counter() - started
        eta = spent / i * (len(plan) - i)
        log(f"[{i}/{len(plan)}] {query} p={p} round {rep + 1} {engine:<9} {res['events_per_second']:>12,.0f} ev/s "
            f"({res['events']:,} ev, query {res['elapsed_s']:.2f} s, process {res['total_s']:.2f} s, "
            f"{res['peak_rss_mb']:.0f} MB){check}  eta {eta / 60:.1f} min")
    return runs


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="length of the Nexmark event sequence")
    parser.add_argument("--caps", type=parse_caps, default=parse_caps(DEFAULT_CAPS),
                        help=f"engine:query=events pairs read at most that many events, or 'none' "
                             f"(default {DEFAULT_CAPS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds per (query, parallelism, engine)")
    parser.add_argument("--queries", type=csv_arg(str, ALL_QUERIES), default=list(ALL_QUERIES))
    parser.add_argument("--parallelism", type=csv_arg(int), default=[1, 2])
    parser.add_argument("--engines", type=csv_arg(str, tuple(ENGINES)), default=list(ENGINES))
    parser.add_argument("--sections", type=csv_arg(str, SECTIONS), default=list(SECTIONS))
    parser.add_argument("--latency-rates", type=csv_arg(int), default=[10_000, 50_000, 100_000],
                        help="input rates of the latency section, bids/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="seconds of input per paced run")
    parser.add_argument("--latency-queries", type=csv_arg(str, ("q1", "q5")), default=["q1", "q5"])
    parser.add_argument("--max-lag", type=float, default=5.0,
                        help="a paced source this many seconds behind its schedule gives up (saturated)")
    parser.add_argument("--files", type=int, default=4, help="Parquet files per table")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per runner process")
    parser.add_argument("--skip-setup", action="store_true", help="do not run setup_peers.sh")
    parser.add_argument("--verify-only", action="store_true",
                        help="stop after the reference digests and the separate verification runs")
    parser.add_argument("--dump-mismatches", action="store_true",
                        help="on a digest mismatch, rerun with --dump and print differing rows")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(p < 1 for p in args.parallelism) or args.events < 1:
        parser.error("--repeat, --parallelism and --events must be >= 1")
    if REFERENCE not in args.engines:
        args.engines.append(REFERENCE)  # the reference defines correctness
    return args


def main(argv: list[str] | None = None) -> int:
    from latency_bench import latency_datasets, run_latency
    from materialize import materialize
    from report import markdown, summarize
    from scaling import run_scaling

    args = parse_args(argv)
    wall = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out_dir
    work = out_dir / "tmp" / f"compare-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    host = machine()

    t0 = time.perf_counter()
    peers = [e for e in args.engines if e in PEER_VENVS]
    if peers and not args.skip_setup:
        log(f"compare: setting up peers {peers}")
        subprocess.run([str(BENCH / "setup_peers.sh"), *peers], check=True, stdout=sys.stderr)
    for engine in args.engines:
        if not ENGINES[engine][0].exists():
            raise SystemExit(f"compare: {ENGINES[engine][0]} is missing; run benchmarks/setup_peers.sh {engine}")
    seconds["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sizes: set[int] = set()
    if "throughput" in args.sections or args.verify_only:
        sizes |= {events_for(args, e, q) for e in args.engines for q in args.queries}
    if "latency" in args.sections:
        sizes |= set(latency_datasets(args).values())
    datasets = {n: materialize(n, args.seed, args.files) for n in sorted(sizes)}
    manifests = {n: json.loads((d / "manifest.json").read_text()) for n, d in datasets.items()}
    seconds["materialize"] = time.perf_counter() - t0

    failure = Failure(work)
    runs: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    verification: dict[str, Any] = {}
    if "throughput" in args.sections or args.verify_only:
        t0 = time.perf_counter()
        refs = reference_digests(args, datasets, work)
        verification, skipped = verify_separately(args, datasets, refs, work, failure)
        seconds["verify"] = time.perf_counter() - t0
        log(f"compare: references and separate verification done ({seconds['verify']:.0f} s)")
        if args.verify_only:
            print(json.dumps(verification, indent=1))
            return 0
        t0 = time.perf_counter()
        runs = timed_runs(args, datasets, refs, work, skipped, verification, failure)
        seconds["timed"] = time.perf_counter() - t0
        summary = summarize(args, runs, skipped)

    latency: dict[str, Any] | None = None
    if "latency" in args.sections:
        t0 = time.perf_counter()
        latency = run_latency(args, datasets, work, failure)
        seconds["latency"] = time.perf_counter() - t0

    scaling: dict[str, Any] | None = None
    if "scaling" in args.sections:
        t0 = time.perf_counter()
        scaling = run_scaling(args, summary, runs, datasets.get(args.events), work)
        seconds["scaling"] = time.perf_counter() - t0

    seconds["total"] = time.perf_counter() - wall
    meta = {
        "command": " ".join(["python3", "benchmarks/compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": stamp, "commit": source_commit(), "machine": host,
        "events": args.events, "caps": {f"{e}:{q}": n for (e, q), n in args.caps.items()},
        "events_per_engine_query": {f"{e}:{q}": events_for(args, e, q) for e in args.engines for q in args.queries},
        "seed": args.seed, "rows": {str(n): m["rows"] for n, m in manifests.items()},
        "files_per_table": args.files, "repeat": args.repeat, "queries": args.queries,
        "parallelism": args.parallelism, "engines": args.engines, "sections": args.sections,
        "versions": {r["engine"]: r["version"] for r in runs},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    report = {"meta": meta, "summary": summary, "verification": verification, "runs": runs,
              "latency": latency, "scaling": scaling}
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1) + "\n"
    (out_dir / f"compare-{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    table = markdown(report)
    (out_dir / "latest.md").write_text(f"<!-- {meta['command']} | {stamp} | {meta['commit']} -->\n" + table)
    from plots import plot_all

    plots = plot_all(report, out_dir)
    print(table)
    log(f"compare: wrote {out_dir / f'compare-{stamp}.json'}, latest.json, latest.md, {', '.join(plots)}; "
        f"total {meta['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    ensure_headwater_python()
    raise SystemExit(main())
