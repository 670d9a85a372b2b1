"""Dataset naming per the OpenLineage naming conventions, and no credentials in any namespace or name."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

import headwater as hw
from headwater.governance.lineage.datasets import (
    DatasetRef,
    sink_datasets,
    source_datasets,
    strip_credentials,
)
from headwater.sinks import ParquetSink
from headwater.sources import KafkaSource, ParquetSource
from headwater.sources.http import HttpSource
from headwater.sources.postgres_cdc import PostgresCdcSource
from headwater.sources.sql import SqlSource
from headwater.sources.testing import TestingSource

pytestmark = pytest.mark.lineage
SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string())])


def test_kafka_is_named_by_its_first_broker_and_topic_without_its_password() -> None:
    source = KafkaSource("broker-1:9093,broker-2:9093", "orders", schema=SCHEMA, security_protocol="SASL_SSL",
                         sasl_mechanism="PLAIN", sasl_username="app", sasl_password="hunter2")
    assert source_datasets(source, "f", "s") == [DatasetRef("kafka://broker-1:9093", "orders")]


def test_postgres_cdc_names_each_table_and_drops_the_password() -> None:
    source = PostgresCdcSource("postgresql://app:hunter2@db.internal:6543/shop?sslpassword=hunter3",
                               ["public.orders", "items"], slot="s", publication="p")
    found = source_datasets(source, "f", "cdc")
    assert found == [DatasetRef("postgres://db.internal:6543", "shop.public.orders"),
                     DatasetRef("postgres://db.internal:6543", "shop.public.items")]
    assert "hunter" not in repr(found)


def test_sql_tables_are_named_per_dialect(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, v TEXT)")
    engine.dispose()
    source = SqlSource(f"sqlite:///{db}", table="orders", cursor_column="id")
    assert source_datasets(source, "f", "sql") == [DatasetRef("file", f"{db}#orders")]


def test_http_endpoints_lose_user_info_and_query() -> None:
    source = HttpSource("https://api.example.com/v1/orders?api_key=hunter2", schema=SCHEMA, token="hunter3")
    [found] = source_datasets(source, "f", "h")
    assert found == DatasetRef("https://api.example.com:443", "/v1/orders")


def test_files_generators_and_the_store(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1], "v": ["a"]}), tmp_path / "in.parquet")
    assert source_datasets(ParquetSource(str(tmp_path)), "f", "p") == [DatasetRef("file", str(tmp_path))]
    assert sink_datasets(ParquetSink(str(tmp_path / "out")), "f", "o") == [DatasetRef("file", str(tmp_path / "out"))]
    assert source_datasets(TestingSource([], schema=SCHEMA), "flow", "gen") == [DatasetRef("inmemory://", "flow.gen")]
    table = hw.TableSink("totals", key=["id"], store=str(tmp_path / "store"))
    assert sink_datasets(table, "f", "t") == [DatasetRef(f"headwater://{tmp_path / 'store'}", "totals")]


@pytest.mark.parametrize("url, expected", [
    ("postgresql://app:hunter2@db:5432/shop?sslpassword=x", "postgresql://db:5432/shop"),
    ("https://user:pw@collector.example:5000/api?token=t", "https://collector.example:5000/api"),
    ("not a url", "not a url"),
])
def test_strip_credentials(url: str, expected: str) -> None:
    assert strip_credentials(url) == expected
