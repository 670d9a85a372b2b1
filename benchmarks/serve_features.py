"""Feature look-ups over HTTP at a fixed rate: p50/p99 of ``GET /features/{table}/{key}`` against the p99 of a
no-op endpoint (``GET /healthz``) of the same Serve app, in the same run.

    python benchmarks/serve_features.py --rate 200 --seconds 10 --rounds 3 --rows 200000 --keys 20000 --json

An open-loop load: request *i* of a phase is due at ``i / rate`` seconds and its latency is measured from that
due time (so a stalled server cannot hide its queue: no coordinated omission). Phases alternate (features,
no-op, features, no-op, ...) so both see the same machine. Keys are drawn uniformly from all keys, so most
look-ups miss the replica's result cache. The client is aiohttp (lighter per request than httpx). The table's rows are spread over the warm tier
(compacted, key-indexed) and the cold tier. Audit lines are written and fsynced as in production.
Prints one JSON object; ``--out`` also writes it to a file (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import aiohttp  # noqa: E402
import pyarrow as pa  # noqa: E402

from headwater.access import TokenStore  # noqa: E402
from headwater.engine.ray.cluster import start_local_ray  # noqa: E402
from headwater.serve import ServeConfig, start  # noqa: E402
from headwater.store import LifecyclePolicy, Store  # noqa: E402
from headwater.store.hot import HotTier  # noqa: E402
from headwater.testing import commit_rows  # noqa: E402

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def build_store(root: str, rows: int, keys: int) -> Store:
    store = Store(root)
    schema = pa.schema([("user", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("clicks", pa.int64()),
                        ("spend", pa.float64()), ("country", pa.string())])
    chunk = max(1, rows // 10)
    for start_row in range(0, rows, chunk):
        ids = range(start_row, min(rows, start_row + chunk))
        commit_rows(store, "profiles", pa.table({
            "user": [f"user-{i % keys}" for i in ids],
            "ts": pa.array([NOW - timedelta(minutes=rows - i) for i in ids], pa.timestamp("us", tz="UTC")),
            "clicks": list(ids), "spend": [i * 0.5 for i in ids], "country": [("de", "fr", "us")[i % 3] for i in ids]},
            schema=schema), key=["user"], time="ts",
            policy=LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(minutes=rows // 2)))
    store.apply_lifecycle(now=NOW)  # the older half moves to cold
    store.compact("profiles")
    return store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def phase(client: aiohttp.ClientSession, paths: list[str], rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    begin = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        due = begin + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with client.get(paths[i % len(paths)]) as response:
                await response.read()
                status = str(response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = type(exc).__name__
        latencies.append((time.perf_counter() - due) * 1000)  # a failed request counts at its (long) latency
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - begin
    return {"requests": count, "achieved_rate": count / elapsed, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies), "statuses": statuses}


async def measure(url: str, token: str, keys: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    feature_paths = [f"{url}/features/profiles/user-{rng.randrange(keys)}" for _ in range(int(args.rate * args.seconds))]
    noop_paths = [f"{url}/healthz"]
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as client:
        await phase(client, feature_paths, args.rate, 2)  # warm-up: connections, replica caches
        await phase(client, noop_paths, args.rate, 2)
        features, noop = [], []
        for _ in range(args.rounds):
            features.append(await phase(client, feature_paths, args.rate, args.seconds))
            noop.append(await phase(client, noop_paths, args.rate, args.seconds))
    return {"features": features, "noop": noop}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-ongoing", type=int, default=32, help="requests one replica takes at once")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--no-hot", action="store_true", help="serve from warm alone (no hot tier)")
    parser.add_argument("--hot-shards", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="hw-serve-bench-")
    store = build_store(root, args.rows, args.keys)
    _, token = TokenStore(store.root).create("admin", "benchmark")
    local = start_local_ray(num_cpus=os.cpu_count() or 2, object_store_memory=256 * 1024 * 1024,
                            configure_logging=False, log_to_driver=False)
    try:
        url = start(ServeConfig(store=store.root, port=args.port, min_replicas=args.replicas,
                                max_replicas=args.replicas, max_ongoing_requests=args.max_ongoing,
                                hot_tier=not args.no_hot, hot_shards=args.hot_shards))
        hot = HotTier(store.root)
        if not args.no_hot:  # the first look-up makes the table's shards; measure once they are built
            import urllib.request

            request = urllib.request.Request(f"{url}/features/profiles/user-0",
                                             headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(request, timeout=60).read()
            hot.wait_ready("profiles", store.table("profiles").data_version, timeout_s=120)
        runs = asyncio.run(measure(url, token, args.keys, args))
        hot_status = None if args.no_hot else hot.status("profiles")
        if not args.no_hot:
            hot.drop("profiles")
    finally:
        from ray import serve

        serve.shutdown()
        local.shutdown()
    features_p99 = statistics.median(r["p99_ms"] for r in runs["features"])
    noop_p99 = statistics.median(r["p99_ms"] for r in runs["noop"])
    report = {
        "benchmark": "serve_features", "at": datetime.now(UTC).isoformat(), "rate": args.rate,
        "seconds_per_phase": args.seconds, "rounds": args.rounds, "rows": args.rows, "keys": args.keys,
        "replicas": args.replicas, "max_ongoing_requests": args.max_ongoing, "rows_per_tier": store.rows_per_tier("profiles"), "cpus": os.cpu_count(),
        "hot_tier": not args.no_hot, "hot_shards": None if args.no_hot else args.hot_shards, "hot_status": hot_status,
        "load_average": os.getloadavg(),
        "features_p50_ms": statistics.median(r["p50_ms"] for r in runs["features"]),
        "features_p99_ms": features_p99,
        "noop_p50_ms": statistics.median(r["p50_ms"] for r in runs["noop"]), "noop_p99_ms": noop_p99,
        "ratio_p99_features_noop": features_p99 / noop_p99, "runs": runs,
    }
    text = json.dumps(report) if args.json else json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
