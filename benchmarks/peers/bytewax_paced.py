"""Bytewax 0.21, paced: a one-partition source releasing the bids on schedule, one worker (``run_main``).

Run with its own venv: ``benchmarks/.venvs/bytewax/bin/python benchmarks/peers/bytewax_paced.py --query q1 ...``
(contract and latency definition: ``paced.py``).

* The source partition holds the bids as Python tuples (converted when it is built, before the schedule
  starts); ``next_batch`` returns the due rows (``[]`` if none) and ``next_awake`` the time the next row is due,
  so Bytewax sleeps until then. The schedule starts at the first ``next_batch``.
* The sink stamps each ``write_batch`` with ``time.time()``.
* q1 is the throughput runner's ``map``. q5 cannot be the throughput runner's dataflow: there the top auction
  per window is a ``fold_final``, which emits at end of input. Here it is one ``fold_window`` over a single
  key with ``SlidingWindower(10 s, 2 s)`` whose accumulator counts bids per auction; when a window closes the
  auction(s) with the top count are emitted. The ``EventClock`` has ``wait_for_system_duration=0`` and a frozen
  ``now_getter`` (``to_system_utc`` returns ``None``): the watermark is the largest event time seen, as in the
  other engines. With the default system clock the watermark also advances with the wall time elapsed since
  the last new timestamp, which assumes event time runs at wall-clock speed; in a replay 1-11x faster any
  millisecond of processing jitter then makes the next bids late (they were dropped in a trial at 20 k/s).
  The q5 output is digested and checked against the reference.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import paced  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = {"q1": ["auction", "bidder", "price", "date_time", "extra"], "q5": ["auction", "date_time"]}


def _source(query: str, events_dir: str, rate: float, max_lag: float, state: dict) -> Any:
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class PacedPartition(StatefulSourcePartition):
        def __init__(self) -> None:
            table = paced.load_bids(events_dir, COLUMNS[query])
            times = paced.event_ms(table)
            if query == "q5":  # (auction, aware datetime), as EventClock needs
                stamps = [EPOCH + timedelta(milliseconds=t) for t in times]
                self.rows = list(zip(table.column("auction").to_pylist(), stamps))
            else:
                cols = [times if c == "date_time" else table.column(c).to_pylist() for c in COLUMNS[query]]
                self.rows = list(zip(*cols))
            self.releaser = state["releaser"] = paced.Releaser(paced.Schedule(rate, times), times, max_lag)

        def next_batch(self) -> list[tuple]:
            i, j = self.releaser.take()
            if j > i:
                return self.rows[i:j]
            if self.releaser.done:
                raise StopIteration
            return []

        def next_awake(self) -> datetime | None:
            due = self.releaser.next_due()
            return None if due is None else datetime.fromtimestamp(due, tz=UTC)

        def snapshot(self) -> int:
            return self.releaser.next

    class PacedFile(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return ["paced"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> PacedPartition:
            return PacedPartition()

    return PacedFile()


def _sink(query: str, log: paced.LatencyLog, digest: common.Digest | None) -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    key = 1 if query == "q5" else 3  # window_end / date_time

    class Stamp(StatelessSinkPartition):
        def write_batch(self, items: list[tuple]) -> None:
            log.record(time.time(), [row[key] for row in items])
            if digest is not None:
                digest.add_all(items)

    class StampSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Stamp:
            return Stamp()

    return StampSink()


def build_flow(query: str, source: Any, sink: Any) -> Any:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators import windowing as win

    flow = Dataflow(f"paced_{query}")
    bids = op.input("in_bid", flow, source)
    if query == "q1":
        out = op.map("q1", bids, lambda b: (b[0], b[1], b[2] * common.Q1_RATE, b[3], b[4]))
    else:
        size, slide = common.Q5_SIZE_MS, common.Q5_SLIDE_MS
        keyed = op.key_on("all", bids, lambda b: "all")

        def count(acc: dict, bid: tuple) -> dict:
            acc[bid[0]] = acc.get(bid[0], 0) + 1
            return acc

        def merge(a: dict, b: dict) -> dict:
            for k, n in b.items():
                a[k] = a.get(k, 0) + n
            return a

        # The watermark is the largest event time seen: the "system" clock is frozen, so it does not advance the
        # watermark, and windows close on items or at EOF (to_system_utc -> None: no timer wake-ups).
        clock = win.EventClock(lambda b: b[1], wait_for_system_duration=timedelta(0), now_getter=lambda: EPOCH,
                               to_system_utc=lambda ts: None)
        counts = win.fold_window(
            "counts", keyed, clock,
            win.SlidingWindower(length=timedelta(milliseconds=size), offset=timedelta(milliseconds=slide),
                                align_to=EPOCH),
            dict, count, merge, ordered=False)

        def top(kv: tuple) -> list:
            window_id, acc = kv[1]
            start = int(window_id) * slide
            best = max(acc.values())
            return [(start, start + size, a, n) for a, n in acc.items() if n == best]

        out = op.flat_map("q5", counts.down, top)
    op.output("out", out, sink)
    return flow


def run_rate(args: Any, rate: float, events_dir: str) -> dict[str, Any]:
    from bytewax.testing import run_main

    state: dict[str, Any] = {}
    log = paced.LatencyLog()
    digest = common.Digest(args.query) if args.query in common.WINDOWED else None
    flow = build_flow(args.query, _source(args.query, events_dir, rate, args.max_lag, state),
                      _sink(args.query, log, digest))
    run_main(flow)
    releaser: paced.Releaser = state["releaser"]
    out: dict[str, Any] = {"schedule": releaser.schedule, "log": log, **releaser.summary()}
    if digest is not None:
        out["digest"] = digest
        out["rows_out"] = digest.rows
    return out


def version() -> str:
    from importlib.metadata import version as v

    return v("bytewax")


if __name__ == "__main__":
    raise SystemExit(paced.main("bytewax", version, run_rate))
