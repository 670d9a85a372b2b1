"""The access audit: one JSON line per request in the store's audit log (``<store>/audit.jsonl``, the file
erasures are recorded in), saying who (token id and role, never the token), what (endpoint, tables, query
text), when, the HTTP status and the rows returned.

Lines are appended with ``O_APPEND`` (several replicas may write one file; each line is one ``write``) and,
with ``sync=True`` (the default), fsynced before the answer leaves, so an answered request is on disk.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any, Sequence

from headwater.store.layout import AUDIT_FILE

MAX_QUERY_CHARS = 4000


class AuditLog:
    def __init__(self, root: str, *, sync: bool = True) -> None:
        self.path = os.path.join(root, AUDIT_FILE)
        self.sync = sync
        os.makedirs(root, exist_ok=True)

    def record(self, *, actor: str | None, role: str | None, action: str, status: int,
               tables: Sequence[str] = (), rows: int | None = None, query: str | None = None,
               detail: str | None = None) -> None:
        entry: dict[str, Any] = {"event": "access", "at": datetime.now(UTC).isoformat(), "actor": actor,
                                 "role": role, "action": action, "tables": list(tables), "status": status,
                                 "rows": rows}
        if query is not None:
            entry["query"] = query[:MAX_QUERY_CHARS]
        if detail is not None:
            entry["detail"] = detail[:500]
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=True, default=str) + "\n").encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)


def read_audit(root: str) -> list[dict[str, Any]]:
    """Every record of the store's audit log, oldest first (for tests and auditors)."""
    path = os.path.join(root, AUDIT_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="ascii") as lines:
        return [json.loads(line) for line in lines if line.strip()]
