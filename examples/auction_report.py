"""Print what the auction analytics job computed: read back its committed Parquet output.

    python examples/auction_report.py output/auction_analytics

The job's aggregates are changelogs (one row per key per update); a key's result is its latest row, which for
these running counts is the row with the highest ``bids`` count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds


def _latest(table, keys: list[str]):
    best = table.group_by(keys).aggregate([("bids", "max")]).rename_columns([*keys, "bids"])
    return table.join(best, keys=[*keys, "bids"], join_type="inner").combine_chunks()


def main(output: str) -> int:
    root = Path(output)
    auctions = _latest(ds.dataset(root / "auction_stats", format="parquet").to_table(), ["auction"])
    channels = _latest(ds.dataset(root / "channel_stats", format="parquet").to_table(), ["channel", "price_band"])
    print(f"\n{auctions.num_rows:,} auctions, {int(pc.sum(auctions['bids']).as_py()):,} bids in {root}/")
    print("\nTop 5 auctions by volume (EUR):")
    top = auctions.sort_by([("volume_eur", "descending")]).slice(0, 5)
    for row in top.to_pylist():
        print(f"  auction {row['auction']:>8}  bids {row['bids']:>7,}  volume {row['volume_eur']:>16,.2f}  "
              f"top bid {row['top_bid_eur']:>14,.2f}  last bid {row['last_bid_at']}")
    minutes = ds.dataset(root / "channel_minutes", format="parquet").to_table()
    if minutes.num_rows:
        busiest = minutes.sort_by([("bids", "descending")]).slice(0, 3).to_pylist()
        print(f"\n{minutes.num_rows:,} (channel, minute) windows; busiest:")
        for row in busiest:
            print(f"  {row['channel']:<12} {row['window_start']} .. {row['window_end']}  bids {row['bids']:>7,}")
    print("\nBids per price band (all channels):")
    bands = channels.group_by("price_band").aggregate([("bids", "sum")]).sort_by("price_band")
    for row in bands.to_pylist():
        print(f"  {row['price_band']:<5} {row['bids_sum']:>12,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "output/auction_analytics"))
