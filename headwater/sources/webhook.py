"""Pushed HTTP payloads as a source: an endpoint that acknowledges a payload only once it is durable.

``WebhookSource(port, path, log_dir=..., schema=...)`` runs an HTTP server (uvicorn + starlette, in a thread of
the process that reads the source's one partition: the Ray actor of subtask 0). Each ``POST`` to ``path`` carries
one payload (a JSON object); the server appends it to a :class:`~headwater.sources.webhook_log.WebhookLog` in
``log_dir``, fsyncs, and only then answers ``200 {"offset": n}``. The partition reads the log by offset.

Invariants:

* **An acknowledged payload is never lost**: it is on disk before the 2xx. The position (:class:`WebhookPosition`)
  is the log offset after the last record emitted; a restore reads the log from there, so what was acknowledged
  but not yet checkpointed is read again, once. Segments wholly before the last *completed* checkpoint's position
  are deleted in :meth:`WebhookPartition.on_checkpoint_complete`, never earlier.
* **Decoding happens in the pipeline, not at the door**: an authenticated payload within ``max_body_bytes`` is
  logged and acknowledged whatever it holds; one that does not decode into ``schema`` (not JSON, not UTF-8, wrong
  types, missing fields, over ``max_record_bytes``) becomes a dead letter with the reason. A client's mistake is
  answered 4xx (401 no or bad credential, 404 other paths, 405 other methods, 411/413 size), never 5xx; a 503
  means the log could not be written (retry).
* **Deny by default**: the server binds ``127.0.0.1`` unless ``host`` says otherwise, and requires a credential:
  ``auth="bearer"`` (``Authorization: Bearer <secret>``) or ``auth="hmac"`` (``X-Signature-256: sha256=<hex
  HMAC-SHA256 of the body>``, as GitHub signs), the secret from ``secret``/``secret_env``/``secret_file``;
  ``auth="none"`` must be asked for. Secrets are compared in constant time and never logged.
* **One partition**: the endpoint is one port, so the source has one partition whatever the step's parallelism.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import SecretStr

from headwater.clients.http import read_secret
from headwater.core import plain_data
from headwater.core.dead_letters import DeadLetter, decode_position
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourceLag, SourcePartition
from headwater.sources.decoding import DEFAULT_MAX_RECORD_BYTES, JsonDecoder
from headwater.sources.webhook_log import WebhookLog

__all__ = ["METADATA_COLUMNS", "WebhookPartition", "WebhookPosition", "WebhookSource"]

log = logging.getLogger(__name__)

PART = "webhook"
#: the columns every batch carries after the decoded ones
METADATA_COLUMNS = pa.schema([
    pa.field("webhook_offset", pa.int64(), nullable=False),
    pa.field("received_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


@plain_data.register(name="headwater.WebhookPosition")
@dataclass(frozen=True)
class WebhookPosition:
    """The log offset after the last record emitted (resume reading there)."""

    offset: int = 0


class WebhookSource(Source):
    """Receive webhook ``POST``\\ s on ``host:port`` + ``path`` (see the module docstring for the guarantees).

    Example::

        hooks = WebhookSource(8787, "/hooks/orders", log_dir="state/webhook-orders",
                              schema=pa.schema([("id", pa.int64()), ("total", pa.float64())]),
                              auth="hmac", secret_env="ORDERS_WEBHOOK_SECRET")
    """

    bounded = False
    replayable = True

    def __init__(
        self,
        port: int,
        path: str,
        *,
        log_dir: str | Path,
        schema: pa.Schema,
        host: str = "127.0.0.1",
        auth: Literal["bearer", "hmac", "none"] = "bearer",
        secret: str | SecretStr | None = None,
        secret_env: str | None = None,
        secret_file: str | None = None,
        signature_header: str = "X-Signature-256",
        max_body_bytes: int = 4 << 20,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_batch_records: int = 10_000,
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
    ) -> None:
        owner = "WebhookSource"
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{owner}: port must be an int in 1..65535, not {port!r}")
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?# "):
            raise ConfigError(f"{owner}: path must start with '/' (e.g. '/hooks/orders'), not {path!r}")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{owner}: host must be an address to bind, such as '127.0.0.1', not {host!r}")
        if auth not in ("bearer", "hmac", "none"):
            raise ConfigError(f"{owner}: auth must be 'bearer', 'hmac' or 'none', not {auth!r}")
        self.secret = read_secret(value=secret, env=secret_env, file=secret_file, what="secret")
        if auth == "none":
            if self.secret is not None:
                raise ConfigError(f"{owner}: auth='none' takes no secret; drop it or choose auth='bearer'/'hmac'")
        elif self.secret is None:
            raise ConfigError(f"{owner}: auth={auth!r} needs secret=, secret_env= or secret_file= (webhooks deny "
                              "by default; auth='none' accepts anyone who can reach the port)")
        if not isinstance(signature_header, str) or not signature_header:
            raise ConfigError(f"{owner}: signature_header must be a header name, not {signature_header!r}")
        for name, value in (("max_body_bytes", max_body_bytes), ("max_record_bytes", max_record_bytes),
                            ("max_batch_records", max_batch_records), ("segment_bytes", segment_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{owner}: {name} must be a positive int, not {value!r}")
        if not isinstance(log_dir, (str, Path)) or not str(log_dir):
            raise ConfigError(f"{owner}: log_dir must be a directory the source owns (on local disk), not {log_dir!r}")
        self.decoder = JsonDecoder(schema, max_record_bytes=max_record_bytes)
        clash = sorted(set(schema.names) & set(METADATA_COLUMNS.names))
        if clash:
            raise ConfigError(f"{owner}: schema fields {clash} clash with the metadata columns "
                              f"{METADATA_COLUMNS.names}; rename them in the schema")
        self.port, self.path, self.host, self.auth = port, path, host, auth
        self.signature_header = signature_header
        self.log_dir = Path(log_dir)
        self.max_body_bytes, self.max_batch_records = max_body_bytes, max_batch_records
        self.segment_bytes, self.fsync = segment_bytes, fsync
        self._schema = pa.schema(list(schema) + list(METADATA_COLUMNS))

    def __repr__(self) -> str:
        return (f"WebhookSource(http://{self.host}:{self.port}{self.path}, auth={self.auth}, "
                f"log_dir={str(self.log_dir)!r})")

    def schema(self) -> pa.Schema:
        return self._schema

    def list_parts(self) -> list[str]:
        return [PART]

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        """Open the log and start the server (the port is bound before this returns)."""
        if part != PART:
            raise SourceError(f"WebhookSource has one partition, {PART!r}, not {part!r}", transient=False)
        if resume_state is not None and not isinstance(resume_state, WebhookPosition):
            raise SourceError(f"WebhookSource: resume state must be a WebhookPosition, got "
                              f"{type(resume_state).__name__}", transient=False)
        return WebhookPartition(self, resume_state or WebhookPosition())

    def rows(self, records: list[tuple[int, int, bytes]]) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Log records ``(offset, received_ms, payload)`` as rows of :meth:`schema` and dead letters."""
        payloads = [p for _, _, p in records]
        decoded = self.decoder.decode(payloads)
        dead = [DeadLetter(payload=payloads[f.index], reason=f.reason, error=f.error, partition=PART,
                           position=records[f.index][0], event_time_ms=records[f.index][1])
                for f in decoded.failures]
        if decoded.batch.num_rows == 0:
            return None, dead
        offsets = pa.array([o for o, _, _ in records], pa.int64())
        received = pa.array([r for _, r, _ in records], pa.int64())
        columns = list(decoded.batch.columns) + [
            decoded.take(offsets), decoded.take(received).cast(pa.timestamp("ms", tz="UTC"))]
        return pa.RecordBatch.from_arrays(columns, schema=self._schema), dead

    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead-lettered payloads again, with their log offset and receive time."""
        records = []
        for row in letters.to_pylist():
            offset = decode_position(row["position"])
            stamp = row["event_time"]
            records.append((int(offset) if isinstance(offset, int) else -1,
                            int(stamp.timestamp() * 1000) if stamp is not None else 0, row["payload"] or b""))
        return self.rows(records)

    # -- the door --------------------------------------------------------------------------------------------
    def authorised(self, headers: Any, body: bytes) -> bool:
        if self.auth == "none":
            return True
        assert self.secret is not None
        key = self.secret.get_secret_value().encode()
        if self.auth == "bearer":
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), key)
        signature = headers.get(self.signature_header.lower(), "")
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature.strip().encode(), expected.encode())


class _Server:
    """uvicorn serving the starlette app in a daemon thread, on a socket bound before :meth:`start` returns."""

    def __init__(self, source: WebhookSource, log_: WebhookLog) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        self.accepted = 0

        async def receive(request: Request) -> JSONResponse:
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > source.max_body_bytes):
                return JSONResponse({"error": f"payload over max_body_bytes ({source.max_body_bytes:,})"}, 413)
            if source.auth == "bearer" and not source.authorised(request.headers, b""):
                return JSONResponse({"error": "missing or wrong Bearer token"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > source.max_body_bytes:
                    return JSONResponse({"error": f"payload over max_body_bytes ({source.max_body_bytes:,})"}, 413)
                chunks.append(chunk)
            body = b"".join(chunks)
            if source.auth == "hmac" and not source.authorised(request.headers, body):
                return JSONResponse({"error": f"missing or wrong {source.signature_header} signature"}, 401)
            try:
                offset = await run_in_threadpool(log_.append, body)
            except OSError as exc:
                log.error("WebhookSource %s: cannot append to the log in %s: %s", source.path, source.log_dir, exc)
                return JSONResponse({"error": "the payload could not be stored; retry"}, 503,
                                    headers={"Retry-After": "1"})
            self.accepted += 1
            return JSONResponse({"offset": offset}, 200)

        app = Starlette(routes=[Route(source.path, receive, methods=["POST"])])
        family = socket.AF_INET6 if ":" in source.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((source.host, source.port))
        except OSError as exc:
            self.sock.close()
            raise SourceError(f"WebhookSource: cannot listen on {source.host}:{source.port} ({exc.strerror}); is the "
                              "port taken by another process?", transient=True) from None
        self.sock.listen(1024)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name=f"webhook-{source.port}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(5.0)
        self.sock.close()


class WebhookPartition(SourcePartition):
    """The one partition of a :class:`WebhookSource`: owns the log and the server while it is open."""

    IDLE_POLL = 0.02  # seconds between looks at the log when nothing is new

    def __init__(self, source: WebhookSource, position: WebhookPosition) -> None:
        self._source = source
        self._position = position
        self._dead: list[DeadLetter] = []
        self.log = WebhookLog(source.log_dir, source.segment_bytes, source.fsync)
        try:
            if position.offset > self.log.durable:
                raise SourceError(f"WebhookSource: the checkpoint says offset {position.offset} but the log in "
                                  f"{source.log_dir} ends at {self.log.durable}: is it the log of this job?",
                                  transient=False)
            self._server = _Server(source, self.log)
            self._server.start()
        except BaseException:
            self.log.close()
            raise

    @property
    def accepted(self) -> int:
        """Payloads acknowledged by this partition's server."""
        return self._server.accepted

    def next_batch(self) -> pa.RecordBatch | None:
        records = self.log.read(self._position.offset, self._source.max_batch_records)
        if not records:
            return None
        self._position = WebhookPosition(records[-1][0] + 1)
        batch, dead = self._source.rows(records)
        self._dead.extend(dead)
        return batch

    def next_awake(self) -> float | None:
        if self.log.durable > self._position.offset:
            return None
        return time.monotonic() + self.IDLE_POLL

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def snapshot(self) -> WebhookPosition:
        return self._position

    def on_checkpoint_complete(self, checkpoint_id: int, position: PlainData) -> None:
        """The log before ``position`` is never needed again: delete its whole segments."""
        if isinstance(position, WebhookPosition):
            deleted = self.log.truncate_before(position.offset)
            if deleted:
                log.debug("WebhookSource %s: deleted %d log segment(s) before offset %d", self._source.path,
                          deleted, position.offset)

    def lag(self) -> SourceLag:
        """Records acknowledged but not yet emitted."""
        return SourceLag(records=self.log.durable - self._position.offset)

    def close(self) -> None:
        try:
            self._server.stop()
        finally:
            self.log.close()
