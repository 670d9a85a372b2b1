"""Nexmark queries written in the Headwater DSL (used by ``benchmarks/nexmark.py`` and the tests).

Each builder takes a dataflow, the bid stream and a sink, and adds the query's steps:

* q0 — pass-through: every bid, unchanged.
* q1 — currency conversion: ``SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid``.
* q2 — selection: ``SELECT auction, price FROM bid WHERE auction % 123 = 0``.
"""

from __future__ import annotations

from typing import Callable

import headwater as hw
from headwater.sinks.base import Sink


def q0(bids: hw.Stream, sink: Sink) -> None:
    bids.sink("sink", sink)


def q1(bids: hw.Stream, sink: Sink) -> None:
    bids.select("auction", "bidder", (hw.col("price") * 0.908).alias("price"), "date_time", "extra").sink("sink", sink)


def q2(bids: hw.Stream, sink: Sink) -> None:
    bids.filter(hw.col("auction") % 123 == 0).select("auction", "price").sink("sink", sink)


QUERIES: dict[str, Callable[[hw.Stream, Sink], None]] = {"q0": q0, "q1": q1, "q2": q2}


def reference_q0(auction: list, bidder: list, price: list, date_time: list, extra: list) -> int:
    out = 0
    for row in zip(auction, bidder, price, date_time, extra):
        out += 1 if row else 0
    return out


def reference_q1(auction: list, bidder: list, price: list, date_time: list, extra: list) -> int:
    out = []
    for a, b, p, t, e in zip(auction, bidder, price, date_time, extra):
        out.append((a, b, p * 0.908, t, e))
    return len(out)


def reference_q2(auction: list, bidder: list, price: list, date_time: list, extra: list) -> int:
    out = []
    for a, p in zip(auction, price):
        if a % 123 == 0:
            out.append((a, p))
    return len(out)


REFERENCES = {"q0": reference_q0, "q1": reference_q1, "q2": reference_q2}
