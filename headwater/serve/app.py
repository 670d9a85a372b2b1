"""The Serve app as a plain FastAPI application: ``build_app(AppConfig)``. Ray Serve runs it as the ingress
of a deployment (:mod:`headwater.serve.deployment`); tests may also drive it in-process.

Endpoints (docs/serving.md has a curl for each): ``GET /healthz`` (open), ``GET /tables``,
``GET /tables/{table}``, ``POST /sql``, ``POST /query``, ``GET /features/{table}/{key}``, ``GET /lineage/{dataset}``,
``GET /openapi.json``.

Invariants: every endpoint except ``/healthz`` and the OpenAPI document resolves the caller through one
dependency (:func:`caller`: bearer token → principal, else 401) and reads only through the views access control
gives that principal (else 403); errors become statuses in one place (:mod:`headwater.serve.errors`); each
request is audited (:mod:`headwater.serve.audit`).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi import Query as QueryParam
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from headwater.access import ADMIN, AccessControl, Principal
from headwater.access.errors import AccessDeniedError
from headwater.engine.config import TRACE_EXPORTERS, TraceExporter, default_trace_exporter, default_trace_sample
from headwater.errors import ConfigError
from headwater.governance.lineage.graph import DatasetNotFoundError
from headwater.query import Answer, EngineConfig, Query, QueryEngine, TableView, parse_key
from headwater.query.planner import table_meta
from headwater.serve import encoding
from headwater.serve.audit import AuditMiddleware, key_digest
from headwater.serve.errors import NotFoundError, install
from headwater.serve.metrics import RequestMetricsMiddleware, ServeMetrics
from headwater.serve.models import (
    ARROW_STREAM,
    ColumnModel,
    ErrorModel,
    FeatureModel,
    LineageModel,
    ResultModel,
    SqlRequest,
    TableDetail,
    TableSummary,
)
from headwater.serve.tracing import RequestTracingMiddleware
from headwater.store import Store
from headwater.store.hot import HotConfig, HotTier


@dataclass(frozen=True)
class AppConfig:
    """What one replica serves: the store (``None``: ``$HEADWATER_STORE``, else ``.headwater/store``), the
    warm tier's URI if elsewhere, ``sync_audit`` (kept for callers: every audit entry is committed before the answer),
    the query engine's limits, and the hot tier (``None``: none; else feature look-ups ask the table's hot shards
    first when Ray is running, making them on a table's first look-up; without Ray the app reads warm alone)."""

    store: str | None = None
    warm_uri: str | None = None
    sync_audit: bool = True
    engine: EngineConfig = field(default_factory=EngineConfig)
    hot: HotConfig | None = None
    #: where spans of traced requests go, and the share of requests traced besides those whose caller sent a
    #: sampled ``traceparent`` (:mod:`headwater.serve.tracing`); defaults as ``RunConfig``'s
    trace_exporter: TraceExporter = field(default_factory=default_trace_exporter)
    trace_sample: float = field(default_factory=default_trace_sample)

    def __post_init__(self) -> None:
        if self.trace_exporter not in TRACE_EXPORTERS:
            raise ConfigError(f"trace_exporter must be one of {', '.join(TRACE_EXPORTERS)}, got {self.trace_exporter!r}")
        if (isinstance(self.trace_sample, bool) or not isinstance(self.trace_sample, (int, float))
                or not 0.0 <= self.trace_sample <= 1.0):
            raise ConfigError(f"trace_sample must be a share of requests between 0 and 1, got {self.trace_sample!r}")


class Service:
    """One replica's store, query engine and access control (made on the first request)."""

    def __init__(self, config: AppConfig, metrics: ServeMetrics) -> None:
        self.store = Store(config.store, warm_uri=config.warm_uri)
        self.hot = _hot_tier(self.store, config.hot)
        self.engine = QueryEngine(self.store, config.engine, self.hot)
        self.engine.cache.on_lookup = metrics.cache_lookup
        self.access = AccessControl(self.store, sync_audit=config.sync_audit)


def _hot_tier(store: Store, config: HotConfig | None) -> HotTier | None:
    if config is None or "ray" not in sys.modules:
        return None
    import ray

    return HotTier(store.root, store.warm_uri, config) if ray.is_initialized() else None


_bearer = HTTPBearer(auto_error=False, description="an API token from `headwater token create`")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorModel, "description": text} for status, text in (
        (400, "malformed query or SQL"), (401, "no or unknown token"), (403, "outside your grants"),
        (404, "no such table or key"), (408, "the query ran out of time"), (422, "the request does not validate"))}
RESULT_CONTENT = {"content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}}


async def caller(request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The one dependency resolving who is asking: ``Authorization: Bearer <token>`` → principal (else 401)."""
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    principal: Principal = request.app.state.headwater().access.authenticate(header)
    audit = _audit(request)
    audit["actor"], audit["role"] = principal.actor, principal.role
    return principal


Caller = Annotated[Principal, Depends(caller)]


def build_app(config: AppConfig | None = None) -> FastAPI:
    config = config or AppConfig()
    # No /docs or /redoc: they load their JavaScript from a CDN; /openapi.json is the document.
    app = FastAPI(title="Headwater", version="1", summary="Queries and feature look-ups over Headwater's tables",
                  docs_url=None, redoc_url=None,
                  description="Authorization: Bearer <token> (`headwater token create`); see docs/serving.md.")
    lock = threading.Lock()
    made: list[Service] = []
    metrics: list[ServeMetrics] = []
    metrics_lock = threading.Lock()  # its own: service() makes the metrics while holding `lock`

    def request_metrics() -> ServeMetrics:
        if not metrics:
            with metrics_lock:
                if not metrics:
                    metrics.append(ServeMetrics())
        return metrics[0]

    def service() -> Service:
        if not made:
            with lock:
                if not made:
                    made.append(Service(config, request_metrics()))
        return made[0]

    app.state.headwater = service
    app.add_middleware(AuditMiddleware, log=lambda: service().access.audit)
    if config.trace_exporter != "none":  # outside the audit middleware: its record names the tables and rows
        app.add_middleware(RequestTracingMiddleware, exporter=config.trace_exporter, sample=config.trace_sample)
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)  # outermost: times the whole request
    install(app)

    def answer(request: Request, result: Answer, accept: str | None) -> Response:
        _audit(request)["rows"] = result.table.num_rows
        if encoding.wants_arrow(accept):
            return Response(encoding.to_arrow_stream(result.table), media_type=ARROW_STREAM)
        return Response(encoding.to_json(result.table, result.truncated), media_type="application/json")

    def table_view(principal: Principal, table: str) -> TableView:
        svc = service()
        if principal.role == ADMIN and table not in svc.store.tables():
            raise NotFoundError(f"there is no table {table!r} (tables: {', '.join(svc.store.tables()) or 'none'})")
        return svc.access.view(principal, table)

    @app.get("/healthz", summary="liveness, for load balancers (no token needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/tables", response_model=list[TableSummary], responses=ERRORS, summary="the tables granted to you")
    def tables(request: Request, principal: Caller) -> list[TableSummary]:
        svc = service()
        views = svc.access.views(principal)
        out = []
        for name in sorted(views):
            meta = table_meta(svc.store, name)
            out.append(TableSummary(name=name, rows=meta.warm.rows + sum(f.rows for f in meta.cold),
                                    data_version=meta.data_version))
        _audit(request).update(tables=sorted(views), rows=len(out))
        return out

    @app.get("/tables/{table}", response_model=TableDetail, responses=ERRORS,
             summary="a table's visible schema, rows per tier, lifecycle policy and your row filter")
    def table(request: Request, table: str, principal: Caller) -> TableDetail:
        _audit(request)["tables"] = [table]
        view = table_view(principal, table)
        svc = service()
        meta = table_meta(svc.store, table)
        columns = [ColumnModel(name=c, type="string" if c in view.masked else str(meta.schema.field(c).type),
                               masked=c in view.masked) for c in view.visible(meta)]
        return TableDetail(name=table, columns=columns, key=list(meta.key) if meta.key else None, time=meta.time,
                           rows_per_tier=svc.store.rows_per_tier(table), policy=meta.policy.to_json(),
                           data_version=meta.data_version, row_filter=[list(p) for p in view.row_filter])

    @app.post("/sql", response_model=ResultModel, responses={**ERRORS, 200: RESULT_CONTENT},
              summary="one read-only SELECT over your granted tables")
    def sql(request: Request, body: SqlRequest, principal: Caller,
            accept: Annotated[str | None, Header()] = None) -> Response:
        audit = _audit(request)
        audit["query"] = body.sql
        svc = service()
        result = svc.engine.sql(body.sql, svc.access.views(principal))
        audit["tables"] = [p.table for p in result.plans]
        return answer(request, result, accept)

    @app.post("/query", response_model=ResultModel, responses={**ERRORS, 200: RESULT_CONTENT},
              summary="a structured query: select, filter, group_by, aggregates, time_range, order_by, limit")
    def query(request: Request, body: Query, principal: Caller,
              accept: Annotated[str | None, Header()] = None) -> Response:
        audit = _audit(request)
        audit.update(query=body.model_dump_json(exclude_defaults=True), tables=[body.table])
        return answer(request, service().engine.query(body, table_view(principal, body.table)), accept)

    @app.get("/features/{table}/{key}", response_model=FeatureModel, responses=ERRORS,
             summary="the latest row of a key (optionally as of a time); composite keys as a JSON array")
    async def features(request: Request, table: str, key: str, principal: Caller,
                 as_of: Annotated[datetime | None, QueryParam(description="ISO 8601; rows at or before it")] = None,
                 ) -> FeatureModel:
        _audit(request).update(tables=[table], detail=f"key sha256 {key_digest(key)}")
        view = table_view(principal, table)
        svc = service()
        row = await svc.engine.feature_async(table, key, view, as_of)
        if row is None:
            _audit(request)["rows"] = 0
            raise NotFoundError(f"table {table!r} has no row for this key" + (" at or before as_of" if as_of else ""))
        _audit(request)["rows"] = 1
        meta = table_meta(svc.store, table)
        return FeatureModel(table=table, key=encoding.json_value(list(parse_key(meta, key))),
                            row=encoding.json_value(row))

    @app.get("/lineage/{dataset:path}", response_model=LineageModel, responses=ERRORS,
             summary="what fed a dataset and what it feeds (admin: any dataset; other roles: their granted tables)")
    def lineage(request: Request, dataset: str, principal: Caller,
                namespace: Annotated[str | None, QueryParam(description="the dataset's namespace (admin)")] = None,
                ) -> dict[str, Any]:
        _audit(request)["tables"] = [dataset]
        svc = service()
        return lineage_for(svc.store, svc.access, principal, dataset, namespace)

    return app


def lineage_for(store: Store, access: AccessControl, principal: Principal, dataset: str,
                namespace: str | None) -> dict[str, Any]:
    """The lineage answer ``principal`` may see. Deny by default: a role other than admin asks only about a table
    of this store granted to it, and sees no other table of this store that is not granted to it either."""
    from headwater.governance.lineage.datasets import store_namespace
    from headwater.governance.lineage.graph import LineageGraph

    home = store_namespace(store.root)
    granted: set[str] | None = None
    if principal.role != ADMIN:
        if namespace not in (None, home):
            raise AccessDeniedError("only admin sees the lineage of datasets outside this store's tables")
        granted = set(access.views(principal))
        if dataset not in granted:
            raise AccessDeniedError(f"table {dataset!r} is not granted to role {principal.role!r} (or does not exist)")
        namespace = home
    graph = LineageGraph.load(store.root)
    try:
        answer = graph.lineage(graph.find(dataset, namespace))
    except DatasetNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    if granted is None:
        return answer
    tables = granted

    def visible(d: dict[str, Any]) -> bool:
        return d["namespace"] != home or d["name"] in tables

    hidden = {(d["namespace"], d["name"]) for key in ("upstream", "downstream") for d in answer[key] if not visible(d)}
    for key in ("upstream", "downstream"):
        answer[key] = [d for d in answer[key] if visible(d)]
    for job in answer["jobs"]:
        for side in ("inputs", "outputs"):
            job[side] = [d for d in job[side] if visible(d)]
    return {**answer, "hidden": len(hidden)}


def _audit(request: Request) -> dict[str, Any]:
    state = request.scope.setdefault("state", {})
    found = state.get("audit")
    if found is None:
        found = state["audit"] = {}
    return found

