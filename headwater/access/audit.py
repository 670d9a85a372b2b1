"""The access audit: one JSON line per request in the store's audit log (``<store>/audit.jsonl``, the file
erasures are recorded in), saying who (token id and role, never the token), what (endpoint, tables, query
text), when, the HTTP status and the rows returned.

Lines are appended with ``O_APPEND`` (several replicas may write one file; each line, or each group of whole
lines, is one ``write``) and, with ``sync=True`` (the default), fsynced before the answer leaves, so an answered
request is on disk. Durable appends are *group-committed*: concurrent requests hand their lines to one writer
thread, which writes every line waiting in one ``write`` and one ``fsync`` and then releases their requests.
The guarantee is unchanged (``record`` returns only once its line is fsynced); the cost is one fsync per group
instead of one per request. Measured: with one fsync per request, fsyncs of one file queue behind each other
and a Serve replica answered 13-40 audited requests/s under a 200 req/s load on this (shared) machine.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Any, Sequence

from headwater.store.layout import AUDIT_FILE

MAX_QUERY_CHARS = 4000


class AuditLog:
    def __init__(self, root: str, *, sync: bool = True) -> None:
        self.path = os.path.join(root, AUDIT_FILE)
        self.sync = sync
        os.makedirs(root, exist_ok=True)
        self._group = _GroupCommit(self.path) if sync else None

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
        if self._group is not None:
            self._group.append(line)
        else:
            _append(self.path, line, sync=False)


def _append(path: str, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class _Ticket:
    __slots__ = ("done", "error", "line")

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.done = threading.Event()
        self.error: BaseException | None = None


class _GroupCommit:
    """One writer thread that appends and fsyncs the lines waiting, as one group (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._pending: list[_Ticket] = []
        self._thread: threading.Thread | None = None

    def append(self, line: bytes) -> None:
        """Return once ``line`` is written and fsynced (raise the OSError if it could not be)."""
        ticket = _Ticket(line)
        with self._cond:
            self._pending.append(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-group-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                group, self._pending = self._pending, []
            try:
                _append(self.path, b"".join(t.line for t in group), sync=True)
            except OSError as exc:
                for ticket in group:
                    ticket.error = exc
            for ticket in group:
                ticket.done.set()


def read_audit(root: str) -> list[dict[str, Any]]:
    """Every record of the store's audit log, oldest first (for tests and auditors)."""
    path = os.path.join(root, AUDIT_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="ascii") as lines:
        return [json.loads(line) for line in lines if line.strip()]
