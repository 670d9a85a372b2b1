"""The audit log on PostgreSQL (the same code as on SQLite): concurrent appends from several processes chain
without forks (the advisory lock), and verify names a tampered entry."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest
import sqlalchemy as sa

from headwater.store.audit import AuditLog

pytestmark = pytest.mark.postgres


def _writer(url: str, table: str, writer: int, count: int) -> None:
    log = AuditLog(url=url, table=table)
    for i in range(count):
        log.append("access", actor=f"writer-{writer}", n=i)


def test_postgres_appends_serialise_across_processes_and_tampering_shows(pg_dsn: str) -> None:
    table = f"audit_test_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        context = multiprocessing.get_context("spawn")
        writers = [context.Process(target=_writer, args=(pg_dsn, table, w, 30)) for w in range(4)]
        for p in writers:
            p.start()
        for p in writers:
            p.join(120)
            assert p.exitcode == 0
        log = AuditLog(url=pg_dsn, table=table)
        assert len(log.entries()) == 120
        assert log.verify().ok
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {table} SET body = '{{}}' WHERE seq = 7"))
        result = log.verify()
        assert not result.ok and result.broken_seq == 7
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
