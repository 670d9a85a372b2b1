"""``headwater schemas list|show|diff|mode`` through ``headwater.cli.main``: output, JSON, and errors as a
message with exit code 2 (never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.cli import main
from headwater.governance.schemas import SchemaRegistry

V1 = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.int32())])
V2 = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.int64()),
                pa.field("note", pa.string())])


@pytest.fixture
def registry(tmp_path: Path) -> str:
    path = str(tmp_path / "registry.db")
    with SchemaRegistry(path) as reg:
        reg.register("source:shop.orders", V1, "shop")
        reg.register("source:shop.orders", V2, "shop")
        reg.register("table:orders", V1, "shop")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "schemas", "list", "--registry", registry)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["subject", "mode", "latest"]
    assert lines[1].split() == ["source:shop.orders", "backward", "2"]
    assert lines[2].split() == ["table:orders", "backward", "1"]
    code, out, _ = _run(capsys, "schemas", "list", "--registry", registry, "--json")
    assert json.loads(out) == [{"subject": "source:shop.orders", "mode": "backward", "latest_version": 2},
                               {"subject": "table:orders", "mode": "backward", "latest_version": 1}]


def test_show(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "schemas", "show", "source:shop.orders", "--registry", registry)
    assert code == 0
    assert out.startswith("subject source:shop.orders version 2 (backward); registered ")
    assert "  id: int64 (required)\n  price: int64 (nullable)\n  note: string (nullable)\n" in out
    code, out, _ = _run(capsys, "schemas", "show", "source:shop.orders", "--version", "1", "--json",
                        "--registry", registry)
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["mode"] == "backward" and shown["registered_by"] == "shop"
    assert shown["schema"]["fields"] == [{"name": "id", "nullable": False, "type": "int64"},
                                         {"name": "price", "nullable": True, "type": "int32"}]


def test_diff(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "schemas", "diff", "source:shop.orders", "1", "2", "--registry", registry)
    assert code == 0
    assert out.splitlines() == [
        "subject source:shop.orders: version 1 → 2",
        "  ~ price: type int32 → int64",
        "  + note: string (nullable)",
        "  backward: compatible",
        "  forward: incompatible: field 'price': type changed int32 → int64",
        "  full: incompatible: field 'price': type changed int32 → int64",
    ]


def test_mode(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "schemas", "mode", "table:orders", "--registry", registry)[1] == "backward\n"
    assert _run(capsys, "schemas", "mode", "table:orders", "full", "--registry", registry)[0] == 0
    assert SchemaRegistry(registry).mode("table:orders").value == "full"


def test_the_default_registry_is_the_stores(tmp_path: Path, registry: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_SCHEMA_REGISTRY", raising=False)
    store = tmp_path / "store"
    store.mkdir()
    Path(registry).rename(store / "registry.db")
    code, out, _ = _run(capsys, "schemas", "list", "--store", str(store))
    assert code == 0 and "source:shop.orders" in out
    monkeypatch.setenv("HEADWATER_SCHEMA_REGISTRY", str(store / "registry.db"))
    assert "table:orders" in _run(capsys, "schemas", "list")[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["show", "source:shop.order"],
     "UnknownSchemaError: schema registry sqlite:///{path}: no subject 'source:shop.order'; did you mean "
     "'source:shop.orders'?"),
    (["show", "source:shop.orders", "--version", "9"],
     "UnknownSchemaError: schema registry: subject 'source:shop.orders' has no version 9 (it has 1..2)"),
    (["diff", "table:orders", "1", "2"], "UnknownSchemaError: schema registry: subject 'table:orders' has no version 2"),
    (["diff", "nope", "1", "2"], "UnknownSchemaError: schema registry sqlite:///{path}: no subject 'nope'"),
    (["mode", "nope"], "UnknownSchemaError: schema registry sqlite:///{path}: no subject 'nope'"),
])
def test_unknown_subjects_and_versions_exit_2(registry: str, capsys: pytest.CaptureFixture[str], argv: list[str],
                                              message: str) -> None:
    code, out, err = _run(capsys, "schemas", *argv, "--registry", registry)
    assert code == 2 and out == ""
    assert err.startswith("headwater: " + message.format(path=registry)), err
    assert "Traceback" not in err


def test_a_missing_registry_exits_2_and_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.db"
    code, _, err = _run(capsys, "schemas", "list", "--registry", str(missing))
    assert code == 2 and f"no schema registry at {missing}" in err
    assert not missing.exists()


def test_an_unknown_mode_is_a_usage_error(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["schemas", "mode", "table:orders", "sideways", "--registry", registry])
    assert caught.value.code == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
