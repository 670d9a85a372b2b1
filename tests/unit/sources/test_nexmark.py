"""Unit tests of the Nexmark generator source (no Ray): schema, proportions, determinism, resume, pacing."""

from __future__ import annotations

import pickle
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from headwater.errors import ConfigError
from headwater.sources import nexmark
from headwater.sources.base import SourceLag
from headwater.sources.base import drain as drain_partition
from headwater.sources.nexmark import HOT_CHANNELS, NexmarkPartition, NexmarkSource

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def drain(part: NexmarkPartition) -> list[pa.RecordBatch]:
    """Every batch of an unpaced, bounded partition, in order."""
    batches = list(drain_partition(part))
    assert all(b is not None for b in batches), "an unpaced partition must never return None"
    return batches  # type: ignore[return-value]


def read_all(src: NexmarkSource) -> pa.Table:
    batches = [b for part in src.list_parts() for b in drain(src.build_part(part, None))]
    return pa.Table.from_batches(batches, schema=src.schema())


def canonical(table: pa.Table) -> pa.Table:
    """The rows sorted on every column, to compare tables as multisets."""
    return table.sort_by([(name, "ascending") for name in table.column_names])


def event_numbers(table: pa.Table) -> list[int]:
    """Event numbers recovered from ``date_time``; exact for sources built with ``event_rate=1_000``."""
    ms = pc.cast(table["date_time"], pa.int64()).to_numpy()
    return (ms - int(BASE.timestamp() * 1000)).tolist()


# --------------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize(
    ("table", "fields"),
    [
        ("person", "id:int64 name:string email_address:string credit_card:string city:string state:string "
                   "date_time:timestamp[ms] extra:string"),
        ("auction", "id:int64 item_name:string description:string initial_bid:int64 reserve:int64 "
                    "date_time:timestamp[ms] expires:timestamp[ms] seller:int64 category:int64 extra:string"),
        ("bid", "auction:int64 bidder:int64 price:int64 channel:string url:string date_time:timestamp[ms] "
                "extra:string"),
    ],
)
def test_schema_of_each_table(table: Any, fields: str) -> None:
    src = NexmarkSource(table, events=500)
    assert [f"{f.name}:{f.type}" for f in src.schema()] == fields.split()
    batch = src.build_part(src.list_parts()[0], None).next_batch()
    assert batch is not None and batch.schema.equals(src.schema())
    assert batch.num_rows > 0 and all(col.null_count == 0 for col in batch.columns)


def test_declared_properties_and_partition_names() -> None:
    assert NexmarkSource(events=10).bounded is True
    assert NexmarkSource(events=None).bounded is False
    src = NexmarkSource("auction", partitions=3)
    assert src.list_parts() == ["nexmark-auction-0-of-3", "nexmark-auction-1-of-3", "nexmark-auction-2-of-3"]


# --------------------------------------------------------------------------------------- proportions
def test_proportions_over_50_000_events() -> None:
    counts = {t: read_all(NexmarkSource(t, events=50_000)).num_rows for t in ("person", "auction", "bid")}
    assert counts == {"person": 1_000, "auction": 3_000, "bid": 46_000}


def test_person_and_auction_ids_are_dense_and_timed_by_event_number() -> None:
    persons = read_all(NexmarkSource("person", events=5_000, event_rate=1_000))
    auctions = read_all(NexmarkSource("auction", events=5_000, event_rate=1_000))
    assert persons["id"].to_pylist() == list(range(1000, 1100))
    assert event_numbers(persons) == [50 * i for i in range(100)]
    assert auctions["id"].to_pylist() == list(range(1000, 1300))
    assert event_numbers(auctions) == [50 * e + o for e in range(100) for o in (1, 2, 3)]


def test_event_time_is_base_plus_n_times_inter_event_delay_truncated_to_ms() -> None:
    base = datetime(2030, 5, 6, 7, 8, 9, 250, tzinfo=UTC)
    base_us = (base - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    persons = read_all(NexmarkSource("person", events=2_000, base_time=base, event_rate=3_000.0))
    for i, got in enumerate(persons["date_time"].to_pylist()):
        offset_us = int(50 * i * (1e6 / 3_000.0))  # person i is event 50 * i
        assert got == datetime(1970, 1, 1) + timedelta(milliseconds=(base_us + offset_us) // 1000)
    assert NexmarkSource(events=1).base_time == BASE  # a fixed default, so output is deterministic


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("table", ["bid", "auction", "person"])
def test_same_rows_for_any_partitioning_and_batch_size(table: Any) -> None:
    reference = canonical(read_all(NexmarkSource(table, events=30_000, seed=7)))
    for partitions, batch_size in [(3, 1_000), (4, 777), (1, 65_536), (2, 64)]:
        other = read_all(NexmarkSource(table, events=30_000, seed=7, partitions=partitions, batch_size=batch_size))
        assert canonical(other).equals(reference), (partitions, batch_size)


def test_partition_owns_event_numbers_modulo_p_in_increasing_order() -> None:
    src = NexmarkSource("bid", events=10_000, partitions=3, batch_size=500, event_rate=1_000)
    for k, part in enumerate(src.list_parts()):
        ns = event_numbers(pa.Table.from_batches(drain(src.build_part(part, None))))
        assert ns == sorted(ns) and len(set(ns)) == len(ns)
        assert all(n % 3 == k and n % 50 >= 4 for n in ns)


def test_seed_changes_the_rows_and_the_source_pickles() -> None:
    a = read_all(NexmarkSource("bid", events=2_000, seed=1))
    assert not a.equals(read_all(NexmarkSource("bid", events=2_000, seed=2)))
    assert a.equals(read_all(pickle.loads(pickle.dumps(NexmarkSource("bid", events=2_000, seed=1)))))


def test_partitions_that_own_no_event_of_the_table_end_at_once() -> None:
    src = NexmarkSource("person", events=1_000, partitions=50)
    assert [len(drain(src.build_part(p, None))) > 0 for p in src.list_parts()] == [True] + [False] * 49
    empty = src.build_part(src.list_parts()[1], None)
    with pytest.raises(StopIteration):
        empty.next_batch()
    assert isinstance(empty.snapshot(), int)


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("partitions", [1, 3])
def test_resume_after_snapshot_gives_exactly_the_remaining_rows(partitions: int) -> None:
    src = NexmarkSource("bid", events=20_000, partitions=partitions, batch_size=1_234, event_rate=1_000)
    for part in src.list_parts():
        clean = pa.Table.from_batches(drain(src.build_part(part, None)))
        for stop_after in (0, 1, 5):
            first = src.build_part(part, None)
            head = [first.next_batch() for _ in range(stop_after)]
            state = first.snapshot()
            assert isinstance(state, int) and pickle.loads(pickle.dumps(state)) == state
            tail = drain(src.build_part(part, state))
            resumed = pa.Table.from_batches([b for b in head + tail if b is not None], schema=src.schema())
            assert resumed.equals(clean), (part, stop_after)
            ns = event_numbers(resumed)
            assert len(set(ns)) == len(ns)  # no duplicate ...
            assert ns == event_numbers(clean)  # ... and no gap


def test_snapshot_is_the_next_event_number_and_the_end_state_resumes_to_nothing() -> None:
    src = NexmarkSource("bid", events=1_000, batch_size=10)
    part = src.build_part(src.list_parts()[0], None)
    assert part.snapshot() == 4  # events 0..3 are a person and three auctions
    part.next_batch()
    assert part.snapshot() == 14
    drain(part)
    with pytest.raises(StopIteration):
        src.build_part(src.list_parts()[0], part.snapshot()).next_batch()


def test_unbounded_source_yields_full_batches() -> None:
    part = NexmarkSource("bid", events=None, batch_size=4_096).build_part("nexmark-bid-0-of-1", None)
    assert [part.next_batch().num_rows for _ in range(3)] == [4_096] * 3  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------- references
def test_bids_reference_auctions_and_persons_of_the_same_sequence() -> None:
    events = 200_000
    bids = read_all(NexmarkSource("bid", events=events, seed=3, event_rate=1_000))
    auction_ids = set(read_all(NexmarkSource("auction", events=events, seed=3))["id"].to_pylist())
    person_ids = set(read_all(NexmarkSource("person", events=events, seed=3))["id"].to_pylist())
    n = pc.cast(bids["date_time"], pa.int64()).to_numpy() - int(BASE.timestamp() * 1000)
    last_auction = 1000 + 3 * (n // 50) + 2  # newest auction id when bid n is generated
    last_person = 1000 + n // 50
    auction, bidder = bids["auction"].to_numpy(), bids["bidder"].to_numpy()
    # As in the reference, a bid may name an id up to ID_LEAD (10) past the newest one generated so far.
    assert (auction >= 1000).all() and (auction <= last_auction + 10).all()
    assert (bidder >= 1000).all() and (bidder <= last_person + 10).all()
    # Ahead: ~9% of the cold auction draws (p=1/2), ~1% of the cold bidder draws and the hot bidder of every
    # hundredth person batch (id last + 1 when last % 100 == 0): about 5.6% of the bids in all.
    assert 0.04 < ((auction > last_auction) | (bidder > last_person)).mean() < 0.07
    # Every referenced id that the sequence has generated by its end is a real auction / person.
    assert set(auction[auction <= max(auction_ids)].tolist()) <= auction_ids
    assert set(bidder[bidder <= max(person_ids)].tolist()) <= person_ids
    # Hot keys: p=1/2 for the hot auction, p=3/4 for the hot bidder (plus the odd cold draw hitting them).
    assert 0.49 < (auction == (last_auction - 1000) // 100 * 100 + 1000).mean() < 0.53
    assert 0.74 < (bidder == (last_person - 1000) // 100 * 100 + 1001).mean() < 0.77


def test_auction_fields_follow_the_reference() -> None:
    auctions = read_all(NexmarkSource("auction", events=100_000))
    assert pc.all(pc.greater(auctions["expires"], auctions["date_time"])).as_py()
    assert pc.all(pc.greater_equal(auctions["reserve"], auctions["initial_bid"])).as_py()
    assert set(auctions["category"].to_pylist()) == {10, 11, 12, 13, 14}
    seller = auctions["seller"].to_numpy()
    assert (seller >= 1000).all() and (seller <= 1000 + auctions["id"].to_numpy() // 3 + 10).all()


def test_string_fields_look_like_the_reference() -> None:
    bids = read_all(NexmarkSource("bid", events=20_000))
    channels = bids["channel"].to_pylist()
    assert all(c in HOT_CHANNELS or re.fullmatch(r"channel-\d{1,4}", c) for c in channels)
    assert 0.45 < sum(c in HOT_CHANNELS for c in channels) / len(channels) < 0.55
    assert all(u.startswith("https://www.nexmark.com/") for u in bids["url"].to_pylist())
    lengths = pc.utf8_length(bids["extra"])
    assert pc.min(lengths).as_py() >= 54 and pc.max(lengths).as_py() <= 81
    prices = bids["price"].to_numpy()
    assert prices.min() >= 100 and prices.max() <= 100_000_000
    persons = read_all(NexmarkSource("person", events=20_000))
    assert all(re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", c) for c in persons["credit_card"].to_pylist())
    assert all(e.endswith(".com") and "@" in e for e in persons["email_address"].to_pylist())
    assert set(persons["state"].to_pylist()) <= {"AZ", "CA", "ID", "OR", "WA", "WY"}


# ------------------------------------------------------------------------------------------------ pacing
class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


def test_paced_partition_emits_only_due_events(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(nexmark, "_now", clock.monotonic)
    part = NexmarkSource("bid", events=None, rate=100.0).build_part("nexmark-bid-0-of-1", None)
    assert part.next_awake() is None  # not polled yet: poll now
    assert part.next_batch() is None  # the first bid is event 4, due 40 ms after the first poll
    assert part.next_awake() == pytest.approx(1_000.04)
    clock.now = 1_000.039
    assert part.next_batch() is None
    clock.now = 1_000.04
    assert part.next_batch().num_rows == 1  # type: ignore[union-attr]
    clock.now = 1_001.0  # events 5..100 are due: 96 of them, less the person/auctions 50..53 and person 100
    assert part.next_batch().num_rows == 91  # type: ignore[union-attr]
    assert part.next_batch() is None
    assert part.next_awake() == pytest.approx(1_001.04)  # events 101..103 are auctions


def test_paced_partition_resumes_its_clock_at_the_resume_point(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(nexmark, "_now", clock.monotonic)
    part = NexmarkSource("bid", events=None, rate=10.0).build_part("nexmark-bid-0-of-1", 1_000_004)
    assert part.next_batch().num_rows == 1  # type: ignore[union-attr]
    assert part.next_awake() == pytest.approx(1_000.1)


def test_paced_rate_over_real_time_is_about_right() -> None:
    rate, window = 20_000.0, 0.2
    part = NexmarkSource("bid", events=None, rate=rate).build_part("nexmark-bid-0-of-1", None)
    rows, nones, start = 0, 0, time.monotonic()
    while (now := time.monotonic()) - start < window:
        batch = part.next_batch()
        if batch is None:
            nones += 1
            awake = part.next_awake()
            assert awake is not None and awake >= now - 1e-6
            time.sleep(max(0.0, min(awake - time.monotonic(), 0.005)))
        else:
            rows += batch.num_rows
            elapsed = time.monotonic() - start
            assert rows <= (elapsed * rate + 1) * 46 / 50 + 46  # never ahead of the clock
    expected = rate * window * 46 / 50  # 3680 bids
    assert 0.75 * expected < rows <= 1.05 * expected
    assert nones > 0


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": -1}, "events must be"),
        ({"events": 1.5}, "events must be"),
        ({"table": "bids"}, "unknown table"),
        ({"partitions": 0}, "partitions must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"rate": 0}, "rate must be"),
        ({"rate": -5.0}, "rate must be"),
        ({"rate": float("nan")}, "rate must be"),
        ({"event_rate": 0}, "event_rate must be"),
        ({"seed": "x"}, "seed must be"),
        ({"base_time": "2026-01-01"}, "base_time must be"),
    ],
)
def test_bad_arguments_raise_config_error_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NexmarkSource(**kwargs)


def test_bad_partition_or_resume_state_raise_config_error() -> None:
    src = NexmarkSource(partitions=2)
    with pytest.raises(ConfigError, match="unknown partition"):
        src.build_part("nexmark-bid-0-of-3", None)
    with pytest.raises(ConfigError, match="resume state"):
        src.build_part("nexmark-bid-0-of-2", -3)


@pytest.mark.parametrize("table", ["bid", "auction", "person"])
def test_a_projection_yields_the_same_values_of_fewer_columns_and_resumes_alike(table: Any) -> None:
    full = NexmarkSource(table, events=3_000, partitions=2, batch_size=50)
    names = full.schema().names
    wanted = [names[-2], names[0], names[3]]  # any order in, schema order out
    projected = full.project(wanted)
    expected = [n for n in names if n in wanted]
    assert projected.schema().names == expected and full.schema().names == names
    assert read_all(projected).equals(read_all(full).select(expected))
    part = projected.list_parts()[0]
    first = projected.build_part(part, None)
    first.next_batch()
    position = first.snapshot()
    assert position > 0
    resumed = projected.build_part(part, position).next_batch()
    whole = full.build_part(part, position).next_batch()
    assert resumed.equals(whole.select(expected))


def test_a_projection_of_an_unknown_column_is_refused() -> None:
    with pytest.raises(ConfigError, match="no column"):
        NexmarkSource("bid").project(["auction", "nope"])


def test_a_paced_partition_reports_how_far_it_is_behind_its_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(nexmark, "_now", clock.monotonic)
    part = NexmarkSource("bid", events=None, rate=100.0).build_part("nexmark-bid-0-of-1", None)
    assert part.lag() == SourceLag(0, 0.0)  # its schedule starts at the first poll
    assert part.next_batch() is None
    clock.now = 1_001.0  # bids 4..100 are due (92 of them, less persons/auctions), none emitted
    lag = part.lag()
    assert lag is not None and lag.records == 92 and lag.seconds == pytest.approx(0.96)  # bid 4 was due at +40 ms
    assert part.next_batch().num_rows == 92  # type: ignore[union-attr]
    assert part.lag() == SourceLag(0, 0.0)  # caught up


def test_an_unpaced_partition_reports_the_events_left_or_nothing_when_unbounded() -> None:
    bounded = NexmarkSource("bid", events=1_000, batch_size=100).build_part("nexmark-bid-0-of-1", None)
    assert bounded.lag() == SourceLag(records=920)
    bounded.next_batch()
    assert bounded.lag() == SourceLag(records=820)
    assert NexmarkSource("bid", events=None).build_part("nexmark-bid-0-of-1", None).lag() is None
