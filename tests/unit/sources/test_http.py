"""HttpSource / WebhookSource configuration, pagination strategies, Retry-After, secrets and the webhook log
(no network: the servers are exercised in tests/integration/test_http_source.py and test_webhook_source.py)."""

from __future__ import annotations

import os
import pickle
import time
from email.utils import formatdate
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.clients.http import read_secret, retry_after_seconds
from headwater.errors import ConfigError, SourceError
from headwater.sources import (
    CursorPagination,
    GraphQLPagination,
    HttpSource,
    LinkPagination,
    PagePagination,
    WebhookSource,
)
from headwater.sources.pagination import json_path
from headwater.sources.webhook_log import HEADER, WebhookLog

SCHEMA = pa.schema([("id", pa.int64())])
QUERY = "query ($after: String) { items(after: $after) { nodes { id } pageInfo { endCursor hasNextPage } } }"


def test_configuration_is_validated_at_build_time() -> None:
    with pytest.raises(ConfigError, match="must be http://host"):
        HttpSource("ftp://example.com/x", schema=SCHEMA)
    with pytest.raises(ConfigError, match="schema=pa.schema"):
        HttpSource("https://example.com/x", schema=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unencrypted"):
        HttpSource("http://example.com/x", schema=SCHEMA, token="t")
    with pytest.raises(ConfigError, match="carry credentials"):
        HttpSource("https://example.com/x", schema=SCHEMA, headers={"Authorization": "Bearer x"})
    with pytest.raises(ConfigError, match="must not hold credentials"):
        HttpSource("https://u:p@example.com/x", schema=SCHEMA)
    with pytest.raises(ConfigError, match="poll_interval"):
        HttpSource("https://example.com/x", schema=SCHEMA, poll_interval=0)
    with pytest.raises(ConfigError, match="records are at"):
        HttpSource("https://example.com/g", schema=SCHEMA, records_path="x",
                   pagination=GraphQLPagination(QUERY, connection_path="data.items"))
    with pytest.raises(ConfigError, match="next_path"):
        CursorPagination(next_path="a..b")
    with pytest.raises(ConfigError, match="size_param needs size"):
        PagePagination(size_param="per_page")
    with pytest.raises(ConfigError, match=r"does not use \$after"):
        GraphQLPagination("query { items { nodes { id } pageInfo { endCursor hasNextPage } } }", "data.items")
    with pytest.raises(ConfigError, match="pageInfo"):
        GraphQLPagination("query ($after: String) { items(after: $after) { nodes { id } } }", "data.items")
    with pytest.raises(ConfigError, match="environment variable is not set"):
        HttpSource("https://example.com/x", schema=SCHEMA, token_env="HW_SURELY_UNSET_VARIABLE")
    with pytest.raises(ConfigError, match="give one of"):
        HttpSource("https://example.com/x", schema=SCHEMA, token="a", token_env="B")


def test_secrets_are_masked_in_repr_and_pickles_carry_no_client(tmp_path: Path) -> None:
    source = HttpSource("https://example.com/x", schema=SCHEMA, token="very-secret")
    assert "very-secret" not in repr(source) and "very-secret" not in repr(source.settings)
    clone = pickle.loads(pickle.dumps(source))
    assert clone.settings.secret().get_secret_value() == "very-secret"
    hook = WebhookSource(8080, "/h", log_dir=tmp_path, schema=SCHEMA, secret="hook-secret")
    assert "hook-secret" not in repr(hook) and "hook-secret" not in repr(vars(hook))


def test_secrets_files_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("file-secret\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(value=None, env=None, file=path, what="token")
    os.chmod(path, 0o600)
    secret = read_secret(value=None, env=None, file=path, what="token")
    assert secret is not None and secret.get_secret_value() == "file-secret"


def test_webhooks_deny_by_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deny by default"):
        WebhookSource(8080, "/h", log_dir=tmp_path, schema=SCHEMA)
    assert WebhookSource(8080, "/h", log_dir=tmp_path, schema=SCHEMA, auth="none").host == "127.0.0.1"
    with pytest.raises(ConfigError, match="path must start"):
        WebhookSource(8080, "h", log_dir=tmp_path, schema=SCHEMA, secret="s")
    with pytest.raises(ConfigError, match="clash"):
        WebhookSource(8080, "/h", log_dir=tmp_path, schema=pa.schema([("received_at", pa.int64())]), secret="s")
    assert WebhookSource(8080, "/h", log_dir=tmp_path, schema=SCHEMA, secret="s").list_parts() == ["webhook"]


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert 9 <= retry_after_seconds(formatdate(now + 10, usegmt=True), now=now) <= 10  # type: ignore[operator]
    assert retry_after_seconds(formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("100000") == 300.0


def test_pagination_tokens() -> None:
    cursor = CursorPagination(next_path="meta.next", param="after", has_more_path="meta.more")
    assert cursor.request("https://x/y", {"a": "1"}, "c1").params == {"a": "1", "after": "c1"}
    assert cursor.next_token({"meta": {"next": "c2", "more": True}}, {}, "c1", 5) == "c2"
    assert cursor.next_token({"meta": {"next": "c2", "more": False}}, {}, "c1", 5) is None
    assert cursor.next_token({"meta": {"next": "c1"}}, {}, "c1", 0) is None  # the same cursor: last page
    page = PagePagination(param="p", start=0, size_param="n", size=2)
    assert page.request("https://x/y", {}, None).params == {"p": "0", "n": "2"}
    assert page.next_token([], {}, None, 2) == 1 and page.next_token([], {}, 1, 1) is None
    link = LinkPagination()
    assert link.next_token([], {"next": "https://x/y?p=2"}, None, 3) == "https://x/y?p=2"
    assert link.next_token([], {}, "https://x/y?p=2", 3) is None
    graph = GraphQLPagination(QUERY, "data.items", variables={"first": 5})
    assert graph.request("https://x/g", {}, "e1").json["variables"] == {"first": 5, "after": "e1"}
    body = {"data": {"items": {"pageInfo": {"endCursor": "e2", "hasNextPage": True}}}}
    assert graph.next_token(body, {}, "e1", 1) == "e2" and graph.records_path == "data.items.nodes"
    assert json_path({"a": [{"b": 1}]}, "a.0.b") == 1 and json_path([1], "") == [1]


def test_http_positions_are_checked_against_the_pagination() -> None:
    from headwater.sources import HttpPosition

    source = HttpSource("https://example.com/x", schema=SCHEMA, pagination=PagePagination())
    with pytest.raises(SourceError, match="was the pagination changed"):
        source.build_part("http", HttpPosition(token="abc"))


def test_webhook_log_truncates_a_torn_tail_and_keeps_offsets(tmp_path: Path) -> None:
    log = WebhookLog(tmp_path, segment_bytes=100)
    offsets = [log.append(f"payload-{i}".encode(), received_ms=i) for i in range(20)]
    assert offsets == list(range(20)) and log.durable == 20
    assert [p for _, _, p in log.read(5, 3)] == [b"payload-5", b"payload-6", b"payload-7"]
    assert len(log.segments()) > 3
    log.close()
    last = log.segments()[-1][1]
    with open(last, "ab") as f:
        f.write(HEADER.pack(50, 0, 0) + b"torn")  # an append cut short by a crash (never acknowledged)
    log = WebhookLog(tmp_path, segment_bytes=100)
    assert log.durable == 20 and log.append(b"next") == 20
    assert [o for o, _, _ in log.read(0, 100)] == list(range(21))
    deleted = log.truncate_before(12)
    assert deleted >= 2 and log.first_offset <= 12
    assert [o for o, _, _ in log.read(12, 100)] == list(range(12, 21))
    with pytest.raises(SourceError, match="no longer holds offset 0"):
        log.read(0, 1)
    log.close()
