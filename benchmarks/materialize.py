"""Write the Nexmark events of one ``(events, seed)`` once, as Parquet, for every engine of the comparison.

    .venv/bin/python benchmarks/materialize.py --events 5000000 --seed 0      # prints the directory

Layout (reused as is when ``manifest.json`` is present and matches)::

    benchmarks/results/tmp/events-<events>-<seed>/
        manifest.json                       events, seed, files, row counts, event-time span
        bid.parquet/part-00000.parquet ...  the bid rows of the sequence, in event order, split in ``files``
        auction.parquet/part-0000k.parquet  contiguous parts (part k holds the k-th slice of the table)
        person.parquet/...

``events`` is the length of the generator's ONE global event sequence (``NexmarkSource(events=N)``): 92 % of
it are bids, 6 % auctions, 2 % persons, with the same rows the Headwater source yields for that seed (it is
the same generator). Every table is split into ``files`` Parquet files (default 4) so that every engine can
read a table with parallelism 1, 2 or 4 (Headwater's ``ParquetSource`` and Flink's file source parallelise by
file). Row groups hold 131,072 rows; columns use Parquet's default (Snappy, dictionary) encoding; ``date_time``
is ``timestamp[ms]`` without a time zone (values are UTC).

Generation is therefore outside every engine's timed run: all of them read these files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headwater.sources.base import drain  # noqa: E402
from headwater.sources.nexmark import _KIND_OFFSETS, PROPORTION_DENOMINATOR, NexmarkSource  # noqa: E402

TABLES = ("bid", "auction", "person")
ROW_GROUP = 131_072
FORMAT_VERSION = 1  # bump when the layout changes, so stale directories are rewritten


def default_dir(events: int, seed: int) -> Path:
    return ROOT / "benchmarks" / "results" / "tmp" / f"events-{events}-{seed}"


def table_rows(table: str, events: int) -> int:
    """Rows of ``table`` among the events ``0..events-1``."""
    kinds = _KIND_OFFSETS[table]
    full, rest = divmod(events, PROPORTION_DENOMINATOR)
    return full * len(kinds) + sum(1 for r in kinds if r < rest)


def _write_table(table: str, events: int, seed: int, files: int, out: Path) -> dict[str, Any]:
    total = table_rows(table, events)
    bounds = [total * k // files for k in range(files + 1)]  # part k holds rows bounds[k]..bounds[k+1]-1
    directory = out / f"{table}.parquet"
    directory.mkdir(parents=True)
    source = NexmarkSource(table, events=events, seed=seed, partitions=1, batch_size=ROW_GROUP)
    partition = source.build_part(source.list_parts()[0], None)
    part, written, writer = 0, 0, None
    first_ms = last_ms = None
    try:
        for batch in drain(partition):
            if batch is None or batch.num_rows == 0:
                continue
            times = batch.column("date_time").cast(pa.int64())
            first_ms = times[0].as_py() if first_ms is None else first_ms
            last_ms = times[-1].as_py()
            offset = 0
            while offset < batch.num_rows:
                while part < files and written >= bounds[part + 1]:
                    if writer is not None:
                        writer.close()
                        writer = None
                    part += 1
                if writer is None:
                    writer = pq.ParquetWriter(directory / f"part-{part:05d}.parquet", source.schema())
                take = min(batch.num_rows - offset, bounds[part + 1] - written)
                writer.write_batch(batch.slice(offset, take), row_group_size=ROW_GROUP)
                offset += take
                written += take
    finally:
        if writer is not None:
            writer.close()
    for k in range(files):  # empty tables/parts still get a (schema-only) file, so every reader sees `files`
        path = directory / f"part-{k:05d}.parquet"
        if not path.exists():
            pq.write_table(source.schema().empty_table(), path)
    if written != total:
        raise SystemExit(f"materialize: wrote {written} {table} rows, expected {total}")
    return {"rows": total, "first_ms": first_ms, "last_ms": last_ms}


def materialize(events: int, seed: int = 0, files: int = 4, out: Path | None = None, quiet: bool = False) -> Path:
    """Write (or reuse) the events directory and return its path."""
    out = Path(out) if out is not None else default_dir(events, seed)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        found = json.loads(manifest_path.read_text())
        if (found.get("events"), found.get("seed"), found.get("files"), found.get("format")) == (
                events, seed, files, FORMAT_VERSION):
            if not quiet:
                print(f"materialize: reusing {out}", file=sys.stderr)
            return out
    started = time.perf_counter()
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    info = {t: _write_table(t, events, seed, files, staging) for t in TABLES}
    firsts = [i["first_ms"] for i in info.values() if i["first_ms"] is not None]
    lasts = [i["last_ms"] for i in info.values() if i["last_ms"] is not None]
    manifest = {
        "format": FORMAT_VERSION, "events": events, "seed": seed, "files": files, "row_group": ROW_GROUP,
        "rows": {t: i["rows"] for t, i in info.items()},
        "first_ms": min(firsts) if firsts else None, "last_ms": max(lasts) if lasts else None,
        "generator": "headwater.sources.NexmarkSource (default config: event_rate 10000/s, base 2026-01-01Z)",
        "seconds": round(time.perf_counter() - started, 3),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    if not quiet:
        print(f"materialize: wrote {out} in {manifest['seconds']} s: {manifest['rows']}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, required=True, help="length of the event sequence (all tables)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=4, help="Parquet files per table")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.events < 0 or args.files < 1:
        parser.error("--events must be >= 0 and --files >= 1")
    print(materialize(args.events, args.seed, args.files, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
