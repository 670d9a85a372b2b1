"""The layering rule of docs/architecture.md: imports go one way, top to bottom (import-linter's ``layers``
contract in pyproject.toml). The second test proves the check bites: a copy of the package with one wrong-way
import must fail it, naming that import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: import-linter is pinned in requirements.lock (run scripts/setup.sh)")
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"], cwd=cwd, capture_output=True, text=True,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300,
    )


def test_the_package_keeps_its_layers() -> None:
    result = _lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package (and its contracts) with ``line`` appended to ``module``."""
    shutil.copytree(ROOT / "headwater", tmp_path / "headwater", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "headwater" / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = contracts[0]["layers"]
    config = tmp_path / ".importlinter"
    config.write_text(textwrap.dedent("""\
        [importlinter]
        root_package = headwater

        [importlinter:contract:layers]
        name = layers
        type = layers
        layers =
        """) + "".join(f"    {layer}\n" for layer in layers))
    return config


@pytest.mark.parametrize(("module", "line", "named"), [
    # the runtime must not know operator classes
    ("engine/runtime.py", "from headwater.operators.windows import window  # wrong way", "headwater.operators"),
    # operators depend only on the layer below them, not on the planner
    ("operators/stateless.py", "import headwater.planner.rules  # wrong way", "headwater.planner"),
    # connectors depend on nothing above them
    ("sinks/null.py", "from headwater.engine import plan  # wrong way", "headwater.engine"),
    # the store sits below the connectors: it must not import a sink (nor the serve layer above)
    ("store/warm.py", "from headwater.sinks import base  # wrong way", "headwater.sinks"),
    ("sinks/table.py", "import headwater.serve  # wrong way", "headwater.serve"),
    # the schema registry sits below the runner that calls it at job start, and the engine knows nothing of it
    ("governance/schemas/subjects.py", "import headwater.runner  # wrong way", "headwater.runner"),
    ("engine/runtime.py", "from headwater.governance import schemas  # wrong way", "headwater.governance"),
    # logical steps must not build operators
    ("logical/basic.py", "from headwater.operators import udf  # wrong way", "headwater.operators"),
])
def test_a_wrong_way_import_breaks_the_contract(tmp_path: Path, module: str, line: str, named: str) -> None:
    config = _copy_with(tmp_path, module, line)
    result = _lint(tmp_path, config)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout
