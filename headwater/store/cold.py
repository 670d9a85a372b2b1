"""The cold tier: Parquet files partitioned by date, hive style (``cold/date=YYYY-MM-DD/part-*.parquet``).

Files are written once, under names no other write can produce (data version and a random id), and become
part of the table only when ``table.json`` lists them; rewriting one (erasure, retention of part of a day)
writes a new file and lists it instead. Files no manifest lists are leftovers of interrupted changes, deleted
by :func:`sweep` under the table lock. Reads go through ``pyarrow.dataset`` over the listed files with the
table's schema, so files written before a column was added read that column as null; the date directory is
for other readers (DuckDB's ``hive_partitioning``, Spark), Headwater prunes files by the min/max time each
manifest entry records instead.
"""

from __future__ import annotations

import os
import uuid
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from headwater.store.layout import COLD_DIR, fsync_dir
from headwater.store.metadata import ColdFile


def cold_dir(table_directory: str) -> str:
    return os.path.join(table_directory, COLD_DIR)


def time_bounds(table: pa.Table, time: str | None) -> tuple[int | None, int | None]:
    """Min and max of ``time`` as µs since the epoch (UTC), ``(None, None)`` without rows or time column."""
    if time is None or table.num_rows == 0:
        return None, None
    micros = pc.cast(pc.cast(table.column(time), pa.timestamp("us", tz="UTC")), pa.int64())
    bounds = pc.min_max(micros).as_py()
    return bounds["min"], bounds["max"]


def write_partitioned(table_directory: str, rows: pa.Table, time: str, data_version: int) -> list[ColdFile]:
    """Write ``rows`` as one Parquet file per UTC date of ``time``; durable on return, not yet listed."""
    root = cold_dir(table_directory)
    dates = pc.cast(pc.cast(rows.column(time), pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us")), pa.date32())
    written: list[ColdFile] = []
    for day in pc.unique(dates).to_pylist():
        part = rows.filter(pc.equal(dates, pa.scalar(day, pa.date32())))
        directory = os.path.join(root, f"date={day.isoformat()}")
        os.makedirs(directory, exist_ok=True)
        relative = f"date={day.isoformat()}/part-{data_version:010d}-{uuid.uuid4().hex[:16]}.parquet"
        _write(os.path.join(root, relative), part)
        low, high = time_bounds(part, time)
        written.append(ColdFile(relative, part.num_rows, low, high))
    return written


def rewrite(table_directory: str, file: ColdFile, keep: pa.Table, time: str | None, data_version: int) -> ColdFile:
    """A new file with ``keep`` (the rows of ``file`` to keep), beside it; durable on return, not yet listed."""
    directory = os.path.dirname(file.path)
    relative = f"{directory}/part-{data_version:010d}-{uuid.uuid4().hex[:16]}.parquet" if directory else \
        f"part-{data_version:010d}-{uuid.uuid4().hex[:16]}.parquet"
    _write(os.path.join(cold_dir(table_directory), relative), keep)
    low, high = time_bounds(keep, time)
    return ColdFile(relative, keep.num_rows, low, high)


def _write(path: str, table: pa.Table) -> None:
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read(table_directory: str, files: Sequence[ColdFile], schema: pa.Schema, columns: Sequence[str] | None,
         condition: pc.Expression | None, dictionary: Sequence[str] = ()) -> pa.Table:
    """The rows of ``files`` matching ``condition``, as ``schema`` (columns older files lack read as null);
    the string columns named in ``dictionary`` come dictionary-encoded, as Parquet stores them (not decoding
    them halves the read here, and DuckDB groups dictionary strings 3x faster)."""
    if dictionary:
        encoded = pa.dictionary(pa.int32(), pa.string())
        schema = pa.schema([f.with_type(encoded) if f.name in dictionary else f for f in schema], metadata=schema.metadata)
    if not files:
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    root = cold_dir(table_directory)
    form = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary))) \
        if dictionary else "parquet"
    dataset = ds.dataset([os.path.join(root, f.path) for f in files], schema=schema, format=form)
    return dataset.to_table(columns=list(columns) if columns is not None else None, filter=condition)


def read_file(table_directory: str, file: ColdFile, schema: pa.Schema) -> pa.Table:
    return read(table_directory, [file], schema, None, None)


def sweep(table_directory: str, listed: Sequence[ColdFile]) -> list[str]:
    """Delete cold files no manifest lists (interrupted changes' output, replaced files); returns them."""
    root = cold_dir(table_directory)
    keep = {os.path.join(root, f.path) for f in listed}
    removed = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if path not in keep:
                os.unlink(path)
                removed.append(path)
    return removed
