"""The driver of tests/integration/test_autoscale_cluster.py, run in a process of its own that joins the fake
cluster by ``$RAY_ADDRESS`` (the test process may hold the session's local Ray already).

    python fake_cluster_job.py OUT_DIR CHECKPOINT_DIR REPORT_JSON

Runs a job whose source rate steps up 5x and back down under ``AutoscaleConfig(1..4)``, with every worker
reserving 1 CPU (the default on a joined cluster); samples the cluster's alive worker nodes every 0.5 s while
it runs and, after it ended, until they are gone (at most 60 s); writes what it saw to REPORT_JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa

import headwater as hw
from headwater.engine.ray.fake_cluster import alive_worker_nodes
from headwater.sinks import ParquetSink
from headwater.sources import ScheduledSource

#: (seconds, rows/s over all partitions): slow, then 5x that (2x what one subtask does), then slow again
PHASES = [(6.0, 200.0), (20.0, 1000.0), (30.0, 100.0)]


def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.002 * batch.num_rows)  # 500 rows/s per subtask
    return batch


def main(out_dir: str, checkpoint_dir: str, report: str) -> None:
    import ray

    source = ScheduledSource(PHASES, partitions=4)
    flow = hw.Dataflow("autoscaled_on_a_cluster")
    flow.source("events", source).map_batches(slow).sink("out", ParquetSink(out_dir))
    autoscale = hw.AutoscaleConfig(
        min_parallelism=1, max_parallelism=4, target_lag=timedelta(seconds=1), cooldown=timedelta(seconds=4),
        scale_up_after=timedelta(seconds=2), scale_down_after=timedelta(seconds=4), interval=timedelta(milliseconds=500),
    )
    job = hw.start(flow, autoscale=autoscale, metrics_port=None, progress=False,
                   checkpoint=hw.CheckpointConfig(dir=checkpoint_dir, interval=timedelta(milliseconds=500)))
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            try:
                samples.append((time.time(), alive_worker_nodes(ray)))
            except Exception:  # noqa: BLE001 - the job's Ray session is ending
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = job.wait(300)
    finally:
        done.set()
        sampler.join()
    ended = time.time()
    ray.init(log_to_driver=False)  # $RAY_ADDRESS: the job's session ended with the job
    after: list[tuple[float, int]] = []
    while time.time() - ended < 60:
        after.append((time.time(), alive_worker_nodes(ray)))
        if after[-1][1] == 0:
            break
        time.sleep(0.5)
    ray.shutdown()
    Path(report).write_text(json.dumps({
        "total": source.total, "started": source.started, "ended": ended,
        "decisions": [{"previous": d.previous, "parallelism": d.parallelism, "direction": d.direction, "at": d.at}
                      for d in result.rescales],
        "restarts": job.restarts, "nodes_during": samples, "nodes_after": after,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
