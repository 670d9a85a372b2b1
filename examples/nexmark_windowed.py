"""Nexmark q5, q7 and q8 in the Headwater DSL (event time = ``date_time``).

* q5 — hot items: bids per auction over a 10 s window sliding every 2 s; per window, the auction(s) with the
  most bids. Output: auction, num, window_start, window_end.
* q7 — highest bid: per 10 s tumbling window, the highest price and a bid that has it (any one of them on
  ties). Output: window_start, window_end, price, auction, bidder.
* q8 — new users: persons who opened an auction in the same 10 s tumbling window in which they registered.
  Output: id, name, window_start, window_end.

Each builder takes the dataflow, the source(s) and a sink and adds the query's steps; ``benchmarks/nexmark.py``
and the tests (which check every result against DuckDB SQL over the same events) use them.
"""

from __future__ import annotations

from datetime import timedelta

import headwater as hw
from headwater.sinks.base import Sink
from headwater.sources.base import Source

TEN_SECONDS = hw.TumblingWindow(seconds=10)


def q5(flow: hw.Dataflow, bids: Source, sink: Sink) -> None:
    stream = flow.source("bids", bids, event_time="date_time")
    counts = (
        stream.key_by("auction")
        .window(hw.SlidingWindow(size=timedelta(seconds=10), slide=timedelta(seconds=2)))
        .aggregate(step_id="bids_per_auction", num=hw.count())
    )
    # Each sliding window's results happen at its end; a 2 s tumbling window holds exactly one such end.
    top = counts.window(hw.TumblingWindow(seconds=2)).aggregate(step_id="max_per_window", maxn=hw.max("num"))
    hot = counts.join(top, left_on="num", right_on="maxn", window=hw.TumblingWindow(seconds=2), step_id="hot")
    hot.select("auction", "num", "window_start", "window_end").sink("sink", sink)


def q7(flow: hw.Dataflow, bids: Source, sink: Sink) -> None:
    stream = flow.source("bids", bids, event_time="date_time")
    (
        stream.window(TEN_SECONDS)
        .aggregate(step_id="highest_bid", price=hw.max("price"), auction=hw.max_by("auction", "price"),
                   bidder=hw.max_by("bidder", "price"))
        .select("window_start", "window_end", "price", "auction", "bidder")
        .sink("sink", sink)
    )


def q8(flow: hw.Dataflow, persons: Source, auctions: Source, sink: Sink) -> None:
    people = flow.source("persons", persons, event_time="date_time")
    sales = flow.source("auctions", auctions, event_time="date_time")
    registered = people.key_by("id").window(TEN_SECONDS).aggregate(step_id="new_persons", name=hw.first("name"))
    sellers = sales.key_by("seller").window(TEN_SECONDS).aggregate(step_id="sellers", auctions=hw.count())
    joined = registered.join(sellers, left_on="id", right_on="seller", window=TEN_SECONDS, step_id="new_users")
    joined.select("id", "name", "window_start", "window_end").sink("sink", sink)
