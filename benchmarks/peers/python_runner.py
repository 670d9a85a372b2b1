"""Plain-Python reference: one process, a per-row loop over the rows of the Parquet files.

Run with Headwater's venv (it only needs pyarrow to decode Parquet): ``.venv/bin/python``. The files are decoded
with ``pyarrow.parquet`` batch by batch and turned into Python lists (``to_pylist``; ``date_time`` as integer
ms); everything after that is plain Python: one ``for`` loop over the rows with dicts for the window state.
This runner defines the reference semantics every engine's digest is compared with. ``--parallelism`` is
ignored (always one process); the result records ``effective_parallelism: 1``.

The timed run discards the output rows after producing each one (the loop builds the output tuple and counts
it, the way a null sink would); the verification run feeds them to the digest instead.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Q1_RATE, Q2_MODULUS, Q5_SIZE_MS, Q5_SLIDE_MS, Q7_SIZE_MS, Q8_SIZE_MS  # noqa: E402

BATCH = 65_536


def _columns(events_dir: str, table: str, columns: list[str]) -> Iterator[list[list[Any]]]:
    """Column lists of each batch of ``table`` (files in order), timestamps as int ms."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in common.table_files(events_dir, table):
        f = pq.ParquetFile(path)
        for batch in f.iter_batches(batch_size=BATCH, columns=columns, use_threads=False):
            out = []
            for name in columns:
                col = batch.column(name)
                if pa.types.is_timestamp(col.type):
                    col = col.cast(pa.int64())
                out.append(col.to_pylist())
            yield out


def q0(d: str, emit: Callable[[tuple], None]) -> None:
    for cols in _columns(d, "bid", common.INPUT["q0"]["bid"]):
        for auction, bidder, price, channel, url, t, extra in zip(*cols):
            emit((auction, bidder, price, channel, url, t, extra))


def q1(d: str, emit: Callable[[tuple], None]) -> None:
    for cols in _columns(d, "bid", common.INPUT["q1"]["bid"]):
        for auction, bidder, price, t, extra in zip(*cols):
            emit((auction, bidder, price * Q1_RATE, t, extra))


def q2(d: str, emit: Callable[[tuple], None]) -> None:
    for auction_col, price_col in _columns(d, "bid", ["auction", "price"]):
        for auction, price in zip(auction_col, price_col):
            if auction % Q2_MODULUS == 0:
                emit((auction, price))


def q5(d: str, emit: Callable[[tuple], None]) -> None:
    counts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))  # window start -> auction -> n
    per = Q5_SIZE_MS // Q5_SLIDE_MS
    for auction_col, t_col in _columns(d, "bid", ["auction", "date_time"]):
        for auction, t in zip(auction_col, t_col):
            last = t - t % Q5_SLIDE_MS
            for k in range(per):
                counts[last - k * Q5_SLIDE_MS][auction] += 1
    for start, by_auction in counts.items():
        top = max(by_auction.values())
        for auction, n in by_auction.items():
            if n == top:
                emit((start, start + Q5_SIZE_MS, auction, n))


def q7(d: str, emit: Callable[[tuple], None]) -> None:
    best: dict[int, list] = {}  # window start -> [max price, [(auction, bidder), ...]]
    for auction_col, bidder_col, price_col, t_col in _columns(d, "bid", ["auction", "bidder", "price", "date_time"]):
        for auction, bidder, price, t in zip(auction_col, bidder_col, price_col, t_col):
            start = t - t % Q7_SIZE_MS
            cur = best.get(start)
            if cur is None or price > cur[0]:
                best[start] = [price, [(auction, bidder)]]
            elif price == cur[0]:
                cur[1].append((auction, bidder))
    for start, (price, bids) in best.items():
        for auction, bidder in bids:
            emit((start, start + Q7_SIZE_MS, auction, bidder, price))


def q8(d: str, emit: Callable[[tuple], None]) -> None:
    persons: dict[tuple[int, int], str] = {}  # (window start, person id) -> name
    for id_col, name_col, t_col in _columns(d, "person", ["id", "name", "date_time"]):
        for pid, name, t in zip(id_col, name_col, t_col):
            persons[(t - t % Q8_SIZE_MS, pid)] = name
    sellers: set[tuple[int, int]] = set()
    for seller_col, t_col in _columns(d, "auction", ["seller", "date_time"]):
        for seller, t in zip(seller_col, t_col):
            sellers.add((t - t % Q8_SIZE_MS, seller))
    for (start, pid), name in persons.items():
        if (start, pid) in sellers:
            emit((start, pid, name))


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q5": q5, "q7": q7, "q8": q8}


def run(args: Any) -> dict[str, Any]:
    fn = QUERIES[args.query]
    if args.verify:
        digest = common.Digest(args.query, args.dump)
        started = time.perf_counter()
        fn(args.events_dir, digest.add)
        return {"elapsed_s": time.perf_counter() - started, "digest": digest, "effective_parallelism": 1}
    count = [0]

    def discard(row: tuple) -> None:
        count[0] += 1

    started = time.perf_counter()
    fn(args.events_dir, discard)
    return {"elapsed_s": time.perf_counter() - started, "startup_s": 0.0, "result_rows": count[0],
            "effective_parallelism": 1}


def version() -> str:
    import platform

    import pyarrow

    return f"CPython {platform.python_version()} (pyarrow {pyarrow.__version__} for Parquet decoding)"


if __name__ == "__main__":
    raise SystemExit(common.main("python", version, run))
