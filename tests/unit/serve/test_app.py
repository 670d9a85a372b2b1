"""The FastAPI app in-process (no Ray): error statuses come from one map, server-side damage is a 5xx with
no details, and answers encode every Arrow type as JSON (NaN as null, decimals, binary, timestamps)."""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from headwater.access import PolicyStore, TokenStore
from headwater.serve import AppConfig, build_app
from headwater.serve.encoding import to_json
from headwater.store import Store
from headwater.testing import commit_rows


def request(app: Any, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


def test_a_damaged_access_file_is_a_5xx_without_details(tmp_path: Path) -> None:
    store = Store(tmp_path)
    commit_rows(store, "t", [{"k": "a"}], key=["k"])
    _, token = TokenStore(store.root).create("admin")
    app = build_app(AppConfig(store=store.root))
    assert request(app, "GET", "/tables", token).status_code == 200
    Path(PolicyStore(store.root).path).write_text('{"format": "headwater-access", "roles": {"r": 1}}')
    response = request(app, "GET", "/tables", token)
    assert response.status_code == 500 and response.json() == {"detail": "internal error; see the server log"}


def test_json_answers_encode_every_type() -> None:
    table = pa.table({
        "f": pa.array([1.5, float("nan"), float("inf"), None]),
        "d": pa.array([Decimal("3"), Decimal("1.25"), None, Decimal("0")], pa.decimal128(10, 2)),
        "b": pa.array([b"\x00\x01", None, b"", b"x"]),
        "t": pa.array([0, None, 1, 2], pa.timestamp("ms", tz="UTC")),
        "l": pa.array([[1.0, float("nan")], None, [], [2.0]]),
    })
    document = json.loads(to_json(table))
    assert document["columns"] == ["f", "d", "b", "t", "l"]
    assert [r[0] for r in document["rows"]] == [1.5, None, None, None]
    assert [r[1] for r in document["rows"]] == [3, 1.25, None, 0]
    assert document["rows"][0][2] == base64.b64encode(b"\x00\x01").decode()
    assert document["rows"][0][3] == "1970-01-01T00:00:00+00:00"
    assert document["rows"][0][4] == [1.0, None]


def test_serve_config_binds_localhost_and_scales_on_load() -> None:
    import pytest
    from pydantic import ValidationError

    from headwater.serve import ServeConfig

    config = ServeConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=3)
    assert config.host == "127.0.0.1"
    assert config.autoscaling() == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                    "target_ongoing_requests": 3, "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}
    for bad in ({"min_replicas": 3, "max_replicas": 2}, {"port": 70000}, {"target_ongoing_requests": 0},
                {"hosts": "0.0.0.0"}):
        with pytest.raises(ValidationError):
            ServeConfig(**bad)  # type: ignore[arg-type]
