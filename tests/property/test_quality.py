"""Hypothesis: every generated bad row is quarantined under the rule it breaks and every good row passes — on
both executors and across recoveries (ABORT markers, checkpoints), where neither output loses or repeats a row.

A row is built good (price in [0, 500), ch in web/app, a valid email, an id of its own) and then given at most
one defect, which names the one rule it breaks: a null price, a price out of range, another channel, a bad
email, an expensive 'app' row (the ``check``), or the id of an earlier good row of its partition (the
``unique_within``; ids are unique per partition, so a repeat is found whatever order partitions interleave in).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.testing import TestingSink, TestingSource

pytestmark = pytest.mark.quality

SCHEMA = pa.schema([("id", pa.int64()), ("price", pa.float64()), ("ch", pa.string()), ("email", pa.string())])
RULES = (
    hw.rules.not_null("price"),
    hw.rules.between("price", 0, 1000),
    hw.rules.one_of("ch", ["web", "app"]),
    hw.rules.matches("email", r"^[a-z]+@[a-z]+\.com$"),
    hw.rules.check("app_under_500", (hw.col("price") < 500) | (hw.col("ch") == "web")),
    hw.rules.unique_within("id", timedelta(hours=1)),
)
DEFECTS = [None, "not_null(price)", "between(price, 0, 1000)", "one_of(ch, ['web', 'app'])",
           "matches(email, '^[a-z]+@[a-z]+\\\\.com$')", "app_under_500", "unique_within(id, 3600s)"]
ABORT, PAUSE = TestingSource.ABORT, TestingSource.PAUSE
QUICK = settings(max_examples=20, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_the_defects_name_the_rules() -> None:
    assert sorted(d for d in DEFECTS if d) == sorted(r.name for r in RULES)


@st.composite
def partition_rows(draw: st.DrawFn, partition: int) -> list[tuple[dict[str, Any], str | None]]:
    """(row, the rule it breaks or None) for one source partition."""
    out: list[tuple[dict[str, Any], str | None]] = []
    good_ids: list[int] = []
    for i in range(draw(st.integers(1, 40))):
        row = {"id": partition * 1_000_000 + i, "price": draw(st.floats(0, 499.99)),
               "ch": draw(st.sampled_from(["web", "app"])), "email": draw(st.from_regex(r"[a-z]{1,5}@[a-z]{1,5}\.com",
                                                                                          fullmatch=True))}
        defect = draw(st.sampled_from(DEFECTS if good_ids else DEFECTS[:-1]))
        if defect == "not_null(price)":
            row["price"] = None
        elif defect == "between(price, 0, 1000)":
            row["price"] = draw(st.one_of(st.floats(-1e9, -0.01), st.floats(1000.01, 1e9)))
        elif defect == "one_of(ch, ['web', 'app'])":
            row["ch"] = draw(st.sampled_from(["tv", "WEB", ""]))
        elif defect is not None and defect.startswith("matches"):
            row["email"] = draw(st.sampled_from(["", "a@b", "A@b.com", "a@b.com ", "ab.com"]))
        elif defect == "app_under_500":
            row["price"], row["ch"] = draw(st.floats(500, 1000)), "app"
        elif defect == "unique_within(id, 3600s)":
            row["id"] = draw(st.sampled_from(good_ids))
        if defect is None:
            good_ids.append(row["id"])
        out.append((row, defect))
    return out


def with_aborts(draw: st.DrawFn, rows: list[dict[str, Any]]) -> list[Any]:
    items: list[Any] = list(rows)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(items)))
        items[at:at] = [PAUSE(0.02), ABORT()]
    return items


def quality_flow(partitions: Sequence[Sequence[Any]], good: TestingSink, bad: TestingSink,
                 batch_size: int) -> hw.Dataflow:
    flow = hw.Dataflow("quality")
    source = flow.source("in", TestingSource(partitions=[list(p) for p in partitions], batch_size=batch_size,
                                             schema=SCHEMA))
    valid = source.validate(*RULES, step_id="validated")
    valid.sink("good", good)
    valid.invalid_records().sink("bad", bad)
    return flow


def multiset(rows: list[dict[str, Any]], *columns: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r[c] for c in columns) for r in rows)


def check_outputs(generated: list[list[tuple[dict[str, Any], str | None]]], good: TestingSink, bad: TestingSink,
                  result: hw.JobResult | None = None) -> None:
    columns = SCHEMA.names
    every = [pair for part in generated for pair in part]
    expected_good = [row for row, defect in every if defect is None]
    expected_bad = [{**row, "rule": defect} for row, defect in every if defect is not None]
    assert multiset(good.rows(), *columns) == multiset(expected_good, *columns)
    assert multiset(bad.rows(), *columns, "rule") == multiset(expected_bad, *columns, "rule")
    assert all(r["reason"] for r in bad.rows())
    if result is not None:  # a clean run: its counters are the whole input
        counts = result.quality["validated"]
        assert counts["*"].checked == len(every) and counts["*"].failed == len(expected_bad)
        for rule in RULES:
            assert counts[rule.name].failed == sum(1 for _, d in every if d == rule.name)
        assert result.quality_score("validated") == pytest.approx(len(expected_good) / len(every))


@pytest.mark.parametrize("parallelism", [1, 2])
@QUICK
@given(data=st.data())
def test_bad_rows_are_quarantined_under_their_rule_local(
    tmp_path_factory: pytest.TempPathFactory, parallelism: int, data: st.DataObject
) -> None:
    generated = [data.draw(partition_rows(p)) for p in range(2)]
    base = tmp_path_factory.mktemp("q")
    good, bad = TestingSink(base / "good"), TestingSink(base / "bad")
    flow = quality_flow([[r for r, _ in part] for part in generated], good, bad, data.draw(st.integers(1, 16)))
    result = hw.run(flow, executor="local", parallelism=parallelism)
    check_outputs(generated, good, bad, result)


@pytest.mark.ray
@settings(QUICK, max_examples=3)
@given(data=st.data())
def test_bad_rows_are_quarantined_under_their_rule_on_ray(
    ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    generated = [data.draw(partition_rows(p)) for p in range(2)]
    base = tmp_path_factory.mktemp("qray")
    good, bad = TestingSink(base / "good"), TestingSink(base / "bad")
    flow = quality_flow([[r for r, _ in part] for part in generated], good, bad, data.draw(st.integers(1, 16)))
    result = hw.run(flow, executor="ray", parallelism=2)
    check_outputs(generated, good, bad, result)


def recover(data: st.DataObject, base: Path, executor: str, parallelism: int) -> hw.JobResult:
    generated = [data.draw(partition_rows(p)) for p in range(2)]
    items = [with_aborts(data.draw, [r for r, _ in part]) for part in generated]
    good, bad = TestingSink(base / "good"), TestingSink(base / "bad")
    checkpoint = hw.CheckpointConfig(dir=base / "chk", interval=timedelta(milliseconds=10), restart_delay=timedelta(0))
    result = hw.run(quality_flow(items, good, bad, data.draw(st.integers(1, 8))), executor=executor,
                    parallelism=parallelism, checkpoint=checkpoint)
    aborts = sum(1 for part in items for item in part if isinstance(item, TestingSource.ABORT))
    assert (result.restarts == aborts) if executor == "local" else (result.restarts <= aborts)
    check_outputs(generated, good, bad)
    return result


@pytest.mark.parametrize("parallelism", [1, 2])
@QUICK
@given(data=st.data())
def test_recovery_loses_and_repeats_nothing_in_either_output(
    tmp_path_factory: pytest.TempPathFactory, parallelism: int, data: st.DataObject
) -> None:
    recover(data, tmp_path_factory.mktemp("qrec"), "local", parallelism)


@pytest.mark.ray
@pytest.mark.chaos
@settings(QUICK, max_examples=2)
@given(data=st.data())
def test_recovery_on_ray_loses_and_repeats_nothing_in_either_output(
    ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    recover(data, tmp_path_factory.mktemp("qrecray"), "ray", 2)
