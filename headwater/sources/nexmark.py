"""A vectorised, deterministic Nexmark event generator (persons, auctions, bids) as a :class:`Source`.

It models the Beam / Flink Nexmark generator (``GeneratorConfig``, ``PersonGenerator``, ``AuctionGenerator``,
``BidGenerator``) in its default configuration: ONE global sequence of events ``0..events-1``; event ``n`` is
a person if ``n % 50 < 1``, an auction if ``< 4``, else a bid (1:3:46). A source emits one ``table`` of that
sequence, so bids reference the auctions and persons that the other tables with the same ``seed`` hold:

* person id ``1000 + n // 50``; auction id ``1000 + 3 * (n // 50) + n % 50 - 1``;
* bid auction: p=1/2 the hot auction ``last // 100 * 100``, else uniform over the last 100 auctions and 10
  ahead; bidder: p=3/4 the hot bidder ``last // 100 * 100 + 1``, else uniform over the last 1000 persons and
  10 ahead; seller: p=3/4 the hot seller ``last // 100 * 100``, else like a cold bidder; category ``10 +
  uniform(5)``; price ``round(10 ** (6u) * 100)``; ``reserve = initial_bid + price``; ``expires = date_time
  + 1 + uniform(2 * horizon)``, horizon = time to the event 1666 later; channel: p=1/2 one of 4 hot ones,
  else ``channel-<k>`` (k < 10 000), each with a fixed url;
* ``date_time(n) = base_time + trunc(n * 1e6 / event_rate)`` microseconds, truncated to ms.

As in the reference, an id drawn "ahead" may name an entity created a few events later (or never, if the
sequence ends first): every referenced id is ``>= 1000`` and ``<= newest id so far + 10`` (~6% of bids).

Determinism: each random field of event ``n`` is a bit range of ``splitmix64(n * golden + key(seed, i))`` on
numpy ``uint64`` arrays, so a row depends only on ``(seed, n)``: never on batching, partitioning or resume.

Deviations from the reference (for vectorisation and determinism):

* A counter-based hash instead of ``java.util.Random``: same distributions, different values.
* ``item_name`` (4096), ``description`` (2048), email local part and domain (4096 each) and ``extra`` (1024
  per table) are drawn from fixed pools built once per process. ``extra`` lengths follow ``nextExtra`` for an
  average-sized row (bid 54-81, auction 314-469, person 109-162 letters), not each row's own size.
* Flink's ``BidGenerator`` adds ``FIRST_PERSON_ID`` to the bidder twice (bidders from 2000, matching no
  person); we add it once, as Beam does. Flink's urls are random per JVM; ours are fixed per channel.
* No out-of-order groups or rate shapes; ``event_rate`` sets event time only, ``rate`` paces the wall clock.
* ``timestamp[ms]`` columns carry no time zone; values are UTC (a naive ``base_time`` is read as UTC).

Speed, one core of the 2-core dev machine while other jobs ran, ``batch_size=65_536``: 10-13 M bid rows/s
(~5 ms a batch, ~2 of them Arrow string takes; auction ~7 M, person ~5 M rows/s, 6% and 2% of the events),
measured with (``T`` = bid, auction or person)::

    .venv/bin/python -c "import time; from headwater.sources.nexmark import NexmarkSource as S; T = 'bid'; \
    p = S(T, events=None).build_part(f'nexmark-{T}-0-of-1', None); p.next_batch(); t = time.perf_counter(); \
    print(sum(p.next_batch().num_rows for _ in range(300)) / (time.perf_counter() - t) / 1e6, 'M rows/s')"
"""

from __future__ import annotations

import bisect
import copy
import math
import time
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Callable, Literal, Sequence, TypeGuard, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError
from headwater.sources.base import Source, SourceLag, SourcePartition

Table = Literal["bid", "auction", "person"]

PROPORTION_DENOMINATOR = 50  # person 1, auction 3, bid 46
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_BATCH = 100  # the reference's HOT_AUCTION_RATIO / HOT_BIDDER_RATIO / HOT_SELLER_RATIO constants
NUM_IN_FLIGHT_AUCTIONS = 100
NUM_ACTIVE_PEOPLE = 1000
ID_LEAD = 10  # AUCTION_ID_LEAD and PERSON_ID_LEAD
EVENTS_FOR_AUCTIONS = NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR // 3  # 1666
NUM_CHANNELS = 10_000
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
DEFAULT_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)

# Pool index of a uniform draw in [0, 20000): the first half maps onto the 4 hot channels, the second onto
# ``channel-<k>`` (pool index 4 + k), i.e. the reference's ``nextInt(2) > 0 ? hot[nextInt(4)] : nextInt(10000)``.
_CHANNEL_OF = np.concatenate([np.arange(NUM_CHANNELS) % len(HOT_CHANNELS), 4 + np.arange(NUM_CHANNELS)])
#: which kernel outputs each column is built from (columns not listed: the output of the same name)
_KERNEL_INPUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "bid": {"url": ("channel",), "date_time": ("ts",)},
    "auction": {"item_name": ("item",), "description": ("desc",), "initial_bid": ("initial",), "date_time": ("ts",)},
    "person": {"email_address": ("local", "domain"), "credit_card": ("card",), "date_time": ("ts",)},
}
_ALL_BID_OUTPUTS = frozenset({"auction", "bidder", "price", "channel", "ts", "extra"})
_CHUNK = 4_096  # rows per numeric kernel call: 32 KB temporaries stay in cache and in malloc's free lists
_KIND_OFFSETS = {"person": range(0, 1), "auction": range(1, 4), "bid": range(4, 50)}
_SALTS = {"person": 0x5EED_0001, "auction": 0x5EED_0100, "bid": 0x5EED_1000}
_now = time.monotonic  # the pacing clock (tests substitute a fake one)

_TS = pa.timestamp("ms")
SCHEMAS: dict[str, pa.Schema] = {
    "person": pa.schema([("id", pa.int64()), ("name", pa.string()), ("email_address", pa.string()),
                         ("credit_card", pa.string()), ("city", pa.string()), ("state", pa.string()),
                         ("date_time", _TS), ("extra", pa.string())]),
    "auction": pa.schema([("id", pa.int64()), ("item_name", pa.string()), ("description", pa.string()),
                          ("initial_bid", pa.int64()), ("reserve", pa.int64()), ("date_time", _TS),
                          ("expires", _TS), ("seller", pa.int64()), ("category", pa.int64()),
                          ("extra", pa.string())]),
    "bid": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("url", pa.string()), ("date_time", _TS), ("extra", pa.string())]),
}

# ------------------------------------------------------------------------------------------------ hashing
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S16, _S27, _S30, _S31, _S32 = (np.uint64(s) for s in (11, 16, 27, 30, 31, 32))
_LOW16, _LOW32 = np.uint64(0xFFFF), np.uint64(0xFFFFFFFF)
_LN10 = math.log(10.0)


def _spread(n: np.ndarray) -> np.ndarray:
    """``n * golden`` (mod 2**64) for non-negative int64 or uint64 ``n``; shared by all of a row's hashes."""
    return n.view(np.uint64) * _GOLDEN


def _hash(spread: np.ndarray, key: int) -> np.ndarray:
    """splitmix64 of ``n * golden + key`` given ``spread = _spread(n)``: 64 well-mixed bits per row."""
    z = spread + np.uint64(key)
    z ^= z >> _S30
    z *= _C1
    z ^= z >> _S27
    z *= _C2
    z ^= z >> _S31
    return z


def _below(bits: np.ndarray, m: int | np.integer | np.ndarray, width: np.uint64 = _S32) -> np.ndarray:
    """Map ``width``-bit values onto ``[0, m)`` by multiply-shift (``m`` scalar or array, ``< 2**32``)."""
    m = m.astype(np.uint64) if isinstance(m, np.ndarray) else np.uint64(m)
    return ((bits * m) >> width).view(np.int64)


def _unit(h: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The top 53 bits of ``h`` as floats in ``[0, scale)``."""
    return (h >> _S11).astype(np.float64) * (scale / (1 << 53))


def _price(h: np.ndarray) -> np.ndarray:
    """The reference ``PriceGenerator``: ``Math.round(10 ** (6u) * 100)``, from the top 53 bits of ``h``."""
    x = _unit(h, 6.0 * _LN10)
    x += 2.0 * _LN10
    np.exp(x, out=x)
    x += 0.5  # positive, so truncating is Math.round
    return x.astype(np.int64)


def _recent(last: np.ndarray, bits32: np.ndarray, window: int) -> np.ndarray:
    """Uniform over ``[max(last - window, 0), last + ID_LEAD]``: the reference ``nextBase0AuctionId`` (window
    100) and ``nextBase0PersonId`` (window 999). ``last`` ascends; once past the window the width is fixed."""
    if last[0] >= window:
        return last - window + _below(bits32, window + 1 + ID_LEAD)
    low = np.maximum(last - window, 0)
    return low + _below(bits32, last - low + 1 + ID_LEAD)


# ------------------------------------------------------------------------------------------- string pools
def _counter_hash(count: int, salt: int) -> np.ndarray:
    return _hash(_spread(np.arange(count, dtype=np.uint64)), salt)


def _letters(count: int, width: int, salt: int, special: int = ord(" "), one_in: int = 13) -> np.ndarray:
    """A ``(count, width)`` uint8 matrix of random lowercase letters, ``special`` with p = 1/``one_in``."""
    h = _counter_hash(count * width, salt)
    chars = (ord("a") + _below(h & _LOW32, 26)).astype(np.uint8)
    if one_in:
        chars[_below(h >> _S32, one_in) == 0] = special
    return chars.reshape(count, width)


def _next_strings(count: int, max_length: int, salt: int, special: str = " ") -> list[str]:
    """The reference ``nextString(max_length)``: 3..max_length-1 chars, 1 in 13 ``special``, trimmed."""
    lengths = 3 + _below(_counter_hash(count, salt + 1) & _LOW32, max_length - 3)
    rows = _letters(count, max_length, salt, special=ord(special))
    out = [rows[i, : lengths[i]].tobytes().decode() for i in range(count)]
    return [s.strip() for s in out] if special == " " else out


def _extras(low: int, high: int, salt: int) -> pa.Array:
    """1024 strings of random letters with lengths uniform in ``[low, high]`` (the reference ``nextExtra``)."""
    lengths = low + _below(_counter_hash(1024, salt + 1) & _LOW32, high - low + 1)
    rows = _letters(1024, high, salt, one_in=0)
    return pa.array([rows[i, : lengths[i]].tobytes().decode() for i in range(1024)], pa.string())


def _channel_id(k: int) -> int:
    """Java's ``Math.abs(Integer.reverse(k))``, overflow included (``abs(MIN_VALUE)`` stays negative)."""
    r = int(f"{k:032b}"[::-1], 2)
    r = r - (1 << 32) if r >= 1 << 31 else r
    return r if r == -(1 << 31) else abs(r)


@cache
def _pools() -> dict[str, pa.Array]:
    """Every string pool, built once per process (~0.1 s); fixed, since the seed only picks indices."""
    first = "Peter,Paul,Luke,John,Saul,Vicky,Kate,Julie,Sarah,Deiter,Walter".split(",")
    last = "Shultz,Abrams,Spencer,White,Bartels,Walton,Smith,Jones,Noris".split(",")
    cities = "Phoenix,Los Angeles,San Francisco,Boise,Portland,Bend,Redmond,Seattle,Kent,Cheyenne".split(",")
    parts = _next_strings(3 * (NUM_CHANNELS + 4), 5, 0xC0FFEE, special="_")
    urls = [f"https://www.nexmark.com/{parts[3 * i]}/{parts[3 * i + 1]}/{parts[3 * i + 2]}/item.htm?query=1"
            for i in range(NUM_CHANNELS + 4)]
    with_id = _below(_counter_hash(NUM_CHANNELS, 0xC0FFEF) & _LOW32, 10) > 0  # the reference's 9 in 10
    urls[4:] = [u + f"&channel_id={_channel_id(k)}" if with_id[k] else u for k, u in enumerate(urls[4:])]
    arr = lambda xs: pa.array(xs, pa.string())  # noqa: E731
    return {
        "name": arr([f"{a} {b}" for a in first for b in last]), "city": arr(cities),
        "state": arr("AZ,CA,ID,OR,WA,WY".split(",")), "email_local": arr(_next_strings(4096, 7, 0xE0)),
        "email_domain": arr([s + ".com" for s in _next_strings(4096, 5, 0xE1)]),
        "item_name": arr(_next_strings(4096, 20, 0xA0)), "description": arr(_next_strings(2048, 100, 0xA1)),
        "channel": arr(list(HOT_CHANNELS) + [f"channel-{k}" for k in range(NUM_CHANNELS)]), "url": arr(urls),
        "bid_extra": _extras(54, 81, 0xB0), "auction_extra": _extras(314, 469, 0xB1),
        "person_extra": _extras(109, 162, 0xB2),
    }


def _take(pool: pa.Array, idx: np.ndarray) -> pa.Array:
    return pool.take(pa.array(idx))


def _credit_card_bytes(h: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """``"dddd dddd dddd dddd"`` (four uniform groups) as a fixed-width ``(len(h), 19)`` uint8 matrix."""
    out = np.full((len(h), 19), ord(" "), dtype=np.uint8)
    for g, bits in enumerate((h & _LOW32, h >> _S32, h2 & _LOW32, h2 >> _S32)):
        group = _below(bits, 10_000)
        for d, div in enumerate((1000, 100, 10, 1)):
            out[:, 5 * g + d] = ord("0") + (group // div) % 10
    return out


# -------------------------------------------------------------------------------------------- the source
class NexmarkSource(Source):
    """The ``bid``, ``auction`` or ``person`` rows of one deterministic global Nexmark event sequence.

    Invariants: a row depends only on ``(seed, event number)`` (times also on ``base_time``, ``event_rate``);
    partition ``k`` of ``P`` owns the events ``n % P == k`` and emits them in increasing ``n``; its resume
    state is the next event number it would emit, so resuming yields exactly the remaining rows. With
    ``rate`` (events/s of the whole sequence, all tables counted, spread over the partitions) event ``n`` is
    not emitted before ``start + (n - resume_state) / rate`` on ``time.monotonic``, ``start`` being the
    partition's first poll; with ``rate=None`` every batch has ``batch_size`` rows (the last may be smaller).

    >>> src = NexmarkSource("bid", events=100)
    >>> src.build_part(src.list_parts()[0], None).next_batch().num_rows  # 92 of 100 events are bids
    92
    """

    def __init__(self, table: Table = "bid", events: int | None = 1_000_000, seed: int = 0,
                 rate: float | None = None, partitions: int = 1, batch_size: int = 65_536,
                 base_time: datetime | None = None, event_rate: float = 10_000.0) -> None:
        if table not in SCHEMAS:
            raise ConfigError(f"NexmarkSource: unknown table {table!r}; use 'bid', 'auction' or 'person'")
        if events is not None and (not _is_int(events) or events < 0):
            raise ConfigError(f"NexmarkSource: events must be an int >= 0 or None (unbounded), got {events!r}")
        if not _is_int(seed):
            raise ConfigError(f"NexmarkSource: seed must be an int, got {seed!r}")
        if rate is not None and not _positive(rate):
            raise ConfigError(f"NexmarkSource: rate must be > 0 events/s, or None for no pacing; got {rate!r}")
        if not _is_int(partitions) or partitions < 1:
            raise ConfigError(f"NexmarkSource: partitions must be an int >= 1, got {partitions!r}")
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"NexmarkSource: batch_size must be an int >= 1, got {batch_size!r}")
        if not _positive(event_rate):
            raise ConfigError(f"NexmarkSource: event_rate must be > 0 events/s, got {event_rate!r}")
        if base_time is not None and not isinstance(base_time, datetime):
            raise ConfigError(f"NexmarkSource: base_time must be a datetime or None, got {base_time!r}")
        base = base_time or DEFAULT_BASE_TIME
        self.table: Table = table
        self.events = None if events is None else int(events)
        self.seed = int(seed)
        self.rate = None if rate is None else float(rate)
        self.partitions = int(partitions)
        self.batch_size = int(batch_size)
        self.base_time = base if base.tzinfo else base.replace(tzinfo=UTC)
        self.event_rate = float(event_rate)
        self.bounded = events is not None
        self._base_us = (self.base_time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        self._delay_us = 1e6 / self.event_rate
        seed_spread = _spread(np.array([self.seed % (1 << 64)], dtype=np.uint64))
        self._keys = [int(_hash(seed_spread, _SALTS[table] + i)[0]) for i in range(4)]
        self._columns: tuple[str, ...] | None = None  # a projection (see project()); None: every column

    def schema(self) -> pa.Schema:
        full = SCHEMAS[self.table]
        return full if self._columns is None else pa.schema([full.field(c) for c in self._columns])

    def project(self, columns: Sequence[str]) -> NexmarkSource:
        """The same events with only ``columns`` built (string columns are most of the generation cost)."""
        unknown = [c for c in columns if SCHEMAS[self.table].get_field_index(c) < 0]
        if unknown:
            raise ConfigError(f"NexmarkSource: no column(s) {unknown} in the {self.table!r} table")
        projected = copy.copy(self)
        projected._columns = tuple(c for c in SCHEMAS[self.table].names if c in columns)
        return projected

    def list_parts(self) -> list[str]:
        return [f"nexmark-{self.table}-{k}-of-{self.partitions}" for k in range(self.partitions)]

    def build_part(self, part: str, resume_state: PlainData) -> NexmarkPartition:
        """Partition ``part``, continuing at event number ``resume_state`` (``None``: from event 0)."""
        parts = self.list_parts()
        if part not in parts:
            raise ConfigError(f"NexmarkSource: unknown partition {part!r}, expected one of {parts[0]!r}.."
                              f"{parts[-1]!r}; was the checkpoint taken with another table or partitions count?")
        if resume_state is not None and (not _is_int(resume_state) or resume_state < 0):
            raise ConfigError(f"NexmarkSource: resume state must be an event number >= 0, got {resume_state!r}")
        return NexmarkPartition(self, parts.index(part), int(cast("int | None", resume_state) or 0))

    def generate(self, n: np.ndarray) -> pa.RecordBatch:
        """The rows for the ascending int64 event numbers ``n``, all of this source's table kind.

        Numeric columns are computed ``_CHUNK`` rows at a time: whole-batch temporaries made glibc return
        and re-fault ~10 MB per batch, which halved the throughput. Only the kernel outputs that the
        (projected) schema uses are kept; the bid kernel does not even compute the others.
        """
        kernel = getattr(self, f"_{self.table}_kernel")
        wanted = self._kernel_outputs()
        cols: dict[str, np.ndarray] = {}
        for start in range(0, len(n), _CHUNK):
            for name, a in kernel(n[start : start + _CHUNK], wanted).items():
                if name not in wanted:
                    continue
                if name not in cols:
                    cols[name] = np.empty((len(n),) + a.shape[1:], a.dtype)
                cols[name][start : start + len(a)] = a
        return getattr(self, f"_{self.table}_batch")(cols)

    def _kernel_outputs(self) -> frozenset[str]:
        """The kernel outputs the schema's columns are built from."""
        names = self.schema().names
        return frozenset(k for column in names for k in _KERNEL_INPUTS[self.table].get(column, (column,)))

    def _times_ms(self, n: np.ndarray) -> np.ndarray:
        """``base_time + trunc(n * 1e6 / event_rate)`` microseconds, floored to ms (integer math if exact)."""
        if self._delay_us.is_integer():
            us = n * int(self._delay_us)
        else:
            us = (n.astype(np.float64) * self._delay_us).astype(np.int64)
        us += self._base_us
        us //= 1000
        return us

    # Bits: each kernel takes disjoint bit ranges of its row hashes h1..h4 for its random fields.
    def _bid_kernel(self, n: np.ndarray, wanted: frozenset[str] = _ALL_BID_OUTPUTS) -> dict[str, np.ndarray]:
        z, k, epoch = _spread(n), self._keys, n // PROPORTION_DENOMINATOR
        out: dict[str, np.ndarray] = {}
        h1 = _hash(z, k[0]) if wanted & {"auction", "bidder"} else None
        h2 = _hash(z, k[1]) if wanted & {"bidder", "channel"} else None
        h3 = _hash(z, k[2]) if wanted & {"price", "extra"} else None
        if "auction" in wanted:
            assert h1 is not None
            last_auction = epoch * 3 + 2
            out["auction"] = np.where((h1 & np.uint64(1)) != 0, last_auction // HOT_BATCH * HOT_BATCH,
                                      _recent(last_auction, h1 >> _S32, NUM_IN_FLIGHT_AUCTIONS)) + FIRST_AUCTION_ID
        if "bidder" in wanted:
            assert h1 is not None and h2 is not None
            out["bidder"] = np.where((h1 & np.uint64(6)) != 0, epoch // HOT_BATCH * HOT_BATCH + 1,
                                     _recent(epoch, h2 & _LOW32, NUM_ACTIVE_PEOPLE - 1)) + FIRST_PERSON_ID
        if "price" in wanted:
            assert h3 is not None
            out["price"] = _price(h3)
        if "channel" in wanted:
            assert h2 is not None
            out["channel"] = _CHANNEL_OF[_below(h2 >> _S32, 2 * NUM_CHANNELS)]
        if "ts" in wanted:
            out["ts"] = self._times_ms(n)
        if "extra" in wanted:
            assert h3 is not None
            out["extra"] = (h3 & np.uint64(1023)).view(np.int64)
        return out

    def _bid_batch(self, c: dict[str, np.ndarray]) -> pa.RecordBatch:
        p = _pools()
        return self._assemble({
            "auction": lambda: c["auction"], "bidder": lambda: c["bidder"], "price": lambda: c["price"],
            "channel": lambda: p["channel"].take(pa.array(c["channel"])),
            "url": lambda: p["url"].take(pa.array(c["channel"])),
            "date_time": lambda: pa.array(c["ts"], _TS), "extra": lambda: _take(p["bid_extra"], c["extra"]),
        })

    def _assemble(self, builders: dict[str, Callable[[], Any]]) -> pa.RecordBatch:
        """A batch of the (projected) schema's columns; columns outside the projection are never built."""
        schema = self.schema()
        return pa.RecordBatch.from_arrays([builders[name]() for name in schema.names], schema=schema)

    def _auction_kernel(self, n: np.ndarray, wanted: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        z, k, epoch = _spread(n), self._keys, n // PROPORTION_DENOMINATOR
        h1, h2, h3 = _hash(z, k[0]), _hash(z, k[1]), _hash(z, k[2])
        seller = np.where((h1 & np.uint64(3)) != 0, epoch // HOT_BATCH * HOT_BATCH,
                          _recent(epoch, h1 >> _S32, NUM_ACTIVE_PEOPLE - 1))
        initial, ts = _price(h2), self._times_ms(n)
        horizon = self._times_ms(n + EVENTS_FOR_AUCTIONS) - ts
        return {"id": n - epoch * (PROPORTION_DENOMINATOR - 3) - 1 + FIRST_AUCTION_ID,
                "item": ((h1 >> np.uint64(2)) & np.uint64(4095)).view(np.int64),
                "desc": (h3 & np.uint64(2047)).view(np.int64),
                "initial": initial, "reserve": initial + _price(_hash(z, k[3])), "ts": ts,
                "expires": ts + 1 + (_unit(h3) * np.maximum(2 * horizon, 1)).astype(np.int64),
                "seller": seller + FIRST_PERSON_ID,
                "category": FIRST_CATEGORY_ID + _below((h1 >> _S16) & _LOW16, NUM_CATEGORIES, _S16),
                "extra": (h2 & np.uint64(1023)).view(np.int64)}

    def _auction_batch(self, c: dict[str, np.ndarray]) -> pa.RecordBatch:
        p = _pools()
        return self._assemble({
            "id": lambda: c["id"], "item_name": lambda: _take(p["item_name"], c["item"]),
            "description": lambda: _take(p["description"], c["desc"]), "initial_bid": lambda: c["initial"],
            "reserve": lambda: c["reserve"], "date_time": lambda: pa.array(c["ts"], _TS),
            "expires": lambda: pa.array(c["expires"], _TS), "seller": lambda: c["seller"],
            "category": lambda: c["category"], "extra": lambda: _take(p["auction_extra"], c["extra"]),
        })

    def _person_kernel(self, n: np.ndarray, wanted: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        z, k = _spread(n), self._keys
        h1, h2 = _hash(z, k[0]), _hash(z, k[1])
        return {"id": n // PROPORTION_DENOMINATOR + FIRST_PERSON_ID, "name": _below(h1 & _LOW16, 99, _S16),
                "local": _below(h2 & _LOW32, 4096), "domain": _below(h2 >> _S32, 4096),
                "card": _credit_card_bytes(_hash(z, k[2]), _hash(z, k[3])),
                "city": _below((h1 >> _S16) & _LOW16, 10, _S16), "state": _below((h1 >> _S32) & _LOW16, 6, _S16),
                "ts": self._times_ms(n), "extra": (h1 >> np.uint64(54)).view(np.int64)}

    def _person_batch(self, c: dict[str, np.ndarray]) -> pa.RecordBatch:
        p, rows = _pools(), len(c["id"])

        def cards() -> pa.Array:
            offsets = np.arange(0, 19 * (rows + 1), 19, dtype=np.int32)
            return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(c["card"]))

        return self._assemble({
            "id": lambda: c["id"], "name": lambda: _take(p["name"], c["name"]),
            "email_address": lambda: pc.binary_join_element_wise(
                _take(p["email_local"], c["local"]), _take(p["email_domain"], c["domain"]), "@"),
            "credit_card": cards, "city": lambda: _take(p["city"], c["city"]),
            "state": lambda: _take(p["state"], c["state"]), "date_time": lambda: pa.array(c["ts"], _TS),
            "extra": lambda: _take(p["person_extra"], c["extra"]),
        })


def _is_int(x: object) -> TypeGuard[int | np.integer]:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _positive(x: object) -> bool:
    return bool(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x) and x > 0)


class NexmarkPartition(SourcePartition):
    """Events ``n % P == k`` of one table. Its ``j``-th event is ``(j // c) * L + R[j % c]``, where
    ``L = lcm(P, 50)`` and ``R`` lists the ``c <= 50`` residues in ``[0, L)`` this partition owns for its
    table (``c == 0``: it owns none and ends at once). All state is ``j``; ``snapshot()`` maps it back."""

    def __init__(self, source: NexmarkSource, k: int, next_event: int) -> None:
        self._src = source
        P = source.partitions
        self._period = P * PROPORTION_DENOMINATOR // math.gcd(P, PROPORTION_DENOMINATOR)
        kinds = _KIND_OFFSETS[source.table]
        self._residues = [r for r in range(k, self._period, P) if r % PROPORTION_DENOMINATOR in kinds]
        self._np_residues = np.array(self._residues, dtype=np.int64)
        self._resume_event = next_event
        self._j = self._index_of(next_event)
        self._end = None if source.events is None else self._index_of(source.events)
        self._start: float | None = None

    def _index_of(self, n: int) -> int:
        """How many of this partition's events have an event number below ``n``."""
        c = len(self._residues)
        return (n // self._period) * c + bisect.bisect_left(self._residues, n % self._period)

    def _event_at(self, j: int) -> int:
        c = len(self._residues)
        return (j // c) * self._period + self._residues[j % c] if c else self._resume_event

    def _exhausted(self) -> bool:
        return not self._residues or (self._end is not None and self._j >= self._end)

    def next_batch(self) -> pa.RecordBatch | None:
        """At most ``batch_size`` rows (when paced, only due ones): ``None`` if none is due yet; raises
        ``StopIteration`` once every owned event below ``events`` was emitted. Never sleeps."""
        if self._exhausted():
            raise StopIteration
        src, c = self._src, len(self._residues)
        count = src.batch_size if self._end is None else min(src.batch_size, self._end - self._j)
        if src.rate is not None:
            now = _now()
            if self._start is None:
                self._start = now
            # The epsilon keeps this consistent with next_awake() despite float rounding of (now - start).
            due_below = self._resume_event + math.floor((now - self._start) * src.rate + 1e-6) + 1
            count = min(count, self._index_of(due_below) - self._j)
            if count <= 0:
                return None
        j = np.arange(self._j, self._j + count, dtype=np.int64)
        cycle = j // c  # numpy's // by a scalar is fast (libdivide), its % is not
        n = self._np_residues[j - cycle * c] + cycle * self._period
        self._j += count
        return src.generate(n)

    def lag(self) -> SourceLag | None:
        """Paced: how far the partition is behind its rate schedule (events due by now and not emitted yet, and
        how long the oldest of them has been due). Unpaced: the events left when bounded (all are available at
        once), ``None`` when unbounded."""
        src = self._src
        if self._exhausted():
            return SourceLag(0, 0.0)
        left = None if self._end is None else self._end - self._j
        if src.rate is None:
            return None if left is None else SourceLag(records=left)
        if self._start is None:
            return SourceLag(0, 0.0)  # the schedule starts at the first poll
        now = _now()
        due = self._index_of(self._resume_event + math.floor((now - self._start) * src.rate + 1e-6) + 1) - self._j
        due = max(0, due if left is None else min(due, left))
        oldest_due_at = self._start + (self._event_at(self._j) - self._resume_event) / src.rate
        return SourceLag(records=due, seconds=max(0.0, now - oldest_due_at) if due else 0.0)

    def next_awake(self) -> float | None:
        """When the next event falls due (paced partitions that polled already); ``None`` otherwise."""
        if self._src.rate is None or self._start is None or self._exhausted():
            return None
        return self._start + (self._event_at(self._j) - self._resume_event) / self._src.rate

    def snapshot(self) -> int:
        """The next event number this partition would emit; ``build_part(part, it)`` resumes right there."""
        return self._event_at(self._j)
