"""Ray Data: the stateless Nexmark queries (q0-q2) as a Ray Data pipeline over ``read_parquet``.

Run with its own venv: ``benchmarks/.venvs/raydata/bin/python benchmarks/peers/raydata_runner.py --query q1 ...``.

* ``ray.init`` as Headwater's runner does it (all CPUs, 1 GiB object store, no dashboard); ``--parallelism P``
  caps the CPUs the dataset may use (``ExecutionOptions.resource_limits.cpu = P``), so at most P tasks run.
* ``read_parquet(<table dir>, columns=...)`` then one ``map_batches`` (pyarrow batches, zero-copy) with the
  query as pyarrow compute: q1 ``price * 0.908``, q2 ``auction % 123 == 0``. Read and map fuse into one task
  per block.
* q5/q7/q8 are skipped: Ray Data is a batch library without event-time windows or streaming joins.

Timing: ``startup_s`` is ``ray.init``; ``elapsed_s`` is building and executing the dataset. The timed run ends
the pipeline with a ``map_batches`` that reduces each block to its row count (the data never leaves the
workers, like a null sink); the verification run iterates the output batches in the driver for the digest.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import common  # noqa: E402


def _q0(batch: Any) -> Any:
    return batch


def _q1(batch: Any) -> Any:
    import pyarrow.compute as pc

    price = pc.multiply(batch.column("price").cast("float64"), common.Q1_RATE)
    return batch.set_column(batch.schema.get_field_index("price"), "price", price)


def _q2(batch: Any) -> Any:
    import pyarrow.compute as pc

    keep = pc.equal(pc.modulo(batch.column("auction"), common.Q2_MODULUS), 0)
    return batch.filter(keep).select(["auction", "price"])


def _count(batch: Any) -> Any:
    import pyarrow as pa

    return pa.table({"rows": [batch.num_rows]})


QUERIES = {"q0": _q0, "q1": _q1, "q2": _q2}


def run(args: Any) -> dict[str, Any]:
    if args.query not in QUERIES:
        raise common.SkipQuery("Ray Data has no event-time windows or streaming joins (stateless q0-q2 only)")
    started = time.perf_counter()
    import ray
    from ray.data import DataContext, ExecutionResources

    ray.init(num_cpus=os.cpu_count(), object_store_memory=1024 * 1024 * 1024, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    startup = time.perf_counter() - started
    try:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.resource_limits = ExecutionResources(cpu=args.parallelism)
        ctx.execution_options.verbose_progress = False
        started = time.perf_counter()
        ds = ray.data.read_parquet(common.table_path(args.events_dir, "bid"), columns=common.INPUT[args.query]["bid"])
        ds = ds.map_batches(QUERIES[args.query], batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        out: dict[str, Any] = {}
        if args.verify:
            digest = common.Digest(args.query, args.dump)
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                digest.add_arrow(batch)
            out["digest"] = digest
        else:
            counts = ds.map_batches(_count, batch_format="pyarrow", batch_size=None).take_all()
            out["result_rows"] = sum(int(r["rows"]) for r in counts)
        out.update(elapsed_s=time.perf_counter() - started, startup_s=startup)
        return out
    finally:
        ray.shutdown()


def version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    raise SystemExit(common.main("raydata", version, run))
