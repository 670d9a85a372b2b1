#!/usr/bin/env bash
# Create .venv/ in the repository root and install Headwater with its pinned dependencies (requirements.lock).
# Idempotent: does nothing when the lock file and pyproject.toml have not changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }
version="$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$version" in
  3.11|3.12) ;;
  *) echo "setup: Python $version found; Headwater needs 3.11 or 3.12 (set PYTHON=/path/to/python3.11)" >&2; exit 1 ;;
esac

stamp=".venv/.headwater-installed"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
.venv/bin/python -c "import headwater, ray, pyarrow; print('setup: headwater', headwater.__version__, '| ray', ray.__version__, '| pyarrow', pyarrow.__version__)"
echo "$want" > "$stamp"
