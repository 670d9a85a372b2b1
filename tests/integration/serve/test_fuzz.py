"""Fuzz the running Serve app from its own OpenAPI document (schemathesis strategies, driven by hypothesis):
for every operation, generated requests that fit the schema and ones that break it (negative mode), with an
admin token and with a bad one; none may be answered with a 5xx. About 6 operations × 2 modes × 40 examples
× 2 tokens ≈ 960 requests.

Schemathesis's own pytest plugin (``from_fixture``) does not run under pytest 9, so the strategies are used
directly: the same generation, without the plugin."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = [pytest.mark.serve, pytest.mark.http, pytest.mark.ray, pytest.mark.slow]

EXAMPLES = 40


def test_no_generated_request_gets_a_5xx(api: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/sql", "/query", "/features/{table}/{key}", "/tables/{table}"}
    calls = 0
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                nonlocal calls
                for token in (api.tokens["admin"], "nonsense"):
                    response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                    calls += 1
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} body={case.body!r} "
                                        f"query={case.query!r} -> {response.status_code} {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation without inputs has no invalid requests
    assert calls >= 500, calls
    assert not failures, "\n".join(failures[:20])
