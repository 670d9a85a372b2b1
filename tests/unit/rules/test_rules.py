"""Each rule of hw.rules: what fails, what passes (nulls pass all but not_null), default names, and the
build-time errors of a bad configuration."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import ConfigError, ExpressionTypeError, UnknownColumnError
from headwater.rules import Rule

pytestmark = pytest.mark.quality

SCHEMA = pa.schema([("id", pa.int64()), ("price", pa.float64()), ("ch", pa.string()),
                    ("ts", pa.timestamp("ms", "UTC"))])


def batch(**columns: list) -> pa.RecordBatch:
    n = len(next(iter(columns.values())))
    data = {"id": list(range(n)), "price": [1.0] * n, "ch": ["web"] * n, "ts": [datetime.now(UTC)] * n}
    data.update(columns)
    return pa.RecordBatch.from_pydict(data, schema=SCHEMA)


def failing(rule: Rule, b: pa.RecordBatch, now_ms: int | None = None) -> list[bool]:
    rule.bind(b.schema, "step 'v'")
    mask = rule.failures(b, now_ms if now_ms is not None else time.time_ns() // 1_000_000)
    assert mask.null_count == 0 and len(mask) == b.num_rows
    return mask.to_pylist()


def test_not_null() -> None:
    assert failing(hw.rules.not_null("price"), batch(price=[1.0, None, 3.0])) == [False, True, False]


def test_between_is_inclusive_open_ended_and_passes_nulls() -> None:
    b = batch(price=[-1.0, 0.0, 5.0, 10.0, 10.5, None])
    assert failing(hw.rules.between("price", 0, 10), b) == [True, False, False, False, True, False]
    assert failing(hw.rules.between("price", None, 5), b) == [False, False, False, True, True, False]
    assert failing(hw.rules.between("price", 5, None), b) == [True, True, False, False, False, False]


def test_between_on_timestamps() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    b = batch(ts=[start - timedelta(days=1), start, start + timedelta(days=1)])
    assert failing(hw.rules.between("ts", start, start + timedelta(hours=1)), b) == [True, False, True]


def test_one_of() -> None:
    b = batch(ch=["web", "app", "tv", None])
    assert failing(hw.rules.one_of("ch", ["web", "app"]), b) == [False, False, True, False]


def test_matches_searches_unless_anchored() -> None:
    b = batch(ch=["a@b.c", "nope", "x a@b", None])
    assert failing(hw.rules.matches("ch", r"\w@\w"), b) == [False, True, False, False]
    assert failing(hw.rules.matches("ch", r"^\w@\w"), b) == [False, True, True, False]


def test_fresh_within_uses_the_processing_clock() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    b = batch(ts=[now, now - timedelta(seconds=59), now - timedelta(seconds=61), None])
    now_ms = int(now.timestamp() * 1000)
    assert failing(hw.rules.fresh_within("ts", timedelta(minutes=1)), b, now_ms) == [False, False, True, False]


def test_fresh_within_on_integer_milliseconds() -> None:
    b = batch(id=[1_000, 9_000, 10_000])
    assert failing(hw.rules.fresh_within("id", timedelta(seconds=5)), b, 10_000) == [True, False, False]


def test_check_with_any_boolean_expression_nulls_pass() -> None:
    b = batch(price=[1.0, -2.0, None], id=[1, 2, 3])
    rule = hw.rules.check("positive", (hw.col("price") > 0) | (hw.col("id") == 3))
    assert failing(rule, b) == [False, True, False]
    assert rule.name == "positive"


@pytest.mark.parametrize(("rule", "name"), [
    (hw.rules.not_null("price"), "not_null(price)"),
    (hw.rules.between("price", 0, 100), "between(price, 0, 100)"),
    (hw.rules.between("price", None, 1.5), "between(price, None, 1.5)"),
    (hw.rules.one_of("ch", ["web", "app"]), "one_of(ch, ['web', 'app'])"),
    (hw.rules.one_of("id", list(range(9))), "one_of(id, [0, 1, 2, 3, 4, ...])"),
    (hw.rules.matches("ch", "^w"), "matches(ch, '^w')"),
    (hw.rules.unique_within(["id", "ch"], timedelta(minutes=10)), "unique_within(id, ch, 600s)"),
    (hw.rules.fresh_within("ts", timedelta(hours=1)), "fresh_within(ts, 3600s)"),
    (hw.rules.drift("price"), "drift(price)"),
    (hw.rules.not_null("price", name="price_present"), "price_present"),
])
def test_default_names_say_what_the_rule_is(rule: Rule, name: str) -> None:
    assert rule.name == name


@pytest.mark.parametrize(("build", "message"), [
    (lambda: hw.rules.between("price", 10, 1), "low is above high"),
    (lambda: hw.rules.between("price", None, None), "checks nothing"),
    (lambda: hw.rules.between("price", "a", 1), "cannot be compared"),
    (lambda: hw.rules.one_of("ch", []), "non-empty list"),
    (lambda: hw.rules.one_of("ch", "web"), "non-empty list"),
    (lambda: hw.rules.matches("ch", "(unclosed"), "not a valid regular expression"),
    (lambda: hw.rules.matches("ch", 5), "regular expression string"),
    (lambda: hw.rules.unique_within([], timedelta(seconds=1)), "column name"),
    (lambda: hw.rules.unique_within("id", 10), "positive datetime.timedelta"),
    (lambda: hw.rules.fresh_within("ts", timedelta(0)), "positive datetime.timedelta"),
    (lambda: hw.rules.check("x", True), "hw.col expression"),
    (lambda: hw.rules.not_null(""), "column name"),
    (lambda: hw.rules.drift("price", window=1), "at least 2"),
    (lambda: hw.rules.drift("price", quantiles=(1.5,)), "strictly between 0 and 1"),
    (lambda: hw.rules.drift("price", mean=-1), "non-negative"),
])
def test_bad_rule_configuration_fails_when_built(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def flow_with(*rules: object, **options: object) -> hw.Stream:
    from headwater.testing import TestingSource

    flow = hw.Dataflow("t")
    source = flow.source("in", TestingSource([], schema=SCHEMA))
    return source.validate(*rules, step_id="v", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rule", "error", "message"), [
    (hw.rules.not_null("prise"), UnknownColumnError, "did you mean 'price'"),
    (hw.rules.between("ch", 0, 10), ConfigError, "column 'ch' has type string, which cannot be compared with 0"),
    (hw.rules.one_of("id", ["a"]), ConfigError, "not all of column 'id''s type int64"),
    (hw.rules.matches("price", "^1"), ConfigError, "matches() needs a string column"),
    (hw.rules.fresh_within("ch", timedelta(seconds=1)), ConfigError, "needs a timestamp, date or integer"),
    (hw.rules.check("bad", hw.col("price") + 1), ConfigError, "needs a boolean expression"),
    (hw.rules.check("bad", hw.col("ch") > 1), ExpressionTypeError, "rule bad: cannot evaluate"),
    (hw.rules.drift("nope"), UnknownColumnError, "unknown column 'nope'"),
])
def test_rules_are_checked_against_the_schema_at_build_time(rule: Rule, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)) as raised:
        flow_with(rule)
    assert "step 'v'" in str(raised.value)


def test_validate_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="at least one rule"):
        flow_with()
    with pytest.raises(ConfigError, match="is not a rule"):
        flow_with(hw.col("price") > 0)
    with pytest.raises(ConfigError, match="two rules are named 'not_null\\(price\\)'"):
        flow_with(hw.rules.not_null("price"), hw.rules.not_null("price"))
    with pytest.raises(ConfigError, match="split it into two validate steps"):
        flow_with(hw.rules.unique_within("id", timedelta(seconds=1)), hw.rules.unique_within("ch", timedelta(seconds=1)))
    with pytest.raises(ConfigError, match="threshold"):
        flow_with(hw.rules.not_null("price"), threshold=1.5)
    with pytest.raises(ConfigError, match="alert_webhook"):
        flow_with(hw.rules.not_null("price"), alert_webhook="ftp://x")


def test_quarantine_columns_must_not_clash() -> None:
    from headwater.testing import TestingSource

    flow = hw.Dataflow("t")
    source = flow.source("in", TestingSource([], schema=pa.schema([("rule", pa.string())])))
    with pytest.raises(ConfigError, match="already has column\\(s\\) 'rule'"):
        source.validate(hw.rules.not_null("rule"))


def test_side_outputs_only_of_a_validation() -> None:
    from headwater.errors import BuildError

    stream = flow_with(hw.rules.not_null("price"))
    with pytest.raises(BuildError, match="has no statistical checks"):
        stream.quality_findings()
    with pytest.raises(BuildError, match="validates nothing"):
        stream.select("price").invalid_records()
    invalid = stream.invalid_records()
    assert invalid.schema is not None and invalid.schema.names == [*SCHEMA.names, "rule", "reason"]


@given(values=st.lists(st.one_of(st.none(), st.text(alphabet="ab.\\/:é", max_size=6)), max_size=30),
       prefix=st.text(alphabet="ab./:é", min_size=1, max_size=3))
@settings(max_examples=100, deadline=None)
def test_an_anchored_literal_is_matched_as_by_the_regex_engine(values: list, prefix: str) -> None:
    pattern = "^" + re.escape(prefix)
    b = pa.RecordBatch.from_pydict({"s": pa.array(values, pa.string())})
    fast = hw.rules.matches("s", pattern).failures(b, 0)
    regex = pc.fill_null(pc.invert(pc.match_substring_regex(b.column("s"), pattern)), False)
    assert fast.to_pylist() == regex.to_pylist()
