"""SQL client settings shared by :class:`~headwater.sources.sql.SqlSource` and :class:`~headwater.sinks.sql.SqlSink`:
the database URL (any SQLAlchemy 2.1 dialect), engine options, and the type mapping between SQLAlchemy column
types and Arrow types that both directions use.

Invariants:

* Settings are plain, picklable configuration (they travel to Ray actors); an engine is built from them inside
  the process that uses it (:meth:`SqlClientSettings.create_engine`), never pickled, never put into a position
  or a commit token.
* The URL's password is a :class:`pydantic.SecretStr`: ``repr``, logs and error messages show
  :attr:`SqlClientSettings.masked_url` (SQLAlchemy's ``URL.render_as_string(hide_password=True)``); the
  password is revealed only to ``sqlalchemy.create_engine``.
* SQLite engines begin every transaction with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe for
  pysqlite), so two writers of one database file serialise on the write lock instead of failing a
  read-to-write upgrade with "database is locked"; they wait up to ``sqlite_timeout`` seconds for it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy.engine import URL, Engine, make_url

from headwater.errors import ConfigError

__all__ = [
    "SqlClientSettings", "arrow_type_of", "describe_error", "is_transient_error", "python_converter", "reflect_table",
    "sql_type_of", "types_compatible",
]


class SqlClientSettings(BaseModel):
    """How to reach a database: a SQLAlchemy URL (``postgresql+psycopg2://user:pw@host:5432/db``,
    ``sqlite:////abs/path.db``) and extra keyword arguments for ``sqlalchemy.create_engine``
    (``engine_options``, e.g. ``{"pool_size": 2}``; not ``url``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: SecretStr
    masked_url: str
    dialect: str
    engine_options: Mapping[str, Any] = {}
    sqlite_timeout: float = 30.0

    @classmethod
    def build(cls, url: str | URL, engine_options: Mapping[str, Any] | None = None, owner: str = "SQL") -> SqlClientSettings:
        """Validated settings, or :class:`~headwater.errors.ConfigError` saying what to fix. The dialect and its
        driver are loaded here (no connection is made), so a misspelt URL or a missing driver fails at build."""
        try:
            parsed = make_url(url) if isinstance(url, str) else url
            if not isinstance(parsed, URL):
                raise TypeError(f"expected a str or sqlalchemy.engine.URL, got {type(url).__name__}")
            parsed = _with_installed_driver(parsed)
            parsed.get_dialect().import_dbapi()
        except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError, TypeError
            shown = url.render_as_string(hide_password=True) if isinstance(url, URL) else _mask_text(str(url))
            raise ConfigError(f"{owner}: cannot use the database URL {shown!r}: {exc}. Give a SQLAlchemy URL such as "
                              "'postgresql+psycopg2://user:password@host:5432/db' or 'sqlite:////path/to/file.db', "
                              "and install the dialect's driver") from None
        options = dict(engine_options or {})
        if "url" in options:
            raise ConfigError(f"{owner}: engine_options may not set 'url'; pass the URL as the first argument")
        return cls(url=SecretStr(parsed.render_as_string(hide_password=False)),
                   masked_url=parsed.render_as_string(hide_password=True), dialect=parsed.get_backend_name(),
                   engine_options=options)

    def __repr__(self) -> str:
        return f"SqlClientSettings(url={self.masked_url!r})"

    __str__ = __repr__

    def create_engine(self) -> Engine:
        """A new engine (connection pool) for this process; dispose of it when done."""
        options: dict[str, Any] = {"pool_pre_ping": True, **self.engine_options}
        if self.dialect == "sqlite":
            connect_args = dict(options.pop("connect_args", {}))
            connect_args.setdefault("timeout", self.sqlite_timeout)
            options["connect_args"] = connect_args
        engine = sa.create_engine(self.url.get_secret_value(), **options)
        if self.dialect == "sqlite":
            _begin_immediate(engine)
        return engine


def _with_installed_driver(url: URL) -> URL:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 then picks psycopg 3; use psycopg2 (a Headwater
    dependency) when psycopg 3 is not installed."""
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return url.set(drivername="postgresql+psycopg2")
    return url


def _begin_immediate(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN handling off: SQLAlchemy's "begin" emits it

    @sa.event.listens_for(engine, "begin")
    def _immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _mask_text(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host`` for a URL SQLAlchemy could not parse."""
    head, sep, tail = text.partition("://")
    if not sep or "@" not in tail:
        return text
    credentials, _, rest = tail.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}:***@{rest}" if ":" in credentials else text


# -- types ----------------------------------------------------------------------------------------------------------
#: unconstrained NUMERIC (no precision) is read as this decimal type; values that do not fit become dead letters
DEFAULT_DECIMAL = pa.decimal128(38, 10)


def arrow_type_of(column_type: sa.types.TypeEngine[Any]) -> pa.DataType | None:
    """The Arrow type a column of SQLAlchemy type ``column_type`` is read as, or ``None`` if there is no mapping.

    Integers → int64 (int16 for SMALLINT), floats → float64, NUMERIC(p, s) → decimal128(p, s) (p ≤ 38; otherwise
    and without precision :data:`DEFAULT_DECIMAL`), strings, enums, UUIDs and JSON → string, binary → binary,
    DATE → date32, TIMESTAMP → timestamp[us] (UTC when WITH TIME ZONE), TIME → time64[us], INTERVAL →
    duration[us], BOOLEAN → bool."""
    t = column_type
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.SmallInteger):
        return pa.int16()
    if isinstance(t, sa.Integer):
        return pa.int64()
    if isinstance(t, sa.Float):  # before Numeric: Float is a Numeric
        return pa.float64()
    if isinstance(t, sa.Numeric):
        precision, scale = t.precision, t.scale
        if precision is not None and 0 < precision <= 38:
            return pa.decimal128(precision, scale or 0)
        return DEFAULT_DECIMAL
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us", tz="UTC") if t.timezone else pa.timestamp("us")
    if isinstance(t, sa.Date):
        return pa.date32()
    if isinstance(t, sa.Time):
        return pa.time64("us")
    if isinstance(t, sa.Interval):
        return pa.duration("us")
    if isinstance(t, sa.LargeBinary | sa.types._Binary):
        return pa.binary()
    if isinstance(t, sa.String | sa.Uuid | sa.JSON):  # Text, VARCHAR, CHAR, Enum are Strings
        return pa.string()
    return None


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)  # JSON columns: the driver parsed the document
    return str(value)  # UUID objects, enum members, ...


def _as_bytes(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def python_converter(arrow_type: pa.DataType) -> Callable[[Any], Any] | None:
    """The per-value conversion a driver's values of a string or binary column may need before ``pyarrow.array``
    takes them (JSON documents, UUID objects, ``memoryview`` bytes), or ``None``. Readers apply it only after
    ``pyarrow.array`` refused the column's values as they are, so the common case stays free of Python per row."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return _as_text
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return _as_bytes
    return None


def sql_type_of(arrow_type: pa.DataType) -> sa.types.TypeEngine[Any] | None:
    """The SQLAlchemy column type a target table gets for ``arrow_type`` (see :func:`arrow_type_of`, its inverse
    up to width), or ``None`` when the type has no column type (lists, structs, maps)."""
    t = arrow_type
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return sa.SmallInteger()
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return sa.Integer()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Double()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return sa.Text()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return sa.LargeBinary()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_time(t):
        return sa.Time()
    if pa.types.is_duration(t):
        return sa.Interval()
    return None


def _family(t: pa.DataType) -> str:
    for name, test in (("bool", pa.types.is_boolean), ("integer", pa.types.is_integer),
                       ("float", pa.types.is_floating), ("decimal", pa.types.is_decimal),
                       ("timestamp", pa.types.is_timestamp), ("date", pa.types.is_date), ("time", pa.types.is_time),
                       ("duration", pa.types.is_duration)):
        if test(t):
            return name
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    return str(t)


def types_compatible(column: pa.DataType, value: pa.DataType) -> bool:
    """Whether values of Arrow type ``value`` can be stored in a column read as ``column`` without a lossy cast:
    the same family (integers, floats, decimals, strings, ...), or integers into floats or decimals."""
    have, want = _family(value), _family(column)
    return have == want or (have == "integer" and want in ("float", "decimal")) or (have == "float" and want == "decimal")


def reflect_table(engine: Engine, table: str, schema: str | None, owner: str) -> sa.Table | None:
    """The reflected table, or ``None`` when it does not exist."""
    try:
        if not sa.inspect(engine).has_table(table, schema=schema):
            return None
        return sa.Table(table, sa.MetaData(), schema=schema, autoload_with=engine)
    except sa.exc.SQLAlchemyError as exc:
        raise ConfigError(f"{owner}: cannot read the definition of table {table!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """An SQLAlchemy error's message without the SQL and its parameters (which may hold data)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """One line naming a database error, without statements, parameters or credentials."""
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {_first_line(exc)}"


def is_transient_error(exc: BaseException) -> bool:
    """A lost connection, a timeout, a lock or serialisation conflict: a retry (or a restart) may succeed."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError | sa.exc.DisconnectionError):
        return True
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    return code in ("40001", "40P01", "55P03", "57P01", "57P02", "57P03", "08000", "08003", "08006")
