"""The Serve app's request metrics reach Prometheus through Ray's metrics port (headwater.serve.metrics):
latency and status per route template, and result-cache hits."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.serve, pytest.mark.http, pytest.mark.ray, pytest.mark.prometheus]


def ray_metrics() -> dict[str, list[tuple[dict[str, str], float]]]:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def test_request_latency_status_codes_and_cache_hits_are_exported(api: Any) -> None:
    with api.client("admin") as admin:
        for _ in range(3):
            assert admin.get("/features/clicks/u1").status_code == 200  # the 2nd and 3rd come from the cache
        assert admin.get("/tables/nope").status_code == 404
    with api.client(None) as anonymous:
        assert anonymous.get("/tables").status_code == 401
    route = "/features/{table}/{key}"
    deadline = time.monotonic() + 60  # Ray's agents export what replicas recorded every few seconds
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    while time.monotonic() < deadline:
        samples = ray_metrics()
        if (total(samples, "ray_headwater_serve_requests_total", route=route, status="200") >= 3
                and total(samples, "ray_headwater_serve_cache_lookups_total", outcome="hit") >= 2
                and total(samples, "ray_headwater_serve_requests_total", status="401") >= 1):
            break
        time.sleep(1)
    assert total(samples, "ray_headwater_serve_requests_total", route=route, method="GET", status="200") >= 3
    assert total(samples, "ray_headwater_serve_requests_total", route="/tables/{table}", status="404") >= 1
    assert total(samples, "ray_headwater_serve_requests_total", route="/tables", status="401") >= 1
    assert total(samples, "ray_headwater_serve_cache_lookups_total", outcome="hit") >= 2
    assert total(samples, "ray_headwater_serve_cache_lookups_total", outcome="miss") >= 1
    assert total(samples, "ray_headwater_serve_request_duration_seconds_count", route=route) >= 3
    assert total(samples, "ray_headwater_serve_request_duration_seconds_sum", route=route) > 0
    labels = {k for name, rows in samples.items() if name.startswith("ray_headwater_serve") for found, _ in rows
              for k in found}
    assert not any("u1" in v for name, rows in samples.items() if name.startswith("ray_headwater_serve")
                   for found, _ in rows for v in found.values())  # keys never become label values
    assert "route" in labels
