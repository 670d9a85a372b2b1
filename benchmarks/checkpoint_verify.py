"""What write-time verification costs: writing a checkpoint of keyed state (state files + ``_metadata``) with
the read-back (every state file read from the filesystem and hashed, the metadata read and compared) vs the
same write without it, interleaved in one process.

    python benchmarks/checkpoint_verify.py --rows 1000000 --files 4 --repeat 7

Prints one JSON line: medians of the state write (SHA-256 on the way), of the metadata write with and without
read-back, the read-back's share of the whole checkpoint write, and the state bytes per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa

from headwater.engine.checkpoints.key import CheckpointKey
from headwater.engine.checkpoints.storage import CheckpointMetadata, CheckpointStorage, SubtaskAck

G = 128


def state_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": np.arange(rows, dtype=np.int64), "n": rng.integers(0, 1000, rows),
                     "total": rng.random(rows), "_key_group": (np.arange(rows) % G).astype(np.int32)})


def one_checkpoint(storage: CheckpointStorage, checkpoint_id: int, tables: list[pa.Table], verify: bool) -> tuple[float, float]:
    started = time.perf_counter()
    acks = []
    for subtask, table in enumerate(tables):
        state = storage.write_state(checkpoint_id, "agg", "acc", 1, subtask, table, range(G))
        acks.append(SubtaskAck(checkpoint_id, 1, subtask, len(tables), state_files=[state],
                               source_positions={"in": {f"p{subtask}": checkpoint_id * 1000}}))
    written = time.perf_counter()
    metadata = CheckpointMetadata(checkpoint_id, "bench", "checkpoint", G, time.time(), acks)
    if verify:
        storage.write_metadata(metadata)
    else:
        original = storage._verify_written
        storage._verify_written = lambda *args: None  # type: ignore[method-assign]
        try:
            storage.write_metadata(metadata)
        finally:
            storage._verify_written = original  # type: ignore[method-assign]
    return written - started, time.perf_counter() - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="state rows per checkpoint (all files)")
    parser.add_argument("--files", type=int, default=4, help="state files (subtasks) per checkpoint")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="hw-verify-", dir=args.dir)
    storage = CheckpointStorage(root, key=CheckpointKey(os.urandom(32), "benchmark"))
    tables = [state_table(args.rows // args.files, i) for i in range(args.files)]
    state_s: list[float] = []
    timings: dict[bool, list[float]] = {True: [], False: []}
    checkpoint_id = 0
    try:
        for _ in range(args.repeat):
            for verify in (False, True):  # interleaved, so drift hits both alike
                checkpoint_id += 1
                state, metadata = one_checkpoint(storage, checkpoint_id, tables, verify)
                state_s.append(state)
                timings[verify].append(metadata)
                storage.prune(retain=1)
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs if f.endswith(".arrow"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    state_ms = statistics.median(state_s) * 1000
    plain_ms = statistics.median(timings[False]) * 1000
    verified_ms = statistics.median(timings[True]) * 1000
    print(json.dumps({
        "rows": args.rows, "files": args.files, "repeat": args.repeat, "state_bytes": size,
        "state_write_ms": round(state_ms, 2), "metadata_write_ms_without_readback": round(plain_ms, 2),
        "metadata_write_ms_with_readback": round(verified_ms, 2),
        "readback_ms": round(verified_ms - plain_ms, 2),
        "readback_share_of_checkpoint_write": round((verified_ms - plain_ms) / (state_ms + verified_ms), 3),
        "readback_mb_per_s": round(size / 1e6 / max(1e-9, (verified_ms - plain_ms) / 1000), 1),
    }))


if __name__ == "__main__":
    main()
