"""ASGI middleware that audits every request except ``/healthz`` and the OpenAPI document: who (token id and
role, set by the auth dependency), what (method, route, tables, query text, a SHA-256 of a feature key), the
status and the rows returned. The record is written when the response starts, before its body is sent, so
an answered request has its audit line."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import anyio.to_thread

from headwater.access.audit import AuditLog

UNAUDITED = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class AuditMiddleware:
    def __init__(self, app: Any, log: Callable[[], AuditLog]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNAUDITED:
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {}
        scope.setdefault("state", {})["audit"] = record
        done = False

        async def write(status: int) -> None:
            nonlocal done
            if done:
                return
            done = True
            route = scope.get("route")
            action = f"{scope.get('method')} {getattr(route, 'path', None) or scope.get('path')}"
            await anyio.to_thread.run_sync(lambda: self.log().record(
                actor=record.get("actor"), role=record.get("role"), action=action, status=status,
                tables=record.get("tables", ()), rows=record.get("rows"), query=record.get("query"),
                detail=record.get("detail")))

        async def audited_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await write(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        finally:
            if not done:
                await write(500)
