"""Lookup joins against a changelog stream, end to end: against a plain-Python reference, under arbitrary
interleaving of the two streams, with event time, across crashes, and restored at another parallelism.

Which table row a record meets depends on how the two streams interleave. Tests that compare with an exact
reference make the order deterministic: the probe stream starts with a ``PAUSE`` long enough for the small table
stream to be delivered and applied first (the in-process executor polls both sources in one thread). The test
that lets them interleave freely checks only what holds for any interleaving: per key, the table versions
that records meet follow the changelog's order (records of one key reach one subtask in order, as do its
table rows), and every record is emitted once.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pytest

import headwater as hw
from headwater.testing import TestingSink, TestingSource

ABORT, EOF, PAUSE = TestingSource.ABORT, TestingSource.EOF, TestingSource.PAUSE
USERS = pa.schema([("id", pa.int64()), ("op", pa.string()), ("name", pa.string()), ("tier", pa.int64())])
ORDERS = pa.schema([("order", pa.int64()), ("user_id", pa.int32()), ("amount", pa.int64())])
TABLE_FIRST = PAUSE(0.3)  # at the head of the probe stream: the table stream is applied before any record



def users_changelog(count: int = 20) -> list[dict[str, Any]]:
    """Creates for ``count`` users, then updates of every third, deletes of every fifth, re-creates of 10."""
    rows = [{"id": i, "op": "c", "name": f"user-{i}", "tier": 1} for i in range(count)]
    rows += [{"id": i, "op": "u", "name": f"user-{i}-v2", "tier": 2} for i in range(0, count, 3)]
    rows += [{"id": i, "op": "d", "name": None, "tier": None} for i in range(0, count, 5)]
    rows += [{"id": 10, "op": "c", "name": "user-10-back", "tier": 3}]
    return rows


def final_table(changelog: Sequence[dict[str, Any]], keys: Sequence[str] = ("id",)) -> dict[Any, dict[str, Any]]:
    table: dict[Any, dict[str, Any]] = {}
    for row in changelog:
        key = tuple(row[k] for k in keys)
        if row["op"] == "d":
            table.pop(key, None)
        else:
            table[key] = {"name": row["name"], "tier": row["tier"]}
    return table


def orders(first: int, count: int, users: int = 24) -> list[dict[str, Any]]:
    return [{"order": i, "user_id": (i * 7) % users, "amount": i} for i in range(first, first + count)]


def enriched(rows: Sequence[dict[str, Any]], table: dict[Any, dict[str, Any]], how: str) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        match = table.get((row["user_id"],))
        if match is not None or how == "left":
            out.append({**row, **(match or {"name": None, "tier": None})})
    return out


def by_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["order"])


def enrich_flow(users: list[Any], probe: list[Any], sink: TestingSink, how: str = "left") -> hw.Dataflow:
    flow = hw.Dataflow("enrich")
    table = flow.source("users", TestingSource(users, schema=USERS, batch_size=4))
    flow.source("orders", TestingSource(probe, schema=ORDERS, batch_size=4)).lookup_join(
        table, on="user_id", table_key="id", how=how, changelog_op="op", step_id="with_user").sink("out", sink)
    return flow


# -- against a reference --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["left", "inner"])
def test_records_meet_the_latest_row_of_their_key(how: str) -> None:
    """Updates replace, deletes remove, absent keys (20..23) find nothing; the table itself is not emitted."""
    changelog, probe = users_changelog(), orders(0, 60)
    out = TestingSink()
    result = hw.run(enrich_flow(changelog, [TABLE_FIRST, *probe], out, how), executor="local", parallelism=2)
    expected = enriched(probe, final_table(changelog), how)
    assert by_order(out.rows()) == expected
    unmatched = {r["user_id"] for r in out.rows() if r["name"] is None}
    assert unmatched == ({0, 5, 15, 20, 21, 22, 23} if how == "left" else set())  # deleted and absent keys
    assert {r["user_id"]: r["name"] for r in out.rows()}.get(10) == "user-10-back"  # deleted, then created again
    assert result.rows_out("with_user") == len(expected)
    assert result.operator_metric("with_user", "table_rows") == len(final_table(changelog))  # summed over subtasks


def test_multi_column_keys_with_other_names_and_types() -> None:
    schema_t = pa.schema([("country", pa.large_string()), ("uid", pa.int16()), ("op", pa.string()),
                          ("segment", pa.string())])
    schema_p = pa.schema([("region", pa.string()), ("user", pa.int64()), ("seq", pa.int64())])
    changelog = [{"country": c, "uid": u, "op": "c", "segment": f"{c}{u}"} for c in ("nl", "fr") for u in range(5)]
    changelog += [{"country": "nl", "uid": 1, "op": "u", "segment": "nl1-new"},
                  {"country": "fr", "uid": 2, "op": "delete", "segment": None},
                  {"country": None, "uid": 3, "op": "c", "segment": "null key: never matches"}]
    probe = [{"region": c, "user": u, "seq": i} for i, (c, u) in enumerate(
        [("nl", 1), ("fr", 1), ("fr", 2), ("nl", 9), ("de", 1), (None, 3), ("nl", 4)] * 3)]
    flow = hw.Dataflow("multi")
    table = flow.source("segments", TestingSource(changelog, schema=schema_t, batch_size=5))
    out = TestingSink()
    flow.source("visits", TestingSource([TABLE_FIRST, *probe], schema=schema_p, batch_size=3)).lookup_join(
        table, on=["region", "user"], table_key=["country", "uid"], changelog_op="op", step_id="segmented",
    ).sink("out", out)
    hw.run(flow, executor="local", parallelism=3)
    keyed = [{**r, "tier": None} for r in changelog if r["country"] is not None]  # a null key never matches
    table_now = {key: row["name"] for key, row in final_table(
        [{**r, "name": r["segment"]} for r in keyed], keys=("country", "uid")).items()}
    expected = [(r["seq"], table_now.get((r["region"], r["user"]))) for r in probe]
    assert sorted((r["seq"], r["segment"]) for r in out.rows()) == expected
    assert [s for _, s in expected[:7]] == ["nl1-new", "fr1", None, None, None, None, "nl4"]


# -- any interleaving -----------------------------------------------------------------------------------------------
def interleaved_inputs() -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
    """Versions 1..6 of 8 users (deletes at versions 3 and 5 of even users), with pauses, and a probe stream
    that reads every user repeatedly meanwhile."""
    changes, items = [], []
    for version in range(1, 7):
        for user in range(8):
            op = "d" if user % 2 == 0 and version in (3, 5) else "u"
            changes.append({"id": user, "op": op, "name": f"v{version}", "tier": version})
        items += changes[-8:] + [PAUSE(0.02)]
    probe = [{"order": i, "user_id": i % 8, "amount": i} for i in range(240)]
    probe_items: list[Any] = []
    for start in range(0, 240, 16):
        probe_items += probe[start:start + 16] + [PAUSE(0.01)]
    return items, changes, probe_items


def assert_versions_follow_the_changelog(rows: Sequence[dict[str, Any]], changes: Sequence[dict[str, Any]]) -> None:
    """Per user, the versions its records met (in record order) are a subsequence of its table's states."""
    for user in {c["id"] for c in changes}:
        states: list[int | None] = [None]  # no row yet
        states += [None if c["op"] == "d" else c["tier"] for c in changes if c["id"] == user]
        position = 0
        for row in by_order([r for r in rows if r["user_id"] == user]):
            while position < len(states) and states[position] != row["tier"]:
                position += 1
            assert position < len(states), f"user {user}: order {row['order']} met tier {row['tier']} out of order"
            assert row["name"] == (None if row["tier"] is None else f"v{row['tier']}")


def test_any_interleaving_meets_versions_in_changelog_order(runner) -> None:
    items, changes, probe = interleaved_inputs()
    out = TestingSink()
    runner(enrich_flow(items, probe, out), parallelism=2)
    rows = out.rows()
    assert sorted(r["order"] for r in rows) == list(range(240)), "every record exactly once"
    assert_versions_follow_the_changelog(rows, changes)


# -- event time -----------------------------------------------------------------------------------------------------
def test_watermarks_pass_through_to_a_window_after_the_join() -> None:
    """A record behind the probe's watermark is late in a window after the join: the join forwarded it."""
    times = pa.schema([("user_id", pa.int64()), ("t", pa.int64()), ("amount", pa.int64())])
    users = [{"id": 1, "op": "c", "name": "ann", "tier": 1, "t": 100_000}]
    clicks = [TABLE_FIRST, {"user_id": 1, "t": 1_000, "amount": 1}, {"user_id": 1, "t": 30_000, "amount": 2},
              {"user_id": 1, "t": 2_000, "amount": 4}]
    flow = hw.Dataflow("event-time")
    table = flow.source("users", TestingSource(users, schema=USERS.append(pa.field("t", pa.int64()))),
                        event_time="t")
    joined = flow.source("clicks", TestingSource(clicks, schema=times, batch_size=1), event_time="t").lookup_join(
        table, on="user_id", table_key="id", columns=["name"], step_id="named")
    per_name = joined.key_by("name").window(hw.TumblingWindow(seconds=10)).aggregate(step_id="w", total=hw.sum("amount"))
    out, late = TestingSink(), TestingSink()
    per_name.sink("out", out)
    per_name.late_records().sink("late", late)
    hw.run(flow, executor="local", watermark_interval=timedelta(0))
    assert sorted((r["name"], r["window_start"], r["total"]) for r in out.rows()) == [("ann", 0, 1), ("ann", 30_000, 2)]
    assert [(r["amount"], r["lateness_ms"]) for r in late.rows()] == [(4, 28_000)]


# -- recovery -------------------------------------------------------------------------------------------------------
def checkpointing(directory: Path) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, interval=timedelta(milliseconds=10), restart_delay=timedelta(0))


def test_crashes_restore_the_table_from_checkpoints(tmp_path: Path) -> None:
    changelog = users_changelog()
    parts = [orders(0, 20), orders(20, 20), orders(40, 20)]
    probe = [TABLE_FIRST, *parts[0], PAUSE(0.1), ABORT(), *parts[1], PAUSE(0.1), ABORT(), *parts[2]]
    clean, out = TestingSink(tmp_path / "clean"), TestingSink(tmp_path / "out")
    hw.run(enrich_flow(changelog, [p for p in probe if not isinstance(p, ABORT)], clean), executor="local",
           parallelism=2)

    result = hw.run(enrich_flow(changelog, probe, out), executor="local", parallelism=2,
                    checkpoint=checkpointing(tmp_path / "chk"))

    assert result.restarts == 2 and result.last_checkpoint.kind == "final"
    assert result.rows_out("users") == 0, "the last attempt got the table from the checkpoint, not by re-reading it"
    assert by_order(out.rows()) == by_order(clean.rows()) == enriched(orders(0, 60), final_table(changelog), "left")


def test_restore_at_a_higher_parallelism_keeps_the_table(tmp_path: Path) -> None:
    changelog = users_changelog()
    probe = [TABLE_FIRST, *orders(0, 30), EOF(), *orders(30, 30)]
    first, second = TestingSink(tmp_path / "first"), TestingSink(tmp_path / "second")
    config = checkpointing(tmp_path / "chk")
    hw.run(enrich_flow(changelog, probe, first), executor="local", parallelism=1, checkpoint=config)
    resumed = hw.run(enrich_flow(changelog, probe, second), executor="local", parallelism=2, checkpoint=config)

    table = final_table(changelog)
    assert by_order(first.rows()) == enriched(orders(0, 30), table, "left")
    assert resumed.rows_out("users") == 0 and resumed.rows_out("orders") == 30
    assert by_order(second.rows()) == enriched(orders(30, 30), table, "left")
    assert resumed.operator_metric("with_user", "table_rows") == len(table)
