"""Structured logs: one JSON object per line (default) or plain text for a terminal (``RunConfig.log_format``).

Every line carries ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, and, where they are known,
``job``, ``step``, ``subtask``, ``checkpoint_id`` and ``trace_id`` (the trace of the sampled batch being handled,
see :mod:`headwater.engine.tracing`), plus ``error`` (the formatted exception) when there is one. The fields come
from the log call's ``extra=`` or from the *scope* of the code that logs (:func:`log_scope` / :func:`bind`: a
job's threads bind ``job``; each subtask of a Ray worker binds ``job``, ``step`` and ``subtask`` in its task).

Who configures what (:func:`configure`):
* a driver (``hw.run``/``hw.start``) installs the handler on the root logger only when the process has no
  logging configuration yet (no root handler: the usual case for a pipeline script); an application that set
  up logging itself keeps it, and may use :class:`JsonFormatter` in its own handler;
* a Ray worker process is Headwater's: it installs the handler when it is assigned a job, in the job's format.

Invariants:
* Secrets never appear: credentials in URLs (``scheme://user:secret@host``) and ``password=``/``token=``/
  ``secret=``/``key=``-style pairs in a message or an exception are replaced by ``***`` before a line is written
  (secret values are :class:`pydantic.SecretStr` in configuration and print masked anyway).
* Record payloads never appear: the engine logs step ids, subtasks, counts and checkpoint ids, never rows.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Iterator

from headwater.engine.config import LogFormat

FIELDS = ("job", "step", "subtask", "checkpoint_id", "trace_id")

_scope: ContextVar[dict[str, Any] | None] = ContextVar("headwater_log_scope", default=None)

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):[^@/\s]+@")
_SECRET_PAIRS = re.compile(
    r"(?P<key>\b[\w\-]*(?:password|passwd|secret|token|api[_\-]?key|access[_\-]?key|credential)s?[\w\-]*)"
    r"(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s'\",;&)]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with credentials in URLs and secret-looking ``key=value`` pairs replaced by ``***``."""
    text = _URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    return _SECRET_PAIRS.sub(lambda m: f"{m['key']}{m['sep']}***", text)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the scope of the current thread or asyncio task (for its remaining life)."""
    _scope.set({**(_scope.get() or {}), **fields})


def enter(**fields: Any) -> Token[dict[str, Any] | None]:
    """Add ``fields`` to the current scope until :func:`leave` with the returned token (cheap: one dict)."""
    return _scope.set({**(_scope.get() or {}), **fields})


def leave(token: Token[dict[str, Any] | None]) -> None:
    _scope.reset(token)


@contextmanager
def log_scope(**fields: Any) -> Iterator[None]:
    """Lines logged inside the block carry ``fields`` (nested scopes add to and override outer ones)."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def current_fields(record: logging.LogRecord | None = None) -> dict[str, Any]:
    """The known fields of a line: the scope's, overridden by the record's ``extra``."""
    fields = dict(_scope.get() or {})
    if record is not None:
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
    return {k: fields[k] for k in FIELDS if fields.get(k) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **current_fields(record),
        }
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["error"] = redact(record.exc_text)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain text for a terminal: time, level, logger, the known fields, the (redacted) message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(fields)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = current_fields(record)
        record.fields = "".join(f" {k}={v}" for k, v in fields.items())
        text = super().format(record)
        return redact(text)


class _HeadwaterHandler(logging.StreamHandler):
    """The handler :func:`configure` installs (a type of its own, so configuring again replaces it)."""


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def installed() -> bool:
    """Whether :func:`configure` installed Headwater's handler in this process (and it is still there)."""
    return any(isinstance(h, _HeadwaterHandler) for h in logging.getLogger().handlers)


def configure(log_format: LogFormat, *, own_process: bool = False, level: int = logging.INFO) -> None:
    """Install Headwater's log handler (stderr, ``log_format``) on the root logger.

    ``own_process`` (a Ray worker): always, replacing every root handler. Otherwise only when the root logger
    has no handler but one installed by an earlier call (the application's configuration wins)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _HeadwaterHandler)]
    others = [h for h in root.handlers if not isinstance(h, _HeadwaterHandler)]
    if others and not own_process:
        return
    for handler in ours + (others if own_process else []):
        root.removeHandler(handler)
    handler = _HeadwaterHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    ours_logger = logging.getLogger("headwater")
    if ours_logger.level == logging.NOTSET:
        ours_logger.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) lines go through the same handler
