"""Checkpoint overhead: a keyed running aggregate over many keys, with checkpoints every second vs none.

    python benchmarks/checkpoint_overhead.py --events 40000000 --keys 1000000 --interval 1 --repeat 3 --json

Prints one JSON line: events/s with and without checkpointing (medians, interleaved runs), their ratio, the
number of checkpoints, their duration, the longest synchronous pause of a subtask (state copy) and bytes per
checkpoint. Every run starts new worker processes (``reuse_workers=False``), so both kinds pay the same start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from keyed_source import KeyedSource  # noqa: E402

import headwater as hw  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks import NullSink  # noqa: E402


def run_once(events: int, keys: int, parallelism: int, interval: float | None) -> dict:
    flow = hw.Dataflow("checkpoint-overhead")
    (
        flow.source("rows", KeyedSource(events, keys, partitions=parallelism))
        .key_by("key")
        .aggregate(step_id="per_key", n=hw.count(), total=hw.sum("value"), top=hw.max("value"))
        .sink("out", NullSink())
    )
    checkpoint = None
    if interval is not None:
        checkpoint = hw.CheckpointConfig(dir=tempfile.mkdtemp(prefix="hw-ckpt-bench-"),
                                         interval=timedelta(seconds=interval), retain=2)
    started = time.perf_counter()
    # Both kinds of run start new worker processes: a checkpointed job would otherwise get the previous
    # unchecked run's pooled (warm) workers while an unchecked run after it never could (RunConfig.reuse_workers).
    result = hw.run(flow, parallelism=parallelism, checkpoint=checkpoint, reuse_workers=False)
    elapsed = time.perf_counter() - started
    out = {"events_per_second": events / elapsed, "elapsed_s": elapsed,
           "keys": result.operator_metric("per_key", "keys")}
    if result.checkpoints is not None:
        stats = result.checkpoints
        out.update(checkpoints=stats.completed, checkpoint_ms_median=statistics.median(stats.durations_ms),
                   checkpoint_ms_max=max(stats.durations_ms), sync_pause_ms_max=max(stats.sync_ms_max),
                   last_checkpoint_bytes=stats.last_bytes)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checkpoints")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import ray

    start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1 << 30,  # token auth, reaper
             configure_logging=False, log_to_driver=False)
    off, on = [], []
    try:
        for _ in range(args.repeat):  # interleaved: A B A B ...
            off.append(run_once(args.events, args.keys, args.parallelism, None))
            on.append(run_once(args.events, args.keys, args.parallelism, args.interval))
    finally:
        ray.shutdown()
    off_median = statistics.median(r["events_per_second"] for r in off)
    on_median = statistics.median(r["events_per_second"] for r in on)
    report = {
        "benchmark": "checkpoint_overhead", "events": args.events, "keys": args.keys,
        "parallelism": args.parallelism, "interval_s": args.interval, "repeat": args.repeat,
        "events_per_second_off": off_median, "events_per_second_on": on_median,
        "ratio_on_off": on_median / off_median,
        "runs_off": [r["events_per_second"] for r in off], "runs_on": [r["events_per_second"] for r in on],
        "checkpoints": [r["checkpoints"] for r in on],
        "checkpoint_ms_median": statistics.median(r["checkpoint_ms_median"] for r in on),
        "checkpoint_ms_max": max(r["checkpoint_ms_max"] for r in on),
        "sync_pause_ms_max": max(r["sync_pause_ms_max"] for r in on),
        "checkpoint_bytes": on[-1]["last_checkpoint_bytes"],
        "keys_in_state": on[-1]["keys"],
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
