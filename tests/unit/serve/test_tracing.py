"""Spans of the Serve app's requests (in-process app, memory exporter): a sampled caller's trace is continued,
the app samples the rest at its share, and spans hold routes and figures, never keys, tokens or query text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.access import TokenStore
from headwater.engine.tracing import finished_spans
from headwater.errors import ConfigError
from headwater.serve import AppConfig, build_app
from headwater.serve.tracing import REQUEST_SPAN, TABLES
from headwater.store import Store
from headwater.testing import commit_rows

pytestmark = pytest.mark.tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def request(app: Any, method: str, path: str, token: str | None = None, headers: dict[str, str] | None = None,
            **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
            return await client.request(method, path, headers=sent, **kwargs)

    return asyncio.run(go())


def _app(tmp_path: Path, sample: float) -> tuple[object, str]:
    store = Store(tmp_path)
    commit_rows(store, "clicks", [{"user": "secret-user", "n": 1}, {"user": "b", "n": 2}], key=["user"])
    _, token = TokenStore(store.root).create("admin")
    return build_app(AppConfig(store=store.root, trace_exporter="memory", trace_sample=sample)), token


def _requests() -> list[object]:
    return [s for s in finished_spans(clear=True) if s.name == REQUEST_SPAN]


def test_a_sampled_callers_trace_is_continued_with_the_route_status_and_rows(tmp_path: Path) -> None:
    app, token = _app(tmp_path, sample=0.0)
    finished_spans(clear=True)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
    sql = {"sql": "SELECT n FROM clicks WHERE n > 0"}
    assert request(app, "POST", "/sql", token, json=sql, headers=headers).status_code == 200
    assert request(app, "GET", "/features/clicks/secret-user", token, headers=headers).status_code == 200
    spans = _requests()
    assert [(s.attributes["http.route"], s.attributes["http.response.status_code"]) for s in spans] == [
        ("/sql", 200), ("/features/{table}/{key}", 200)]
    assert all(s.trace_id == TRACE_ID and s.parent_span_id == PARENT for s in spans)
    assert list(spans[0].attributes[TABLES]) == ["clicks"] and spans[0].attributes["headwater.rows"] == 2
    shown = repr([s.attributes for s in spans])
    assert "secret-user" not in shown and token not in shown and "SELECT" not in shown


def test_without_a_caller_trace_the_app_samples_at_its_share(tmp_path: Path) -> None:
    never, token = _app(tmp_path / "never", sample=0.0)
    always, other = _app(tmp_path / "always", sample=1.0)
    finished_spans(clear=True)
    for _ in range(3):
        assert request(never, "GET", "/tables", token).status_code == 200
    assert _requests() == []
    assert request(always, "GET", "/tables", other).status_code == 200
    assert request(always, "GET", "/tables").status_code == 401  # a client's mistake is traced too, as a 4xx
    spans = _requests()
    assert [s.attributes["http.response.status_code"] for s in spans] == [200, 401]
    assert all(s.parent_span_id is None for s in spans)


@pytest.mark.parametrize("header", ["00-{t}-{p}-00", "garbage", "00-{t}-{p}", "01-{t}-{p}-01", "00-" + "0" * 32 + "-{p}-01"])
def test_unsampled_or_malformed_traceparents_are_ignored_never_an_error(tmp_path: Path, header: str) -> None:
    app, token = _app(tmp_path, sample=0.0)
    finished_spans(clear=True)
    value = header.format(t=TRACE_ID, p=PARENT)
    assert request(app, "GET", "/tables", token, headers={"traceparent": value}).status_code == 200
    assert _requests() == []


def test_bad_trace_settings_fail_when_the_config_is_made() -> None:
    with pytest.raises(ConfigError, match="trace_exporter must be one of"):
        AppConfig(trace_exporter="jaeger")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trace_sample must be a share"):
        AppConfig(trace_sample=2.0)
