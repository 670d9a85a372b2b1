"""A store with one table spread over warm and cold, for the query layer's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater.store import LifecyclePolicy, Store
from headwater.testing import commit_rows

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = pa.schema([("user", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("amount", pa.int64()),
                    ("email", pa.string()), ("region", pa.string())])


def rows(n: int = 60) -> list[dict[str, Any]]:
    """Row i is i days old."""
    return [{"user": f"u{i % 4}", "ts": NOW - timedelta(days=i, hours=1), "amount": i, "email": f"e{i}@x",
             "region": "eu" if i % 2 else "us"} for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """``clicks``: 60 rows, the 50 older than 10 days in cold files, the 10 newest in warm."""
    store = Store(tmp_path / "store")
    commit_rows(store, "clicks", rows(), SCHEMA, key=["user"], time="ts",
                policy=LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=10)))
    store.apply_lifecycle(now=NOW)
    assert store.rows_per_tier("clicks") == {"warm": 10, "cold": 50}
    return store
