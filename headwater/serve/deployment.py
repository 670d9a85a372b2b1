"""The Serve app on Ray Serve: one deployment whose ingress is :func:`headwater.serve.app.build_app`'s FastAPI
app, with replicas that scale on load.

Autoscaling: Serve's ``autoscaling_config`` with ``target_ongoing_requests`` per replica (default 2): when the
average number of requests in flight per replica stays above it, Serve adds replicas up to ``max_replicas``
(after ``upscale_delay_s``), and removes them down to ``min_replicas`` when load falls (after
``downscale_delay_s``). Each replica holds its own query engine and result cache; all read the same store.

Security: the HTTP proxy binds ``127.0.0.1`` unless told otherwise (``ServeConfig.host``). Ray's own servers
keep token authentication on (Headwater starts Ray with :func:`headwater.engine.ray.cluster.start_local_ray`).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from headwater.query import EngineConfig
from headwater.serve.app import AppConfig, build_app
from headwater.store.hot import HotConfig

APP_NAME = "headwater"


class ServeConfig(BaseModel):
    """How ``headwater serve`` runs (validated when built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    store: str | None = None
    warm_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=5.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    replica_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    sync_audit: bool = True
    query_timeout_s: float = Field(default=30.0, gt=0)
    hot_tier: bool = True
    hot_shards: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self

    def app_config(self) -> AppConfig:
        from headwater.store.layout import resolve_root

        return AppConfig(store=resolve_root(self.store), warm_uri=self.warm_uri, sync_audit=self.sync_audit,
                         engine=EngineConfig(timeout_s=self.query_timeout_s),
                         hot=HotConfig(shards=self.hot_shards) if self.hot_tier else None)

    def autoscaling(self) -> dict[str, Any]:
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": self.min_replicas, "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


def application(config: ServeConfig) -> Any:
    """The Serve application (bound deployment) for ``config``."""
    from ray import serve

    app_config = config.app_config()
    fastapi_app = build_app(app_config)

    @serve.deployment(name="HeadwaterAPI", autoscaling_config=config.autoscaling(),
                      max_ongoing_requests=config.max_ongoing_requests,
                      ray_actor_options={"num_cpus": config.replica_cpus})
    @serve.ingress(fastapi_app)
    class HeadwaterAPI:
        """One replica: the FastAPI app above, serving the store."""

    return HeadwaterAPI.bind()  # type: ignore[attr-defined]


def start(config: ServeConfig) -> str:
    """Start (or update) the app on the Ray this process is connected to; returns its base URL.
    Ray must be initialised (``headwater serve`` starts a local one; tests use their session's)."""
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(application(config), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}"


def stop() -> None:
    from ray import serve

    serve.delete(APP_NAME)


def serve_forever(config: ServeConfig, *, num_cpus: int | None = None) -> None:
    """``headwater serve``: start a local Ray the secure way, the app on it, and serve until interrupted."""
    import os

    from headwater.engine.ray.cluster import start_local_ray

    local = start_local_ray(num_cpus=num_cpus or os.cpu_count() or 2, object_store_memory=256 * 1024 * 1024)
    try:
        url = start(config)
        print(f"headwater: serving {config.app_config().store} at {url} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        local.shutdown()
