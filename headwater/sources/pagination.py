"""Pagination strategies of :class:`~headwater.sources.http.HttpSource`: how to ask for a page, and where the
next one is.

Every strategy names a page by a *token* (plain data): the cursor (:class:`CursorPagination`,
:class:`GraphQLPagination`), the page number (:class:`PagePagination`) or the page's URL
(:class:`LinkPagination`); ``None`` is the first page. :meth:`Pagination.request` builds the request for a
token; :meth:`Pagination.next_token` reads the token of the next page from a response, or ``None`` when this
page is the last one *for now*. The source then stays on that last page and polls it again, skipping the
records it already emitted; so a growing collection is read incrementally, each record once.

Strategies are frozen, validated at construction (:class:`~headwater.errors.ConfigError`), and picklable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

from headwater.errors import ConfigError

__all__ = [
    "CursorPagination", "GraphQLPagination", "LinkPagination", "NoPagination", "PagePagination", "Pagination",
    "Request", "json_path",
]

Token = str | int | None


@dataclass(frozen=True)
class Request:
    """One HTTP request: ``url`` (absolute), query ``params``, and a JSON body for POST."""

    method: str
    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None


class _Missing:
    pass


MISSING: Any = _Missing()


def json_path(body: Any, path: str) -> Any:
    """The value at dotted ``path`` (``"data.items"``; ``""`` is ``body`` itself; a number indexes a list), or
    :data:`MISSING`."""
    value = body
    for part in path.split(".") if path else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _check_path(owner: str, name: str, path: Any) -> None:
    if not isinstance(path, str) or any(not p for p in path.split(".")) and path != "":
        raise ConfigError(f"{owner}: {name} must be a dotted JSON path such as 'meta.next_cursor', not {path!r}")


def _check_param(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{owner}: {name} must be a query parameter name, not {value!r}")


class Pagination(ABC):
    """How a paginated API is walked (see the module docstring)."""

    @property
    def records_path(self) -> str | None:
        """Where the records are in a response body, when the strategy fixes it (GraphQL); else ``None``."""
        return None

    @abstractmethod
    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        """The request for the page named ``token`` (``None``: the first page) of the endpoint ``url``."""

    @abstractmethod
    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        """The token of the page after ``token`` (whose response had ``body``, Link header ``links`` by rel, and
        ``records`` records), or ``None`` when it is the last page for now."""

    def unwrap(self, item: Any) -> Any:
        """The record in one element of the records list (GraphQL edges hold it in ``node``)."""
        return item

    def check_token(self, token: Any) -> Token:
        """``token`` if it is of this strategy's kind (a restored position), else a ``ValueError``."""
        if token is not None and not isinstance(token, str):
            raise ValueError(f"a {type(self).__name__} position holds a string token, not {token!r}")
        return token


@dataclass(frozen=True)
class NoPagination(Pagination):
    """One request; the response holds every record (a list that may grow: it is polled again)."""

    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        return Request("GET", url, dict(params))

    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        return None


@dataclass(frozen=True)
class CursorPagination(Pagination):
    """The response names the next page's cursor at ``next_path`` (a dotted JSON path); it goes into the query
    parameter ``param``. No cursor (absent, null, empty, or the one just requested) means: last page for now.

    ``has_more_path`` (optional): a boolean at that path; ``false`` also means last page (for APIs that always
    return a cursor)."""

    next_path: str
    param: str = "cursor"
    has_more_path: str | None = None

    def __post_init__(self) -> None:
        _check_path("CursorPagination", "next_path", self.next_path)
        _check_param("CursorPagination", "param", self.param)
        if self.has_more_path is not None:
            _check_path("CursorPagination", "has_more_path", self.has_more_path)

    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        query = dict(params)
        if token is not None:
            query[self.param] = str(token)
        return Request("GET", url, query)

    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        if self.has_more_path is not None and json_path(body, self.has_more_path) is False:
            return None
        cursor = json_path(body, self.next_path)
        if cursor is MISSING or cursor is None or cursor == "" or isinstance(cursor, (dict, list, bool)):
            return None
        cursor = str(cursor)
        return None if cursor == token else cursor


@dataclass(frozen=True)
class PagePagination(Pagination):
    """Numbered pages: the page number goes into ``param``, from ``start``. An empty page is the end for now.
    With ``size`` (sent as ``size_param`` when given), a page with fewer records is the end for now too; give it
    when the collection grows, so the source polls the last, partly filled page again instead of moving past it."""

    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        _check_param("PagePagination", "param", self.param)
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ConfigError(f"PagePagination: start must be an int >= 0, not {self.start!r}")
        if self.size_param is not None:
            _check_param("PagePagination", "size_param", self.size_param)
            if self.size is None:
                raise ConfigError("PagePagination: size_param needs size=<records per page>")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"PagePagination: size must be an int >= 1, not {self.size!r}")

    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        query = dict(params)
        query[self.param] = str(self.start if token is None else token)
        if self.size_param is not None:
            query[self.size_param] = str(self.size)
        return Request("GET", url, query)

    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        if records == 0 or (self.size is not None and records < self.size):
            return None
        return (self.start if token is None else int(token)) + 1

    def check_token(self, token: Any) -> Token:
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise ValueError(f"a PagePagination position holds a page number, not {token!r}")
        return token


@dataclass(frozen=True)
class LinkPagination(Pagination):
    """RFC 8288 ``Link`` headers: the next page is the URL of ``rel`` (default ``next``); none means last page
    for now. The token is that URL; the source refuses one outside the configured URL's origin (it would carry
    the credential elsewhere)."""

    rel: str = "next"

    def __post_init__(self) -> None:
        if not isinstance(self.rel, str) or not self.rel:
            raise ConfigError(f"LinkPagination: rel must be a link relation such as 'next', not {self.rel!r}")

    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        if token is None:
            return Request("GET", url, dict(params))
        return Request("GET", str(token))  # the server's next URL carries its own query

    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        nxt = links.get(self.rel)
        return None if not nxt or nxt == token else nxt


@dataclass(frozen=True)
class GraphQLPagination(Pagination):
    """A GraphQL connection: ``query`` is POSTed with ``variables`` plus the cursor in ``cursor_variable``
    (``$after``, null for the first page). The connection is at ``connection_path`` (``"data.repository.issues"``);
    its records are ``nodes`` (or ``edges[].node`` with ``edges=True``), and ``pageInfo { endCursor hasNextPage }``
    says where the next page starts. ``hasNextPage: false`` is the last page for now (the source polls it again
    with its cursor, so a growing connection is read incrementally)."""

    query: str
    connection_path: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    cursor_variable: str = "after"
    edges: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or "{" not in self.query:
            raise ConfigError("GraphQLPagination: query must be a GraphQL document (query ($after: String) {...})")
        _check_path("GraphQLPagination", "connection_path", self.connection_path)
        if not self.connection_path:
            raise ConfigError("GraphQLPagination: connection_path must name the connection, e.g. 'data.items'")
        if not isinstance(self.cursor_variable, str) or not self.cursor_variable.isidentifier():
            raise ConfigError(f"GraphQLPagination: cursor_variable must be a variable name, not {self.cursor_variable!r}")
        if f"${self.cursor_variable}" not in self.query:
            raise ConfigError(f"GraphQLPagination: the query does not use ${self.cursor_variable} "
                              "(declare it, e.g. query ($after: String) {...}, and pass it to the connection)")
        if "pageInfo" not in self.query or "endCursor" not in self.query or "hasNextPage" not in self.query:
            raise ConfigError("GraphQLPagination: the query must select pageInfo { endCursor hasNextPage } of the "
                              "connection")
        if self.cursor_variable in self.variables:
            raise ConfigError(f"GraphQLPagination: variables must not set {self.cursor_variable!r} (the source does)")
        try:
            import json

            json.dumps(dict(self.variables))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"GraphQLPagination: variables must be JSON values ({exc})") from None
        object.__setattr__(self, "variables", dict(self.variables))

    @property
    def records_path(self) -> str:
        return f"{self.connection_path}.{'edges' if self.edges else 'nodes'}"

    def unwrap(self, item: Any) -> Any:
        return item.get("node", item) if self.edges and isinstance(item, dict) else item

    def request(self, url: str, params: Mapping[str, str], token: Token) -> Request:
        variables = {**self.variables, self.cursor_variable: token}
        return Request("POST", url, dict(params), json={"query": self.query, "variables": variables})

    def next_token(self, body: Any, links: Mapping[str, str], token: Token, records: int) -> Token:
        info = json_path(body, f"{self.connection_path}.pageInfo")
        if not isinstance(info, dict) or info.get("hasNextPage") is not True:
            return None
        cursor = info.get("endCursor")
        if not isinstance(cursor, str) or not cursor or cursor == token:
            return None
        return cursor
