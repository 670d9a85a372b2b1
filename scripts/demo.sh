#!/usr/bin/env bash
# Run the main job (auction analytics over the Nexmark generator) on the embedded default: a local Ray,
# local Parquet output under output/auction_analytics, then print what it computed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"  # Ray token authentication stays on (headwater.engine.ray.auth)
output="${HEADWATER_OUTPUT:-output/auction_analytics}"
checkpoints="${HEADWATER_CHECKPOINTS:-.headwater/checkpoints/auction-analytics}"
rm -rf "$output" "$checkpoints"   # a fresh run each time (the same directory would resume the last one)
.venv/bin/headwater run examples/auction_analytics.py
.venv/bin/python examples/auction_report.py "$output"
