"""PostgreSQL client settings shared by :class:`~headwater.sources.postgres_cdc.PostgresCdcSource` (and any later
PostgreSQL sink): the DSN, session settings and the two kinds of connections (normal and logical replication).

The client is psycopg2: psycopg 3 has no replication protocol. Invariants:

* Settings are plain, picklable configuration (they travel to Ray actors); connections are made from them in the
  process that uses them, never pickled, never put into a position or commit token.
* The DSN is a :class:`pydantic.SecretStr` (it may hold a password): ``repr``, logs and error messages show
  :meth:`PostgresClientSettings.describe` (host, port, database, user; the password masked); the DSN itself is
  revealed only when a connection is opened. A password can also come from an environment variable
  (``password_env``) so that it is not in the pipeline's code.
* Every connection speaks the same text formats: ``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=postgres``,
  ``extra_float_digits=3``, so a value's text is the same in a snapshot (``COPY``) and in the replication stream.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from headwater.errors import ConfigError

#: Session settings of every connection (text formats the converters rely on).
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3"


class PostgresClientSettings(BaseModel):
    """How to reach a PostgreSQL server.

    ``dsn``: a libpq connection string, URI (``postgresql://user@host:5432/db``) or ``key=value`` form.
    ``password_env``: the name of an environment variable holding the password (overrides one in the DSN).
    ``connect_timeout``: seconds a connection attempt may take. ``application_name``: shown in
    ``pg_stat_activity`` and ``pg_stat_replication``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr
    password_env: str | None = None
    connect_timeout: int = 10
    application_name: str = "headwater"

    @field_validator("dsn")
    @classmethod
    def _parsable(cls, value: SecretStr) -> SecretStr:
        from psycopg2.extensions import parse_dsn

        try:
            parse_dsn(value.get_secret_value())
        except Exception as exc:  # noqa: BLE001 - psycopg2 raises ProgrammingError for any malformed DSN
            raise ValueError(f"dsn is not a valid libpq connection string or URI ({type(exc).__name__})") from None
        return value

    @field_validator("connect_timeout")
    @classmethod
    def _timeout(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"connect_timeout must be at least 1 second, not {value}")
        return value

    @classmethod
    def build(cls, dsn: str, **settings: Any) -> PostgresClientSettings:
        """Validated settings, or :class:`~headwater.errors.ConfigError` saying what is wrong."""
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigError("PostgreSQL: dsn must be a connection string such as "
                              "'postgresql://user@127.0.0.1:5432/db'")
        try:
            return cls(dsn=SecretStr(dsn), **settings)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ConfigError(f"PostgreSQL client settings: {exc}") from None

    def parameters(self) -> dict[str, str]:
        """The DSN's parameters (secrets revealed: hand them to libpq, never log them)."""
        from psycopg2.extensions import parse_dsn

        params: dict[str, str] = parse_dsn(self.dsn.get_secret_value())
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(f"environment variable {self.password_env!r} (password_env) is not set")
            params["password"] = password
        return params

    def describe(self) -> str:
        """``user@host:port/database`` without any secret, for messages and reprs."""
        from psycopg2.extensions import parse_dsn

        params = parse_dsn(self.dsn.get_secret_value())
        user = params.get("user", "")
        return (f"{user + '@' if user else ''}{params.get('host', 'localhost')}:{params.get('port', '5432')}"
                f"/{params.get('dbname', user or '')}")

    def __repr__(self) -> str:
        return f"PostgresClientSettings({self.describe()!r})"

    def connect(self, *, replication: bool = False) -> Any:
        """A new psycopg2 connection (``replication=True``: a ``LogicalReplicationConnection``), with the session
        settings of :data:`SESSION_OPTIONS`. Raises psycopg2's ``OperationalError`` when the server is down."""
        import psycopg2
        import psycopg2.extras

        params = self.parameters()
        options = " ".join(o for o in (params.pop("options", ""), SESSION_OPTIONS) if o)
        factory = psycopg2.extras.LogicalReplicationConnection if replication else None
        return psycopg2.connect(connection_factory=factory, options=options, connect_timeout=self.connect_timeout,
                                application_name=self.application_name, **params)
