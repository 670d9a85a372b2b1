"""The access audit: one entry per request in the store's hash-chained audit log
(:mod:`headwater.store.audit`, the log erasures, job runs and policy changes are recorded in), saying who (token
id and role, never the token), what (endpoint, tables, query text), when, the HTTP status and the rows returned.

An entry is committed before the answer leaves (the middleware awaits :meth:`AuditLog.record`), so an answered
request has its entry; several replicas append to one log safely (appends are serialised by the database).
"""

from __future__ import annotations

from typing import Any, Sequence

from headwater.store.audit import AuditLog as StoreAuditLog

MAX_QUERY_CHARS = 4000


class AuditLog:
    def __init__(self, root: str, *, sync: bool = True) -> None:
        self.log = StoreAuditLog(root)
        self.sync = sync  # kept for callers; every append is a committed transaction

    def record(self, *, actor: str | None, role: str | None, action: str, status: int,
               tables: Sequence[str] = (), rows: int | None = None, query: str | None = None,
               detail: str | None = None) -> None:
        entry: dict[str, Any] = {"actor": actor, "role": role, "action": action, "tables": list(tables),
                                 "status": status, "rows": rows}
        if query is not None:
            entry["query"] = query[:MAX_QUERY_CHARS]
        if detail is not None:
            entry["detail"] = detail[:500]
        self.log.append("access", **entry)


def read_audit(root: str) -> list[dict[str, Any]]:
    """Every entry of the store's audit log as flat records (``event``, ``at``, ``seq``, fields), oldest first."""
    return [entry.to_json() for entry in StoreAuditLog(root).entries()]
