"""Autoscaling benchmark: reaction to a 5x rate step, output pause of a rescale, throughput after 1 → 2.

    python benchmarks/autoscale.py --json [--fake-cluster]

One run on a local Ray (2 CPUs): ``ScheduledSource`` (4 partitions) releases 200 rows/s for 8 s, then
1,000 rows/s for 24 s, then 100 rows/s; each row costs 2 ms in ``map_batches`` (a sleep: 500 rows/s per
subtask, so extra subtasks add capacity on 2 cores); checkpoints every 0.5 s; ``AutoscaleConfig(1..4,
target_lag=1 s, scale_up_after=2 s, cooldown=4 s, scale_down_after=4 s)``. Every output row carries the time it
was processed. Reported (issue 15's bars beside each):

* ``reaction_s``: from the rate step to the first row processed after the first scale-up's restart (bar < 30 s;
  with ``--fake-cluster`` the job joins Ray's fake multi-node cluster (a 1-CPU head, 1-CPU worker nodes that
  Ray's autoscaler starts), every worker reserves a CPU, and the reaction includes the node start; the run then
  also reports ``nodes``: alive worker nodes over time, and ``node_added_s``: from the first scale-up decision
  to the first new node alive);
* ``pause_s``: the longest gap between processed rows around each rescale (bar < 5 s);
* ``throughput_ratio_after_1_to_2``: rows/s processed in the 3 s after the 1 → 2 restart over the 3 s before the
  decision, both while the sources lag (so both run flat out; bar ≥ 1.6x);
* ``missing`` / ``duplicates`` against the schedule's ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

import headwater as hw  # noqa: E402
from benchmarks.harness import machine  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.engine.ray.fake_cluster import FakeCluster, alive_worker_nodes  # noqa: E402
from headwater.sinks.testing import TestingSink  # noqa: E402
from headwater.sources import ScheduledSource  # noqa: E402

PHASES = [(8.0, 200.0), (24.0, 1000.0), (40.0, 100.0)]


def work(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.002 * batch.num_rows)
    stamp = pa.array([time.time()] * batch.num_rows, pa.float64())
    return pa.RecordBatch.from_arrays([*batch.columns, stamp], names=[*batch.schema.names, "processed_at"])


def rate_between(stamps: list[float], start: float, end: float) -> float:
    return sum(1 for s in stamps if start <= s < end) / (end - start)


class NodeSampler:
    """Alive worker nodes of the cluster the job joined, every 0.5 s (``ray`` is initialised by the run)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NodeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        import ray

        while not self._done.wait(0.5):
            if ray.is_initialized():
                try:
                    self.samples.append((time.time(), alive_worker_nodes(ray)))
                except Exception:  # noqa: BLE001 - between the job's Ray sessions
                    continue


def measure(on_cluster: bool = False) -> dict[str, Any]:
    out = TestingSink()
    source = ScheduledSource(PHASES, partitions=4)
    flow = hw.Dataflow("autoscale-bench")
    flow.source("events", source).map_batches(work).sink("out", out)
    config = hw.AutoscaleConfig(
        min_parallelism=1, max_parallelism=4, target_lag=timedelta(seconds=1), cooldown=timedelta(seconds=4),
        scale_up_after=timedelta(seconds=2), scale_down_after=timedelta(seconds=4),
        interval=timedelta(milliseconds=500), request_resources=on_cluster,
    )
    with tempfile.TemporaryDirectory() as tmp, NodeSampler() as nodes:
        result = hw.run(flow, autoscale=config, timeout=300, metrics_port=None,
                        checkpoint=hw.CheckpointConfig(dir=Path(tmp) / "ckpt", interval=timedelta(milliseconds=500)))
    table = pa.Table.from_pylist(out.rows())
    ids = Counter(table.column("id").to_pylist())
    stamps = sorted(pc.cast(table.column("processed_at"), pa.float64()).to_pylist())
    step_at = source.started + PHASES[0][0]
    decisions = result.rescales
    pauses, resumed_at = [], []
    for i, d in enumerate(decisions):
        assert d.at is not None
        until = decisions[i + 1].at if i + 1 < len(decisions) else d.at + 30
        assert until is not None
        around = [s for s in stamps if d.at - 0.5 <= s <= until]
        gap, resumed = max(((b - a, b) for a, b in zip(around, around[1:])), default=(0.0, d.at))
        pauses.append(gap)
        resumed_at.append(resumed)  # the first row processed after the restart's gap
    figures: dict[str, Any] = {"reaction_s": None, "throughput_ratio_after_1_to_2": None}
    ups = [i for i, d in enumerate(decisions) if d.direction == "up"]
    if ups:
        first, resumed = decisions[ups[0]], resumed_at[ups[0]]
        figures["reaction_s"] = resumed - step_at
        if first.previous == 1 and first.parallelism == 2 and first.at is not None:
            before = rate_between(stamps, first.at - 3, first.at)
            later = rate_between(stamps, resumed + 0.5, resumed + 3.5)
            figures["throughput_ratio_after_1_to_2"] = later / before if before else None
            figures["rows_per_second_before"], figures["rows_per_second_after"] = before, later
    if on_cluster:
        figures["nodes"] = [(t - source.started, n) for t, n in nodes.samples]
        if ups:
            up_at = decisions[ups[0]].at or 0.0
            added = [t for t, n in nodes.samples if t >= up_at and n >= 1]
            figures["node_added_s"] = added[0] - up_at if added else None
    return {
        "benchmark": "autoscale", "machine": machine(), "fake_cluster": on_cluster, "phases": PHASES, "per_subtask_rows_per_second": 500,
        "decisions": [{"previous": d.previous, "parallelism": d.parallelism, "reason": d.reason,
                       "seconds_after_start": (d.at or 0) - source.started} for d in decisions],
        **figures,
        "pause_s": pauses, "max_pause_s": max(pauses, default=None),
        "rows": table.num_rows, "missing": source.total - len(ids), "duplicates": sum(c - 1 for c in ids.values()),
        "bars": {"reaction_s": 30, "max_pause_s": 5, "throughput_ratio_after_1_to_2": 1.6},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--fake-cluster", action="store_true",
                        help="join Ray's fake multi-node cluster (autoscaled nodes) instead of a local Ray")
    args = parser.parse_args()
    if args.fake_cluster:
        with tempfile.TemporaryDirectory() as tmp, FakeCluster(Path(tmp) / "cluster", max_workers=3) as cluster:
            os.environ.update(cluster.env())
            os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")  # the autoscaler's messages would mix into stdout
            figures = measure(on_cluster=True)
    else:
        ray = start_local_ray(num_cpus=2, object_store_memory=300 * 1024 * 1024)
        try:
            figures = measure()
        finally:
            ray.shutdown()
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
