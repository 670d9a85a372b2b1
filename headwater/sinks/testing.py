"""A sink for tests that proves what was *committed*, across processes on one machine.

Batches are staged in memory; ``prepare`` writes them to an Arrow IPC file under ``<dir>/staging/<owner>``
(the key of the job it stages for, as for file sinks) and
``commit`` renames it into ``<dir>/committed`` (idempotently). Readers (:meth:`TestingSink.table`,
:meth:`TestingSink.rows`) see only committed output, in commit order per subtask — exactly what a downstream
consumer of a two-phase-commit sink would see. The directory is a fresh temporary one unless given, so the
sink works the same in-process and on Ray actors of this machine. Like a file sink it owns its directory
(one run at a time holds its lease) and, when the engine settles it, deletes the staged files of its own owner
that no token names and those of runs without checkpointing, never another checkpointed job's.
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.ipc as ipc

from headwater.core.plain_data import PlainData
from headwater.sinks.base import Sink, SinkOwner, SinkPartition


class TestingSink(Sink):
    """Collect committed output; read it with :meth:`rows` or :meth:`table` after the run."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = str(directory) if directory is not None else tempfile.mkdtemp(prefix="headwater-testing-sink-")
        self.owner = SinkOwner()  # set per run by staging_as
        for sub in ("staging", "committed"):
            Path(self.directory, sub).mkdir(parents=True, exist_ok=True)

    def build_part(self, index: int, count: int) -> SinkPartition[tuple[str, str] | None]:
        return _TestingSinkPartition(Path(self.directory), self.owner.key, index)

    def owned_locations(self) -> tuple[str, ...]:
        return (os.path.realpath(self.directory),)

    def staging_as(self, owner: SinkOwner) -> TestingSink:
        bound = copy.copy(self)
        bound.owner = owner
        return bound

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        keep = {token[0] for token in tokens if isinstance(token, tuple)}
        for key in {self.owner.key, SinkOwner.UNCHECKED}:
            for path in Path(self.directory, "staging", key).glob("*.arrow"):
                if str(path) not in keep:
                    path.unlink(missing_ok=True)

    def _committed_files(self) -> list[Path]:
        return sorted(Path(self.directory, "committed").glob("*.arrow"))

    def table(self) -> pa.Table | None:
        """All committed rows (``None`` if nothing was committed)."""
        tables = [ipc.open_file(path).read_all() for path in self._committed_files()]
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def rows(self) -> list[dict[str, Any]]:
        table = self.table()
        return table.to_pylist() if table is not None else []

    def latest(self, keys: Sequence[str]) -> dict[Any, dict[str, Any]]:
        """Last committed row per key — the result of a changelog such as a running aggregate."""
        out: dict[Any, dict[str, Any]] = {}
        for row in self.rows():
            key = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
            out[key] = row
        return out

    def clear(self) -> None:
        for path in Path(self.directory).rglob("*.arrow"):
            path.unlink()


class _TestingSinkPartition(SinkPartition[tuple[str, str] | None]):
    def __init__(self, directory: Path, owner_key: str, subtask: int) -> None:
        self.directory = directory
        self.staging = directory / "staging" / owner_key
        self.subtask = subtask
        self.staged: list[pa.RecordBatch] = []
        self.sequence = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.staged.append(batch)

    def prepare(self, checkpoint_id: int) -> tuple[str, str] | None:
        if not self.staged:
            return None
        table = pa.Table.from_batches(self.staged)
        self.staged = []
        self.staging.mkdir(parents=True, exist_ok=True)
        staged = self.staging / f"{uuid.uuid4().hex}.arrow"
        with ipc.new_file(staged, table.schema) as writer:
            writer.write_table(table)
        final = self.directory / "committed" / f"{checkpoint_id:08d}-{self.subtask:04d}-{self.sequence:06d}-{uuid.uuid4().hex[:8]}.arrow"
        self.sequence += 1
        return (str(staged), str(final))

    def commit(self, token: tuple[str, str] | None) -> None:
        if token is None:
            return
        staged, final = token
        if os.path.exists(staged):
            os.replace(staged, final)
        elif not os.path.exists(final):
            raise FileNotFoundError(f"staged output {staged} is gone and {final} was never committed")

    def abort(self) -> None:
        self.staged = []
