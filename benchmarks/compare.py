"""Headwater against its peers on the same Nexmark events: verified results first, then interleaved timings.

    python3 benchmarks/compare.py --events 5000000 --repeat 3 --queries q0,q1,q2,q5,q7,q8 \
        --parallelism 1,2 --engines headwater,bytewax,flink,pathway,raydata,python

Any ``python3`` works: the script re-executes itself with Headwater's venv (``.venv/``, created by
``scripts/setup.sh`` if missing). Steps, in one process tree:

1. ``benchmarks/setup_peers.sh <peers>``: one virtualenv per peer at pinned versions (idempotent).
2. ``benchmarks/materialize.py``: the events of ``(--events, --seed)`` written once as Parquet (reused).
3. **Verification**: every engine runs every query at every parallelism once with ``--verify`` (output
   collected, untimed for the report) and its ``result_digest`` must equal the plain-Python reference's for
   that query. Any mismatch, or any runner failure, exits non-zero listing engines and digests; nothing is
   reported (``latest.json`` is not touched).
4. **Timed runs**: per (query, parallelism) the engines run in turn, ``--repeat`` rounds, the order rotated each
   round (A B C, B C A, C A B...), each run a fresh process writing to the engine's discarding sink.
5. Results: median and spread (min/max) of events/s over the rounds, events/s including start-up, peak RSS of
   the runner's process tree, Headwater/peer ratio; ``benchmarks/results/compare-<UTC time>.json`` and
   ``latest.json``, a Markdown table ``latest.md``, and the plots ``throughput.png`` and ``latency.png``.

``events`` (and so events/s) counts the input rows a query reads: the bids for q0-q7, persons + auctions for
q8. ``--events`` is the length of the generator's event sequence (92 % bids). See docs/benchmarks-peers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
HW_VENV = ROOT / ".venv"
HW_PY = HW_VENV / "bin" / "python"
RESULTS = BENCH / "results"

ENGINES: dict[str, tuple[Path, str]] = {
    "headwater": (HW_PY, "headwater_runner.py"),
    "bytewax": (BENCH / ".venvs" / "bytewax" / "bin" / "python", "bytewax_runner.py"),
    "flink": (BENCH / ".venvs" / "flink" / "bin" / "python", "flink_runner.py"),
    "pathway": (BENCH / ".venvs" / "pathway" / "bin" / "python", "pathway_runner.py"),
    "raydata": (BENCH / ".venvs" / "raydata" / "bin" / "python", "raydata_runner.py"),
    "python": (HW_PY, "python_runner.py"),
}
PEER_VENVS = ("bytewax", "flink", "pathway", "raydata")
REFERENCE = "python"
ALL_QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8")
NO_DUMP = {"bytewax"}  # runners without --dump support


# ------------------------------------------------------------------------------------------------ plumbing
def _in_headwater_venv() -> bool:
    return Path(sys.prefix).resolve() == HW_VENV.resolve()


def ensure_headwater_python() -> None:
    """Re-execute with ``.venv/bin/python`` (running ``scripts/setup.sh`` first if it is missing)."""
    if _in_headwater_venv():
        return
    if not HW_PY.exists():
        print("compare: Headwater's venv is missing; running scripts/setup.sh", file=sys.stderr, flush=True)
        subprocess.run([str(ROOT / "scripts" / "setup.sh")], check=True)
    os.execv(str(HW_PY), [str(HW_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


class RunnerError(RuntimeError):
    pass


def _tree(pid: int) -> list[int]:
    sys.path.insert(0, str(BENCH / "peers"))
    from common import tree_pids

    return tree_pids(pid)


def _kill_tree(pid: int) -> None:
    """Kill the runner and every process it started (by id, children first collected while it still lives)."""
    pids = _tree(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in reversed(pids):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


def run_runner(engine: str, query: str, parallelism: int, events_dir: Path, verify: bool, out: Path,
               log_path: Path, timeout: float, dump: Path | None = None) -> dict[str, Any]:
    python, script = ENGINES[engine]
    cmd = [str(python), str(BENCH / "peers" / script), "--query", query, "--events-dir", str(events_dir),
           "--parallelism", str(parallelism), "--out", str(out)]
    if verify:
        cmd.append("--verify")
    if dump is not None:
        cmd += ["--dump", str(dump)]
    env = {**os.environ, "TZ": "UTC", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1"}
    out.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            raise RunnerError(f"{engine} {query} p={parallelism}: timed out after {timeout:.0f} s (log: {log_path})")
    if code != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RunnerError(f"{engine} {query} p={parallelism}: exit code {code} (log: {log_path})\n    "
                          + "\n    ".join(tail))
    return json.loads(out.read_text())


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        info["java"] = (java.stderr or java.stdout).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------ the two phases
def verify_all(args: argparse.Namespace, events_dir: Path, work: Path) -> tuple[dict, dict[tuple[str, str], str]]:
    """Run every (engine, query, parallelism) once with --verify; return the report and the skip reasons."""
    report: dict[str, Any] = {}
    skipped: dict[tuple[str, str], str] = {}
    mismatches: list[str] = []
    errors: list[str] = []
    for query in args.queries:
        ref = run_runner(REFERENCE, query, 1, events_dir, True, work / f"verify-{REFERENCE}-{query}.json",
                         work / "logs" / f"verify-{REFERENCE}-{query}.log", args.timeout)
        entry = {"reference": {"engine": REFERENCE, "digest": ref["result_digest"], "rows": ref["result_rows"]},
                 "engines": {}}
        log(f"verify {query}: reference {ref['result_digest']} ({ref['result_rows']} rows)")
        for p in args.parallelism:
            for engine in args.engines:
                if engine == REFERENCE or (engine, query) in skipped:
                    continue
                name = f"{engine}-{query}-p{p}"
                try:
                    res = run_runner(engine, query, p, events_dir, True, work / f"verify-{name}.json",
                                     work / "logs" / f"verify-{name}.log", args.timeout)
                except RunnerError as exc:
                    errors.append(str(exc))
                    entry["engines"][f"{engine}@{p}"] = {"error": str(exc).splitlines()[0]}
                    log(f"verify {query} p={p} {engine}: ERROR {str(exc).splitlines()[0]}")
                    continue
                if res.get("skipped"):
                    skipped[(engine, query)] = res["skipped"]
                    entry["engines"][f"{engine}@{p}"] = {"skipped": res["skipped"]}
                    log(f"verify {query} p={p} {engine}: skipped ({res['skipped']})")
                    continue
                ok = res["result_digest"] == ref["result_digest"]
                entry["engines"][f"{engine}@{p}"] = {"digest": res["result_digest"], "rows": res["result_rows"],
                                                    "agrees": ok, "seconds": round(res["total_s"], 2)}
                log(f"verify {query} p={p} {engine}: {res['result_digest']} ({res['result_rows']} rows) "
                    f"{'ok' if ok else 'MISMATCH'}")
                if not ok:
                    mismatches.append(f"{query}: {engine} p={p} digest {res['result_digest']} "
                                      f"({res['result_rows']} rows) != {REFERENCE} {ref['result_digest']} "
                                      f"({ref['result_rows']} rows)")
                    if args.dump_mismatches and engine not in NO_DUMP:
                        _dump_diff(args, engine, query, p, events_dir, work)
        report[query] = entry
    if errors or mismatches:
        (work / "verification-failed.json").write_text(json.dumps(report, indent=1))
        log("\ncompare: FAILED — no results are reported.")
        for line in errors:
            log(f"  runner failed: {line}")
        for line in mismatches:
            log(f"  results disagree: {line}")
        log(f"  details: {work / 'verification-failed.json'}")
        raise SystemExit(1)
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


def timed_runs(args: argparse.Namespace, events_dir: Path, work: Path,
               skipped: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
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
        name = f"{engine}-{query}-p{p}-r{rep}"
        res = run_runner(engine, query, p, events_dir, False, work / f"timed-{name}.json",
                         work / "logs" / f"timed-{name}.log", args.timeout)
        res["repeat_index"] = rep
        runs.append(res)
        spent = time.perf_counter() - started
        eta = spent / i * (len(plan) - i)
        log(f"[{i}/{len(plan)}] {query} p={p} round {rep + 1} {engine:<9} {res['events_per_second']:>12,.0f} ev/s "
            f"(query {res['elapsed_s']:.2f} s, process {res['total_s']:.2f} s, {res['peak_rss_mb']:.0f} MB)"
            f"  eta {eta / 60:.1f} min")
    return runs


# ------------------------------------------------------------------------------------------------ summary
def _stats(values: list[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "spread_pct": None}
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": (max(values) - min(values)) / med * 100 if med else None}


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]],
              skipped: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    rows = []
    for query in args.queries:
        for p in args.parallelism:
            hw_median = None
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
                eps = _stats([r["events_per_second"] for r in mine])
                row: dict[str, Any] = {
                    "engine": engine, "version": mine[0]["version"], "query": query, "parallelism": p,
                    "events": mine[0]["events"], "runs": len(mine),
                    "events_per_second": eps,
                    "events_per_second_runs": [r["events_per_second"] for r in mine],
                    "events_per_second_incl_startup": _stats([r["events_per_second_total"] for r in mine]),
                    "elapsed_s": _stats([r["elapsed_s"] for r in mine]),
                    "startup_s": _stats([r.get("startup_s") for r in mine]),
                    "total_s": _stats([r["total_s"] for r in mine]),
                    "peak_rss_mb": _stats([r["peak_rss_mb"] for r in mine]),
                }
                if any(r.get("engine_runtime_s") for r in mine):  # the engine's own figure (Flink's net runtime)
                    row["engine_runtime_s"] = _stats([r.get("engine_runtime_s") for r in mine])
                    row["events_per_second_engine_runtime"] = _stats(
                        [r["events"] / r["engine_runtime_s"] for r in mine if r.get("engine_runtime_s")])
                if engine == REFERENCE and p != source_p:
                    row["note"] = f"single process: the runs at parallelism {source_p}"
                if any("latency_ms" in r for r in mine):
                    row["latency_ms"] = {k: statistics.median(r["latency_ms"][k] for r in mine
                                                              if r.get("latency_ms", {}).get(k) is not None)
                                         for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                                         if any(r.get("latency_ms", {}).get(k) is not None for r in mine)}
                if engine == "headwater":
                    hw_median = eps["median"]
                block.append(row)
            for row in block:
                med = row.get("events_per_second", {}).get("median") if "skipped" not in row else None
                row["ratio_headwater_to_this"] = hw_median / med if hw_median and med else None
            rows += block
    return rows


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Events: {meta['events']:,} in the sequence (seed {meta['seed']}); rows read: bids "
        f"{meta['rows']['bid']:,}, auctions {meta['rows']['auction']:,}, persons {meta['rows']['person']:,}. "
        f"Median of {meta['repeat']} interleaved runs; spread = (max - min) / median.",
        "",
        "| query | par. | engine | events/s (median) | spread | events/s incl. start-up | peak RSS MB "
        "| Headwater / this |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        if "skipped" in r:
            lines.append(f"| {r['query']} | {r['parallelism']} | {r['engine']} | skipped: {r['skipped']} | | | | |")
            continue
        eps, tot, rss = r["events_per_second"], r["events_per_second_incl_startup"], r["peak_rss_mb"]
        ratio = r["ratio_headwater_to_this"]
        note = " (1 process)" if r.get("note") else ""
        lines.append(
            f"| {r['query']} | {r['parallelism']} | {r['engine']}{note} | {eps['median']:,.0f} | "
            f"{eps['spread_pct']:.0f} % | {tot['median']:,.0f} | {rss['median']:,.0f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], args: argparse.Namespace, out_dir: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    engines = list(args.engines)
    fig, axes = plt.subplots(1, len(args.parallelism), figsize=(6.5 * len(args.parallelism), 4.8), squeeze=False,
                             sharey=True)
    width = 0.8 / max(1, len(engines))
    for ax, p in zip(axes[0], args.parallelism):
        for k, engine in enumerate(engines):
            xs, ys, lo, hi = [], [], [], []
            for i, query in enumerate(args.queries):
                row = next((r for r in summary if r["engine"] == engine and r["query"] == query
                            and r["parallelism"] == p and "skipped" not in r), None)
                if row is None or not row["events_per_second"]["median"]:
                    continue
                eps = row["events_per_second"]
                xs.append(i + (k - (len(engines) - 1) / 2) * width)
                ys.append(eps["median"])
                lo.append(eps["median"] - eps["min"])
                hi.append(eps["max"] - eps["median"])
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=engine)
        ax.set_yscale("log")
        ax.set_xticks(range(len(args.queries)), args.queries)
        ax.set_title(f"parallelism {p}")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("input events/s (median, bars: min-max)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    written.append(str(out_dir / "throughput.png"))

    lat = [r for r in summary if r.get("latency_ms")]
    if lat:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        labels = [f"{r['query']} p{r['parallelism']}" for r in lat]
        keys = [k for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms") if any(k in r["latency_ms"] for r in lat)]
        w = 0.8 / len(keys)
        for j, key in enumerate(keys):
            ax.bar([i + (j - (len(keys) - 1) / 2) * w for i in range(len(lat))],
                   [r["latency_ms"].get(key) or 0 for r in lat], w, label=key.replace("_ms", ""))
        ax.set_yscale("log")
        ax.set_xticks(range(len(lat)), labels, fontsize=8)
        ax.set_ylabel("ms (source to sink, per batch, row-weighted)")
        ax.set_title("Headwater latency percentiles (the peers do not report latency)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=110)
        plt.close(fig)
        written.append(str(out_dir / "latency.png"))
    return written


# ---------------------------------------------------------------------------------------------------- main
def _csv(kind: type, allowed: tuple | None = None) -> Any:
    def parse(text: str) -> list:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {allowed}, got {text!r}")
        return values
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000, help="length of the Nexmark event sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per (query, parallelism, engine)")
    parser.add_argument("--queries", type=_csv(str, ALL_QUERIES), default=list(ALL_QUERIES))
    parser.add_argument("--parallelism", type=_csv(int), default=[1, 2])
    parser.add_argument("--engines", type=_csv(str, tuple(ENGINES)), default=list(ENGINES))
    parser.add_argument("--files", type=int, default=4, help="Parquet files per table")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per runner process")
    parser.add_argument("--skip-setup", action="store_true", help="do not run setup_peers.sh")
    parser.add_argument("--verify-only", action="store_true", help="stop after the verification phase")
    parser.add_argument("--dump-mismatches", action="store_true",
                        help="on a digest mismatch, rerun with --dump and print differing rows")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(p < 1 for p in args.parallelism):
        parser.error("--repeat and --parallelism must be >= 1")

    wall = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out_dir
    work = out_dir / "tmp" / f"compare-{stamp}"
    work.mkdir(parents=True, exist_ok=True)

    peers = [e for e in args.engines if e in PEER_VENVS]
    if peers and not args.skip_setup:
        log(f"compare: setting up peers {peers}")
        subprocess.run([str(BENCH / "setup_peers.sh"), *peers], check=True, stdout=sys.stderr)
    for engine in args.engines:
        if not ENGINES[engine][0].exists():
            raise SystemExit(f"compare: {ENGINES[engine][0]} is missing; run benchmarks/setup_peers.sh {engine}")

    sys.path.insert(0, str(BENCH))
    from materialize import materialize

    t0 = time.perf_counter()
    events_dir = materialize(args.events, args.seed, args.files)
    manifest = json.loads((events_dir / "manifest.json").read_text())
    materialize_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    verification, skipped = verify_all(args, events_dir, work)
    verify_s = time.perf_counter() - t0
    log(f"compare: all engines agree ({verify_s:.0f} s)")
    if args.verify_only:
        print(json.dumps(verification, indent=1))
        return 0

    t0 = time.perf_counter()
    runs = timed_runs(args, events_dir, work, skipped)
    timed_s = time.perf_counter() - t0
    summary = summarize(args, runs, skipped)
    meta = {
        "command": " ".join(["python3", "benchmarks/compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": stamp, "commit": git_commit(), "machine": machine(),
        "events": args.events, "seed": args.seed, "rows": manifest["rows"], "files_per_table": args.files,
        "repeat": args.repeat, "queries": args.queries, "parallelism": args.parallelism, "engines": args.engines,
        "versions": {r["engine"]: r["version"] for r in runs},
        "seconds": {"materialize": round(materialize_s, 1), "verify": round(verify_s, 1),
                    "timed": round(timed_s, 1), "total": round(time.perf_counter() - wall, 1)},
    }
    report = {"meta": meta, "summary": summary, "verification": verification, "runs": runs}
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1) + "\n"
    (out_dir / f"compare-{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    table = markdown(summary, meta)
    (out_dir / "latest.md").write_text(f"<!-- {meta['command']} | {stamp} | {meta['commit']} -->\n" + table)
    plots = plot(summary, args, out_dir,
                 f"Nexmark, {args.events:,} events, median of {args.repeat} ({stamp}, {meta['machine'].get('cpus')} CPUs)")
    print(table)
    log(f"compare: wrote {out_dir / f'compare-{stamp}.json'}, latest.json, latest.md, {', '.join(plots)}; "
        f"total {meta['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    ensure_headwater_python()
    raise SystemExit(main())
