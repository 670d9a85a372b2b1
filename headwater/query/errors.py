"""Errors of the query layer. Every one is the caller's mistake or a refusal, never a server failure: the
Serve app maps :class:`QueryError` to 400, :class:`QueryRefusedError` to 403 and :class:`QueryTimeoutError`
to 408, each with the message."""

from __future__ import annotations

from headwater.errors import HeadwaterError


class QueryError(HeadwaterError):
    """The query is malformed or does not fit the tables (unknown column, bad value, SQL syntax error)."""


class QueryRefusedError(QueryError):
    """The query is well-formed but not allowed: it writes, reaches files, settings or extensions, or names a
    table or column outside the caller's grants."""


class QueryTimeoutError(QueryError):
    """The query ran longer than its time limit and was interrupted."""
