"""What one row costs Headwater's CPU to be shuffled to another machine: the shuffle cost of the scaling model.

Run with the project's venv::

    .venv/bin/python benchmarks/peers/headwater_exchange.py --events-dir DIR --out result.json [--repeat 3]

The bids (the columns q1 reads, Parquet row groups of 131,072 rows, i.e. full channel batches) are put through
what a hash channel does to a batch, in this one process, timed with ``time.process_time``:

1. the sender's partitioning, with Headwater's own code: ``key_groups`` of ``auction``, ``owner_of`` for 2
   receivers, ``split_by_receiver`` (one ``take`` and slices);
2. serialisation as Ray moves an actor-call argument: pickle protocol 5 with the Arrow buffers out of band;
3. one copy of every buffer (the bytes landing in another node's object store);
4. deserialisation (zero-copy over the copied buffers).

``cpu_per_row_us`` is the median over ``--repeat`` passes of CPU seconds per row. The network transfer itself
is not measured (this machine has none); the model adds it from the row size (``row_bytes``, the Arrow size)
and an assumed bandwidth. An end-to-end comparison of two Ray jobs (fused vs. one extra channel) was tried and
dropped: its difference (< 0.1 us per row) is far below the run-to-run noise of a job's total CPU.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

RECEIVERS = 2


def one_pass(batches: list[Any], max_key_groups: int) -> float:
    from headwater.core.state.key_groups import key_groups, owner_of, split_by_receiver

    started = time.process_time()
    for batch in batches:
        receivers = owner_of(key_groups([batch.column("auction")], max_key_groups), RECEIVERS, max_key_groups)
        for part in split_by_receiver(batch, receivers, RECEIVERS):
            if part is None:
                continue
            buffers: list[pickle.PickleBuffer] = []
            data = pickle.dumps(part, protocol=5, buffer_callback=buffers.append)
            copies = [bytearray(buf.raw()) for buf in buffers]
            restored = pickle.loads(data, buffers=copies)
            assert restored.num_rows == part.num_rows
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import pyarrow.parquet as pq

    from headwater.engine.config import RunConfig

    columns = common.INPUT["q1"]["bid"]
    batches = []
    for path in common.table_files(args.events_dir, "bid"):
        f = pq.ParquetFile(path)
        batches += [f.read_row_group(k, columns=columns).combine_chunks().to_batches()[0]
                    for k in range(f.num_row_groups)]
    rows = sum(b.num_rows for b in batches)
    max_key_groups = RunConfig().max_key_groups
    one_pass(batches[:1], max_key_groups)  # warm-up (imports, caches)
    passes = [one_pass(batches, max_key_groups) for _ in range(args.repeat)]
    per_row = [cpu / rows * 1e6 for cpu in passes]
    result = {
        "engine": "headwater", "rows": rows, "batches": len(batches), "receivers": RECEIVERS,
        "cpu_per_row_us": statistics.median(per_row), "cpu_per_row_us_runs": per_row,
        "row_bytes": sum(b.nbytes for b in batches) / max(1, rows), "columns": columns,
        "what": "key_groups + owner_of + split_by_receiver, pickle-5 round trip with one copy of the buffers",
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    common.log(f"exchange: {result['cpu_per_row_us']:.3f} us of CPU per row ({rows:,} rows, "
               f"{result['row_bytes']:.0f} bytes per row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
