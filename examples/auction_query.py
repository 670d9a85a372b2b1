"""Query the main job's tables over HTTP, as a dashboard and an online model would — the end of ``make demo``.

    python examples/auction_query.py [STORE]      # STORE: $HEADWATER_STORE, default .headwater/store

Starts a local Ray (the secure way: token authentication on) and the Serve app on it, bound to 127.0.0.1 on
``$HEADWATER_SERVE_PORT`` (default 8000); creates an ``admin`` API token for this run; asks one SQL query
(``POST /sql``: the auctions with the most bids) and one feature look-up (``GET /features/auction_stats/<top
auction>``: its latest row) over real HTTP; prints both answers; revokes the token, stops the app and Ray, and
ends. To keep serving instead: ``headwater serve --store STORE`` (README, docs/serving.md).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx

from headwater.access.tokens import TokenStore
from headwater.engine.ray.cluster import start_local_ray
from headwater.serve import ServeConfig, start
from headwater.store.layout import resolve_root

TOP_AUCTIONS = (
    "SELECT auction, max(bids) AS bids, max(top_bid_eur) AS top_bid_eur, round(max(volume_eur), 2) AS volume_eur "
    "FROM auction_stats GROUP BY auction ORDER BY bids DESC, auction LIMIT 5"
)


def ask(store: str, port: int) -> dict[str, Any]:
    """Serve ``store`` on a Ray this process is connected to, ask the two questions, return the answers."""
    record, token = TokenStore(resolve_root(store)).create("admin", note="examples/auction_query.py")
    try:
        url = start(ServeConfig(store=store, port=port, min_replicas=1, max_replicas=1))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            top = client.post("/sql", json={"sql": TOP_AUCTIONS})
            top.raise_for_status()
            answer = top.json()
            auction = answer["rows"][0][answer["columns"].index("auction")]
            feature = client.get(f"/features/auction_stats/{auction}")
            feature.raise_for_status()
        return {"url": url, "sql": TOP_AUCTIONS, "top_auctions": answer, "feature": feature.json()}
    finally:
        TokenStore(resolve_root(store)).revoke(record.id)


def _table(answer: dict[str, Any]) -> str:
    columns, rows = answer["columns"], answer["rows"]
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main() -> None:
    store = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HEADWATER_STORE", ".headwater/store")
    port = int(os.environ.get("HEADWATER_SERVE_PORT", "8000"))
    local = start_local_ray(num_cpus=2, object_store_memory=256 * 1024 * 1024)
    try:
        answers = ask(store, port)
    finally:
        from ray import serve

        serve.shutdown()
        local.shutdown()
    print(f"\nServed {resolve_root(store)} at {answers['url']} (Ray Serve), asked over HTTP:")
    print(f"\nPOST /sql  {answers['sql']}\n{_table(answers['top_auctions'])}")
    feature = answers["feature"]
    print(f"\nGET /features/auction_stats/{answers['top_auctions']['rows'][0][0]}\n{json.dumps(feature, indent=2)}")


if __name__ == "__main__":
    main()
