"""Which OpenLineage datasets a source reads and a sink writes, named per the OpenLineage naming conventions
(https://openlineage.io/docs/spec/naming), as namespace → name:

* Kafka source and sink: ``kafka://{first bootstrap host}:{port}`` → ``{topic}``;
* PostgreSQL CDC source: ``postgres://{host}:{port}`` → ``{database}.{schema}.{table}``, one per table;
* SQL source and sink: ``postgres://{host}:{port}`` (``mysql://...``) → ``{database}.{schema}.{table}``;
  SQLite: ``file`` → ``{path}#{table}``;
* HTTP source: ``{scheme}://{host}:{port}`` → ``{path}`` (never the query string);
* Kinesis source: ``kinesis://{region}`` → ``{stream}``;
* files (Parquet, CSV, JSON lines): ``file`` (``s3://{bucket}``, ...) → ``{absolute path}`` (``{key}``);
* ``TableSink`` (Headwater's store): ``headwater://{store root}`` → ``{table}``;
* a dead-letter replay: the stored dead letters' directory and the replayed source's datasets;
* generators, testing and other connectors: ``inmemory://`` → ``{flow}.{step id}``.

Invariant: no credential ever reaches a namespace or name. Names are built from parsed host, port, database and
object names only (never a raw URL or DSN), and :func:`strip_credentials` removes user info and query strings
from anything URL-shaped that is shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

INMEMORY = "inmemory://"
STORE_SCHEME = "headwater://"


@dataclass(frozen=True, order=True)
class DatasetRef:
    """One OpenLineage dataset: ``namespace`` + ``name``."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if not self.namespace.endswith("/") else self.namespace + self.name


def strip_credentials(url: str) -> str:
    """``url`` without user info, query string and fragment (``postgres://u:p@h:5432/db?sslpassword=x`` →
    ``postgres://h:5432/db``); text that is not a URL is returned unchanged."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def store_namespace(root: str) -> str:
    return STORE_SCHEME + os.path.abspath(root)


def _kafka(bootstrap_servers: str) -> str:
    first = bootstrap_servers.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    first = first.rsplit("@", 1)[-1]
    host, _, port = first.rpartition(":")
    return f"kafka://{host or port}:{port if host else 9092}"


def _sql(settings: Any, table: str | None, db_schema: str | None) -> DatasetRef:
    """A SQLAlchemy URL's dataset: ``{dialect}://{host}:{port}`` + ``{database}.{schema}.{table}``."""
    import sqlalchemy as sa

    url = sa.make_url(settings.url.get_secret_value())
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = os.path.abspath(url.database) if url.database and url.database != ":memory:" else ":memory:"
        return DatasetRef("file", f"{path}#{table}" if table else path)
    scheme = {"postgresql": "postgres"}.get(backend, backend)
    port = url.port or {"postgres": 5432, "mysql": 3306}.get(scheme)
    namespace = f"{scheme}://{url.host or 'localhost'}" + (f":{port}" if port else "")
    default_schema = "public" if scheme == "postgres" else None
    parts = [p for p in (url.database, db_schema or default_schema, table) if p]
    return DatasetRef(namespace, ".".join(parts))


def _postgres_dsn(settings: Any) -> tuple[str, str]:
    params = settings.parameters()
    host = params.get("host") or "localhost"
    if host.startswith("/"):
        host = "localhost"
    return f"postgres://{host}:{params.get('port') or 5432}", params.get("dbname") or params.get("user") or "postgres"


def _files(path: str) -> DatasetRef:
    if "://" in path:
        parts = urlsplit(strip_credentials(path))
        return DatasetRef(f"{parts.scheme}://{parts.hostname or ''}", parts.path.lstrip("/"))
    return DatasetRef("file", os.path.abspath(path))


def source_datasets(source: Any, flow: str, step_id: str) -> list[DatasetRef]:
    """The datasets ``source`` reads (a generator or an unknown source: one in-memory dataset per step)."""
    for kind, name in _SOURCES:
        if _is(source, kind):
            found = name(source)
            if found:
                return found
    if _is(source, "headwater.sources.dead_letters.DeadLetterReplaySource"):  # replays the wrapped source's input
        return [_files(source.directory), *source_datasets(source.source, flow, step_id)]
    return [DatasetRef(INMEMORY, f"{flow}.{step_id}")]


def sink_datasets(sink: Any, flow: str, step_id: str) -> list[DatasetRef]:
    for kind, name in _SINKS:
        if _is(sink, kind):
            found = name(sink)
            if found:
                return found
    return [DatasetRef(INMEMORY, f"{flow}.{step_id}")]


def _is(obj: Any, qualified: str) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == qualified for c in type(obj).__mro__)


def _cdc(source: Any) -> list[DatasetRef]:
    namespace, database = _postgres_dsn(source.settings)
    return [DatasetRef(namespace, f"{database}.{t}") for t in source.tables]


def _http(source: Any) -> list[DatasetRef]:
    parts = urlsplit(source.settings.base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [DatasetRef(f"{parts.scheme}://{parts.hostname}:{port}", parts.path or "/")]


def _kinesis(source: Any) -> list[DatasetRef]:
    return [DatasetRef(f"kinesis://{source.settings.region}", source.stream)]


_Namer = Callable[[Any], list[DatasetRef]]
_SOURCES: tuple[tuple[str, _Namer], ...] = (
    ("headwater.sources.kafka.KafkaSource", lambda s: [DatasetRef(_kafka(s.settings.bootstrap_servers), s.topic)]),
    ("headwater.sources.postgres_cdc.source.PostgresCdcSource", _cdc),
    ("headwater.sources.sql.SqlSource",
     lambda s: [_sql(s.settings, s.table, s.db_schema)] if s.table else [_sql(s.settings, None, None)]),
    ("headwater.sources.http.HttpSource", _http),
    ("headwater.sources.kinesis.KinesisSource", _kinesis),
    ("headwater.sources.files._FileSource", lambda s: [_files(s.path)]),
)
_SINKS: tuple[tuple[str, _Namer], ...] = (
    ("headwater.sinks.table.TableSink", lambda s: [DatasetRef(store_namespace(s.store), s.table)]),
    ("headwater.sinks.kafka.KafkaSink", lambda s: [DatasetRef(_kafka(s.settings.bootstrap_servers), s.topic)]),
    ("headwater.sinks.sql.SqlSink", lambda s: [_sql(s.settings, s.table, getattr(s, "db_schema", None))]),
    ("headwater.sinks.files.FileSink", lambda s: [_files(s.path)]),
)
