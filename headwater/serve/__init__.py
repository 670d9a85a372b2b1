"""Headwater's Serve app: a FastAPI app (queries, feature look-ups, table metadata) behind a Ray Serve
deployment that scales on load, with access control on every request. See docs/serving.md.

    headwater serve --store DIR [--host 127.0.0.1] [--port 8000]

From Python: ``headwater.serve.start(ServeConfig(store=DIR))`` on a running Ray, or ``serve_forever``.
"""

from headwater.serve.app import AppConfig, build_app
from headwater.serve.deployment import ServeConfig, application, serve_forever, start, stop

__all__ = ["AppConfig", "ServeConfig", "application", "build_app", "serve_forever", "start", "stop"]
