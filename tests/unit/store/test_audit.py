"""The hash-chained audit log: appends chain, verify finds every kind of tampering (edit, delete, reorder, insert)
by entry, concurrent writers in several processes never fork the chain, secrets never reach it, and the
``headwater audit`` commands."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from headwater.store.audit import GENESIS, AuditLog, entry_hash, scrub


def _filled(root: Path, n: int = 5) -> AuditLog:
    log = AuditLog(str(root))
    for i in range(n):
        log.append("access", actor=f"token:{i}", status=200, rows=i)
    return log


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "audit.db", isolation_level=None)


def test_entries_chain_from_genesis_and_verify(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    result = log.verify()
    assert result.ok and result.entries == 5 and result.head == entries[-1].hash
    assert "intact: 5 entries" in result.summary()


def test_an_empty_log_verifies(tmp_path: Path) -> None:
    assert AuditLog(str(tmp_path)).verify().ok


def test_an_edited_entry_is_named(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    with _db(tmp_path) as db:
        db.execute("UPDATE headwater_audit SET body = replace(body, '\"rows\":2', '\"rows\":0') WHERE seq = 3")
    result = log.verify()
    assert not result.ok and result.broken_seq == 3 and "edited" in (result.problem or "")


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_entry(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    with _db(tmp_path) as db:
        prev, at, event = db.execute("SELECT prev_hash, at, event FROM headwater_audit WHERE seq = 2").fetchone()
        body = json.dumps({"actor": "someone-else"}, separators=(",", ":"), sort_keys=True)
        db.execute("UPDATE headwater_audit SET body = ?, hash = ? WHERE seq = 2",
                   (body, entry_hash(prev, 2, at, event, body)))
    result = log.verify()
    assert not result.ok and result.broken_seq == 3 and "prev_hash" in (result.problem or "")


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    with _db(tmp_path) as db:
        db.execute("DELETE FROM headwater_audit WHERE seq = 2")
    result = log.verify()
    assert not result.ok and result.broken_seq == 3 and "seq" in (result.problem or "")


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    with _db(tmp_path) as db:  # swap the contents of entries 2 and 3 (their seq stays in place)
        rows = {seq: row for seq, *row in db.execute("SELECT seq, at, event, body, prev_hash, hash FROM headwater_audit")}
        for seq, other in ((2, 3), (3, 2)):
            db.execute("UPDATE headwater_audit SET at=?, event=?, body=?, prev_hash=?, hash=? WHERE seq=?",
                       (*rows[other], seq))
    result = log.verify()
    assert not result.ok and result.broken_seq == 2


def test_an_inserted_entry_is_named(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    with _db(tmp_path) as db:  # renumber 4.. up and slip a forged entry in at 4, chained to entry 3
        db.execute("UPDATE headwater_audit SET seq = seq + 100 WHERE seq >= 4")
        db.execute("UPDATE headwater_audit SET seq = seq - 99 WHERE seq >= 100")
        prev = db.execute("SELECT hash FROM headwater_audit WHERE seq = 3").fetchone()[0]
        body, at = '{"actor":"forger"}', datetime.now(UTC).isoformat()
        db.execute("INSERT INTO headwater_audit VALUES (4, ?, 'access', ?, ?, ?)",
                   (at, body, prev, entry_hash(prev, 4, at, "access", body)))
    result = log.verify()
    assert not result.ok and result.broken_seq == 5  # the forged entry chains, but the next one does not


def test_the_cli_verifies_and_lists(tmp_path: Path) -> None:
    _filled(tmp_path, 3)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = [sys.executable, "-m", "headwater.cli", "audit"]
    ok = subprocess.run([*cli, "verify", "--store", str(tmp_path)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "intact: 3 entries" in ok.stdout
    listed = subprocess.run([*cli, "list", "--store", str(tmp_path), "--json"], capture_output=True, text=True, env=env)
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3] and records[0]["event"] == "access"
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    none = subprocess.run([*cli, "list", "--store", str(tmp_path), "--since", later], capture_output=True, text=True,
                          env=env)
    assert none.returncode == 0 and none.stdout == ""
    bad = subprocess.run([*cli, "list", "--store", str(tmp_path), "--since", "yesterday"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    with _db(tmp_path) as db:
        db.execute("UPDATE headwater_audit SET event = 'erase' WHERE seq = 2")
    broken = subprocess.run([*cli, "verify", "--store", str(tmp_path)], capture_output=True, text=True, env=env)
    assert broken.returncode == 1 and "seq 2" in broken.stdout


def _writer(root: str, writer: int, count: int) -> None:
    log = AuditLog(root)
    for i in range(count):
        log.append("access", actor=f"writer-{writer}", n=i)


def test_concurrent_writers_in_several_processes_never_fork_the_chain(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    log = AuditLog(str(tmp_path))
    entries = log.entries()
    assert len(entries) == 160 and log.verify().ok
    for w in range(4):  # each writer's own entries are in its order
        assert [e.fields["n"] for e in entries if e.fields["actor"] == f"writer-{w}"] == list(range(40))


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    token = "hw_0123abcd_" + "s" * 43
    log = AuditLog(str(tmp_path))
    log.append("access", query=f"SELECT '{token}'", detail="postgresql://app:hunter2@db:5432/x?password=hunter3",
               nested={"dsn": "host=db password=hunter4 user=app", "list": ["api_key=hunter5"]})
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))  # with the WAL
    for secret in (token.encode(), b"hunter2", b"hunter3", b"hunter4", b"hunter5"):
        assert secret not in raw
    [entry] = log.entries()
    assert "hw_0123abcd_***" in entry.fields["query"] and "app:***@db:5432" in entry.fields["detail"]
    assert log.verify().ok


@pytest.mark.parametrize("text, expected", [
    ("kafka://user:pw@broker:9092", "kafka://user:***@broker:9092"),
    ("dbname=x password='a b' host=h", "dbname=x password=*** host=h"),
    ("nothing secret here", "nothing secret here"),
])
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_an_event_name_is_checked(tmp_path: Path) -> None:
    from headwater.errors import StoreError

    with pytest.raises(StoreError, match="1 to 64"):
        AuditLog(str(tmp_path)).append("")
