"""HttpSource against a real HTTP server in the test (uvicorn + starlette on 127.0.0.1, over sockets; httpx is
not mocked). The server pages a list of records four ways (cursor, page number, Link header, GraphQL), sends
ETags, requires a bearer token, and injects faults on demand: 500s, 429s with Retry-After, slow responses
(client timeouts). Faults end with output equal to a fault-free run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import tempfile
import threading
import time
from collections import deque
from datetime import timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import SimulatedCrashError, SourceError
from headwater.sinks.testing import TestingSink
from headwater.sources import (
    CursorPagination,
    GraphQLPagination,
    HttpPosition,
    HttpSource,
    LinkPagination,
    NoPagination,
    PagePagination,
)
from headwater.sources.base import drain

pytestmark = pytest.mark.http

TOKEN = "s3cret-token-value"
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
QUERY = ("query ($after: String, $first: Int) { items(first: $first, after: $after) "
         "{ nodes { id name } pageInfo { endCursor hasNextPage } } }")


class Api:
    """The test API: ``items`` (raw JSON texts, so a test can serve bytes json.dumps would not make) paged by
    ``size``; ``faults`` is consumed one per request: ``"500"``, ``"429"``, ``"429-date"``, ``"slow"``."""

    def __init__(self, count: int = 0, size: int = 10) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.items: list[bytes] = [json.dumps({"id": i, "name": f"n{i}"}).encode() for i in range(count)]
        self.size = size
        self.faults: deque[str] = deque()
        self.requests = self.not_modified = self.faulted = 0
        self.lock = threading.Lock()

        def page(start: int, stop: int) -> bytes:
            return b"[" + b",".join(self.items[start:stop]) + b"]"

        async def respond(request: Request, body: bytes, headers: dict[str, str] | None = None) -> Response:
            with self.lock:
                self.requests += 1
                fault = self.faults.popleft() if self.faults else None
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return Response(b'{"error":"unauthorised"}', 401)
            if fault is not None:
                self.faulted += 1
                if fault == "500":
                    return Response(b"oops", 500)
                if fault == "429":
                    return Response(b"slow down", 429, headers={"Retry-After": "0"})
                if fault == "429-date":
                    return Response(b"slow down", 429, headers={"Retry-After": formatdate(time.time(), usegmt=True)})
                if fault == "slow":
                    await asyncio.sleep(1.0)
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if request.headers.get("if-none-match") == etag:
                self.not_modified += 1
                return Response(status_code=304, headers={"ETag": etag})
            return Response(body, 200, media_type="application/json", headers={"ETag": etag, **(headers or {})})

        async def cursor(request: Request) -> Response:
            start = int(request.query_params.get("cursor", "0"))
            stop = start + self.size
            more = stop < len(self.items)
            body = b'{"data":' + page(start, stop) + b',"meta":{"next_cursor":' + (
                f'"{stop}"'.encode() if more else b"null") + b"}}"
            return await respond(request, body)

        async def pages(request: Request) -> Response:
            number, size = int(request.query_params["page"]), int(request.query_params["per_page"])
            return await respond(request, page((number - 1) * size, number * size))

        async def link(request: Request) -> Response:
            start = int(request.query_params.get("offset", "0"))
            stop = start + self.size
            headers = {"Link": f'<{self.url}/link?offset={stop}>; rel="next"'} if stop < len(self.items) else {}
            return await respond(request, page(start, stop), headers)

        async def everything(request: Request) -> Response:
            return await respond(request, page(0, len(self.items)))

        async def graphql(request: Request) -> Response:
            variables = (await request.json())["variables"]
            start = int(variables["after"] or 0)
            stop = min(start + variables["first"], len(self.items))
            info = {"endCursor": str(stop) if stop > start else variables["after"], "hasNextPage": stop < len(self.items)}
            body = b'{"data":{"items":{"nodes":' + page(start, stop) + b',"pageInfo":' + json.dumps(info).encode() + b"}}}"
            return await respond(request, body)

        app = Starlette(routes=[Route("/cursor", cursor), Route("/pages", pages), Route("/link", link),
                                Route("/all", everything), Route("/graphql", graphql, methods=["POST"])])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def add(self, ids: range) -> None:
        with self.lock:
            self.items += [json.dumps({"id": i, "name": f"n{i}"}).encode() for i in ids]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api(95, size=10)
    yield server
    server.close()


def _source(api: Api, mode: str, **options: Any) -> HttpSource:
    options.setdefault("bounded", True)
    options.setdefault("token", TOKEN)
    options.setdefault("initial_backoff", 0.01)
    options.setdefault("max_backoff", 0.05)
    options.setdefault("read_timeout", 0.5)
    if mode == "cursor":
        return HttpSource(f"{api.url}/cursor", schema=SCHEMA, records_path="data",
                          pagination=CursorPagination(next_path="meta.next_cursor"), **options)
    if mode == "page":
        return HttpSource(f"{api.url}/pages", schema=SCHEMA, pagination=PagePagination(size_param="per_page", size=10),
                          **options)
    if mode == "link":
        return HttpSource(f"{api.url}/link", schema=SCHEMA, pagination=LinkPagination(), **options)
    if mode == "graphql":
        return HttpSource(f"{api.url}/graphql", schema=SCHEMA, pagination=GraphQLPagination(
            QUERY, connection_path="data.items", variables={"first": 10}), **options)
    return HttpSource(f"{api.url}/all", schema=SCHEMA, pagination=NoPagination(), **options)


def _ids(partition: Any) -> list[int]:
    return [i for b in drain(partition) if b is not None for i in b.column("id").to_pylist()]


MODES = ["cursor", "page", "link", "graphql", "none"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pagination_mode_reads_every_record_once_in_order(api: Api, mode: str) -> None:
    source = _source(api, mode)
    partition = source.build_part("http", None)
    assert _ids(partition) == list(range(95))
    # the position stays on the last page, all of it emitted, with its ETag: the next bounded run finds nothing
    position = partition.snapshot()
    assert position.skip == (95 if mode == "none" else 5) and position.etag
    before = api.not_modified
    assert _ids(source.build_part("http", position)) == []
    assert api.not_modified == before + 1


@pytest.mark.parametrize("mode", MODES)
def test_500s_429s_and_timeouts_are_retried_and_lose_nothing(api: Api, mode: str) -> None:
    api.faults.extend(["500", "429", "slow", "500", "429-date", "500", "slow", "429"])
    assert _ids(_source(api, mode).build_part("http", None)) == list(range(95))
    assert api.faulted == 8


def test_a_growing_collection_is_polled_incrementally_with_conditional_requests(api: Api) -> None:
    partition = _source(api, "cursor", bounded=False, poll_interval=0.05).build_part("http", None)
    seen: list[int] = []

    def poll_until(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(seen) < count and time.monotonic() < deadline:
            batch = partition.next_batch()
            if batch is not None:
                seen.extend(batch.column("id").to_pylist())
            else:
                time.sleep(max(0.0, min(0.05, (partition.next_awake() or 0) - time.monotonic())))

    try:
        poll_until(95)
        time.sleep(0.3)  # a few polls of the unchanged last page: 304s
        assert api.not_modified >= 2
        api.add(range(95, 123))
        poll_until(123)
        assert partition.lag() is not None and partition.lag().seconds < 5
    finally:
        partition.close()
    assert seen == list(range(123))


def test_a_restore_in_the_middle_of_a_page_resumes_after_the_last_record_emitted(api: Api) -> None:
    source = _source(api, "link", max_batch_records=3)
    first = source.build_part("http", None)
    got: list[int] = []
    while len(got) < 17:
        batch = first.next_batch()
        if batch is not None:
            got += batch.column("id").to_pylist()
    position = first.snapshot()
    first.close()
    assert got == list(range(19))  # page 1 in slices of 3, 3, 3, 1; then 9 records of page 2
    assert position.token == f"{api.url}/link?offset=10" and position.skip == 9 and position.etag is None
    got += _ids(source.build_part("http", position))
    assert got == list(range(95))


def test_401_names_the_credential_setting_never_the_secret(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HW_TEST_API_TOKEN", "wrong-token-value")
    source = _source(api, "cursor", token=None, token_env="HW_TEST_API_TOKEN")
    assert "wrong-token-value" not in repr(source) and "HW_TEST_API_TOKEN" in repr(source)
    with pytest.raises(SourceError, match="HTTP 401.*token_env='HW_TEST_API_TOKEN'") as caught:
        _ids(source.build_part("http", None))
    assert caught.value.transient is False and "wrong-token-value" not in str(caught.value)


def test_retries_beyond_max_retry_seconds_fail_transiently(api: Api) -> None:
    api.faults.extend(["500"] * 10_000)
    with pytest.raises(SourceError, match="still fail after retrying") as caught:
        _ids(_source(api, "cursor", max_retry_seconds=0.3).build_part("http", None))
    assert caught.value.transient is True


class _CrashAt:
    """A map_batches function that raises once, when it first sees record ``at`` (a marker file remembers)."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, marker

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.at in batch.column("id").to_pylist() and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise SimulatedCrashError(f"killed at record {self.at}", transient=True)
        return batch


def _crash_run(api: Api, mode: str, crash_at: int, tmp: Path, executor: str = "local", batch: int = 4) -> list[int]:
    out = TestingSink()
    flow = hw.Dataflow("http-kill")
    (flow.source("api", _source(api, mode, max_batch_records=batch))
     .map_batches(_CrashAt(crash_at, str(tmp / "crashed"))).sink("out", out))
    result = hw.run(flow, executor=executor, checkpoint=hw.CheckpointConfig(
        dir=tmp / "ckpt", interval=timedelta(milliseconds=5), restart_delay=timedelta(0), max_restarts=3))
    assert result.restarts == 1
    return [r["id"] for r in out.rows()]


@pytest.mark.chaos
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), crash_at=st.integers(0, 94), batch=st.sampled_from([3, 10, 1000]),
       faults=st.lists(st.sampled_from(["500", "429", "slow"]), max_size=4))
def test_any_kill_point_with_server_faults_gives_the_output_of_a_clean_run(api: Api, mode: str, crash_at: int,
                                                                           batch: int, faults: list[str]) -> None:
    api.faults.clear()
    api.faults.extend(faults)
    with tempfile.TemporaryDirectory() as tmp:
        assert sorted(_crash_run(api, mode, crash_at, Path(tmp), batch=batch)) == list(range(95))


@pytest.mark.chaos
def test_a_kill_on_ray_gives_the_output_of_a_clean_run(ray_cluster: Any, api: Api, tmp_path: Path) -> None:
    api.faults.extend(["500", "429"])
    assert sorted(_crash_run(api, "cursor", 61, tmp_path, executor="ray")) == list(range(95))


def test_end_to_end_on_both_executors(runner: Any, api: Api, tmp_path: Path) -> None:
    out = TestingSink()
    flow = hw.Dataflow("http-e2e")
    flow.source("api", _source(api, "graphql")).filter(hw.col("id") % 2 == 0).sink("out", out)
    runner(flow, checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=20)),
           parallelism=2)
    assert sorted(r["id"] for r in out.rows()) == list(range(0, 95, 2))


GOOD = st.integers(0, 10**6).map(lambda i: json.dumps({"id": i, "name": "ok"}).encode())
BAD = st.one_of(
    st.sampled_from([b'{"id": "seven"}', b'{"name": "no id"}', b'{"id": null}', b"[1, 2]", b'"text"', b"3",
                     b'{"id": 1, "name": "\xff\xfe"}', b'{"id": 1, "name": "' + b"x" * 3000 + b'"}',
                     b'{"id": 1.5}', b'{"id": 99999999999999999999999}', b'{"id": true}']),
    st.builds(lambda v: json.dumps({"id": v}).encode(), st.one_of(st.text(max_size=5), st.floats(allow_nan=False),
                                                                  st.lists(st.integers(), max_size=2))),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.tuples(st.booleans(), GOOD, BAD), min_size=1, max_size=40))
def test_malformed_records_become_dead_letters_and_good_ones_all_arrive(api: Api, layout: list[Any]) -> None:
    api.items = [good if ok else bad for ok, good, bad in layout]
    good_ids = [json.loads(good)["id"] for ok, good, _ in layout if ok]
    out, dead = TestingSink(), TestingSink()
    flow = hw.Dataflow("http-dlq")
    stream = flow.source("api", _source(api, "cursor", max_record_bytes=2000))
    stream.sink("out", out)
    stream.dead_letters().sink("dlq", dead)
    hw.run(flow, executor="local")
    assert sorted(r["id"] for r in out.rows()) == sorted(good_ids)
    letters = dead.rows()
    assert len(letters) == len(layout) - len(good_ids)
    assert all(r["reason"] and r["error"] and r["partition"] == "http" for r in letters)


def test_replay_dead_letters_uses_the_same_decoder(api: Api) -> None:
    api.items = [b'{"id": 1}', b'{"id": 1, "name": "' + b"x" * 3000 + b'"}', b'{"id": "x"}']
    partition = _source(api, "cursor", max_record_bytes=2000).build_part("http", None)
    assert _ids(partition) == [1]
    letters = partition.take_dead_letters()
    assert [d.reason.value for d in letters] == ["oversize", "wrong_type"]
    assert [d.position for d in letters] == [{"token": None, "index": 1}, {"token": None, "index": 2}]
    from headwater.core.dead_letters import dead_letter_batch

    rows, still = _source(api, "cursor", max_record_bytes=10_000).replay_dead_letters(dead_letter_batch("api", letters))
    assert rows is not None and rows.column("id").to_pylist() == [1]
    assert [d.reason.value for d in still] == ["wrong_type"]


def test_position_is_plain_data() -> None:
    from headwater.core import plain_data

    position = HttpPosition(token="abc", skip=3, etag='"x"')
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(position)))) == position
