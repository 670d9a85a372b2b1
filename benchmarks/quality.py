"""Cost of data-quality validation: the same pipeline with and without five rules, interleaved in one run.

    python benchmarks/quality.py --events 20000000 --parallelism 2 --repeat 3 --json

Both pipelines read Nexmark bids, add ``price_eur`` and write every column to a ``NullSink``. The validated one
has a ``validate`` step right after the source, with five rules that every generated bid passes:
``not_null(auction)``, ``not_null(price)``, ``between(price, 0, 10**10)``, ``matches(url, ^https://...)`` and
``check(bidder >= 0)``, plus an ``invalid_records()`` sink. Every column flows in both pipelines, so the
difference is the rules' evaluation and the quarantine port, not extra columns generated for them. Prints one
JSON line: events/s of each (medians of ``--repeat`` interleaved runs) and ``ratio_with_without`` (the bar of
issue 14: at least 0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import headwater as hw  # noqa: E402
from headwater.sinks import NullSink  # noqa: E402
from headwater.sources import NexmarkSource  # noqa: E402

RULES = (
    hw.rules.not_null("auction"),
    hw.rules.not_null("price"),
    hw.rules.between("price", 0, 10**10),
    hw.rules.matches("url", r"^https://www\.nexmark\.com/"),
    hw.rules.check("bidder_non_negative", hw.col("bidder") >= 0),
)


def build(events: int, validated: bool) -> hw.Dataflow:
    flow = hw.Dataflow("quality-bench")
    bids = flow.source("bids", NexmarkSource("bid", events=events))
    if validated:
        bids = bids.validate(*RULES, step_id="checked")
        bids.invalid_records().sink("quarantine", NullSink())
    bids.with_columns(price_eur=hw.col("price") * 0.908).sink("out", NullSink())
    return flow


def run_once(events: int, parallelism: int, validated: bool, executor: str) -> dict:
    started = time.perf_counter()
    result = hw.run(build(events, validated), parallelism=parallelism, executor=executor)
    elapsed = time.perf_counter() - started
    out = {"events_per_second": events / elapsed, "elapsed_s": elapsed}
    if validated:
        out["quality_score"] = result.quality_score("checked")
        out["checked"] = result.quality["checked"]["*"].checked
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ray = None
    if args.executor == "ray":
        import ray

        from headwater.engine.ray.cluster import start_local_ray

        start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1 << 30,  # token auth, reaper
                        configure_logging=False, log_to_driver=False)
    without, with_rules = [], []
    try:
        run_once(min(args.events, 1_000_000), args.parallelism, True, args.executor)  # warm-up, not counted
        for _ in range(args.repeat):  # interleaved: A B A B ...
            without.append(run_once(args.events, args.parallelism, False, args.executor))
            with_rules.append(run_once(args.events, args.parallelism, True, args.executor))
    finally:
        if ray is not None:
            ray.shutdown()
    off = statistics.median(r["events_per_second"] for r in without)
    on = statistics.median(r["events_per_second"] for r in with_rules)
    report = {
        "benchmark": "quality", "events": args.events, "parallelism": args.parallelism, "repeat": args.repeat,
        "executor": args.executor, "rules": [r.name for r in RULES],
        "events_per_second_without": off, "events_per_second_with": on, "ratio_with_without": on / off,
        "runs_without": [r["events_per_second"] for r in without],
        "runs_with": [r["events_per_second"] for r in with_rules],
        "quality_score": with_rules[-1]["quality_score"], "checked": with_rules[-1]["checked"],
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
