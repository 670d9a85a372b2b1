"""Recovery time: kill a random subtask actor of a running checkpointed job, measure until output flows again.

    python benchmarks/recovery.py --kills 10 --json

The job: rate-limited Nexmark bids -> keyed running aggregate -> sink, parallelism 2, checkpoints every second.
For each kill: t0 = ``ray.kill`` of a random subtask actor; t1 = the first moment the restarted attempt's sink
has received rows. Reports p50 and max of t1 - t0, and the time until the new attempt was running (failure detected, actors restarted, state restored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import timedelta

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import headwater as hw  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.sinks import NullSink  # noqa: E402
from headwater.sources import NexmarkSource  # noqa: E402


def sink_rows(job: hw.engine.runner.RunningJob) -> int:
    return sum(m.steps["out"].rows_in for m in job.metrics() if "out" in m.steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--between", type=float, default=3.0, help="seconds of normal running between kills")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import ray

    start_local_ray(num_cpus=os.cpu_count() or 1, object_store_memory=1 << 30,  # token auth, reaper
             configure_logging=False, log_to_driver=False)
    flow = hw.Dataflow("recovery")
    (
        flow.source("bids", NexmarkSource("bid", events=None, rate=args.rate, partitions=2, batch_size=8_192))
        .key_by("auction")
        .aggregate(step_id="per_auction", bids=hw.count(), top=hw.max("price"))
        .sink("out", NullSink())
    )
    checkpoint = hw.CheckpointConfig(dir=tempfile.mkdtemp(prefix="hw-recovery-"), interval=timedelta(seconds=1),
                                     max_restarts=args.kills + 1, restart_delay=timedelta(0))
    job = hw.start(flow, parallelism=2, checkpoint=checkpoint)
    rng = random.Random(1)
    recoveries, restarts_at = [], []
    try:
        for _ in range(args.kills):
            time.sleep(args.between)
            attempt = job.attempt
            actors = job.actors()
            victim = rng.choice(sorted(actors))
            t0 = time.monotonic()
            ray.kill(actors[victim], no_restart=True)
            while job.attempt == attempt:
                time.sleep(0.01)
            restarts_at.append(time.monotonic() - t0)
            while True:
                try:
                    if sink_rows(job) > 0:
                        break
                except Exception:  # noqa: BLE001 - the new attempt's actors may still be starting
                    pass
                time.sleep(0.02)
            recoveries.append(time.monotonic() - t0)
    finally:
        job.stop()
        result = job.wait()
        ray.shutdown()
    report = {
        "benchmark": "recovery", "kills": args.kills, "rate": args.rate, "restarts": result.restarts,
        "recovery_s_p50": statistics.median(recoveries), "recovery_s_max": max(recoveries),
        "recovery_s": recoveries, "restarted_s_p50": statistics.median(restarts_at),
        "restarted_s_max": max(restarts_at),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
