"""Pathway, paced: a Python connector thread releasing the bids on schedule, one worker thread.

Run with its own venv: ``benchmarks/.venvs/pathway/bin/python benchmarks/peers/pathway_paced.py --query q1 ...``
(contract and latency definition: ``paced.py``).

* Input: ``pw.io.python.read`` of a ``ConnectorSubject`` whose ``run`` pushes each due row with ``next`` and
  sleeps until the next one is due (rows converted to dicts before the schedule starts, which is when the
  connector thread starts). ``next`` never blocks (``max_backlog_size`` bounds only the connector's hand-over
  queue, which the engine drains into its own input), so an overloaded run shows as latency, not as lag at
  the source; ``paced.py`` marks it saturated when its p99 exceeds ``--max-lag``.
  ``autocommit_duration_ms = 20``: Pathway turns the pushed rows into a new
  logical time at most every 20 ms (its default is 1,500 ms); the same 20 ms as Headwater's output linger and
  watermark interval and Flink's buffer timeout in these runs.
* Output: ``pw.io.subscribe``; ``on_change`` stamps every addition with ``time.time()``.
* q1 is the throughput runner's ``select``. q5 is the throughput runner's query with
  ``behavior = pw.temporal.exactly_once_behavior()`` on the sliding window: each window's counts are emitted
  once, when the largest event time seen passes its end (by default Pathway updates a window's result with
  every row, so a "result for a window" has no single time). The top per window and the join then update
  once per window. The q5 output is digested and checked against the reference.
* ``PATHWAY_THREADS=1``. Pathway's graph is global, so it is cleared after each rate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from time import time as wall_clock
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import paced  # noqa: E402

COLUMNS = {"q1": ["auction", "bidder", "price", "date_time", "extra"], "q5": ["auction", "date_time"]}
AUTOCOMMIT_MS = 20


def build(pw: Any, query: str, bids: Any) -> Any:
    this = pw.this
    if query == "q1":
        return bids.select(bids.auction, bids.bidder, price=bids.price * common.Q1_RATE, date_time=bids.date_time,
                           extra=bids.extra)
    counts = bids.windowby(
        bids.date_time,
        window=pw.temporal.sliding(hop=common.Q5_SLIDE_MS, duration=common.Q5_SIZE_MS, origin=0),
        instance=bids.auction, behavior=pw.temporal.exactly_once_behavior(),
    ).reduce(auction=this._pw_instance, window_start=this._pw_window_start, window_end=this._pw_window_end,
             num=pw.reducers.count())
    maxes = counts.groupby(counts.window_start).reduce(counts.window_start, maxn=pw.reducers.max(counts.num))
    return counts.join(maxes, counts.window_start == maxes.window_start, counts.num == maxes.maxn).select(
        counts.window_start, counts.window_end, counts.auction, counts.num)


def run_rate(args: Any, rate: float, events_dir: str) -> dict[str, Any]:
    import pathway as pw
    from pathway.internals.parse_graph import G

    os.environ["PATHWAY_THREADS"] = "1"
    table = paced.load_bids(events_dir, COLUMNS[args.query])
    times = paced.event_ms(table)
    names = COLUMNS[args.query]
    rows = [dict(zip(names, values)) for values in
            zip(*[times if n == "date_time" else table.column(n).to_pylist() for n in names])]
    releaser = paced.Releaser(paced.Schedule(rate, times), times, args.max_lag)

    class PacedSubject(pw.io.python.ConnectorSubject):
        def run(self) -> None:
            def emit(i: int, j: int) -> None:
                for row in rows[i:j]:
                    self.next(**row)

            paced.release_all(releaser, emit)

    types = {"auction": int, "bidder": int, "price": int, "date_time": int, "extra": str}
    schema = pw.schema_from_types(**{n: types[n] for n in names})
    bids = pw.io.python.read(PacedSubject(), schema=schema, autocommit_duration_ms=AUTOCOMMIT_MS)
    result = build(pw, args.query, bids)
    log = paced.LatencyLog()
    windowed = args.query in common.WINDOWED
    digest = common.Digest(args.query) if windowed else None
    stamp_column = "window_end" if windowed else "date_time"
    out_names = [n for n, _ in common.OUTPUT[args.query]]
    changes = {"additions": 0, "retractions": 0}

    def on_change(key: Any, row: dict, time: int, is_addition: bool) -> None:  # Pathway passes keywords
        if is_addition:
            changes["additions"] += 1
            log.record(wall_clock(), [row[stamp_column]])
            if digest is not None:
                digest.add(tuple(row[n] for n in out_names))
        else:
            changes["retractions"] += 1
            if digest is not None:
                digest.remove(tuple(row[n] for n in out_names))

    pw.io.subscribe(result, on_change)
    try:
        pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    finally:
        G.clear()
    out: dict[str, Any] = {"schedule": releaser.schedule, "log": log, "changelog": changes,
                           "rows_out": changes["additions"] - changes["retractions"], **releaser.summary()}
    if digest is not None:
        out["digest"] = digest
    return out


def version() -> str:
    from importlib.metadata import version as v

    return v("pathway")


if __name__ == "__main__":
    raise SystemExit(paced.main("pathway", version, run_rate))
