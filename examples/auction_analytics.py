"""Real-time auction analytics over the Nexmark generator — Headwater's main job.

    headwater run examples/auction_analytics.py            # what `make demo` runs
    python examples/auction_analytics.py                   # same, without the CLI

Steps:
1. ``bids``: Nexmark bids (deterministic by seed; ``HEADWATER_EVENTS`` events, ``HEADWATER_RATE`` events/s
   or as fast as possible).
2. ``valid_bids``: drop bids that cannot be right (non-positive price).
3. ``enriched``: computed columns — price in EUR, a price band, whether the bid came through a hot channel.
4. ``auction_stats``: running aggregates per auction (bids, volume, top bid, last bid time), emitted as updates.
5. ``channel_stats``: running aggregates per channel and price band.
6. ``channel_minutes``: per channel and event-time minute (tumbling window on ``date_time``), bids and volume.
7. All written as Parquet directories under ``HEADWATER_OUTPUT`` (default ``output/auction_analytics``); with a
   store (the module-level flow: ``HEADWATER_STORE``, default ``.headwater/store``), ``auction_stats`` and
   ``channel_minutes`` also land in tables of Headwater's store, which ``headwater serve`` answers queries and
   feature look-ups from (``examples/auction_query.py`` does so over HTTP; ``make demo`` runs it).

Run as ``__main__`` (and by ``make demo``) the job is exactly-once: it checkpoints every 2 s to
``HEADWATER_CHECKPOINTS`` (default ``.headwater/checkpoints/auction-analytics``) and Parquet output is
committed per checkpoint; running it again with the same directory resumes where it stopped.

The same dataflow runs as a backfill over a day of bids stored as Parquet: ``build(ParquetSource(dir), out)``
gives the same per-key results as the streaming run (see ``tests/integration/test_main_job.py``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import headwater as hw
from headwater.sinks import ParquetSink
from headwater.sources import NexmarkSource
from headwater.sources.base import Source

HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]
USD_TO_EUR = 0.908


def build(
    bids_source: Source, output_dir: str | Path, name: str = "auction-analytics", store: str | Path | None = None
) -> hw.Dataflow:
    """The auction analytics dataflow over any source of Nexmark bids; with ``store``, also into its tables."""
    out = Path(output_dir)
    flow = hw.Dataflow(name)
    bids = flow.source("bids", bids_source, event_time="date_time", max_out_of_orderness=timedelta(seconds=5))
    valid = bids.filter(hw.col("price") > 0, step_id="valid_bids")
    enriched = valid.with_columns(
        step_id="enriched",
        price_eur=(hw.col("price") * USD_TO_EUR).round(2),
        price_band=hw.when(hw.col("price") >= 1_000_000).then("high")
        .otherwise(hw.when(hw.col("price") >= 10_000).then("mid").otherwise("low")),
        hot_channel=hw.col("channel").is_in(HOT_CHANNELS),
    )
    auction_stats = enriched.key_by("auction").aggregate(
        step_id="auction_stats",
        bids=hw.count(),
        volume_eur=hw.sum("price_eur"),
        top_bid_eur=hw.max("price_eur"),
        last_bid_at=hw.max("date_time"),
    )
    auction_stats.sink("auction_stats_parquet", ParquetSink(out / "auction_stats"))
    (
        enriched.key_by("channel", "price_band")
        .aggregate(step_id="channel_stats", bids=hw.count(), mean_price_eur=hw.mean("price_eur"))
        .sink("channel_stats_parquet", ParquetSink(out / "channel_stats"))
    )
    channel_minutes = (
        enriched.key_by("channel")
        .window(hw.TumblingWindow(minutes=1))
        .aggregate(step_id="channel_minutes", bids=hw.count(), volume_eur=hw.sum("price_eur"))
    )
    channel_minutes.sink("channel_minutes_parquet", ParquetSink(out / "channel_minutes"))
    if store is not None:
        auction_stats.sink("auction_stats_table",
                           hw.TableSink("auction_stats", key=["auction"], time="last_bid_at", store=store))
        channel_minutes.sink("channel_minutes_table", hw.TableSink("channel_minutes", store=store))
    return flow


def _env_rate() -> float | None:
    rate = os.environ.get("HEADWATER_RATE")
    return float(rate) if rate else None


flow = build(
    NexmarkSource(
        "bid",
        events=int(os.environ.get("HEADWATER_EVENTS", "5000000")),
        rate=_env_rate(),
        partitions=2,
        seed=int(os.environ.get("HEADWATER_SEED", "0")),
    ),
    os.environ.get("HEADWATER_OUTPUT", "output/auction_analytics"),
    store=os.environ.get("HEADWATER_STORE", ".headwater/store"),
)

checkpoint = hw.CheckpointConfig(
    dir=os.environ.get("HEADWATER_CHECKPOINTS", ".headwater/checkpoints/auction-analytics"),
    interval=timedelta(seconds=2),
)

if __name__ == "__main__":
    print(hw.run(flow, checkpoint=checkpoint, progress=True))
