"""The one place errors become HTTP statuses. A client's mistake is a 4xx with the error's message; only a
failure of the server itself (a damaged store file, a bug) is a 5xx, and its details stay in the server log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from headwater.access.errors import AccessDeniedError, AuthenticationError, PolicyError
from headwater.errors import ConfigError, HeadwaterError, TableNotFoundError
from headwater.governance.lineage.graph import AmbiguousDatasetError, DatasetNotFoundError
from headwater.query.errors import QueryError, QueryRefusedError, QueryTimeoutError

log = logging.getLogger("headwater.serve")

#: First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[HeadwaterError], int], ...] = (
    (AuthenticationError, 401),
    (AccessDeniedError, 403),
    (QueryRefusedError, 403),
    (QueryTimeoutError, 408),
    (QueryError, 400),
    (TableNotFoundError, 404),
    (DatasetNotFoundError, 404),
    (AmbiguousDatasetError, 400),
    (PolicyError, 500),  # a damaged access file is the server's problem, not the caller's
    (ConfigError, 400),
)


class NotFoundError(HeadwaterError):
    """The resource asked for (a table, a key's row) does not exist."""


def status_of(error: HeadwaterError) -> int:
    if isinstance(error, NotFoundError):
        return 404
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(HeadwaterError)
    async def _headwater_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HeadwaterError)
        status = status_of(error)
        if status >= 500:
            log.error("request %s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
            return JSONResponse({"detail": "internal error; see the server log"}, status_code=status)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)
