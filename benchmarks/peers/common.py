"""Shared by every runner under ``benchmarks/peers/``: query output schemas, the result digest, the process-tree
RSS monitor and the command line / JSON contract. Standard library only, so each engine's own virtualenv can
import it (the runners add this folder to ``sys.path``).

Contract of a runner::

    <venv>/bin/python benchmarks/peers/<engine>_runner.py --query q5 --events-dir DIR --parallelism 2 \
        --out result.json [--verify] [--dump rows.txt]

* without ``--verify`` (the *timed* run) the query writes to the engine's discarding sink (counting rows where
  the engine lets it), and ``result_digest`` is ``null``;
* with ``--verify`` (the *verification* run, not timed for the report) the output is collected and reduced to
  ``result_digest`` / ``result_rows``; ``--dump`` also writes the canonical rows, sorted, for diffing.

The **digest** is a canonical hash of the output as a multiset of rows: each row is encoded canonically
(:func:`canonical_line`: ints as decimal, floats rounded to 6 significant digits (``%.6g``), printable
strings as they are (others JSON-quoted), timestamps as integer milliseconds since the epoch, UTC, columns
joined by ``\x1f``), hashed with BLAKE2b-128, and the hashes are added
modulo 2**128. The sum does not depend on row order, so it equals (up to hash collisions) a hash of the sorted
rows, but it streams in O(1) memory and partial digests of several processes add up (:class:`Digest`).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Iterable

PROCESS_START = time.perf_counter()  # as early as the runner imports this module: "total" time starts here

QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8")
WINDOWED = ("q5", "q7", "q8")

# Output columns of each query, in order, with their canonical kinds ("int", "float", "str", "ts").
OUTPUT: dict[str, list[tuple[str, str]]] = {
    "q0": [("auction", "int"), ("bidder", "int"), ("price", "int"), ("channel", "str"), ("url", "str"),
           ("date_time", "ts"), ("extra", "str")],
    "q1": [("auction", "int"), ("bidder", "int"), ("price", "float"), ("date_time", "ts"), ("extra", "str")],
    "q2": [("auction", "int"), ("price", "int")],
    "q5": [("window_start", "ts"), ("window_end", "ts"), ("auction", "int"), ("num", "int")],
    "q7": [("window_start", "ts"), ("window_end", "ts"), ("auction", "int"), ("bidder", "int"), ("price", "int")],
    "q8": [("window_start", "ts"), ("id", "int"), ("name", "str")],
}

# Input tables and columns each query reads; ``events`` in the results = rows of these tables.
INPUT: dict[str, dict[str, list[str]]] = {
    "q0": {"bid": ["auction", "bidder", "price", "channel", "url", "date_time", "extra"]},
    "q1": {"bid": ["auction", "bidder", "price", "date_time", "extra"]},
    "q2": {"bid": ["auction", "price"]},
    "q5": {"bid": ["auction", "date_time"]},
    "q7": {"bid": ["auction", "bidder", "price", "date_time"]},
    "q8": {"person": ["id", "name", "date_time"], "auction": ["seller", "date_time"]},
}

# Window parameters (milliseconds), aligned to the Unix epoch.
Q5_SIZE_MS, Q5_SLIDE_MS = 10_000, 2_000
Q7_SIZE_MS = 10_000
Q8_SIZE_MS = 10_000
Q1_RATE = 0.908
Q2_MODULUS = 123

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MASK = (1 << 128) - 1


# ------------------------------------------------------------------------------------------------ the digest
def ts_ms(value: Any) -> int:
    """Milliseconds since the epoch of an int (already ms), a ``datetime`` (naive = UTC), a pandas or numpy
    timestamp; raises on anything else so a wrong type fails loudly instead of hashing differently."""
    if isinstance(value, bool):
        raise TypeError(f"timestamp expected, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return calendar.timegm(value.timetuple()) * 1000 + value.microsecond // 1000
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return ts_ms(value.to_pydatetime())
    if type(value).__name__ == "datetime64":  # numpy.datetime64
        return int(value.astype("datetime64[ms]").astype("int64"))
    if hasattr(value, "item"):  # numpy integer
        return int(value.item())
    raise TypeError(f"timestamp expected, got {type(value).__name__} {value!r}")


def _encode(kind: str, value: Any) -> str:
    """The canonical text of one value (the slow, general path; :func:`_encode_column` is the fast one)."""
    if value is None:
        return "null"
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise TypeError(f"integer expected, got {value!r}")
        return str(int(value))
    if kind == "float":
        return "%.6g" % float(value)
    if kind == "str":
        value = str(value)
        return value if value.isprintable() else json.dumps(value)
    if kind == "ts":
        return str(ts_ms(value))
    raise ValueError(kind)


def _encode_column(kind: str, values: list[Any]) -> list[str]:
    """``[_encode(kind, v) for v in values]``, with fast paths for the common Python types."""
    if kind in ("int", "ts"):
        return [str(v) if type(v) is int else _encode(kind, v) for v in values]
    if kind == "float":
        return ["%.6g" % v if type(v) is float else _encode(kind, v) for v in values]
    if kind == "str":
        return [v if type(v) is str and v.isprintable() else _encode(kind, v) for v in values]
    raise ValueError(kind)


def canonical_line(query: str, row: Iterable[Any]) -> str:
    """The canonical text of one output row given in the column order of ``OUTPUT[query]``."""
    kinds = OUTPUT[query]
    values = list(row)
    if len(values) != len(kinds):
        raise ValueError(f"{query}: expected {len(kinds)} columns {[c for c, _ in kinds]}, got {values!r}")
    return "\x1f".join(_encode(kind, v) for (_, kind), v in zip(kinds, values))


class Digest:
    """Order-independent digest of a multiset of rows; ``add`` rows, ``merge`` partial digests.

    Rows are buffered and encoded column by column (:func:`_encode_column`), ~1-2 us a row.
    """

    FLUSH = 65_536

    def __init__(self, query: str, dump: str | None = None) -> None:
        self.query = query
        self.kinds = [kind for _, kind in OUTPUT[query]]
        self.names = [name for name, _ in OUTPUT[query]]
        self._rows = 0
        self._total = 0
        self._buffer: list[tuple] = []
        self._removed: list[tuple] = []
        self._dump: list[str] | None = [] if dump else None
        self._dump_path = dump

    def add(self, row: tuple) -> None:
        """One row, in the column order of ``OUTPUT[query]``."""
        self._buffer.append(row)
        if len(self._buffer) >= self.FLUSH:
            self._flush()

    def add_all(self, rows: Iterable[tuple]) -> None:
        for row in rows:
            self.add(row)

    def remove(self, row: tuple) -> None:
        """Retract one row added before (for engines whose output is a changelog, e.g. Pathway's)."""
        self._removed.append(row)
        if len(self._removed) >= self.FLUSH:
            self._flush()

    def add_columns(self, columns: dict[str, list[Any]]) -> None:
        """Rows given as ``{column: values}`` holding (at least) the query's output columns."""
        missing = [n for n in self.names if n not in columns]
        if missing:
            raise ValueError(f"{self.query}: output lacks columns {missing}; it has {sorted(columns)}")
        self._flush()
        self._add_encoded([_encode_column(k, list(columns[n])) for n, k in zip(self.names, self.kinds)])

    def add_arrow(self, table: Any) -> None:
        """A pyarrow Table or RecordBatch holding the query's output columns (timestamps become int ms)."""
        import pyarrow as pa

        cols = {}
        for name in self.names:
            if name not in table.column_names:
                raise ValueError(f"{self.query}: output lacks column {name!r}; it has {table.column_names}")
            col = table.column(name)
            if pa.types.is_timestamp(col.type):
                col = col.cast(pa.timestamp("ms", col.type.tz)).cast(pa.int64())
            cols[name] = col.to_pylist()
        self.add_columns(cols)

    def _flush(self) -> None:
        for sign, rows in ((1, self._buffer), (-1, self._removed)):
            if not rows:
                continue
            width = len(self.kinds)
            for row in rows:
                if len(row) != width:
                    raise ValueError(f"{self.query}: expected {width} columns {self.names}, got {row!r}")
            columns = list(zip(*rows))
            self._add_encoded([_encode_column(k, list(c)) for k, c in zip(self.kinds, columns)], sign)
        self._buffer, self._removed = [], []

    def _add_encoded(self, encoded: list[list[str]], sign: int = 1) -> None:
        blake, frombytes, total, n = hashlib.blake2b, int.from_bytes, 0, 0
        for line in map("\x1f".join, zip(*encoded)):
            total += frombytes(blake(line.encode(), digest_size=16).digest(), "big")
            n += 1
            if self._dump is not None:
                if sign > 0:
                    self._dump.append(line)
                else:
                    self._dump.remove(line)
        self._total = (self._total + sign * total) & _MASK
        self._rows += sign * n

    @property
    def rows(self) -> int:
        self._flush()
        return self._rows

    def merge(self, partial: dict[str, Any]) -> None:
        self._flush()
        self._rows += int(partial["rows"])
        self._total = (self._total + int(partial["sum"], 16)) & _MASK
        self._dump_extra = getattr(self, "_dump_extra", []) + list(partial.get("lines", []))

    def partial(self, with_lines: bool = False) -> dict[str, Any]:
        self._flush()
        out: dict[str, Any] = {"rows": self._rows, "sum": format(self._total, "032x")}
        if with_lines and self._dump is not None:
            out["lines"] = self._dump
        return out

    def hexdigest(self) -> str:
        self._flush()
        return hashlib.sha256(f"{self.query}:{self._rows}:{self._total:032x}".encode()).hexdigest()[:32]

    def write_dump(self) -> None:
        self._flush()
        if self._dump is None or self._dump_path is None:
            return
        lines = sorted([*self._dump, *getattr(self, "_dump_extra", [])])
        Path(self._dump_path).write_text("\n".join(lines) + ("\n" if lines else ""))


# ------------------------------------------------------------------------------------- peak RSS of the tree
_CPU_TICKS: dict[int, int] = {}  # pid -> utime + stime (clock ticks) at the last scan of /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        _CPU_TICKS[int(entry)] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return children


def tree_pids(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


class TreeRssMonitor:
    """Samples the summed RSS of a process and all its descendants (Ray daemons and workers, Flink's JVM,
    Bytewax worker processes...) every ``interval`` s from a daemon thread; ``peak_mb`` is the largest sum seen.
    It also keeps each descendant's CPU time (user + system) as last seen: :meth:`cpu_s`.

    Sampling can miss a spike shorter than the interval, and the CPU a process spends after its last sample
    before it exits; the descendants' list is refreshed every sample.
    """

    def __init__(self, root: int | None = None, interval: float = 0.1) -> None:
        self.root = root or os.getpid()
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self.cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-monitor", daemon=True)

    def start(self) -> TreeRssMonitor:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        pids = tree_pids(self.root)
        total = sum(_rss_kb(pid) for pid in pids)
        for pid in pids:
            self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), _CPU_TICKS.get(pid, 0))
        self.samples += 1
        self.peak_kb = max(self.peak_kb, total)

    def cpu_s(self, since: dict[int, int] | None = None) -> float:
        """CPU seconds of the tree (minus a ``dict(self.cpu_ticks)`` taken earlier, if given)."""
        since = since or {}
        ticks = sum(t - since.get(pid, 0) for pid, t in self.cpu_ticks.items())
        return ticks / os.sysconf("SC_CLK_TCK")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a vanished process must not kill the benchmark
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


# ----------------------------------------------------------------------------------------- the CLI contract
def manifest(events_dir: str) -> dict[str, Any]:
    return json.loads(Path(events_dir, "manifest.json").read_text())


def table_path(events_dir: str, table: str) -> str:
    """Directory of ``table``'s Parquet files (``<events_dir>/<table>.parquet/part-*.parquet``)."""
    return str(Path(events_dir, f"{table}.parquet").resolve())


def table_files(events_dir: str, table: str) -> list[str]:
    return sorted(str(p) for p in Path(table_path(events_dir, table)).glob("part-*.parquet"))


def input_rows(events_dir: str, query: str) -> int:
    rows = manifest(events_dir)["rows"]
    return sum(rows[t] for t in INPUT[query])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--query", required=True, choices=QUERIES)
    p.add_argument("--events-dir", required=True)
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--verify", action="store_true", help="collect the output and compute its digest")
    p.add_argument("--dump", default=None, help="with --verify: also write the canonical rows, sorted, here")
    return p.parse_args(argv)


RunFn = Callable[[argparse.Namespace], dict[str, Any]]


def main(engine: str, version: Callable[[], str], run: RunFn, argv: list[str] | None = None) -> int:
    """Parse the arguments, run ``run(args)`` under the RSS monitor and write the result JSON.

    ``run`` returns at least ``elapsed_s`` (the query, without the engine's start-up where separable) and, in
    verify mode, ``digest`` (a :class:`Digest`); optional: ``startup_s``, ``result_rows``, ``skipped``, extras.
    """
    args = parse_args(argv)
    events = input_rows(args.events_dir, args.query)
    base: dict[str, Any] = {
        "engine": engine, "version": version(), "query": args.query, "parallelism": args.parallelism,
        "events": events, "sequence_events": manifest(args.events_dir)["events"],
        "mode": "verify" if args.verify else "timed",
    }
    monitor = TreeRssMonitor().start()
    try:
        out = run(args)
    except SkipQuery as skip:
        monitor.stop()
        base["skipped"] = str(skip)
        _write(args.out, base)
        return 0
    total = time.perf_counter() - PROCESS_START
    peak = monitor.stop()
    digest: Digest | None = out.pop("digest", None)
    elapsed = out.pop("elapsed_s")
    result = {
        **base,
        "elapsed_s": elapsed,
        "events_per_second": events / elapsed if elapsed > 0 else None,
        "startup_s": out.pop("startup_s", None),
        "total_s": total,
        "events_per_second_total": events / total,
        "peak_rss_mb": peak,
        "cpu_s": monitor.cpu_s(),
        "result_digest": digest.hexdigest() if digest is not None else None,
        "result_rows": digest.rows if digest is not None else out.pop("result_rows", None),
        **out,
    }
    if digest is not None:
        digest.write_dump()
    _write(args.out, result)
    return 0


class SkipQuery(Exception):
    """Raised by a runner for a query its engine cannot express; the message is the reason."""


def _write(path: str, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)
