#!/usr/bin/env bash
# Run the main job (auction analytics over the Nexmark generator) on the embedded default: a local Ray,
# local Parquet output under output/auction_analytics and tables in a local store, print what it computed,
# then serve the tables (Ray Serve on 127.0.0.1), query them over HTTP (one SQL query, one feature look-up),
# print the answers and end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"  # Ray token authentication stays on (headwater.engine.ray.auth)
output="${HEADWATER_OUTPUT:-output/auction_analytics}"
checkpoints="${HEADWATER_CHECKPOINTS:-.headwater/checkpoints/auction-analytics}"
export HEADWATER_STORE="${HEADWATER_STORE:-.headwater/demo-store}"
# The demo ends after one run, and its query step starts a Ray (Serve) of its own: keep no local Ray beside it.
export HEADWATER_KEEP_LOCAL_RAY="${HEADWATER_KEEP_LOCAL_RAY:-0}"
rm -rf "$output" "$checkpoints" "$HEADWATER_STORE"   # a fresh run each time (the same directories would resume the last one)
.venv/bin/headwater run examples/auction_analytics.py
.venv/bin/python examples/auction_report.py "$output"
.venv/bin/python examples/auction_query.py "$HEADWATER_STORE"
