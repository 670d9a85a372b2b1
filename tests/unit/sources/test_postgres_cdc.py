"""PostgresCdcSource without a server: the pgoutput decoder on real captured messages, text → Arrow conversion,
the changelog layout and batch building (key changes, TOAST, schema changes), positions as plain data, options."""

from __future__ import annotations

import json
import pickle
import struct

import pyarrow as pa
import pytest

from headwater.core import plain_data
from headwater.errors import ConfigError
from headwater.sources import PostgresCdcPosition, PostgresCdcSource
from headwater.sources.postgres_cdc import pgoutput
from headwater.sources.postgres_cdc.changes import BatchBuilder, ColumnInfo, Layout, TableInfo
from headwater.sources.postgres_cdc.convert import arrow_type, convert

# captured from PostgreSQL 15 (table x(id int primary key, v text), REPLICA IDENTITY FULL)
RELATION = (b"R\x00\x00@Lpublic\x00x\x00f\x00\x02\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff"
            b"\x01v\x00\x00\x00\x00\x19\xff\xff\xff\xff")
BEGIN = b"B\x00\x00\x00\x00\x01\x98\xac8\x00\x03\x04\xbc\xe7\x7f'\x94\x00\x00\x03\x02"
COMMIT = b"C\x00\x00\x00\x00\x00\x01\x98\xac8\x00\x00\x00\x00\x01\x98\xach\x00\x03\x04\xbc\xe7\x7f'\x94"
TABLE = TableInfo("public", "x", (ColumnInfo("id", 23, -1, "integer"), ColumnInfo("v", 25, -1, "text")), ("id",), "f")


def tuple_data(*values: bytes | None | str) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == "u":
            out += b"u"
        else:
            assert isinstance(value, bytes)
            out += b"t" + struct.pack("!i", len(value)) + value
    return out


def message(tag: bytes, *parts: tuple[bytes, tuple[bytes | None | str, ...]]) -> bytes:
    body = tag + struct.pack("!I", 0x404C)
    for kind, values in parts:
        body += kind + tuple_data(*values)
    return body


def test_decodes_captured_messages() -> None:
    relation = pgoutput.decode(RELATION)
    assert isinstance(relation, pgoutput.Relation)
    assert (relation.qualified_name, relation.replica_identity) == ("public.x", "f")
    assert [(c.name, c.type_oid, c.is_key) for c in relation.columns] == [("id", 23, True), ("v", 25, True)]
    begin, commit = pgoutput.decode(BEGIN), pgoutput.decode(COMMIT)
    assert isinstance(begin, pgoutput.Begin) and isinstance(commit, pgoutput.Commit)
    assert begin.commit_lsn == commit.commit_lsn == 0x198AC38 and commit.end_lsn == 0x198AC68
    assert begin.commit_time_us > 1_700_000_000_000_000  # Unix microseconds (2023 and later)
    update = pgoutput.decode(message(b"U", (b"O", (b"1", b"a")), (b"N", (b"1", "u"))))
    assert isinstance(update, pgoutput.Change)
    assert update.old == (b"1", b"a") and update.new == (b"1", pgoutput.UNCHANGED) and update.old_kind == "O"


@pytest.mark.parametrize("payload", [b"I\x00\x00", b"Z", message(b"D", (b"N", (b"1",))), RELATION[:12]])
def test_malformed_messages_raise_pgoutput_error(payload: bytes) -> None:
    with pytest.raises(pgoutput.PgOutputError):
        pgoutput.decode(payload)


def test_lsn_text_round_trips() -> None:
    for lsn in (0, 0x198AC38, (0x16 << 32) | 0xB374D848):
        assert pgoutput.parse_lsn(pgoutput.format_lsn(lsn)) == lsn
    assert pgoutput.format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"


def test_types_and_bad_values() -> None:
    assert arrow_type(1700, ((10 << 16) | 2) + 4) == pa.decimal128(10, 2)
    assert arrow_type(1700, -1) == pa.string()
    assert arrow_type(2950, -1) == pa.string()
    values, bad = convert([b"t", None, b"f"], pa.bool_())
    assert values.to_pylist() == [True, None, False] and bad == {}
    values, bad = convert([b"2026-01-01 10:00:00.5+00", b"infinity"], pa.timestamp("us", tz="UTC"))
    assert values[1].as_py() is None and list(bad) == [1] and "'infinity'" in bad[1]
    assert convert([b"\\x01ff"], pa.binary())[0].to_pylist() == [b"\x01\xff"]
    assert convert([b"12:30:01.25"], pa.time64("us"))[0][0].as_py().isoformat() == "12:30:01.250000"
    assert convert([b"NaN", b"-Infinity"], pa.float64())[1] == {}
    assert list(convert([b"NaN", b"1.50"], pa.decimal128(10, 2))[1]) == [0]


def test_layout_columns_and_clashes() -> None:
    layout = Layout([TABLE])
    assert layout.schema.names == ["op", "table", "id", "v", "before", "added_columns", "lsn", "commit_lsn",
                                   "commit_time"]
    clashing = TableInfo("public", "y", (ColumnInfo("op", 25, -1, "text"),), ("op",), "d")
    with pytest.raises(ConfigError, match="prefix="):
        Layout([clashing])
    assert Layout([clashing], prefix="_cdc_").schema.names[:3] == ["_cdc_op", "_cdc_table", "op"]
    other = TableInfo("public", "z", (ColumnInfo("id", 20, -1, "bigint"),), ("id",), "d")
    with pytest.raises(ConfigError, match="separate sources"):
        Layout([TABLE, other])


def build(changes: list[bytes], relation: bytes = RELATION) -> tuple[pa.RecordBatch | None, list]:
    builder = BatchBuilder(Layout([TABLE]), "slot")
    rel = pgoutput.decode(relation)
    assert isinstance(rel, pgoutput.Relation)
    for i, payload in enumerate(changes):
        change = pgoutput.decode(payload)
        assert isinstance(change, pgoutput.Change)
        builder.add_change(rel, change, payload, 100 + i, 200, 1_700_000_000_000_000)
    return builder.build(), builder.take_dead()


def test_changes_become_changelog_rows_with_before_for_full_identity() -> None:
    batch, dead = build([
        message(b"I", (b"N", (b"1", b"a"))),
        message(b"U", (b"O", (b"1", b"a")), (b"N", (b"1", b"b"))),
        message(b"U", (b"O", (b"1", b"b")), (b"N", (b"2", b"b"))),  # the key changed: delete + create
        message(b"D", (b"O", (b"2", b"b"))),
    ])
    assert dead == [] and batch is not None
    rows = batch.to_pylist()
    assert [(r["op"], r["id"], r["v"]) for r in rows] == [("c", 1, "a"), ("u", 1, "b"), ("d", 1, "b"), ("c", 2, "b"),
                                                         ("d", 2, "b")]
    assert [r["before"] for r in rows] == [None, {"id": 1, "v": "a"}, {"id": 1, "v": "b"}, None, {"id": 2, "v": "b"}]
    assert rows[0]["table"] == "public.x" and rows[0]["commit_lsn"] == 200 and rows[1]["lsn"] == 101
    assert batch.schema == Layout([TABLE]).schema


def test_unchanged_toast_is_taken_from_the_old_row_or_dead_lettered() -> None:
    batch, dead = build([message(b"U", (b"O", (b"1", b"long")), (b"N", (b"1", "u"))),
                         message(b"U", (b"N", (b"3", "u")))])
    assert batch is not None and batch.column("v").to_pylist() == ["long"]
    assert [d.reason.value for d in dead] == ["unsupported"] and "REPLICA IDENTITY FULL" in dead[0].error
    assert dead[0].key == RELATION and dead[0].position == {"lsn": "0/65", "commit_lsn": "0/C8"}


def test_schema_changes_added_column_to_map_dropped_column_to_dead_letters() -> None:
    added = (b"R\x00\x00@Lpublic\x00x\x00f\x00\x03\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff"
             b"\x01v\x00\x00\x00\x00\x19\xff\xff\xff\xff\x00score\x00\x00\x00\x00\x17\xff\xff\xff\xff")
    batch, dead = build([message(b"I", (b"N", (b"1", b"a", b"7")))], relation=added)
    assert dead == [] and batch is not None and batch.column("added_columns").to_pylist() == [[("score", "7")]]
    dropped = b"R\x00\x00@Lpublic\x00x\x00f\x00\x01\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff"
    batch, dead = build([message(b"I", (b"N", (b"1",)))], relation=dropped)
    assert batch is None and [d.reason.value for d in dead] == ["unsupported"]
    assert "column 'v' was dropped or renamed" in dead[0].error and "dlq replay" in dead[0].error


def test_bad_values_dead_letter_their_change_in_order() -> None:
    typed = TableInfo("public", "x", (ColumnInfo("id", 23, -1, "integer"), ColumnInfo("v", 1184, -1, "timestamptz")),
                      ("id",), "f")
    builder = BatchBuilder(Layout([typed]), "slot")
    rel = pgoutput.decode(b"R\x00\x00@Lpublic\x00x\x00f\x00\x02\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff"
                          b"\x01v\x00\x00\x00\x04\xa0\xff\xff\xff\xff")
    assert isinstance(rel, pgoutput.Relation)
    for i, value in enumerate([b"2026-01-01 00:00:00+00", b"infinity", b"2026-01-02 00:00:00+00"]):
        payload = message(b"I", (b"N", (str(i).encode(), value)))
        change = pgoutput.decode(payload)
        assert isinstance(change, pgoutput.Change)
        builder.add_change(rel, change, payload, i, i, None)
    batch = builder.build()
    assert batch is not None and batch.column("id").to_pylist() == [0, 2]
    dead = builder.take_dead()
    assert [d.reason.value for d in dead] == ["wrong_type"] and dead[0].payload.startswith(b"I")


def test_snapshot_rows_convert_and_bad_ones_are_json_dead_letters() -> None:
    builder = BatchBuilder(Layout([TABLE]), "slot")
    text = pa.table({"id": pa.array([b"1", b"x"], pa.binary()), "v": pa.array([b"a", None], pa.binary())})
    batch = builder.snapshot_batch(TABLE, text, 500, 1_700_000_000_000_000)
    assert batch is not None and batch.to_pylist()[0]["op"] == "r" and batch.column("id").to_pylist() == [1]
    [letter] = builder.take_dead()
    assert json.loads(letter.payload) == {"table": "public.x", "row": {"id": "x", "v": None}}


def test_position_is_plain_data() -> None:
    position = PostgresCdcPosition(10, 20, 1, ("5", None), False, 0, 0, True, 10)
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(position)))) == position


def test_options_are_validated_and_the_dsn_is_never_shown() -> None:
    dsn = "postgresql://cdc:hunter2@db.example:5432/shop"
    source = PostgresCdcSource(dsn, ["users"], slot="hw_users", publication="hw_users")
    assert source.tables == ["public.users"] and source.list_parts() == ["hw_users"]
    assert "hunter2" not in repr(source) and "hunter2" not in repr(source.settings)
    assert "hunter2" not in repr(pickle.loads(pickle.dumps(source)).settings)
    for bad, match in (({"slot": "Bad-Name"}, "slot"), ({"tables": []}, "tables"), ({"batch_size": 0}, "batch_size"),
                       ({"publication": "a b"}, "publication"), ({"tables": ["a.b.c"]}, "schema.table")):
        options = {"tables": ["users"], "slot": "s", "publication": "p", **bad}
        with pytest.raises(ConfigError, match=match):
            PostgresCdcSource(dsn, **options)
    with pytest.raises(ConfigError, match="dsn"):
        PostgresCdcSource("", ["users"], slot="s", publication="p")
