"""Bounded file sources: Parquet, CSV and JSON lines, one partition per file.

``path`` may be

* a file: one partition, named by the file's base name;
* a directory: every file below it (recursively) whose name ends in one of the format's ``suffixes``;
* a glob (``*``, ``?``, ``[...]``; ``**`` matches directories recursively): every matching file.

Hidden (``.``) and ``_``-prefixed files and directories below the root are skipped, as Spark and
``pyarrow.dataset`` do, so a :mod:`headwater.sinks.files` output directory reads only committed files. Files
are sorted, and each partition is named by its path relative to the root (the directory, or the glob's longest
prefix without wildcards), with ``/`` separators. The names are stable across runs: checkpoints key on them.

**Resume state** of a partition is the number of rows of that file already emitted (an ``int``).
``build_part(part, n)`` resumes after exactly ``n`` rows: no row is emitted twice and none is skipped. Parquet
skips whole row groups using the footer's row counts; CSV and JSON lines re-parse and drop the first ``n`` rows
(the formats have no index), still in bounded memory.

Every source streams: at most ``batch_size`` rows per batch, one reader block (or Parquet batch) in memory.
"""

from __future__ import annotations

import copy
import glob
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourcePartition

__all__ = ["CsvSource", "FilePartition", "JsonLinesSource", "ParquetSource"]

_GLOB_CHARS = frozenset("*?[")
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


#: characters of a reader's message kept in an error: pyarrow quotes the offending row or value, and after an
#: unclosed quote that value is the rest of the read block (up to ``block_size``, 1 MiB by default)
_MESSAGE_LIMIT = 200


def _describe(exc: BaseException) -> str:
    """The reader's message on one line, at most ``_MESSAGE_LIMIT`` characters of it (its start names the row
    and column), and a hint when the quoted row or value spans lines, which an unclosed quote causes."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    multiline = "\n" in text
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(flat) > _MESSAGE_LIMIT:
        flat = f"{flat[:_MESSAGE_LIMIT]}... ({len(flat) - _MESSAGE_LIMIT:,} more characters)"
    if multiline:
        flat += " (the quoted text spans lines: an unclosed quote?)"
    return flat


def _is_hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _glob_root(pattern: str) -> str:
    """The longest leading directory of ``pattern`` without wildcards."""
    parts = pattern.split(os.sep)
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    if not root and pattern.startswith(os.sep):
        root = os.sep
    return root or "."


def discover_files(path: str | os.PathLike[str], suffixes: Sequence[str], owner: str) -> dict[str, str]:
    """Map partition name (relative path, ``/``-separated) → absolute file path, sorted by name.

    Raises :class:`ConfigError` naming ``path`` when it does not exist or holds no readable file.
    """
    raw = os.fspath(path)
    found: list[tuple[str, str]] = []
    if _GLOB_CHARS & set(raw):
        root = _glob_root(raw)
        for match in glob.glob(raw, recursive=True):
            if os.path.isfile(match):
                rel = os.path.relpath(match, root).replace(os.sep, "/")
                if not _is_hidden(rel):
                    found.append((rel, os.path.abspath(match)))
        what = f"no file matches the glob {raw!r} (hidden and '_'-prefixed paths are skipped)"
    elif os.path.isfile(raw):
        found.append((os.path.basename(raw), os.path.abspath(raw)))
        what = ""
    elif os.path.isdir(raw):
        for dirpath, dirnames, filenames in os.walk(raw):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            for name in filenames:
                if not name.startswith((".", "_")) and name.lower().endswith(tuple(suffixes)):
                    full = os.path.join(dirpath, name)
                    found.append((os.path.relpath(full, raw).replace(os.sep, "/"), os.path.abspath(full)))
        what = (
            f"directory {raw!r} holds no file ending in {', '.join(suffixes)} (hidden and '_'-prefixed paths "
            "are skipped); point at the files with a glob such as 'dir/**/*' if they have another extension"
        )
    else:
        raise ConfigError(f"{owner}: path {raw!r} does not exist; give an existing file, directory or glob")
    if not found:
        raise ConfigError(f"{owner}: {what}")
    return dict(sorted(found))


def _skip_and_slice(
    batches: Iterator[pa.RecordBatch], skip: int, batch_size: int, path: str
) -> Iterator[pa.RecordBatch]:
    """Drop the first ``skip`` rows of ``batches``, then yield non-empty slices of at most ``batch_size`` rows."""
    for batch in batches:
        if skip:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch = batch.slice(skip)
            skip = 0
        for offset in range(0, batch.num_rows, batch_size):
            yield batch.slice(offset, batch_size)
    if skip:
        raise SourceError(
            f"file {path!r} ended {skip} rows before the resume position; it changed since the checkpoint was "
            "taken. Restore the original file or start the job without its checkpoint"
        )


class FilePartition(SourcePartition):
    """One file being read. Resume state: the number of rows of the file emitted so far (an ``int``).

    The file is opened lazily, on the first :meth:`next_batch`, so building a partition does no I/O.
    """

    def __init__(
        self,
        owner: str,
        path: str,
        start: int,
        open_batches: Callable[[str, int], Iterator[pa.RecordBatch]],
        hint: str,
    ) -> None:
        self._owner = owner
        self._path = path
        self._emitted = start
        self._open_batches = open_batches
        self._hint = hint
        self._batches: Iterator[pa.RecordBatch] | None = None

    def next_batch(self) -> pa.RecordBatch | None:
        try:
            if self._batches is None:
                self._batches = self._open_batches(self._path, self._emitted)
            batch = next(self._batches)
        except _READ_ERRORS as exc:
            raise SourceError(f"{self._owner}: cannot read {self._path!r}: {_describe(exc)}. {self._hint}") from exc
        self._emitted += batch.num_rows
        return batch

    def snapshot(self) -> int:
        """Rows of this file emitted so far; ``build_part(part, snapshot())`` continues right after them."""
        return self._emitted

    def close(self) -> None:
        batches, self._batches = self._batches, None
        if batches is not None and hasattr(batches, "close"):
            batches.close()


class _FileSource(Source):
    """Shared discovery, partitioning and resume handling of the file sources."""

    bounded = True
    #: File name endings (lower case) a directory path selects.
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: What the user should check when a file cannot be read.
    _hint: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike[str], batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be a positive int, got {batch_size!r}")
        self.path = os.fspath(path)
        self.batch_size = batch_size
        self._files = discover_files(self.path, self.suffixes, type(self).__name__)

    def list_parts(self) -> list[str]:
        """Paths of the files relative to the root, sorted (see the module docstring)."""
        return list(self._files)

    def files(self) -> dict[str, str]:
        """Partition name → absolute file path."""
        return dict(self._files)

    def build_part(self, part: str, resume_state: PlainData) -> FilePartition:
        """Read file ``part``, skipping the ``resume_state`` rows already emitted (``None``: from the start)."""
        owner = type(self).__name__
        if part not in self._files:
            raise SourceError(
                f"{owner} at {self.path!r} has no partition {part!r} (the file is gone or was renamed since the "
                f"checkpoint); known partitions: {sorted(self._files)[:10]}"
            )
        start = 0 if resume_state is None else resume_state
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise SourceError(f"{owner}: resume state of {part!r} must be a row count (int >= 0), got {start!r}")
        return FilePartition(owner, self._files[part], start, self._open_batches, self._hint)

    def _first_file(self) -> str:
        return next(iter(self._files.values()))

    def _read_error(self, path: str, exc: BaseException) -> SourceError:
        return SourceError(f"{type(self).__name__}: cannot read {path!r}: {_describe(exc)}. {self._hint}")

    @abstractmethod
    def _open_batches(self, path: str, skip: int) -> Iterator[pa.RecordBatch]:
        """Yield the batches of ``path`` after its first ``skip`` rows; a generator, so errors surface lazily."""


class ParquetSource(_FileSource):
    """Read Parquet files; the schema comes from the file footers, which must all agree.

    Batches carry no schema-level metadata (pandas metadata and the like are dropped), so batches of different
    files compare equal. ``columns`` selects and orders columns; readers then decode only those.
    """

    suffixes = (".parquet", ".pq", ".parq")
    _hint = "Check that it is a complete Parquet file (not truncated, not still being written)"

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int = 65_536,
        columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__(path, batch_size)
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise ConfigError(f"ParquetSource: columns must be a list of column names, got {columns!r}")
        self.columns = None if columns is None else list(columns)
        self._schema: pa.Schema | None = None

    def schema(self) -> pa.Schema:
        """The (selected) schema; reads every footer once and raises ``ConfigError`` if files disagree.

        With ``columns``, only the selected columns must agree.
        """
        if self._schema is None:
            first_name, first_path = next(iter(self._files.items()))
            first = self._read_schema(first_path)
            for name, path in self._files.items():
                other = self._read_schema(path)
                if not other.equals(first):
                    raise ConfigError(
                        f"ParquetSource: {path!r} has a different schema than {first_path!r}; every file of one "
                        f"source must share a schema (rewrite the file, select common columns with columns=, "
                        f"or read the groups with separate sources).\n{first_name}:\n{first}\n{name}:\n{other}"
                    )
            self._schema = first
        return self._schema

    def project(self, columns: Sequence[str]) -> ParquetSource:
        """The same files, decoding only ``columns``."""
        schema = self.schema()
        projected = copy.copy(self)
        projected.columns = [c for c in schema.names if c in columns]
        projected._schema = pa.schema([schema.field(c) for c in projected.columns])
        return projected

    def _read_schema(self, path: str) -> pa.Schema:
        try:
            schema = pq.read_schema(path).remove_metadata()
        except _READ_ERRORS as exc:
            raise self._read_error(path, exc) from exc
        if self.columns is None:
            return schema
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise ConfigError(f"ParquetSource: columns {missing} are not in {path!r}; available: {schema.names}")
        return pa.schema([schema.field(c) for c in self.columns])

    def _open_batches(self, path: str, skip: int) -> Iterator[pa.RecordBatch]:
        reader = pq.ParquetFile(path)
        try:
            meta = reader.metadata
            if skip > meta.num_rows:
                raise SourceError(
                    f"ParquetSource: {path!r} has {meta.num_rows} rows but the resume state says {skip} were "
                    "emitted; the file changed since the checkpoint. Restore it or start without the checkpoint"
                )
            first_group, rows_before = 0, 0
            while first_group < meta.num_row_groups:
                group_rows = meta.row_group(first_group).num_rows
                if rows_before + group_rows > skip:
                    break
                rows_before += group_rows
                first_group += 1
            if first_group == meta.num_row_groups:
                return
            batches = reader.iter_batches(
                batch_size=self.batch_size,
                row_groups=range(first_group, meta.num_row_groups),
                columns=self.columns,
                use_threads=False,
            )
            for batch in _skip_and_slice(batches, skip - rows_before, self.batch_size, path):
                yield batch.replace_schema_metadata(None)
        finally:
            reader.close()


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Return ``batch`` with exactly ``schema`` (the readers already produce its types; this fixes nullability)."""
    if batch.schema.equals(schema):
        return batch
    return batch.select(schema.names).cast(schema)


class _TextSource(_FileSource):
    """CSV and JSON lines: the schema is given, or inferred from the head (first block) of the first file."""

    def __init__(
        self, path: str | os.PathLike[str], schema: pa.Schema | None, batch_size: int, block_size: int
    ) -> None:
        super().__init__(path, batch_size)
        if schema is not None and not isinstance(schema, pa.Schema):
            raise ConfigError(f"{type(self).__name__}: schema must be a pyarrow.Schema, got {type(schema).__name__}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1024:
            raise ConfigError(f"{type(self).__name__}: block_size must be an int >= 1024 bytes, got {block_size!r}")
        self.block_size = block_size
        self._schema = schema

    def schema(self) -> pa.Schema:
        """The given schema, else the one inferred from the first block (``block_size`` bytes) of the first file.

        Inference looks only at that head: if later rows or files need a wider type (ints then floats, a
        column that starts all-null), reading fails naming the file; pass ``schema=`` explicitly then.
        """
        if self._schema is None:
            path = self._first_file()
            try:
                reader = self._open_reader(path, None)
                try:
                    self._schema = reader.schema
                finally:
                    reader.close()
            except _READ_ERRORS as exc:
                raise self._read_error(path, exc) from exc
        return self._schema

    @abstractmethod
    def _open_reader(self, path: str, schema: pa.Schema | None) -> Any:
        """A streaming reader of ``path`` producing ``schema``'s columns and types (inferring when ``None``)."""

    def _open_batches(self, path: str, skip: int) -> Iterator[pa.RecordBatch]:
        schema = self.schema()
        # The readers reject an empty file even with a schema; it simply has no rows.
        reader = None if os.path.getsize(path) == 0 else self._open_reader(path, schema)
        try:
            batches = iter(()) if reader is None else self._checked(_conform(batch, schema) for batch in reader)
            yield from _skip_and_slice(batches, skip, self.batch_size, path)
        finally:
            if reader is not None:
                reader.close()

    def _checked(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``batches`` after the format's own checks of what the reader accepted (none by default)."""
        return batches


class CsvSource(_TextSource):
    """Read CSV files with a header row.

    With ``schema``, the reader converts each column to the schema's type (``ConvertOptions.column_types``)
    and keeps exactly the schema's columns, in its order; a file missing a column fails naming the file.
    Without it, the schema is inferred from the first ``block_size`` bytes of the first file.
    """

    suffixes = (".csv", ".csv.gz", ".csv.bz2")
    _hint = (
        "Check that it is CSV with a header row matching the source's schema; "
        "pass schema= if inference guessed wrong"
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema | None = None,
        batch_size: int = 65_536,
        *,
        delimiter: str = ",",
        null_values: Sequence[str] | None = None,
        block_size: int = 1 << 20,
    ) -> None:
        super().__init__(path, schema, batch_size, block_size)
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ConfigError(f"CsvSource: delimiter must be a single character, got {delimiter!r}")
        self.delimiter = delimiter
        self.null_values = None if null_values is None else list(null_values)

    def _open_reader(self, path: str, schema: pa.Schema | None) -> Any:
        convert = pacsv.ConvertOptions(
            column_types=schema,
            include_columns=None if schema is None else schema.names,
            null_values=self.null_values,
            strings_can_be_null=self.null_values is not None,
        )
        return pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=self.block_size, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
            convert_options=convert,
        )

    def _checked(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Refuse values that contain a line break. Values may not span lines here (pyarrow's
        ``newlines_in_values`` is off), yet after an unclosed quote pyarrow reads the rest of the file as that
        one value and reports no error: rows would vanish silently (300,002 rows read as 37,862 in a test).
        One vectorised substring scan per string column and batch."""
        row = 0
        for batch in batches:
            for name, column in zip(batch.schema.names, batch.columns):
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    continue
                broken = pc.match_substring(column, "\n")
                if pc.any(broken).as_py():
                    at = pc.index(broken, True).as_py()
                    raise pa.ArrowInvalid(  # the value itself stays out of the message: it may be personal data
                        f"data row {row + at + 1}, column {name!r}: the value runs over a line break (an unclosed "
                        "quote? values spanning lines are not supported)"
                    )
            row += batch.num_rows
            yield batch


class JsonLinesSource(_TextSource):
    """Read newline-delimited JSON objects (one object per line).

    With ``schema``, it is the reader's explicit schema: missing fields read as null, fields outside it are
    ignored. Without it, the schema is inferred from the first ``block_size`` bytes of the first file (one line
    must fit in a block).
    """

    suffixes = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
    _hint = (
        "Check that it holds one JSON object per line whose values fit the schema; "
        "pass schema= if inference guessed wrong"
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema | None = None,
        batch_size: int = 65_536,
        *,
        block_size: int = 1 << 20,
    ) -> None:
        super().__init__(path, schema, batch_size, block_size)

    def _open_reader(self, path: str, schema: pa.Schema | None) -> Any:
        parse = pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="infer" if schema is None else "ignore"
        )
        return pajson.open_json(
            path, read_options=pajson.ReadOptions(block_size=self.block_size, use_threads=False), parse_options=parse
        )
