"""Read-only SQL over the caller's granted tables, checked by DuckDB's own parser and run in a locked-down
DuckDB connection that holds nothing but those tables.

Two independent defences (either alone refuses every attack the tests try):

1. **The statement is checked before anything runs** (:func:`check_sql`). DuckDB parses it
   (``duckdb.extract_statements``: exactly one statement, of type SELECT) and serialises its syntax tree
   (``json_serialize_sql``); the tree is walked, never the text. Allowed table references are plain table
   names (no schema or catalog, no ``AT`` time travel) that are granted to the caller or name a CTE of the query,
   joins, subqueries and ``VALUES``; refused are table functions (``read_csv``, ``read_parquet``, ``glob``,
   ``duckdb_settings()``, ...), file paths used as tables, ``DESCRIBE``/``SHOW``, parameters and the
   functions in :data:`REFUSED_FUNCTIONS`. Writes, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET`` and
   ``PRAGMA`` are other statement types and never get this far.
2. **The connection cannot reach anything** (:func:`locked_connection`): a fresh in-memory DuckDB per query
   with ``enable_external_access=false`` (no files, no network, no extension installs), extension auto-install
   and auto-load off, a memory limit and thread count, then ``lock_configuration=true`` so SQL cannot change
   any of it. The only tables in it are the caller's views, registered as Arrow tables that were scanned
   through the view (columns outside it never read, row filters pushed down, PII masked).

A query runs under a time limit (``con.interrupt()`` from a timer) and returns at most ``max_rows`` rows.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import duckdb
import pyarrow as pa

from headwater.query.errors import QueryError, QueryRefusedError, QueryTimeoutError

#: Table references the checker lets through; every other kind is refused.
ALLOWED_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EMPTY_FROM", "EXPRESSION_LIST"})
#: Scalar functions refused by name or prefix (settings, environment, file and catalog access).
REFUSED_FUNCTIONS = frozenset({"current_setting", "getenv", "checkpoint", "force_checkpoint", "query", "query_table",
                               "glob", "load_extension", "install_extension", "enable_profiling"})
REFUSED_PREFIXES = ("read_", "parquet_", "duckdb_", "pragma_", "sniff_", "iceberg_", "delta_", "sqlite_",
                    "postgres_", "mysql_", "lance_")
MAX_SQL_CHARS = 100_000


@dataclass(frozen=True)
class SqlCheck:
    """What a checked statement reads: table names (CTEs excluded), referenced column names, whether any
    ``*``/``COLUMNS(...)`` expression reads every column, and the aliases it defines."""

    sql: str
    tables: tuple[str, ...]
    columns: frozenset[str]
    star: bool
    aliases: frozenset[str]
    tree: dict[str, Any]


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> dict[str, Any]:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = locked_connection()
        try:
            row = _parser.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
        except duckdb.Error as exc:
            raise QueryError(f"SQL could not be parsed: {exc}") from None
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no result"}
    if tree.get("error"):
        raise QueryError(f"SQL could not be parsed: {tree.get('error_message')}")
    return tree


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def check_sql(sql: str) -> SqlCheck:
    """Check that ``sql`` is one read-only SELECT that reads only plain tables (see the module docstring)."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("sql is empty; send one SELECT statement")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"sql is longer than {MAX_SQL_CHARS} characters")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL could not be parsed: {exc}") from None
    if len(statements) != 1:
        raise QueryRefusedError(f"send exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefusedError(f"only SELECT is allowed (read-only access); this is a {kind.name} statement")
    tree = _parse_tree(sql)
    tables: list[str] = []
    columns: set[str] = set()
    aliases: set[str] = set()
    ctes: set[str] = set()
    star = False
    for node in _nodes(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(str(entry.get("key")) for entry in cte_map.get("map", ()) if isinstance(entry, dict))
        if node.get("alias"):
            aliases.add(str(node["alias"]))
        for name in node.get("column_name_alias") or ():
            aliases.add(str(name))
        for name in node.get("using_columns") or ():  # JOIN ... USING (a): columns outside any COLUMN_REF
            columns.add(str(name))
        if node.get("type") == "JOIN" and node.get("ref_type") == "NATURAL":
            star = True  # joins on every common column
        kind_name = node.get("type")
        klass = node.get("class")
        if klass is None and "sample" in node and isinstance(kind_name, str) and not kind_name.endswith("_NODE"):
            if kind_name not in ALLOWED_REFS:
                what = {"TABLE_FUNCTION": "table functions (read_csv, read_parquet, ...)",
                        "SHOW_REF": "DESCRIBE/SHOW/SUMMARIZE"}.get(kind_name, f"{kind_name} table references")
                raise QueryRefusedError(f"{what} are not allowed; query the granted tables by name")
            if kind_name == "BASE_TABLE":
                if node.get("schema_name") or node.get("catalog_name"):
                    raise QueryRefusedError(f"table {_qualified(node)!r}: name tables without a schema or catalog")
                if node.get("at_clause") is not None:
                    raise QueryRefusedError("AT (time travel) clauses are not allowed")
                tables.append(str(node.get("table_name")))
        elif klass == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if node.get("schema") or node.get("catalog") or name in REFUSED_FUNCTIONS or \
                    name.startswith(REFUSED_PREFIXES):
                raise QueryRefusedError(f"function {name!r} is not allowed")
        elif klass == "PARAMETER":
            raise QueryRefusedError("parameters ($1, ?) are not supported; put the values in the SQL")
        elif klass == "COLUMN_REF":
            names = node.get("column_names") or []
            if names:
                columns.add(str(names[-1]))
        elif klass == "STAR":
            star = True
    real = tuple(dict.fromkeys(t for t in tables if t not in ctes))
    return SqlCheck(sql, real, frozenset(columns), star, frozenset(aliases), tree)


def _qualified(node: dict[str, Any]) -> str:
    return ".".join(str(p) for p in (node.get("catalog_name"), node.get("schema_name"), node.get("table_name")) if p)


def locked_connection(*, threads: int = 2, memory_limit: str = "1GB") -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB that can reach no file, network or extension, with its configuration locked."""
    return duckdb.connect(":memory:", config={
        "enable_external_access": False, "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "allow_community_extensions": False, "allow_unsigned_extensions": False, "threads": threads,
        "memory_limit": memory_limit, "lock_configuration": True})


def run_sql(sql: str, tables: Mapping[str, pa.Table], *, timeout_s: float = 30.0, max_rows: int = 100_000,
            threads: int = 2) -> tuple[pa.Table, bool]:
    """Run a statement :func:`check_sql` accepted over ``tables`` (name → Arrow); the result and whether it was
    cut at ``max_rows``. DuckDB's errors about the query (binder, conversion, ...) are QueryErrors."""
    con = locked_connection(threads=threads)
    timer = threading.Timer(timeout_s, con.interrupt)
    try:
        for name, table in tables.items():
            con.register(name, table)
        timer.start()
        reader = con.sql(sql).to_arrow_reader(min(max_rows + 1, 65_536))
        batches: list[pa.RecordBatch] = []
        count = 0
        for batch in reader:
            batches.append(batch)
            count += batch.num_rows
            if count > max_rows:
                break
        result = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryTimeoutError(f"the query ran longer than {timeout_s:g} s and was stopped") from None
    except duckdb.PermissionException as exc:
        raise QueryRefusedError(f"refused by the query engine: {exc}") from None
    except duckdb.InternalException:
        raise
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {exc}") from None
    finally:
        timer.cancel()
        con.close()
    truncated = result.num_rows > max_rows
    return (result.slice(0, max_rows) if truncated else result), truncated
