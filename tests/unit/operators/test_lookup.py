"""Lookup join against a Parquet table: the per-batch hashing path (small single-key tables) and the indexed
path (large or multi-column keys) must match a dict reference; null keys never match; duplicates fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.core.operator import OperatorContext
from headwater.errors import SourceError
from headwater.operators.joins import lookup as lookup_module
from headwater.operators.joins.lookup import LookupJoinOperator, LookupTable


def _operator(path: Path, key: tuple[str, ...], how: str) -> LookupJoinOperator:
    op = LookupJoinOperator(LookupTable.parquet(path, key=list(key)), key, how, None)
    op.open(OperatorContext("lookup", 0, 1))
    return op


def _reference(table: list[dict[str, Any]], probe: list[dict[str, Any]], key: tuple[str, ...], how: str) -> list[tuple]:
    by_key = {tuple(r[k] for k in key): r["name"] for r in table if all(r[k] is not None for k in key)}
    out = []
    for r in probe:
        k = tuple(r[c] for c in key)
        if None in k or k not in by_key:
            if how == "left":
                out.append((r["v"], None))
        else:
            out.append((r["v"], by_key[k]))
    return out


@pytest.mark.parametrize("indexed", [False, True], ids=["hashed-per-batch", "indexed"])
@pytest.mark.parametrize("key", [("a",), ("s",), ("a", "s")], ids=["int", "string", "two-columns"])
@pytest.mark.parametrize("how", ["left", "inner"])
def test_lookup_matches_a_dict_reference(tmp_path: Path, indexed: bool, key: tuple[str, ...], how: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if indexed:  # force the KeyIndex path on a small table
        monkeypatch.setattr(lookup_module, "HASHED_PER_BATCH_MAX_ROWS", 0)
    table = [{"a": i if i % 7 else None, "s": f"s{i % 50}" if i % 11 else None, "name": f"n{i}"} for i in range(40)]
    table.append({"a": 1000, "s": "s0", "name": "far"})
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "t.parquet")
    probe = [{"a": (i * 3) % 45 if i % 5 else None, "s": f"s{i % 53}" if i % 4 else None, "v": i} for i in range(200)]
    probe.append({"a": 1000, "s": "s0", "v": 999})
    schema = pa.schema([("a", pa.int64()), ("s", pa.string()), ("v", pa.int64())])
    batch = pa.RecordBatch.from_pylist(probe, schema=schema)
    if key == ("s",):  # string keys are unique in the table only within the first 50 rows
        table = table[:40]
        pq.write_table(pa.Table.from_pylist(table), tmp_path / "t.parquet")
    op = _operator(tmp_path / "t.parquet", key, how)
    got = [(r["v"], r["name"]) for b in op.process(batch) for r in b.to_pylist()]
    assert got == _reference(table, probe, key, how)
    assert op.metrics()["table_rows"] == sum(1 for r in table if all(r[k] is not None for k in key))


def test_a_large_table_takes_the_indexed_path(tmp_path: Path) -> None:
    rows = lookup_module.HASHED_PER_BATCH_MAX_ROWS + 5
    pq.write_table(pa.table({"a": pa.array(range(rows), pa.int64()), "name": [f"n{i}" for i in range(rows)]}),
                   tmp_path / "t.parquet")
    op = _operator(tmp_path / "t.parquet", ("a",), "left")
    assert op._index is not None
    batch = pa.record_batch({"a": pa.array([rows - 1, rows, None, 0], pa.int64())})
    assert op.process(batch)[0].column("name").to_pylist() == [f"n{rows - 1}", None, None, "n0"]


@pytest.mark.parametrize("threshold", [0, 32_768], ids=["indexed", "hashed-per-batch"])
def test_duplicate_keys_fail_naming_the_key(tmp_path: Path, threshold: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookup_module, "HASHED_PER_BATCH_MAX_ROWS", threshold)
    pq.write_table(pa.table({"a": [1, 2, 2, None, None], "name": list("abcde")}), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="key 2 appears more than once"):
        _operator(tmp_path / "t.parquet", ("a",), "left")  # the two null keys are not duplicates: they never match
    pq.write_table(pa.table({"a": [1, 1], "s": ["x", "x"], "name": ["a", "b"]}), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match=r"key \(1, 'x'\) appears more than once"):
        _operator(tmp_path / "t.parquet", ("a", "s"), "left")
