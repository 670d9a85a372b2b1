"""The Serve app over real HTTP: authentication (401), grants (403), masking, row filters, SQL refusals,
malformed input (4xx, never 5xx), Arrow IPC answers, feature look-ups, the audit log, and bind address."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater.access import read_audit

pytestmark = [pytest.mark.serve, pytest.mark.http, pytest.mark.ray]


def sql(api: Any, role: str | None, text: str, **headers: str) -> Any:
    with api.client(role) as client:
        return client.post("/sql", json={"sql": text}, headers=headers)


def test_healthz_is_open_and_the_rest_needs_a_token(api: Any) -> None:
    with api.client(None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        for method, path, body in (("GET", "/tables", None), ("GET", "/tables/clicks", None),
                                   ("POST", "/sql", {"sql": "SELECT 1"}), ("POST", "/query", {"table": "clicks"}),
                                   ("GET", "/features/clicks/u1", None)):
            response = client.request(method, path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        bad = client.get("/tables", headers={"Authorization": "Bearer hw_00000000_" + "x" * 43})
        assert bad.status_code == 401 and "unknown" in bad.json()["detail"]
        assert client.get("/tables", headers={"Authorization": "Basic abc"}).status_code == 401


def test_tables_lists_only_grants(api: Any) -> None:
    for role, expected in (("admin", ["clicks", "salaries"]), ("analyst", ["clicks"]), ("nobody", [])):
        with api.client(role) as client:
            assert [t["name"] for t in client.get("/tables").json()] == expected
    with api.client("analyst") as client:
        detail = client.get("/tables/clicks").json()
        assert [c["name"] for c in detail["columns"]] == ["user", "ts", "amount", "email"]
        assert [c["name"] for c in detail["columns"] if c["masked"]] == ["email"]
        assert detail["rows_per_tier"] == api.store.rows_per_tier("clicks")
        assert detail["row_filter"] == [["region", "==", "eu"]] and detail["key"] == ["user"]
        assert client.get("/tables/salaries").status_code == 403
        assert client.get("/tables/missing").status_code == 403  # existence is not revealed
    with api.client("admin") as client:
        assert client.get("/tables/missing").status_code == 404


def test_ungranted_tables_and_columns_are_403(api: Any) -> None:
    assert sql(api, "analyst", "SELECT * FROM salaries").status_code == 403
    assert sql(api, "nobody", "SELECT count(*) FROM clicks").status_code == 403
    assert sql(api, "analyst", "SELECT region FROM clicks").status_code == 403
    assert sql(api, "analyst", "SELECT c.user FROM clicks c JOIN salaries s ON true").status_code == 403
    with api.client("analyst") as client:
        assert client.post("/query", json={"table": "salaries"}).status_code == 403
        assert client.post("/query", json={"table": "clicks", "select": ["region"]}).status_code == 403
        assert client.get("/features/salaries/ann").status_code == 403


def test_row_filters_and_masking(api: Any) -> None:
    rows = api.store.scan("clicks").to_pylist()
    eu = [r for r in rows if r["region"] == "eu"]
    answer = sql(api, "analyst", "SELECT user, count(*) AS n, min(email) AS e FROM clicks GROUP BY user").json()
    assert answer["columns"] == ["user", "n", "e"]
    assert {r[0]: r[1] for r in answer["rows"]} == dict(Counter(r["user"] for r in eu))
    assert {r[2] for r in answer["rows"]} == {"***"}
    star = sql(api, "analyst", "SELECT * FROM clicks").json()
    assert star["columns"] == ["user", "ts", "amount", "email"] and len(star["rows"]) == len(eu)
    assert sql(api, "analyst", "SELECT count(*) FROM clicks WHERE email LIKE 'user%'").json()["rows"] == [[0]]
    support = sql(api, "support", "SELECT DISTINCT email FROM clicks ORDER BY email").json()
    assert support["rows"][0] == ["user0@example.com"] and len(support["rows"]) == 7
    with api.client("analyst") as client:
        structured = client.post("/query", json={"table": "clicks", "group_by": ["user"],
                                                 "aggregates": [{"fn": "sum", "column": "amount", "as": "total"}],
                                                 "order_by": [{"column": "user"}]}).json()
        totals: Counter[str] = Counter()
        for r in eu:
            totals[r["user"]] += r["amount"]
        assert structured["rows"] == sorted([[u, t] for u, t in totals.items()])
        assert client.post("/query", json={"table": "clicks", "filter": [
            {"column": "email", "op": "==", "value": "user1@example.com"}]}).status_code == 403
        feature = client.get("/features/clicks/u1").json()["row"]
        assert feature["email"] == "***" and "region" not in feature
        newest_eu = max((r for r in eu if r["user"] == "u1"), key=lambda r: r["ts"])
        assert feature["amount"] == newest_eu["amount"]


@pytest.mark.parametrize("text", [
    "CREATE TABLE x AS SELECT 1", "INSERT INTO clicks VALUES ('a')", "DELETE FROM clicks", "DROP TABLE clicks",
    "UPDATE clicks SET amount = 0", "COPY clicks TO '/tmp/headwater-leak.csv'", "ATTACH '/tmp/x.duckdb' AS x",
    "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "PRAGMA version",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "SELECT * FROM '/etc/passwd'", "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM glob('/*')",
    "SELECT * FROM duckdb_settings()", "SELECT current_setting('threads')", "SELECT * FROM information_schema.tables",
    "SELECT 1; SELECT 2", "DESCRIBE clicks", "SELECT * FROM main.salaries", "EXPORT DATABASE '/tmp/x'",
])
def test_sql_that_writes_reads_files_loads_extensions_or_leaves_grants_is_refused(api: Any, text: str) -> None:
    response = sql(api, "admin", text)
    assert response.status_code == 403, (text, response.status_code, response.text)
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"sql": 1}', b'{"sql": ""}', b'{"sql": "SELEC 1"}',
                                  b'{"sql": "SELECT nope FROM clicks"}', b'{"sql": "SELECT 1", "x": 2}', b""])
def test_malformed_sql_requests_are_4xx_with_a_message(api: Any, body: bytes) -> None:
    with api.client("admin") as client:
        response = client.post("/sql", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (body, response.text)
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [{"table": "clicks", "limit": -1}, {"table": "nope!"},
                                  {"table": "clicks", "aggregates": [{"fn": "sum"}]},
                                  {"table": "clicks", "filter": [{"column": "amount", "op": "in", "value": 3}]},
                                  {"table": "clicks", "filter": [{"column": "amount", "op": "==", "value": "x"}]},
                                  {"table": "clicks", "aggregates": [{"fn": "sum", "column": "user"}]},
                                  {"table": "clicks", "time_range": {"start": "yesterday"}},
                                  {"table": "salaries", "time_range": {"start": "2026-01-01T00:00:00Z"}}])
def test_malformed_structured_queries_are_4xx(api: Any, body: dict[str, Any]) -> None:
    with api.client("admin") as client:
        response = client.post("/query", json=body)
    assert 400 <= response.status_code < 500, (body, response.text)


def test_arrow_ipc_answers_equal_json_answers(api: Any) -> None:
    text = "SELECT user, ts, amount FROM clicks ORDER BY ts, amount"
    as_json = sql(api, "admin", text).json()
    response = sql(api, "admin", text, Accept="application/vnd.apache.arrow.stream")
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.column_names == as_json["columns"] and table.num_rows == len(as_json["rows"]) == 120
    assert table.column("amount").to_pylist() == [r[2] for r in as_json["rows"]]


def test_features_latest_row_and_as_of(api: Any) -> None:
    rows = [r for r in api.store.scan("clicks").to_pylist() if r["user"] == "u3"]
    with api.client("admin") as client:
        latest = client.get("/features/clicks/u3").json()
        assert latest["row"]["amount"] == max(rows, key=lambda r: r["ts"])["amount"]
        cut = sorted(r["ts"] for r in rows)[3]
        older = client.get("/features/clicks/u3", params={"as_of": cut.isoformat()}).json()
        assert older["row"]["amount"] == max((r for r in rows if r["ts"] <= cut), key=lambda r: r["ts"])["amount"]
        assert client.get("/features/clicks/nobody-has-this").status_code == 404
        assert client.get("/features/clicks/u3", params={"as_of": "not a time"}).status_code == 422


def test_every_request_is_audited_without_secrets(api: Any) -> None:
    marker = "SELECT 42 AS audited_marker"
    assert sql(api, "analyst", marker).json()["rows"] == [[42]]
    records = [r for r in read_audit(api.store.root) if r.get("event") == "access"]
    mine = [r for r in records if r.get("query") == marker]
    assert mine and mine[-1]["role"] == "analyst" and mine[-1]["rows"] == 1 and mine[-1]["status"] == 200
    assert mine[-1]["actor"].startswith("token:") and mine[-1]["at"]
    assert any(r["status"] == 401 for r in records)
    text = b"".join(p.read_bytes() for p in Path(api.store.root).glob("audit.db*")).decode("latin-1")  # with the WAL
    assert not any(token in text for token in api.tokens.values())


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6}; hex, as the kernel has it)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_listens_on_localhost_only(api: Any) -> None:
    assert api.url.startswith("http://127.0.0.1:")
    port = int(api.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::


def test_openapi_document_names_every_endpoint(api: Any) -> None:
    with api.client(None) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/healthz", "/tables", "/tables/{table}", "/sql", "/query", "/features/{table}/{key}"}
