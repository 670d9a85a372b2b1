"""``import headwater`` stays light: the heavy engines of the store and the query layer load when used."""

from __future__ import annotations

import subprocess
import sys


def test_import_headwater_loads_neither_lancedb_nor_duckdb_nor_ray() -> None:
    code = "import sys, headwater; print(sorted(m for m in ('lancedb', 'duckdb', 'ray') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_store_names_still_resolve() -> None:
    import headwater.store as store

    assert store.Store.__name__ == "Store" and store.TableMeta.__name__ == "TableMeta"
    assert set(store.__all__) <= set(dir(store)) | set(store._HOMES)


def test_the_cli_loads_neither_lancedb_nor_ray_before_it_knows_the_command() -> None:
    """``headwater run`` starts as fast as ``python pipeline.py``: the access commands (query layer, lancedb)
    load only for their own commands."""
    code = ("import sys; from headwater.cli import main; main(['local', 'status']); "
            "print(sorted(m for m in ('lancedb', 'duckdb', 'ray', 'headwater.access', 'pyarrow.dataset') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
