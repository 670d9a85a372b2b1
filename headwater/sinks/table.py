"""``TableSink``: write a stream into a table of Headwater's store, exactly once (two-phase commit).

Layout inside the table's directory (``<store>/tables/<table>``, see :mod:`headwater.store.layout`)::

    _staging/<owner>/inprogress-<subtask:04d>-<uuid>.arrow                      being written
    _staging/<owner>/commit-<checkpoint:06d>-<subtask:04d>-<writer>.arrow       prepared, named by a token

Commit order, per subtask:

1. :meth:`TableSinkPartition.write` appends batches to an in-progress Arrow IPC stream file.
2. :meth:`TableSinkPartition.prepare` closes and syncs it and renames it to its commit name; the
   :class:`TableCommitToken` names that file. Prepared files survive a crash.
3. :meth:`TableSinkPartition.commit` applies the file to the table in one store transaction
   (:meth:`headwater.store.table.Transaction.commit_staged`): the rows land in the warm tier and become
   visible, in every tier at once, when ``table.json`` records them with a new data version and the commit id
   (the file name, unique per partition object: ``<writer>`` is 64 random bits). Committing a token again is a
   no-op: its file is gone, or its id is recorded.
4. :meth:`TableSinkPartition.abort` deletes this subtask's in-progress files.

Staging is per owner (:class:`~headwater.sinks.base.SinkOwner`) as with the file sinks, and
:meth:`TableSink.clean_up` deletes only its own owner's (and ended unchecked runs') staged files that no token
names. The engine leases the table's directory for a run, so two jobs never write one table at once; the
lifecycle manager and readers work beside a running job (they take the table's short transaction lock).

Schema: the table is created at the first commit with the input's schema; later inputs may add columns (older
rows read them as null); a removed column, a changed type or another key/time column is refused at build time
(:meth:`TableSink.check_input_schema`, when the table exists) and at commit time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from headwater.core import plain_data
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SchemaEvolutionError, SinkError, StoreError
from headwater.sinks.base import Sink, SinkOwner, SinkPartition
from headwater.store.layout import STAGING_DIR, check_table_name, fsync_dir, resolve_root, table_dir
from headwater.store.metadata import LifecyclePolicy, check_key_and_time, evolve_schema

if TYPE_CHECKING:
    from headwater.store.hot import HotTier
    from headwater.store.table import CommitEvent

__all__ = ["TableCommitToken", "TableSink", "TableSinkPartition"]

OWNER_FILE = "_owner"


@plain_data.register(name="headwater.TableCommitToken")
@dataclass(frozen=True)
class TableCommitToken:
    """What one ``prepare`` staged for table ``table``: the staged files (empty when no rows were written)."""

    checkpoint_id: int
    subtask: int
    table: str
    files: tuple[str, ...] = ()


class TableSinkPartition(SinkPartition[TableCommitToken]):
    """The writer of one subtask of a TableSink; see the module docstring for the protocol."""

    def __init__(self, sink: TableSink, index: int) -> None:
        self._sink = sink
        self._index = index
        self._writer = uuid.uuid4().hex[:16]
        self._staging = os.path.join(sink.directory, STAGING_DIR, sink.owner.key)
        self._schema: pa.Schema | None = None
        self._path: str | None = None
        self._out: pa.NativeFile | None = None
        self._ipc: pa.ipc.RecordBatchStreamWriter | None = None
        self._rows = 0
        self.last_commit: CommitEvent | None = None  # the last commit's event (sent to the hot tier, without rows)
        self._hot: HotTier | None = None  # a client, never in a snapshot or token

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._check_schema(batch.schema)
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            raise SinkError(f"TableSink {self._sink.table!r}: a batch's schema differs from the first batch's; cast "
                            "or select columns before the sink", transient=False)
        if batch.num_rows == 0:
            return
        try:
            if self._ipc is None:
                os.makedirs(self._staging, exist_ok=True)
                _record_owner(self._staging, self._sink.owner)
                self._path = os.path.join(self._staging, f"inprogress-{self._index:04d}-{uuid.uuid4().hex}.arrow")
                self._out = pa.OSFile(self._path, "wb")
                self._ipc = pa.ipc.new_stream(self._out, self._schema)
            self._ipc.write_batch(batch)
            self._rows += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise SinkError(f"TableSink {self._sink.table!r}: cannot stage rows in {self._staging}: {exc}") from exc

    def _check_schema(self, schema: pa.Schema) -> None:
        try:
            check_key_and_time(schema, self._sink.key, self._sink.time, self._sink.table)
            from headwater.store.table import check_same_identity, load_meta  # lancedb: imported when used

            meta = load_meta(self._sink.store, self._sink.table)
            if meta is not None:
                check_same_identity(meta, self._sink.key, self._sink.time)
                evolve_schema(meta.schema, schema, self._sink.table)
        except (ConfigError, StoreError) as exc:
            raise SinkError(str(exc), transient=False) from exc

    def prepare(self, checkpoint_id: int) -> TableCommitToken:
        files: tuple[str, ...] = ()
        if self._ipc is not None and self._path is not None and self._out is not None:
            try:
                self._ipc.close()
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
                name = f"commit-{checkpoint_id:06d}-{self._index:04d}-{self._writer}.arrow"
                staged = os.path.join(self._staging, name)
                os.replace(self._path, staged)
                fsync_dir(self._staging)
                files = (staged,)
            except (OSError, pa.ArrowException) as exc:
                raise SinkError(f"TableSink {self._sink.table!r}: cannot stage {self._path}: {exc}") from exc
            finally:
                self._ipc = self._out = None
                self._path = None
                self._rows = 0
        return TableCommitToken(checkpoint_id, self._index, self._sink.table, files)

    def commit(self, token: TableCommitToken) -> None:
        if not token.files:
            return
        try:
            from headwater.store.table import Transaction

            with Transaction(self._sink.store, token.table, self._sink.warm_uri) as tx:
                if tx.meta is None:
                    schema = _first_schema(token.files)
                    if schema is None:
                        return  # every file gone: committed before
                    tx.create(schema, self._sink.key, self._sink.time, self._sink.policy)
                event = tx.commit_staged(token.files)
        except SchemaEvolutionError as exc:
            raise SinkError(str(exc), transient=False) from exc
        except (OSError, pa.ArrowException, StoreError) as exc:
            raise SinkError(f"TableSink {token.table!r}: cannot commit checkpoint {token.checkpoint_id} to the store "
                            f"at {self._sink.store}: {exc}") from exc
        if event is not None:
            self._notify_hot(event)
            event = dataclasses.replace(event, data=None)
        self.last_commit = event

    def _notify_hot(self, event: CommitEvent) -> None:
        """Only now, with the commit in ``table.json``, tell the table's hot shards (if a Ray with a hot tier is
        there): so the hot tier never holds an uncommitted row. Best effort: a lost notice makes the shards
        rebuild from warm; a replayed commit sends nothing (``event`` is ``None`` then)."""
        import sys

        if event.data is None or "ray" not in sys.modules:
            return
        import ray

        if not ray.is_initialized():
            return
        from headwater.store.hot import HotTier

        if self._hot is None:
            self._hot = HotTier(self._sink.store, self._sink.warm_uri)
        self._hot.notify(event, event.data)

    def abort(self) -> None:
        self.close()
        prefix = f"inprogress-{self._index:04d}-"
        if os.path.isdir(self._staging):
            for name in os.listdir(self._staging):
                if name.startswith(prefix):
                    os.unlink(os.path.join(self._staging, name))

    def close(self) -> None:
        ipc, out = self._ipc, self._out
        self._ipc = self._out = None
        self._path = None
        for handle in (ipc, out):
            if handle is not None:
                try:
                    handle.close()
                except (OSError, pa.ArrowException):
                    pass


def _first_schema(files: Sequence[str]) -> pa.Schema | None:
    for path in files:
        if os.path.exists(path):
            with pa.memory_map(path) as source:
                return pa.ipc.open_stream(source).schema
    return None


def _record_owner(area: str, owner: SinkOwner) -> None:
    record = os.path.join(area, OWNER_FILE)
    if owner.checkpoint_dir is not None and not os.path.exists(record):
        with open(record, "w", encoding="utf-8") as out:
            out.write(json.dumps({"checkpoint_dir": owner.checkpoint_dir}) + "\n")


class TableSink(Sink):
    """Write into table ``table`` of Headwater's store, exactly once.

    ``key``: the columns that identify an entity (feature look-ups and erasure go by them; ``None``: no key).
    ``time``: the event-time column (a timestamp) that lifecycle ages rows by and time ranges select on
    (``None``: no ages; rows stay warm until erased). ``policy``: the table's :class:`LifecyclePolicy` when the
    sink creates it (default: hot 1 h, warm 7 days, kept forever). ``store``: the store root (default
    ``$HEADWATER_STORE``, else ``.headwater/store``; the CLI's ``--store`` sets that variable)."""

    exactly_once = True

    def __init__(self, table: str, key: Sequence[str] | str | None = None, time: str | None = None, *,
                 policy: LifecyclePolicy | None = None, store: str | os.PathLike[str] | None = None,
                 warm_uri: str | None = None) -> None:
        self.table = check_table_name(table)
        if isinstance(key, str):
            key = [key]
        if key is not None and (not key or not all(isinstance(k, str) for k in key)):
            raise ConfigError(f"TableSink {table!r}: key must be a non-empty list of column names or None, got {key!r}")
        if key is not None and len(set(key)) != len(key):
            raise ConfigError(f"TableSink {table!r}: key {list(key)} names a column twice")
        self.key: tuple[str, ...] | None = tuple(key) if key is not None else None
        if time is not None and not isinstance(time, str):
            raise ConfigError(f"TableSink {table!r}: time must be a column name or None, got {time!r}")
        self.time = time
        if policy is not None and not isinstance(policy, LifecyclePolicy):
            raise ConfigError(f"TableSink {table!r}: policy must be a headwater.store.LifecyclePolicy")
        if time is None and policy is not None and (policy.warm_for is not None or policy.retain_for is not None):
            raise ConfigError(f"TableSink {table!r}: without a time column rows have no age; give a policy with "
                              "warm_for=None and retain_for=None, or a time= column")
        self.policy = policy
        self.store = resolve_root(store)
        self.warm_uri = warm_uri
        self.directory = table_dir(self.store, self.table)
        self.owner = SinkOwner()

    def __repr__(self) -> str:
        return f"TableSink({self.table!r}, key={list(self.key) if self.key else None}, time={self.time!r}, " \
               f"store={self.store!r})"

    def build_part(self, index: int, count: int) -> TableSinkPartition:
        if not 0 <= index < count:
            raise ConfigError(f"TableSink: subtask index {index} is out of range for {count} subtasks")
        return TableSinkPartition(self, index)

    def check_input_schema(self, schema: pa.Schema) -> None:
        check_key_and_time(schema, self.key, self.time, self.table)
        try:
            from headwater.store.table import check_same_identity, load_meta  # lancedb: imported when used

            meta = load_meta(self.store, self.table)
        except StoreError as exc:
            raise ConfigError(f"TableSink {self.table!r}: {exc}") from exc
        if meta is not None:
            check_same_identity(meta, self.key, self.time)
            evolve_schema(meta.schema, schema, self.table)

    def owned_locations(self) -> tuple[str, ...]:
        return (os.path.realpath(self.directory),)

    def staging_as(self, owner: SinkOwner) -> TableSink:
        bound = copy.copy(self)
        bound.owner = owner
        return bound

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        keep = {path for token in tokens if isinstance(token, TableCommitToken) for path in token.files}
        staging = os.path.join(self.directory, STAGING_DIR)
        try:
            for key in {self.owner.key, SinkOwner.UNCHECKED}:
                area = os.path.join(staging, key)
                if not os.path.isdir(area):
                    continue
                for name in os.listdir(area):
                    path = os.path.join(area, name)
                    if name.startswith(("inprogress-", "commit-")) and path not in keep:
                        os.unlink(path)
        except OSError as exc:
            raise SinkError(f"TableSink {self.table!r}: cannot clean up {staging}: {exc}") from exc
