#!/usr/bin/env bash
# Set up, start the real services the tests need, and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
if [ -x scripts/services.sh ]; then
  ./scripts/services.sh start
  # shellcheck disable=SC1091
  [ -f scripts/services.env ] && . scripts/services.env
fi
# Static checks first (seconds): lint, types, and the layering rule (docs/architecture.md §0).
echo "test: ruff, mypy, import-linter"
.venv/bin/ruff check headwater tests benchmarks examples
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"  # Ray token authentication stays on (headwater.engine.ray.auth)
exec .venv/bin/python -m pytest -p no:cacheprovider -q -ra --durations=15 "$@"
