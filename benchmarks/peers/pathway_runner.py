"""Pathway: the Nexmark queries with Pathway's table API (Rust engine, differential dataflow).

Run with its own venv: ``benchmarks/.venvs/pathway/bin/python benchmarks/peers/pathway_runner.py --query q5 ...``.

* Input. Pathway's connectors that read Parquet (Delta Lake, Iceberg) need a Pathway licence key (free, but
  only from pathway.com after signing up, which this machine cannot reach): ``pw.io.deltalake.read`` fails
  with "the feature(s) you used ["DELTALAKE"] require a Pathway license key". So by default
  (``PATHWAY_INPUT=csv``) the runner converts the materialised Parquet files once, untimed, into CSV files
  next to them (``<events dir>/pathway-csv/<table>-<columns>/part-*.csv``: only the query's columns, as the
  other engines' Parquet readers decode only those; ``date_time`` as integer ms) and reads those
  with Pathway's native Rust reader ``pw.io.csv.read(mode="static")``: the same events, generation and
  conversion excluded. ``PATHWAY_INPUT=python`` instead reads the Parquet files themselves with pyarrow inside
  a ``pw.io.python.ConnectorSubject`` that pushes one row at a time (slower: ~140 k vs ~235 k bids/s for q1
  at 1 M events on this machine).
* Parallelism: ``PATHWAY_THREADS = --parallelism`` (worker threads of one process; Pathway's operators run in
  Rust, outside the GIL).
* Event time is the integer ``date_time`` (ms since the epoch); windows are ``pw.temporal.sliding`` /
  ``tumbling`` with ``origin=0`` (aligned to the epoch), with the default behaviour: results of a window are
  updated as its rows arrive; the verification sink applies the changelog (``is_addition`` false retracts a
  row), so the digest is over the final window results.
  - q5: ``windowby(sliding 10 s / 2 s, instance=auction).reduce(count)``, the max count per window by
    ``groupby(window).reduce(max)``, joined back on (window, count).
  - q7: ``windowby(tumbling 10 s).reduce(max(price))`` joined with the bids on (window start, price).
  - q8: persons and auctions each ``windowby(tumbling 10 s, instance=id / seller)``, joined on (window, id).

Timing: ``startup_s`` is importing Pathway and building the graph; ``elapsed_s`` is ``pw.run()``. The timed run
writes to ``pw.io.null.write``; the verification run uses ``pw.io.subscribe`` feeding the digest.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

CSV_FORMAT = 3


def _csv_dir(events_dir: str, table: str, columns: list[str]) -> str:
    """Convert ``columns`` of ``table``'s Parquet files to CSV once (``date_time`` as int ms); reuse after.

    Only the query's columns are written, as the other engines' Parquet readers decode only those.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    root = Path(events_dir, "pathway-csv")
    out = root / f"{table}-{'+'.join(columns)}"
    stamp = out / f".complete-v{CSV_FORMAT}"
    if stamp.exists():
        return str(out)
    staging = root / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in common.table_files(events_dir, table):
        reader = pq.ParquetFile(path)
        target = staging / (Path(path).stem + ".csv")
        writer = None
        for batch in reader.iter_batches(batch_size=65_536, columns=columns):
            cols = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
            batch = pa.RecordBatch.from_arrays(cols, names=[_name(table, n) for n in batch.schema.names])
            if writer is None:
                writer = pacsv.CSVWriter(str(target), batch.schema)
            writer.write_batch(batch)
        if writer is not None:
            writer.close()
    (staging / f".complete-v{CSV_FORMAT}").touch()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return str(out)


# ``id`` is Pathway's row-key column, so the tables' ``id`` columns are read as ``<table>_id``.
def _name(table: str, column: str) -> str:
    return f"{table}_id" if column == "id" else column


def _schema(pw: Any, table: str, columns: list[str]) -> Any:
    types = {"auction": int, "bidder": int, "price": int, "channel": str, "url": str, "date_time": int,
             "extra": str, "id": int, "name": str, "seller": int}
    return pw.schema_from_types(**{_name(table, c): types[c] for c in columns})


def _read(pw: Any, events_dir: str, table: str, columns: list[str]) -> Any:
    schema = _schema(pw, table, columns)
    if os.environ.get("PATHWAY_INPUT", "csv") == "python":
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = common.table_files(events_dir, table)
        names = [_name(table, c) for c in columns]

        class ParquetSubject(pw.io.python.ConnectorSubject):
            def run(self) -> None:
                for path in files:
                    for batch in pq.ParquetFile(path).iter_batches(65_536, columns=columns, use_threads=False):
                        cols = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
                        for values in zip(*(c.to_pylist() for c in cols)):
                            self.next(**dict(zip(names, values)))

        return pw.io.python.read(ParquetSubject(), schema=schema)
    return pw.io.csv.read(_csv_dir(events_dir, table, columns), schema=schema, mode="static")


def build(pw: Any, query: str, events_dir: str) -> Any:
    t = {table: _read(pw, events_dir, table, cols) for table, cols in common.INPUT[query].items()}
    this = pw.this
    if query == "q0":
        return t["bid"]
    if query == "q1":
        b = t["bid"]
        return b.select(b.auction, b.bidder, price=b.price * common.Q1_RATE, date_time=b.date_time, extra=b.extra)
    if query == "q2":
        b = t["bid"]
        return b.filter(b.auction % common.Q2_MODULUS == 0).select(pw.this.auction, pw.this.price)
    if query == "q5":
        b = t["bid"]
        counts = b.windowby(b.date_time, window=pw.temporal.sliding(hop=common.Q5_SLIDE_MS,
                                                                    duration=common.Q5_SIZE_MS, origin=0),
                            instance=b.auction).reduce(
            auction=this._pw_instance, window_start=this._pw_window_start, window_end=this._pw_window_end,
            num=pw.reducers.count())
        maxes = counts.groupby(counts.window_start).reduce(counts.window_start, maxn=pw.reducers.max(counts.num))
        return counts.join(maxes, counts.window_start == maxes.window_start, counts.num == maxes.maxn).select(
            counts.window_start, counts.window_end, counts.auction, counts.num)
    if query == "q7":
        b = t["bid"]
        size = common.Q7_SIZE_MS
        maxes = b.windowby(b.date_time, window=pw.temporal.tumbling(duration=size, origin=0)).reduce(
            window_start=this._pw_window_start, window_end=this._pw_window_end, maxprice=pw.reducers.max(this.price))
        bids = b.select(b.auction, b.bidder, b.price, window_start=b.date_time // size * size)
        return bids.join(maxes, bids.window_start == maxes.window_start, bids.price == maxes.maxprice).select(
            maxes.window_start, maxes.window_end, bids.auction, bids.bidder, bids.price)
    if query == "q8":
        size = common.Q8_SIZE_MS
        window = pw.temporal.tumbling(duration=size, origin=0)
        p, a = t["person"], t["auction"]
        persons = p.windowby(p.date_time, window=window, instance=p.person_id).reduce(
            person_id=this._pw_instance, window_start=this._pw_window_start, name=pw.reducers.any(this.name))
        sellers = a.windowby(a.date_time, window=window, instance=a.seller).reduce(
            seller=this._pw_instance, window_start=this._pw_window_start)
        return persons.join(sellers, persons.person_id == sellers.seller,
                            persons.window_start == sellers.window_start).select(
            persons.window_start, persons.person_id, persons.name)
    raise ValueError(query)


def run(args: Any) -> dict[str, Any]:
    os.environ["PATHWAY_THREADS"] = str(args.parallelism)
    started = time.perf_counter()
    for table, columns in common.INPUT[args.query].items():  # untimed: the one-off Parquet -> CSV conversion
        if os.environ.get("PATHWAY_INPUT", "csv") == "csv":
            _csv_dir(args.events_dir, table, columns)
    convert = time.perf_counter() - started
    started = time.perf_counter()
    import pathway as pw

    result = build(pw, args.query, args.events_dir)
    names = ["person_id" if n == "id" else n for n, _ in common.OUTPUT[args.query]]
    digest = common.Digest(args.query, args.dump) if args.verify else None
    changes = {"additions": 0, "retractions": 0}
    if digest is not None:
        def on_change(key: Any, row: dict, time: int, is_addition: bool) -> None:
            values = tuple(row[n] for n in names)
            if is_addition:
                changes["additions"] += 1
                digest.add(values)
            else:
                changes["retractions"] += 1
                digest.remove(values)

        pw.io.subscribe(result, on_change)
    else:
        pw.io.null.write(result)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {"elapsed_s": elapsed, "startup_s": startup, "csv_conversion_s": convert,
                           "input": os.environ.get("PATHWAY_INPUT", "csv")}
    if digest is not None:
        out["digest"] = digest
        out["changelog"] = changes
    return out


def version() -> str:
    from importlib.metadata import version as v

    return v("pathway")


if __name__ == "__main__":
    raise SystemExit(common.main("pathway", version, run))
