"""HTTP APIs as a source: REST polling (cursor, page-number, ``Link`` header or no pagination) and GraphQL
connections, with positions that resume exactly after the last record emitted.

Invariants:

* **One partition** (``"http"``): an API walk is sequential (each page names the next), so the source reads with
  parallelism 1 whatever the step's parallelism; the other subtasks of the step have nothing to read.
* **The position is what was emitted**: :class:`HttpPosition` holds the page's *token* (cursor, page number or
  URL, see :mod:`headwater.sources.pagination`), ``skip`` (records of that page emitted already, good or
  dead-lettered) and the page's validators (``ETag``/``Last-Modified``). A restore requests that page again and
  drops its first ``skip`` records. Pages fetched ahead are not in the position. After the last page (no next
  token), the position *stays* on it with ``skip`` = its record count; the next poll asks for it again, with
  ``If-None-Match``/``If-Modified-Since`` (``304``: nothing new), and emits only the records after ``skip``. So
  repeated polls of a growing collection never re-emit a record — provided pagination is stable (see the docs).
* **next_batch() never blocks**: a daemon thread per partition does the requests (each bounded by the
  timeouts), the retries and the waits between polls, and puts pages into a bounded queue (``prefetch``).
  ``next_batch()`` takes a page off it, or returns ``None`` at once; ``next_awake()`` says when the next page may
  be there (the next attempt of a retry, or the next poll), so an idle source sleeps.
* **Retries**: 5xx, 408/425/429, timeouts, connection errors and a 2xx body that is not JSON are retried with
  exponential backoff and jitter (tenacity; ``Retry-After`` honoured, as seconds or an HTTP date) for up to
  ``max_retry_seconds``; then the partition fails with a transient :class:`~headwater.errors.SourceError` and a
  checkpointed job restarts from its checkpoint. Any other 4xx fails at once, deterministically: 401/403 name
  the credential *setting* (never its value).
* **Bad records never stop the job**: a record that does not decode into ``schema`` is a dead letter
  (partition ``"http"``, position ``{"token": ..., "index": i}``: the page and the record's index in it).
"""

from __future__ import annotations

import json
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa
from pydantic import SecretStr

from headwater.clients.http import RETRIABLE_STATUSES, HttpClientSettings, RetryableHttpError, retry_after_seconds
from headwater.core import plain_data
from headwater.core.dead_letters import DeadLetter
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourceLag, SourcePartition
from headwater.sources.decoding import DEFAULT_MAX_RECORD_BYTES, JsonDecoder
from headwater.sources.pagination import MISSING, GraphQLPagination, NoPagination, Pagination, Request, json_path
from headwater.sources.prefetch import FetchFailed, PrefetchThread

__all__ = ["HttpPosition", "HttpSource", "HttpSourcePartition"]

log = logging.getLogger(__name__)

PART = "http"
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20


@plain_data.register(name="headwater.HttpPosition")
@dataclass(frozen=True)
class HttpPosition:
    """Where the HTTP partition resumes: request the page ``token`` (``None``: the first page) and drop its first
    ``skip`` records; ``etag``/``last_modified`` are the validators of that page's last response, set only when
    every record of it was emitted (so a ``304`` means: nothing after ``skip``)."""

    token: str | int | None = None
    skip: int = 0
    etag: str | None = None
    last_modified: str | None = None


class HttpSource(Source):
    """Poll an HTTP JSON API (see the module docstring for the guarantees, docs/connectors/http.md for more).

    Example::

        issues = HttpSource(
            "https://api.example.com/v1/events", schema=pa.schema([("id", pa.int64()), ("kind", pa.string())]),
            records_path="data", pagination=CursorPagination(next_path="meta.next_cursor", param="cursor"),
            token_env="EXAMPLE_API_TOKEN", poll_interval=10)

    Options: ``schema`` (required: the fields read from each record; absent ones are null, non-nullable ones
    required), ``records_path`` (dotted path of the records list in the body; ``""``: the body is the list;
    GraphQL fixes it), ``pagination`` (:mod:`headwater.sources.pagination`), ``params`` (query parameters of
    every request), ``bounded`` (walk the pages until the last one, then end), ``poll_interval`` (seconds between
    polls of the last page, unbounded mode), ``max_batch_records`` (a page larger than this is emitted in
    slices), ``max_record_bytes`` (larger records are ``oversize`` dead letters), ``max_response_bytes``,
    ``prefetch`` (pages fetched ahead), and the client settings of
    :class:`~headwater.clients.http.HttpClientSettings` (headers, credential, timeouts, backoff).
    """

    replayable = True

    def __init__(
        self,
        url: str,
        *,
        schema: pa.Schema,
        records_path: str | None = None,
        pagination: Pagination | None = None,
        params: Mapping[str, str] | None = None,
        bounded: bool = False,
        poll_interval: float = 5.0,
        headers: Mapping[str, str] | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str | None = "Bearer",
        token: str | SecretStr | None = None,
        token_env: str | None = None,
        token_file: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_seconds: float = 300.0,
        verify_tls: bool = True,
        allow_insecure_http: bool = False,
        max_batch_records: int = 10_000,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        prefetch: int = 2,
    ) -> None:
        owner = "HttpSource"
        self.settings = HttpClientSettings.build(
            url, headers=dict(headers or {}), auth_header=auth_header, auth_scheme=auth_scheme,
            token=SecretStr(token) if isinstance(token, str) else token, token_env=token_env, token_file=token_file,
            connect_timeout=connect_timeout, read_timeout=read_timeout, initial_backoff=initial_backoff,
            max_backoff=max_backoff, max_retry_seconds=max_retry_seconds, verify_tls=verify_tls,
            allow_insecure_http=allow_insecure_http,
        )
        if not isinstance(schema, pa.Schema) or len(schema) == 0:
            raise ConfigError(f"{owner}: schema=pa.schema([...]) is required, naming the fields to read from each "
                              "record (the schema is checked at build time, so it is not inferred)")
        self.decoder = JsonDecoder(schema, max_record_bytes=max_record_bytes)
        self.pagination = pagination if pagination is not None else NoPagination()
        if not isinstance(self.pagination, Pagination):
            raise ConfigError(f"{owner}: pagination must be CursorPagination, PagePagination, LinkPagination, "
                              f"GraphQLPagination or NoPagination, not {pagination!r}")
        fixed = self.pagination.records_path
        if fixed is not None and records_path is not None and records_path != fixed:
            raise ConfigError(f"{owner}: GraphQL records are at {fixed!r} (connection_path + nodes/edges); drop "
                              f"records_path={records_path!r}")
        self.records_path = fixed if fixed is not None else (records_path or "")
        if not isinstance(self.records_path, str) or (self.records_path and any(
                not p for p in self.records_path.split("."))):
            raise ConfigError(f"{owner}: records_path must be a dotted JSON path such as 'data.items' (or '' when "
                              f"the body is the list), not {records_path!r}")
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        if not isinstance(bounded, bool):
            raise ConfigError(f"{owner}: bounded must be True or False, not {bounded!r}")
        if not isinstance(poll_interval, (int, float)) or isinstance(poll_interval, bool) or poll_interval < 0.01:
            raise ConfigError(f"{owner}: poll_interval must be >= 0.01 seconds, not {poll_interval!r}")
        for name, value, least in (("max_batch_records", max_batch_records, 1), ("prefetch", prefetch, 1),
                                   ("max_response_bytes", max_response_bytes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{owner}: {name} must be an int >= {least}, not {value!r}")
        self.bounded = bounded
        self.poll_interval = float(poll_interval)
        self.max_batch_records = max_batch_records
        self.max_response_bytes = max_response_bytes
        self.prefetch = prefetch

    def __repr__(self) -> str:
        mode = "bounded" if self.bounded else f"polling every {self.poll_interval:g} s"
        return f"HttpSource({self.settings.describe()}, {type(self.pagination).__name__}, {mode})"

    def schema(self) -> pa.Schema:
        return self.decoder.schema

    def list_parts(self) -> list[str]:
        return [PART]

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        if part != PART:
            raise SourceError(f"HttpSource has one partition, {PART!r}, not {part!r}", transient=False)
        if resume_state is not None and not isinstance(resume_state, HttpPosition):
            raise SourceError(f"HttpSource: resume state must be an HttpPosition, got {type(resume_state).__name__}",
                              transient=False)
        position = resume_state or HttpPosition()
        try:
            self.pagination.check_token(position.token)
        except ValueError as exc:
            raise SourceError(f"HttpSource: the checkpointed position does not fit {type(self.pagination).__name__}"
                              f" ({exc}); was the pagination changed?", transient=False) from None
        return HttpSourcePartition(self, position)

    def rows(self, payloads: list[bytes], token: str | int | None, first_index: int,
             ) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Records (JSON bytes) of page ``token``, the first at index ``first_index``, as rows and dead letters."""
        decoded = self.decoder.decode(payloads)
        dead = [DeadLetter(payload=payloads[f.index], reason=f.reason, error=f.error, partition=PART,
                           position={"token": token, "index": first_index + f.index}) for f in decoded.failures]
        return (decoded.batch if decoded.batch.num_rows else None), dead

    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead-lettered records again with the source's decoder (same schema, same checks)."""
        from headwater.core.dead_letters import decode_position

        payloads = [p or b"" for p in letters.column("payload").to_pylist()]
        positions = [decode_position(p) for p in letters.column("position").to_pylist()]
        decoded = self.decoder.decode(payloads)
        dead = [DeadLetter(payload=payloads[f.index], reason=f.reason, error=f.error, partition=PART,
                           position=positions[f.index]) for f in decoded.failures]
        return (decoded.batch if decoded.batch.num_rows else None), dead

    # -- one request (called by the fetch thread) --------------------------------------------------------------
    def fetch(self, client: Any, position: HttpPosition) -> _Page | None:
        """The page at ``position`` (``None``: ``304 Not Modified``); raises :class:`RetryableHttpError` or
        httpx transport errors for what a retry may cure, :class:`SourceError` for what it cannot."""
        request = self.pagination.request(self.settings.base_url, self.params, position.token)
        if not self.settings.same_origin(request.url):
            raise SourceError(f"HttpSource: the API sent a next-page URL outside {self.settings.base_url}'s origin; "
                              "it is not followed (the credential would go there)", transient=False)
        headers = {}
        if position.etag is not None:
            headers["If-None-Match"] = position.etag
        if position.last_modified is not None:
            headers["If-Modified-Since"] = position.last_modified
        status, response_headers, links, content = self._send(client, request, headers)
        if status == 304:
            return None
        try:
            body = json.loads(content.decode("utf-8", "surrogateescape"))
        except ValueError as exc:
            raise RetryableHttpError(f"HTTP {status} with a body that is not JSON ({exc})", status=status) from None
        if isinstance(self.pagination, GraphQLPagination) and isinstance(body, dict) and body.get("errors"):
            messages = "; ".join(str(e.get("message", e) if isinstance(e, dict) else e) for e in body["errors"][:3])
            raise SourceError(f"HttpSource: the GraphQL API answered with errors: {messages[:500]}", transient=False)
        found = json_path(body, self.records_path)
        if found is MISSING or not isinstance(found, list):
            what = "is missing" if found is MISSING else f"holds a {type(found).__name__}, not a list"
            keys = sorted(body)[:10] if isinstance(body, dict) else type(body).__name__
            raise SourceError(f"HttpSource: records_path {self.records_path!r} {what} in the response of "
                              f"{request.url} (top level: {keys}); fix records_path", transient=False)
        records = [_json_bytes(self.pagination.unwrap(item)) for item in found]
        next_token = self.pagination.next_token(body, links, position.token, len(records))
        if len(records) < position.skip:
            log.warning("HttpSource %s: page %r has %d records, fewer than the %d already emitted from it; the API's "
                        "pagination is not stable (records were removed or reordered)", self.settings.base_url,
                        position.token, len(records), position.skip)
        new = records[position.skip:]
        if next_token is not None:
            after = HttpPosition(token=next_token)
        else:
            after = HttpPosition(position.token, max(len(records), position.skip), response_headers.get("etag"),
                                 response_headers.get("last-modified"))
        return _Page(position.token, position.skip, new, after, more=next_token is not None)

    def _send(self, client: Any, request: Request, headers: dict[str, str],
              ) -> tuple[int, Mapping[str, str], dict[str, str], bytes]:
        import httpx

        built = client.build_request(request.method, request.url, params=request.params or None, json=request.json,
                                     headers=headers)
        response = client.send(built, stream=True)
        try:
            status = response.status_code
            if status == 304:
                return status, response.headers, {}, b""
            if status in RETRIABLE_STATUSES:
                raise RetryableHttpError(f"HTTP {status} from {built.url.copy_with(query=None)}", status=status,
                                         retry_after=retry_after_seconds(response.headers.get("retry-after")))
            if status in (401, 403):
                raise SourceError(f"HttpSource: HTTP {status} from {built.url.copy_with(query=None)}: the API refused "
                                  f"the credential ({self.settings.auth_setting()}, header "
                                  f"{self.settings.auth_header!r}); check it", transient=False)
            if not 200 <= status < 300:
                raise SourceError(f"HttpSource: HTTP {status} from {built.url.copy_with(query=None)} "
                                  f"({_snippet(response)})", transient=False)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise SourceError(f"HttpSource: a response of {built.url.copy_with(query=None)} exceeds "
                                      f"max_response_bytes={self.max_response_bytes:,}", transient=False)
                chunks.append(chunk)
            links = {rel: link["url"] for rel, link in response.links.items() if "url" in link}
            return status, response.headers, {k: str(v) for k, v in links.items()}, b"".join(chunks)
        except httpx.StreamError as exc:
            raise RetryableHttpError(f"reading the response failed: {exc}") from exc
        finally:
            response.close()


def _snippet(response: Any) -> str:
    try:
        return response.read()[:200].decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - only for the message
        return "no body"


def _json_bytes(record: Any) -> bytes:
    """One record as JSON bytes; text that was not valid UTF-8 in the response stays invalid (a dead letter)."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class _Page:
    token: str | int | None
    skip: int  # index in the page of new[0]
    new: list[bytes]  # the records not emitted before
    after: HttpPosition  # the position once every record of `new` is emitted
    more: bool  # a next page exists


@dataclass(frozen=True)
class _End:
    pass


class _Fetcher(PrefetchThread[_Page | _End]):
    """The fetch thread: requests pages from ``position`` on, with retries, into a bounded queue; in unbounded
    mode it polls the last page every ``poll_interval``. It owns the httpx client."""

    def __init__(self, source: HttpSource, position: HttpPosition) -> None:
        self.source = source
        self.position = position
        super().__init__("http-source", source.prefetch)
        self.wake_at = time.monotonic()
        self.last_success: float | None = None  # wall-clock time of the last good response
        self.requests = 0

    def _before_sleep(self, state: Any) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        self.wake_at = time.monotonic() + wait
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("HttpSource %s: %s; retrying in %.2f s (attempt %d)", self.source.settings.base_url,
                    error if isinstance(error, RetryableHttpError) else type(error).__name__, wait, state.attempt_number)

    def fetch(self) -> None:
        source = self.source
        client = source.settings.client()
        try:
            while not self.stopping.is_set():
                self.wake_at = time.monotonic() + 0.05
                page: _Page | None = None
                for attempt in source.settings.retrying(stop_event=self.stopping, before_sleep=self._before_sleep):
                    with attempt:
                        self.requests += 1
                        page = source.fetch(client, self.position)
                if self.stopping.is_set():
                    return
                self.last_success = time.time()
                if page is not None:
                    self.put(page)
                    self.position = page.after
                    if page.more:
                        continue
                if source.bounded:
                    self.put(_End())
                    return
                self.wake_at = time.monotonic() + source.poll_interval
                if self.stopping.wait(source.poll_interval):
                    return
        finally:
            client.close()


class HttpSourcePartition(SourcePartition):
    """The one partition of an :class:`HttpSource`; resume state: an :class:`HttpPosition`."""

    def __init__(self, source: HttpSource, position: HttpPosition) -> None:
        self._source = source
        self._position = position
        self._fetcher: _Fetcher | None = None
        self._page: _Page | None = None
        self._emitted = 0  # records of self._page.new emitted
        self._dead: list[DeadLetter] = []
        self._ended = False

    def next_batch(self) -> pa.RecordBatch | None:
        if self._ended:
            raise StopIteration
        if self._fetcher is None:
            self._fetcher = _Fetcher(self._source, self._position)
            self._fetcher.start()
        if self._page is None:
            try:
                item = self._fetcher.queue.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, FetchFailed):
                raise self._failure(item.error)
            if isinstance(item, _End):
                self._ended = True
                raise StopIteration
            self._page, self._emitted = item, 0
        page = self._page
        chunk = page.new[self._emitted:self._emitted + self._source.max_batch_records]
        first = page.skip + self._emitted
        self._emitted += len(chunk)
        if self._emitted >= len(page.new):
            self._position, self._page = page.after, None
        else:
            self._position = HttpPosition(page.token, first + len(chunk))
        if not chunk:
            return None
        batch, dead = self._source.rows(chunk, page.token, first)
        self._dead.extend(dead)
        return batch

    def _failure(self, error: BaseException) -> SourceError:
        if isinstance(error, SourceError):
            return error
        failure = SourceError(
            f"HttpSource: requests to {self._source.settings.base_url} still fail after retrying for "
            f"max_retry_seconds={self._source.settings.max_retry_seconds:g}: {type(error).__name__}: {error}",
            transient=True)
        failure.__cause__ = error
        return failure

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def next_awake(self) -> float | None:
        fetcher = self._fetcher
        if fetcher is None or self._ended or self._page is not None or not fetcher.queue.empty():
            return None
        return max(fetcher.wake_at, time.monotonic() + 0.005)

    def snapshot(self) -> HttpPosition:
        """The page and the records of it emitted (``build_part("http", snapshot())`` resumes right after)."""
        return self._position

    def lag(self) -> SourceLag | None:
        """Seconds since the last successful response (the API cannot say how many records are behind)."""
        fetcher = self._fetcher
        if fetcher is None or fetcher.last_success is None:
            return None
        return SourceLag(seconds=time.time() - fetcher.last_success)

    def close(self) -> None:
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            fetcher.stop()
