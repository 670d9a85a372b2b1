r"""Shared by the paced (latency) runners ``benchmarks/peers/<engine>_paced.py``: the release schedule, the latency
log and the command line / JSON contract. Standard library (plus pyarrow to decode Parquet), so every engine's
virtualenv can import it.

Contract of a paced runner::

    <venv>/bin/python benchmarks/peers/<engine>_paced.py --runs q1:10000:DIR1,q1:50000:DIR2,q5:10000:DIR1 \
        --out result.json [--max-lag 5]

Each ``QUERY:RATE:DIR`` is one paced run, in order, in this one process (the engine starts once): the bids of
the materialised events in ``DIR`` (``benchmarks/materialize.py``; sized by the caller to ``rate x seconds``
bids) are released at ``RATE`` bids/s and go through the query to a sink that records when each output row
was written.

**The schedule.** The events are replayed in event-time order, faster than event time by the factor that makes
the bids arrive at ``RATE`` per second: a bid with event time ``t`` (ms) is due at wall time
``t0 + (t - first) / speed`` (:class:`Schedule`), ``t0`` being the moment the source first runs. A source never
releases a row before it is due; it releases all due rows together (so rows sharing a millisecond of event time
go out at once, ~9 bids at the generator's 9,200 bids per second of event time).

**Latency** of an output row = the wall time its sink received it minus the time its input was *due* (not the
time it was actually read): a source that falls behind shows up as latency, not as a lower rate (no coordinated
omission). Both times are ``time.time()`` of this machine, so they compare across processes.

* q0/q1 (one output row per bid): the due time of the row's own ``date_time``.
* windowed queries: a window ``[start, end)`` is complete when the first event at or after ``end`` is
  released, which is not before ``due(end)``; the latency of a result row is its write time minus
  ``due(window_end)``: watermark propagation, window evaluation and output, *not* the window's length. Windows
  that end after the last input event are flushed at end of input and are left out.

If the source falls more than ``--max-lag`` seconds behind its schedule the run stops releasing rows and is
marked ``saturated``; so is a run whose p99 latency exceeds ``--max-lag`` (a push-style source, e.g. Pathway's
connector thread, buffers instead of falling behind). Its figures describe an overloaded engine, and the same
query is not run at higher rates in that process (recorded as ``skipped``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import common

PACED_QUERIES = ("q1", "q5")  # one stateless, one windowed query


# ------------------------------------------------------------------------------------------------ the input
def load_bids(events_dir: str, columns: Sequence[str]) -> Any:
    """All bids of ``events_dir`` (files in order) as one pyarrow Table with ``columns``, sorted by event time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, columns=list(columns)) for path in common.table_files(events_dir, "bid")]
    table = pa.concat_tables(tables).combine_chunks()
    return table


def event_ms(table: Any) -> list[int]:
    """``date_time`` of every row as integer milliseconds."""
    import pyarrow as pa

    col = table.column("date_time")
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("ms")).cast(pa.int64())
    values = col.to_pylist()
    if any(b < a for a, b in zip(values, values[1:])):
        raise SystemExit("paced: the bids are not in event-time order")
    return values


class Schedule:
    """When each event-time millisecond is due, for a replay at ``rate`` rows per second."""

    def __init__(self, rate: float, times_ms: Sequence[int]) -> None:
        if not times_ms:
            raise SystemExit("paced: no input rows")
        self.rate = float(rate)
        self.first_ms = times_ms[0]
        self.last_ms = times_ms[-1]
        span_s = max(1e-3, (times_ms[-1] - times_ms[0]) / 1000)
        # event-time milliseconds per wall-clock second that release `rate` rows per second on average
        self.speed = self.rate / (len(times_ms) / span_s) * 1000
        self.t0: float | None = None

    def start(self, t0: float | None = None) -> float:
        self.t0 = time.time() if t0 is None else t0
        return self.t0

    def to_dict(self) -> dict[str, float | None]:
        return {"rate": self.rate, "first_ms": self.first_ms, "last_ms": self.last_ms, "speed": self.speed,
                "t0": self.t0}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        schedule = cls.__new__(cls)
        schedule.rate, schedule.first_ms, schedule.last_ms = data["rate"], data["first_ms"], data["last_ms"]
        schedule.speed, schedule.t0 = data["speed"], data["t0"]
        return schedule

    def due_ms(self, now: float) -> float:
        assert self.t0 is not None
        return self.first_ms + (now - self.t0) * self.speed

    def due_time(self, t_ms: float) -> float:
        assert self.t0 is not None
        return self.t0 + (t_ms - self.first_ms) / self.speed


class Releaser:
    """Walks the sorted event times: which rows are due now, when the next one is, and whether we fell behind."""

    def __init__(self, schedule: Schedule, times_ms: Sequence[int], max_lag: float) -> None:
        self.schedule = schedule
        self.times = times_ms
        self.max_lag = max_lag
        self.next = 0
        self.saturated_at: float | None = None
        self.finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.next >= len(self.times) or self.saturated_at is not None

    def take(self, now: float | None = None) -> tuple[int, int]:
        """Rows ``[i, j)`` due now (``i == j``: none); starts the schedule on the first call."""
        if self.schedule.t0 is None:
            self.schedule.start()
        now = time.time() if now is None else now
        i = self.next
        if self.done:
            return i, i
        lag = now - self.schedule.due_time(self.times[i])
        if lag > self.max_lag:
            self.saturated_at = now
            return i, i
        j = bisect.bisect_right(self.times, self.schedule.due_ms(now), i)
        self.next = j
        if j >= len(self.times):
            self.finished_at = now
        return i, j

    def next_due(self) -> float | None:
        """Wall time the next row is due (``None`` when done)."""
        if self.done or self.schedule.t0 is None:
            return None
        return self.schedule.due_time(self.times[self.next])

    def wait(self) -> None:
        due = self.next_due()
        if due is not None:
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)

    def summary(self) -> dict[str, Any]:
        t0 = self.schedule.t0 or 0.0
        end = self.saturated_at or self.finished_at or time.time()
        return {"rows_released": self.next, "rows_total": len(self.times),
                "release_s": end - t0, "achieved_rate": self.next / (end - t0) if end > t0 else None,
                "saturated": self.saturated_at is not None}


def release_all(releaser: Releaser, emit: Callable[[int, int], None]) -> None:
    """For push-style sources: release every due slice with ``emit(i, j)``, sleeping until the next is due."""
    while not releaser.done:
        i, j = releaser.take()
        if j > i:
            emit(i, j)
        elif not releaser.done:
            releaser.wait()


# ------------------------------------------------------------------------------------------- the latency log
class LatencyLog:
    """Write times of output rows and the event time (ms) each is measured from; cheap to append."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, list[int]]] = []

    def record(self, written: float, keys: list[int]) -> None:
        if keys:
            self.chunks.append((written, keys))

    def extend(self, pairs: list[tuple[float, list[int]]]) -> None:
        self.chunks.extend(pairs)

    @property
    def rows(self) -> int:
        return sum(len(k) for _, k in self.chunks)

    def latencies_ms(self, schedule: Schedule, windowed: bool) -> list[float]:
        out: list[float] = []
        t0, first, speed = schedule.t0, schedule.first_ms, schedule.speed
        assert t0 is not None
        for written, keys in self.chunks:
            for k in keys:
                if windowed and k > schedule.last_ms:
                    continue  # flushed at end of input, not fired by event time
                out.append((written - (t0 + (k - first) / speed)) * 1000)
        return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50 / p99 / p99.9 / max and the mean of ``values`` (ms); ``n`` samples."""
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "p99_9_ms": None, "max_ms": None, "mean_ms": None}
    values = sorted(values)
    n = len(values)

    def rank(p: float) -> float:
        return values[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]

    return {"n": n, "p50_ms": rank(50), "p99_ms": rank(99), "p99_9_ms": rank(99.9), "max_ms": values[-1],
            "mean_ms": sum(values) / n}


# ------------------------------------------------------------------------------------------ the CLI contract
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", required=True, help="QUERY:RATE:EVENTS_DIR[,...], run in this order")
    p.add_argument("--out", required=True)
    p.add_argument("--max-lag", type=float, default=5.0, help="seconds behind schedule before giving up")
    args = p.parse_args(argv)
    spec, args.runs = args.runs, []
    for item in spec.split(","):
        query, rate, directory = item.split(":", 2)
        if query not in PACED_QUERIES:
            p.error(f"query {query!r} is not paced; use one of {PACED_QUERIES}")
        args.runs.append((query, float(rate), directory))
    return args


#: ``run_rate(args, rate, events_dir) -> dict`` (``args.query`` is set) with ``schedule`` (a started
#: :class:`Schedule`), ``log`` (a :class:`LatencyLog`), the ``Releaser.summary`` fields, ``rows_out``, and
#: for windowed queries ``digest`` (a :class:`common.Digest` of the output).
RateFn = Callable[[argparse.Namespace, float, str], dict[str, Any]]


def main(engine: str, version: Callable[[], str], run_rate: RateFn, setup: Callable[[], Any] | None = None,
         teardown: Callable[[], Any] | None = None, argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    monitor = common.TreeRssMonitor().start()
    results = []
    if setup is not None:
        setup()
    saturated_at: dict[str, float] = {}
    try:
        for query, rate, events_dir in args.runs:
            if query in saturated_at and rate > saturated_at[query]:
                results.append({"query": query, "rate": rate, "events_dir": events_dir,
                                "skipped": f"not run: saturated at {saturated_at[query]:,.0f}/s"})
                continue
            args.query = query
            windowed = query in common.WINDOWED
            started = time.perf_counter()
            out = run_rate(args, rate, events_dir)
            schedule: Schedule = out.pop("schedule")
            log: LatencyLog = out.pop("log")
            digest = out.pop("digest", None)
            entry = {
                "query": query, "rate": rate, "events_dir": events_dir,
                "rows_in": common.input_rows(events_dir, query),
                "rows_out": out.pop("rows_out", log.rows), "run_s": time.perf_counter() - started,
                "latency_ms": percentiles(log.latencies_ms(schedule, windowed)),
                "result_digest": digest.hexdigest() if digest is not None else None, **out,
            }
            entry["latency_rows"] = entry["latency_ms"].pop("n")
            worst = entry["latency_ms"]["p99_ms"]
            if worst is not None and worst > args.max_lag * 1000:  # a push-style source cannot see the backlog
                entry["saturated"] = True
            if entry.get("saturated"):
                saturated_at[query] = min(rate, saturated_at.get(query, rate))
            results.append(entry)
            lat = entry["latency_ms"]
            common.log(f"{engine} {query} @ {rate:,.0f}/s: p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms "
                       f"({entry['latency_rows']} samples, saturated={entry.get('saturated')})")
    finally:
        if teardown is not None:
            teardown()
    data = {"engine": engine, "version": version(), "parallelism": 1, "mode": "paced",
            "max_lag_s": args.max_lag, "runs": results, "peak_rss_mb": monitor.stop()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{args.out}.tmp"
    Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, args.out)
    return 0


def key_column(query: str) -> str:
    """The column a query's output row is timed by: its ``date_time`` or its window's end."""
    return "window_end" if query in common.WINDOWED else "date_time"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)
