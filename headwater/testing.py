"""Helpers for testing pipelines: ``TestingSource``, ``TestingSink``, ``run_local`` and ``read_source``.

Example::

    from headwater.testing import TestingSource, TestingSink, run_local

    flow = hw.Dataflow("t")
    out = TestingSink()
    flow.source("in", TestingSource([{"x": 1}, {"x": 2}])).filter(hw.col("x") > 1).sink("out", out)
    run_local(flow)
    assert out.rows() == [{"x": 2}]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from headwater.dataflow import Dataflow
from headwater.engine.job import JobResult
from headwater.errors import ConfigError
from headwater.runner import run
from headwater.sinks.testing import TestingSink
from headwater.sources.base import Source, drain
from headwater.sources.testing import TestingSource

__all__ = ["TestingSink", "TestingSource", "commit_rows", "read_source", "run_local", "through_checkpoint_files"]


def run_local(flow: Dataflow, **options: Any) -> JobResult:
    """Run ``flow`` in this process with the same physical plan as on Ray (default parallelism 1)."""
    return run(flow, executor="local", **options)


def through_checkpoint_files(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Snapshot tables (``OperatorStateStore.snapshot()[0]``) after what a checkpoint does to them: each written
    as an Arrow IPC file and read back, so an operator's restore is tested against what it will really get."""
    out = {}
    for name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        out[name] = pa.ipc.open_file(sink.getvalue()).read_all()
    return out


def read_source(source: Source) -> pa.Table:
    """Every row of a bounded ``source``, partition after partition, without running a dataflow (e.g. to
    compute a reference result over exactly the rows a pipeline will read)."""
    if not source.bounded:
        raise ConfigError(f"read_source() needs a bounded source; {type(source).__name__} never ends")
    batches = [b for part in source.list_parts() for b in drain(source.build_part(part, None)) if b is not None]
    return pa.Table.from_batches(batches, schema=source.schema())


def commit_rows(store: Any, table: str, rows: pa.Table | list[dict[str, Any]], schema: pa.Schema | None = None, *,
                key: list[str] | None = None, time: str | None = None, policy: Any = None) -> Any:
    """Commit ``rows`` into ``table`` of ``store`` (a :class:`headwater.store.Store`) exactly as a TableSink
    partition would: stage them as an Arrow IPC file, then apply it in one transaction (creating the table with
    ``key``, ``time`` and ``policy`` if it does not exist). Returns the :class:`~headwater.store.CommitEvent`."""
    import os

    from headwater.store.table import Transaction

    data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    staging = os.path.join(store.directory(table), "_staging", "unchecked")
    os.makedirs(staging, exist_ok=True)
    path = os.path.join(staging, f"commit-{os.urandom(4).hex()}-0000-{os.urandom(8).hex()}.arrow")
    with pa.OSFile(path, "wb") as out, pa.ipc.new_stream(out, data.schema) as writer:
        writer.write_table(data)
    with Transaction(store.root, table, store.warm_uri) as tx:
        if tx.meta is None:
            tx.create(data.schema, key, time, policy)
        return tx.commit_staged([path])
