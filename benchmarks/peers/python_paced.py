"""Plain-Python reference, paced: the bids released on schedule into one loop that computes the query as it goes.

Run with Headwater's venv: ``.venv/bin/python benchmarks/peers/python_paced.py --query q1 --rate 10000:DIR ...``
(contract and latency definition: ``paced.py``).

The loop takes the rows that are due (``Releaser.take``), processes them in order and stamps the slice's output
when it is done (one ``time.time()`` per slice, like a sink receiving a batch), then sleeps until the next row is
due. q1 maps every row. q5 keeps per-window counts per auction for the open sliding windows; a window is closed
(its top auctions emitted) as soon as a bid at or after its end arrives, i.e. with a watermark equal to the
largest event time seen (the input is in event-time order). At end of input the remaining windows are emitted.
The q5 output is digested and must equal the batch reference's (``python_runner.py``) on the same events.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import paced  # noqa: E402
from common import Q1_RATE, Q5_SIZE_MS, Q5_SLIDE_MS  # noqa: E402

COLUMNS = {"q1": ["auction", "bidder", "price", "date_time", "extra"], "q5": ["auction", "date_time"]}


def _rows(table: Any, times: list[int]) -> list[tuple]:
    cols = [times if name == "date_time" else table.column(name).to_pylist() for name in table.column_names]
    return list(zip(*cols))


class Q5:
    """Streaming q5: sliding 10 s / 2 s counts per auction, the top per window when the window closes."""

    def __init__(self, log: paced.LatencyLog, digest: common.Digest) -> None:
        self.counts: dict[int, dict[int, int]] = {}
        self.log = log
        self.digest = digest

    def add(self, rows: list[tuple]) -> None:
        out: list[tuple] = []
        counts, per = self.counts, Q5_SIZE_MS // Q5_SLIDE_MS
        for auction, t in rows:
            while counts:
                start = min(counts)
                if start + Q5_SIZE_MS > t:
                    break
                out += self._close(start)
            last = t - t % Q5_SLIDE_MS
            for k in range(per):
                window = counts.get(last - k * Q5_SLIDE_MS)
                if window is None:
                    window = counts[last - k * Q5_SLIDE_MS] = defaultdict(int)
                window[auction] += 1
        self._emit(out)

    def _close(self, start: int) -> list[tuple]:
        by_auction = self.counts.pop(start)
        top = max(by_auction.values())
        return [(start, start + Q5_SIZE_MS, a, n) for a, n in by_auction.items() if n == top]

    def _emit(self, out: list[tuple]) -> None:
        if out:
            self.log.record(time.time(), [row[1] for row in out])
            self.digest.add_all(out)

    def finish(self) -> None:
        out: list[tuple] = []
        while self.counts:
            out += self._close(min(self.counts))
        self._emit(out)


def run_rate(args: Any, rate: float, events_dir: str) -> dict[str, Any]:
    table = paced.load_bids(events_dir, COLUMNS[args.query])
    times = paced.event_ms(table)
    rows = _rows(table, times)
    schedule = paced.Schedule(rate, times)
    releaser = paced.Releaser(schedule, times, args.max_lag)
    log = paced.LatencyLog()
    out: dict[str, Any] = {"schedule": schedule, "log": log}
    if args.query == "q1":
        produced = [0]

        def emit(i: int, j: int) -> None:
            batch = [(a, b, p * Q1_RATE, t, e) for a, b, p, t, e in rows[i:j]]
            log.record(time.time(), [row[3] for row in batch])
            produced[0] += len(batch)

        paced.release_all(releaser, emit)
        out["rows_out"] = produced[0]
    else:
        digest = common.Digest(args.query)
        q5 = Q5(log, digest)
        paced.release_all(releaser, lambda i, j: q5.add(rows[i:j]))
        q5.finish()
        out["digest"] = digest
        out["rows_out"] = digest.rows
    out.update(releaser.summary())
    return out


def version() -> str:
    import platform

    return f"CPython {platform.python_version()}"


if __name__ == "__main__":
    raise SystemExit(paced.main("python", version, run_rate))
