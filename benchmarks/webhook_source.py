"""WebhookSource ingest: acknowledged payloads per second and ack latency, beside a no-op endpoint on the same
server library (uvicorn + starlette) in the same run.

    flock /tmp/headwater-ray.lock python benchmarks/webhook_source.py --payloads 4000 --clients 8 --json

The WebhookSource partition is built directly (its server is what a job runs; no job reads the log, so this
measures the door: bearer check, body read, append, fsync, answer). The reference is a starlette app on uvicorn
that answers ``200 {"offset": 0}`` to the same POSTs without storing anything. ``--clients`` threads each keep one
keep-alive httpx connection and post ``--payloads / --clients`` JSON payloads of ~100 bytes one after another.
Reported: payloads/s (all clients), ack latency p50/p99 in ms, and the ratio to the reference. Run with
``--no-fsync`` to see what the fsync costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa

from headwater.sources import WebhookSource

SECRET = "benchmark-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(port: int, payloads: int, clients: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = payloads // clients

    def client(k: int) -> None:
        mine = []
        with httpx.Client(headers={"Authorization": f"Bearer {SECRET}"}, timeout=30) as c:
            for i in range(per_client):
                body = json.dumps({"id": k * per_client + i, "name": "x" * 60, "total": 12.5}).encode()
                start = time.perf_counter()
                response = c.post(f"http://127.0.0.1:{port}/hooks", content=body)
                mine.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"payloads": len(latencies), "seconds": elapsed, "per_second": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def reference_server(port: int) -> tuple[object, threading.Thread]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def noop(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"offset": 0})

    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hooks", noop, methods=["POST"])]), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payloads", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--json", action="store_true", help="write benchmarks/results/webhook_source-<date>.json")
    args = parser.parse_args()

    port = free_port()
    server, thread = reference_server(port)
    drive(port, 200, 2)  # warm-up
    reference = drive(port, args.payloads, args.clients)
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(5)

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        source = WebhookSource(port, "/hooks", log_dir=Path(tmp) / "log", secret=SECRET, fsync=not args.no_fsync,
                               schema=pa.schema([("id", pa.int64()), ("name", pa.string()), ("total", pa.float64())]))
        partition = source.build_part("webhook", None)
        try:
            time.sleep(0.2)
            drive(port, 200, 2)
            webhook = drive(port, args.payloads, args.clients)
        finally:
            partition.close()

    result = {
        "benchmark": "webhook_source", "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "clients": args.clients, "fsync": not args.no_fsync,
        "webhook": webhook, "reference_noop": reference,
        "ratio_per_second": webhook["per_second"] / reference["per_second"],
        "rerun": "flock /tmp/headwater-ray.lock python benchmarks/webhook_source.py --payloads 3000 --clients 8 --json",
    }
    print(json.dumps(result))
    if args.json:
        out = Path(__file__).parent / "results" / f"webhook_source-{result['date']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
