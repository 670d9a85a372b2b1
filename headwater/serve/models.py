"""Request and response models of the Serve app; they are its OpenAPI document (``GET /openapi.json``).
The structured query's model is :class:`headwater.query.Query`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from headwater.query.sql import MAX_SQL_CHARS

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class SqlRequest(BaseModel):
    """One read-only SELECT over the tables granted to you (table names as in ``GET /tables``)."""

    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS,
                     examples=["SELECT user, count(*) AS n FROM clicks GROUP BY user ORDER BY n DESC LIMIT 10"])


class ResultModel(BaseModel):
    """Rows as arrays in ``columns`` order. Timestamps are ISO 8601 strings; masked PII values read "***"."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(default=False, description="the answer was cut at the row limit")


class ColumnModel(BaseModel):
    name: str
    type: str
    masked: bool = False


class TableSummary(BaseModel):
    name: str
    rows: int
    data_version: int


class TableDetail(BaseModel):
    name: str
    columns: list[ColumnModel]
    key: list[str] | None
    time: str | None
    rows_per_tier: dict[str, int] = Field(description="rows in each tier of the whole table (before row filters)")
    policy: dict[str, float | None]
    data_version: int
    row_filter: list[list[Any]] = Field(default_factory=list, description="your grant's row filter")


class FeatureModel(BaseModel):
    table: str
    key: list[Any]
    row: dict[str, Any]


class ErrorModel(BaseModel):
    detail: Any


class DatasetModel(BaseModel):
    namespace: str
    name: str


class LineageNode(DatasetModel):
    depth: int = Field(description="1: read (upstream) or written (downstream) by a job that touches the dataset")
    via: list[str] = Field(description="the jobs that connect it one step nearer the dataset")


class LineageJob(BaseModel):
    namespace: str
    name: str
    runs: int
    last_event_time: str
    last_state: str
    inputs: list[DatasetModel]
    outputs: list[DatasetModel]


class LineageModel(BaseModel):
    """What fed a dataset and what it feeds, from the OpenLineage events of the runs recorded in the store."""

    dataset: DatasetModel
    upstream: list[LineageNode]
    downstream: list[LineageNode]
    jobs: list[LineageJob]
    hidden: int = Field(default=0, description="tables of this store left out: not granted to your role")
