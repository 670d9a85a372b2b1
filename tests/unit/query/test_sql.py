"""SQL safety: DuckDB's own parser decides what a statement is; only one SELECT over granted tables passes;
the connection it runs in reaches no file, setting or extension even if a check were missed. Plus the result
cache: served again only while no table it read has committed."""

from __future__ import annotations

import duckdb
import pytest

from headwater.query import QueryEngine, QueryError, QueryRefusedError, QueryTimeoutError, TableView, check_sql
from headwater.query.sql import locked_connection, run_sql
from headwater.store import Store
from headwater.testing import commit_rows

from .conftest import SCHEMA, rows

VIEWS = {"clicks": TableView("clicks", ("user", "amount", "email", "ts"), frozenset({"email"}),
                             (("region", "==", "eu"),))}

REFUSED = [
    "CREATE TABLE x AS SELECT 1", "INSERT INTO clicks SELECT * FROM clicks", "UPDATE clicks SET amount = 1",
    "DELETE FROM clicks", "DROP TABLE clicks", "ALTER TABLE clicks ADD COLUMN x INT", "COPY clicks TO 'out.csv'",
    "COPY (SELECT 1) TO '/tmp/x.parquet' (FORMAT parquet)", "EXPORT DATABASE '/tmp/db'", "ATTACH 'x.db'",
    "DETACH x", "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL spatial", "SET threads = 1", "RESET threads",
    "PRAGMA database_list", "CALL pragma_version()", "CHECKPOINT", "VACUUM", "BEGIN TRANSACTION",
    "CREATE MACRO f(a) AS a", "CREATE SECRET s (TYPE s3)", "USE memory", "EXPLAIN SELECT 1",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_parquet('x.parquet')", "SELECT * FROM read_json('x.json')", "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')", "SELECT * FROM '/etc/passwd'", "SELECT * FROM 'data.parquet'",
    "SELECT * FROM glob('/*')", "SELECT * FROM duckdb_settings()", "SELECT * FROM duckdb_tables()",
    "SELECT * FROM range(10)", "SELECT * FROM query('SELECT 1')", "SELECT current_setting('threads')",
    "SELECT * FROM information_schema.tables", "SELECT * FROM main.clicks", "SELECT * FROM memory.main.clicks",
    "SELECT * FROM system.main.duckdb_settings", "SELECT * FROM pg_catalog.pg_class", "SELECT * FROM salaries",
    "SELECT * FROM clicks, salaries", "SELECT (SELECT max(x) FROM salaries) FROM clicks",
    "WITH s AS (SELECT * FROM salaries) SELECT * FROM s", "SELECT 1; SELECT 2", "SELECT 1; DROP TABLE clicks",
    "DESCRIBE clicks", "SHOW TABLES", "SUMMARIZE clicks", "SELECT $1", "SELECT ?", "SELECT region FROM clicks",
    "SELECT * FROM clicks AT (VERSION => 1)", "SELECT sum(amount) FROM clicks WHERE region = 'us'",
    "SELECT * FROM sqlite_scan('x.db', 't')", "SELECT getenv('HOME')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_statements_outside_read_only_granted_selects_are_refused(store: Store, sql: str) -> None:
    with pytest.raises(QueryRefusedError):
        QueryEngine(store).sql(sql, VIEWS)


@pytest.mark.parametrize("sql", ["", "   ", "SELEC 1", "SELECT FROM", "SELECT * FROM clicks WHERE", "SELECT nope FROM clicks",
                                 "SELECT 'a' + 1", "SELECT * FROM clicks ORDER BY 99", "\x00"])
def test_malformed_sql_is_a_query_error(store: Store, sql: str) -> None:
    with pytest.raises(QueryError):
        QueryEngine(store).sql(sql, VIEWS)


def test_granted_selects_run_through_the_view(store: Store) -> None:
    engine = QueryEngine(store)
    answer = engine.sql("WITH c AS (SELECT user, amount FROM clicks) SELECT user, sum(amount) AS s FROM c "
                        "GROUP BY ALL ORDER BY user", VIEWS)
    eu = [r for r in rows() if r["region"] == "eu"]
    assert answer.table.to_pylist() == [{"user": u, "s": sum(r["amount"] for r in eu if r["user"] == u)}
                                        for u in ("u1", "u3")]
    assert answer.plans[0].columns == ("user", "amount")  # only referenced columns were read
    assert set(engine.sql("SELECT email FROM clicks", VIEWS).table.column("email").to_pylist()) == {"***"}
    assert engine.sql("SELECT count(*) AS n FROM clicks", VIEWS).table.to_pylist() == [{"n": 30}]
    assert engine.sql("SELECT 1 + 1 AS two", VIEWS).table.to_pylist() == [{"two": 2}]


def test_the_connection_is_locked_even_without_the_checks() -> None:
    con = locked_connection()
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "COPY (SELECT 1) TO '/tmp/headwater-x.csv'",
                "INSTALL httpfs", "ATTACH '/tmp/headwater-x.db'", "SET enable_external_access = true",
                "SET lock_configuration = false", "SET memory_limit = '100GB'"):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)


def test_answers_are_capped_and_slow_queries_stopped() -> None:
    import pyarrow as pa

    table = pa.table({"x": list(range(1000))})
    rows_, truncated = run_sql("SELECT * FROM t", {"t": table}, max_rows=10)
    assert rows_.num_rows == 10 and truncated
    with pytest.raises(QueryTimeoutError):
        run_sql("SELECT count(*) FROM range(100000000000) a", {}, timeout_s=0.2)


def test_check_sql_reports_tables_columns_and_stars() -> None:
    check = check_sql("WITH c AS (SELECT a FROM t1) SELECT c.a, b AS bee FROM c JOIN t2 USING (a)")
    assert check.tables == ("t1", "t2") and check.columns >= {"a", "b"} and not check.star
    assert "bee" in check.aliases
    assert check_sql("SELECT * FROM t").star


def test_the_cache_serves_until_a_commit_then_answers_anew(store: Store) -> None:
    engine = QueryEngine(store)
    sql = "SELECT count(*) AS n FROM clicks"
    assert engine.sql(sql, VIEWS).cached is False
    again = engine.sql(sql, VIEWS)
    assert again.cached and again.table.to_pylist() == [{"n": 30}]
    other_view = {"clicks": TableView.full("clicks")}
    assert engine.sql(sql, other_view).table.to_pylist() == [{"n": 60}]  # views never share entries
    commit_rows(store, "clicks", rows(2), SCHEMA)
    fresh = engine.sql(sql, VIEWS)
    assert not fresh.cached and fresh.table.to_pylist() == [{"n": 31}]
    assert len(engine.cache) == 1  # the entries of the old version were dropped


def test_feature_look_ups_are_cached_until_a_commit(store: Store) -> None:
    engine = QueryEngine(store)
    view = TableView("clicks", ("user", "amount", "email"), frozenset({"email"}))
    first = engine.feature("clicks", "u1", view)
    assert first == {"user": "u1", "amount": 1, "email": "***"}
    assert engine.cache.hits == 0 and engine.feature("clicks", "u1", view) == first and engine.cache.hits == 1
    assert engine.feature("clicks", "nobody", view) is None and engine.feature("clicks", "nobody", view) is None
    newer = [{**rows(1)[0], "user": "u1", "amount": 1000}]
    commit_rows(store, "clicks", newer, SCHEMA)
    assert engine.feature("clicks", "u1", view) == {"user": "u1", "amount": 1000, "email": "***"}


def test_simple_where_terms_are_pushed_into_the_tiers(store: Store) -> None:
    from .conftest import NOW

    engine = QueryEngine(store)
    full = {"clicks": TableView.full("clicks")}
    recent = engine.sql(f"SELECT count(*) AS n FROM clicks c WHERE c.ts >= TIMESTAMPTZ '{NOW.isoformat()}' - "
                        f"INTERVAL 3 DAY AND amount >= 1", full)
    assert recent.plans[0].predicates == (("amount", ">=", 1),)  # an expression is not a literal: not pushed
    newest = engine.sql("SELECT count(*) AS n FROM clicks WHERE ts >= TIMESTAMPTZ '2026-02-26T00:00:00+00:00' "
                        "AND 5 > amount AND user IN ('u1', 'u2') AND region = 'eu'", full)
    assert newest.table.to_pylist() == [{"n": 1}]  # amount 1 (u1, eu, 1 day old)
    plan = newest.plans[0]
    assert plan.tiers == {"warm": 1} and plan.time_range is not None  # cold never opened
    assert ("amount", "<", 5) in plan.predicates and ("user", "in", ["u1", "u2"]) in plan.predicates
    masked = {"clicks": TableView("clicks", None, frozenset({"email"}))}
    answer = engine.sql("SELECT count(*) AS n FROM clicks WHERE email = 'e1@x'", masked)
    assert answer.table.to_pylist() == [{"n": 0}] and answer.plans[0].predicates == ()  # never on hidden values
    joined = engine.sql("SELECT count(*) AS n FROM clicks a JOIN clicks b USING (user) WHERE a.amount = 1", full)
    assert joined.plans[0].predicates == ()  # only single-table statements are pushed


def test_join_columns_outside_expressions_are_read(store: Store) -> None:
    engine = QueryEngine(store)
    full = {"clicks": TableView.full("clicks")}
    for sql in ("SELECT count(*) AS n FROM clicks a JOIN clicks b USING (user, region)",
                "SELECT count(*) AS n FROM clicks a NATURAL JOIN clicks b"):
        assert engine.sql(sql, full).table.num_rows == 1
