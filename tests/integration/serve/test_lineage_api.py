"""``GET /lineage/{dataset}`` over real HTTP: deny by default (401 without a token, 403 outside your grants),
404 for a dataset no run recorded, and a role granted a table sees its lineage without other ungranted tables."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.governance.job import JobGovernance
from headwater.governance.lineage.datasets import DatasetRef, store_namespace
from headwater.governance.lineage.events import LineageEmitter, build_event
from headwater.sources import KafkaSource

pytestmark = [pytest.mark.serve, pytest.mark.lineage, pytest.mark.http, pytest.mark.ray]
SCHEMA = pa.schema([("user", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("amount", pa.int64()),
                    ("email", pa.string()), ("region", pa.string())])  # the session store's clicks


@pytest.fixture(scope="module")
def recorded(api: Any) -> Any:
    """Lineage of the session store: topic clicks_raw → job ingest → table clicks → job payroll → table salaries."""
    root = api.store.root
    ingest = hw.Dataflow("ingest-clicks")
    ingest.source("raw", KafkaSource("kafka.internal:9092", "clicks_raw", schema=SCHEMA)).sink(
        "out", hw.TableSink("clicks", key=["user"], time="ts", store=root))
    governance = JobGovernance(ingest, hw.RunConfig(metrics_port=None))
    governance.started("local")
    governance.ended()
    home = store_namespace(root)
    emitter = LineageEmitter(root, "payroll", "0b6d1c1e-7f55-4a43-9d39-6d0c1f1f0d2a", None)
    for state in ("START", "COMPLETE"):
        emitter.emit(build_event(state, "0b6d1c1e-7f55-4a43-9d39-6d0c1f1f0d2a", "payroll", processing="BATCH",
                                 inputs=[(DatasetRef(home, "clicks"), None)],
                                 outputs=[(DatasetRef(home, "salaries"), None, None)]))
    assert emitter.close()
    return api


def test_lineage_needs_a_token(recorded: Any) -> None:
    with recorded.client(None) as client:
        assert client.get("/lineage/clicks").status_code == 401


def test_lineage_is_denied_outside_your_grants(recorded: Any) -> None:
    with recorded.client("nobody") as client:
        assert client.get("/lineage/clicks").status_code == 403
    with recorded.client("analyst") as client:
        assert client.get("/lineage/salaries").status_code == 403
        assert client.get("/lineage/clicks_raw").status_code == 403  # not a table of this store: admin only
        assert client.get("/lineage/clicks", params={"namespace": "kafka://kafka.internal:9092"}).status_code == 403


def test_a_granted_table_shows_its_lineage_without_ungranted_tables(recorded: Any) -> None:
    with recorded.client("analyst") as client:
        response = client.get("/lineage/clicks")
    assert response.status_code == 200
    answer = response.json()
    assert [(d["namespace"], d["name"], d["via"]) for d in answer["upstream"]] == [
        ("kafka://kafka.internal:9092", "clicks_raw", ["ingest-clicks"])]
    assert answer["downstream"] == [] and answer["hidden"] == 1  # salaries is not granted to analyst


def test_admin_sees_everything_and_unknown_datasets_are_404(recorded: Any) -> None:
    with recorded.client("admin") as client:
        answer = client.get("/lineage/clicks").json()
        assert [d["name"] for d in answer["downstream"]] == ["salaries"] and answer["hidden"] == 0
        assert client.get("/lineage/clicks_raw").json()["downstream"][0]["name"] == "clicks"
        assert client.get("/lineage/never_recorded").status_code == 404
