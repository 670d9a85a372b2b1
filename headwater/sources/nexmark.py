"""A vectorised, deterministic Nexmark event generator (persons, auctions, bids) as a :class:`Source`.

The model is the Beam / Flink Nexmark generator (``nexmark/nexmark``, ``GeneratorConfig``, ``PersonGenerator``,
``AuctionGenerator``, ``BidGenerator``) with its default configuration: ONE global event sequence numbered
``0..events-1``; event ``n`` is a person if ``n % 50 < 1``, an auction if ``< 4``, else a bid (1:3:46). A
source emits one ``table`` of that sequence, so bids reference the auctions and persons that the ``auction`` and
``person`` sources with the same ``seed`` emit. Ids, hot keys and prices follow the reference:

* person id ``1000 + n // 50``; auction id ``1000 + 3 * (n // 50) + n % 50 - 1``;
* bid auction: with p=1/2 the hot auction ``(last // 100) * 100``, else uniform over the last 100 auctions plus
  10 not-yet-created ones; bidder: with p=3/4 the hot bidder ``(last // 100) * 100 + 1``, else uniform over
  the last 1000 persons plus 10 ahead; auction seller likewise (hot seller ``(last // 100) * 100``, p=3/4);
  ``category = 10 + uniform(5)``; price ``round(10 ** (6u) * 100)``; ``reserve = initial_bid + price``;
  ``expires = date_time + 1 + uniform(2 * horizon)`` with horizon the event time 1666 events ahead;
* channel: with p=1/2 one of 4 hot channels, else ``channel-<k>`` for k < 10 000, with its url.
* event time: ``date_time(n) = base_time + trunc(n * 1e6 / event_rate)`` microseconds, truncated to ms.

Like the reference, an id drawn "ahead" (up to 10 past the newest person/auction, and the hot bidder
``last // 100 * 100 + 1``) may name an entity that the sequence creates a few events later, or never if the
sequence ends first. Every referenced id is >= 1000 and <= newest-so-far + 10.

Determinism: every random field of event ``n`` is a bit range of ``splitmix64(n * golden + key(seed, field))``
computed on numpy ``uint64`` arrays, so rows depend only on ``(seed, n)``, never on batching, partitioning or
resume points. Strings are drawn by index from fixed pools (built once per process from the same hash).

Deviations from the reference generator (deliberate, for vectorisation and determinism):

* Randomness is a counter-based hash, not ``java.util.Random``: same distributions, different values.
* ``item_name``, ``description``, the email parts and ``extra`` come from fixed pools (4096 names, 4096
  descriptions, 4096 x 4096 emails, 1024 extras per table) instead of fresh random strings. ``extra`` lengths
  follow the reference's ``nextExtra`` range for an average-sized row (bid 54-81, auction 314-469, person
  109-162 characters) rather than being computed from each row's own size.
* Flink adds ``FIRST_PERSON_ID`` to the bidder twice (a bug: bidders start at 2000); we add it once, as Beam.
* Flink's urls and their ``&channel_id=`` suffix are random per JVM; here they are fixed per channel.
* No out-of-order groups, no rate shapes, a single timeline: ``event_rate`` sets event time only, and
  ``rate`` paces the wall clock separately.
* Timestamps are ``timestamp[ms]`` without a time zone; values are UTC (a naive ``base_time`` is read as UTC).

Speed (this machine, one core, 2026): ~21 M bid rows/s with ``batch_size=65_536`` (auction ~5.5 M, person
~6.5 M rows/s), measured with::

    .venv/bin/python -c "import time; from headwater.sources.nexmark import NexmarkSource as S; \\
    p = S(events=None).build_part('nexmark-bid-0-of-1', None); t = time.perf_counter(); \\
    n = sum(p.next_batch().num_rows for _ in range(300)); print(n / (time.perf_counter() - t) / 1e6)"
"""

from __future__ import annotations

import bisect
import math
import time
from datetime import datetime, timezone
from functools import cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import ConfigError
from headwater.sources.base import Source, SourcePartition

Table = Literal["bid", "auction", "person"]

PROPORTION_DENOMINATOR = 50  # person 1, auction 3, bid 46
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_BATCH = 100  # HOT_AUCTION_RATIO / HOT_BIDDER_RATIO / HOT_SELLER_RATIO constants of the reference
NUM_IN_FLIGHT_AUCTIONS = 100
NUM_ACTIVE_PEOPLE = 1000
ID_LEAD = 10  # AUCTION_ID_LEAD and PERSON_ID_LEAD
EVENTS_FOR_AUCTIONS = NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR // 3  # 1666 events ahead
NUM_CHANNELS = 10_000
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
# Channel pool index of a uniform draw in [0, 20000): half the draws pick a hot channel (4 of them), the other
# half ``channel-<k>`` (pool index 4 + k): the reference's nextInt(2) > 0 ? hot[nextInt(4)] : nextInt(10000).
_CHANNEL_OF = np.concatenate([np.arange(NUM_CHANNELS) % len(HOT_CHANNELS), 4 + np.arange(NUM_CHANNELS)])
DEFAULT_BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)
_CHUNK = 4_096  # rows per numeric kernel call (32 KB temporaries)

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
_KIND_OFFSETS = {"person": range(0, 1), "auction": range(1, 4), "bid": range(4, 50)}
_SALTS = {"person": 0x5EED_0001, "auction": 0x5EED_0100, "bid": 0x5EED_1000}

# --------------------------------------------------------------------------------------------- hashing
_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S16, _S27, _S30, _S31, _S32 = (np.uint64(s) for s in (11, 16, 27, 30, 31, 32))
_LOW16, _LOW32 = np.uint64(0xFFFF), np.uint64(0xFFFFFFFF)


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on one Python int (for per-seed keys)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _spread(n: np.ndarray) -> np.ndarray:
    """``n * golden`` (mod 2**64) for non-negative int64 or uint64 ``n``: the counter that :func:`_hash` mixes."""
    return n.view(np.uint64) * _GOLDEN


def _hash(spread: np.ndarray, key: int) -> np.ndarray:
    """``splitmix64(n * golden + key)`` from ``spread = _spread(n)``: 64 independent-looking bits per row."""
    z = spread + np.uint64(key)
    z ^= z >> _S30
    z *= _C1
    z ^= z >> _S27
    z *= _C2
    z ^= z >> _S31
    return z


def _below(bits: np.ndarray, m: Any, width: np.uint64 = _S32) -> np.ndarray:
    """Map ``width``-bit values uniformly onto ``[0, m)`` by multiply-shift (``m < 2**32``), as int64."""
    m = m.astype(np.uint64) if isinstance(m, np.ndarray) else np.uint64(m)
    return ((bits * m) >> width).view(np.int64)


def _unit(h: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The top 53 bits of ``h`` as a float in ``[0, scale)``."""
    return (h >> _S11).astype(np.float64) * (scale / (1 << 53))


_LN10 = math.log(10.0)


def _price(h: np.ndarray) -> np.ndarray:
    """The reference ``PriceGenerator``: ``Math.round(10 ** (u * 6) * 100)`` (positive, so trunc(x + .5))."""
    x = _unit(h, 6.0 * _LN10)
    x += 2.0 * _LN10
    np.exp(x, out=x)
    x += 0.5
    return x.astype(np.int64)


def _recent(last: np.ndarray, bits32: np.ndarray, window: int) -> np.ndarray:
    """Uniform over ``[max(last - window, 0), last + ID_LEAD]`` (the reference ``nextBase0AuctionId`` with
    window 100 and ``nextBase0PersonId`` with window 999). ``last`` is ascending; past the start the range
    width is constant, which saves most of the work."""
    if last[0] >= window:
        return last - window + _below(bits32, window + 1 + ID_LEAD)
    low = np.maximum(last - window, 0)
    return low + _below(bits32, last - low + 1 + ID_LEAD)


# --------------------------------------------------------------------------------------------- string pools
def _letters(count: int, width: int, salt: int, specials: int = 13, special: int = ord(" ")) -> np.ndarray:
    """A ``(count, width)`` uint8 matrix of random letters, ``special`` with probability 1/``specials``."""
    h = _hash(_spread(np.arange(count * width, dtype=np.uint64)), salt)
    chars = (ord("a") + _below(h & _LOW32, 26)).astype(np.uint8)
    if specials:
        chars[_below(h >> _S32, specials) == 0] = special
    return chars.reshape(count, width)


def _next_strings(count: int, max_length: int, salt: int, special: str = " ") -> list[str]:
    """Pool of the reference ``nextString(max_length)``: 3..max_length-1 chars, 1 in 13 a space, trimmed."""
    lengths = 3 + _below(_hash(_spread(np.arange(count, dtype=np.uint64)), salt + 1) & _LOW32, max_length - 3)
    rows = _letters(count, max_length, salt, special=ord(special))
    out = [rows[i, : lengths[i]].tobytes().decode() for i in range(count)]
    return [s.strip() for s in out] if special == " " else out


def _extras(low: int, high: int, salt: int) -> pa.Array:
    """1024 strings of random letters with lengths uniform in ``[low, high]`` (the reference ``nextExtra``)."""
    lengths = low + _below(_hash(_spread(np.arange(1024, dtype=np.uint64)), salt + 1) & _LOW32, high - low + 1)
    rows = _letters(1024, high, salt, specials=0)
    return pa.array([rows[i, : lengths[i]].tobytes().decode() for i in range(1024)], pa.string())


def _channel_id(k: int) -> int:
    """``Math.abs(Integer.reverse(k))`` with Java int overflow (``abs(MIN_VALUE)`` stays negative)."""
    r = int(f"{k:032b}"[::-1], 2)
    r = r - (1 << 32) if r >= 1 << 31 else r
    return r if r == -(1 << 31) else abs(r)


@cache
def _pools() -> dict[str, pa.Array]:
    """Every string pool, built once per process; depends on nothing (the seed only picks indices)."""
    first = "Peter,Paul,Luke,John,Saul,Vicky,Kate,Julie,Sarah,Deiter,Walter".split(",")
    last = "Shultz,Abrams,Spencer,White,Bartels,Walton,Smith,Jones,Noris".split(",")
    cities = "Phoenix,Los Angeles,San Francisco,Boise,Portland,Bend,Redmond,Seattle,Kent,Cheyenne".split(",")
    parts = _next_strings(3 * (NUM_CHANNELS + 4), 5, 0xC0FFEE, special="_")
    urls = [f"https://www.nexmark.com/{parts[3 * i]}/{parts[3 * i + 1]}/{parts[3 * i + 2]}/item.htm?query=1"
            for i in range(NUM_CHANNELS + 4)]
    with_id = _below(_hash(_spread(np.arange(NUM_CHANNELS, dtype=np.uint64)), 0xC0FFEF) & _LOW32, 10) > 0
    urls[4:] = [u + f"&channel_id={_channel_id(k)}" if with_id[k] else u for k, u in enumerate(urls[4:])]
    arr = lambda xs: pa.array(xs, pa.string())  # noqa: E731
    return {
        "name": arr([f"{a} {b}" for a in first for b in last]), "city": arr(cities),
        "state": arr("AZ,CA,ID,OR,WA,WY".split(",")),
        "email_local": arr(_next_strings(4096, 7, 0xE0)),
        "email_domain": arr([s + ".com" for s in _next_strings(4096, 5, 0xE1)]),
        "item_name": arr(_next_strings(4096, 20, 0xA0)), "description": arr(_next_strings(4096, 100, 0xA1)),
        "channel": arr(list(HOT_CHANNELS) + [f"channel-{k}" for k in range(NUM_CHANNELS)]), "url": arr(urls),
        "bid_extra": _extras(54, 81, 0xB0), "auction_extra": _extras(314, 469, 0xB1),
        "person_extra": _extras(109, 162, 0xB2),
    }


def _take(pool: pa.Array, idx: np.ndarray) -> pa.Array:
    return pool.take(pa.array(idx))


def _credit_card_bytes(h: np.ndarray) -> np.ndarray:
    """``"dddd dddd dddd dddd"`` rows (four uniform groups) as a fixed-width ``(len(h), 19)`` uint8 matrix."""
    out = np.full((len(h), 19), ord(" "), dtype=np.uint8)
    for g in range(4):
        group = _below((h >> np.uint64(16 * g)) & _LOW16, 10_000, _S16)
        for d, div in enumerate((1000, 100, 10, 1)):
            out[:, 5 * g + d] = ord("0") + (group // div) % 10
    return out


# --------------------------------------------------------------------------------------------- the source
class NexmarkSource(Source):
    """Nexmark ``bid`` / ``auction`` / ``person`` rows of one deterministic global event sequence.

    Invariants: rows depend only on ``(seed, event number)`` (and ``base_time``/``event_rate`` for times);
    partition ``k`` of ``P`` owns the events ``n`` with ``n % P == k`` and emits them in increasing ``n``; its
    resume state is the next event number it would emit, so resuming yields exactly the remaining rows.
    ``rate`` (events/s of the whole sequence, all tables counted) paces the wall clock: event ``n`` is not
    emitted before ``start + (n - resume_state) / rate``; ``rate=None`` emits full ``batch_size`` batches.

    >>> src = NexmarkSource("bid", events=100)
    >>> part = src.build_part(src.list_parts()[0], None)
    >>> part.next_batch().num_rows  # 92 of the first 100 events are bids
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
            raise ConfigError(f"NexmarkSource: rate must be > 0 events/s or None (unpaced), got {rate!r}")
        if not _is_int(partitions) or partitions < 1:
            raise ConfigError(f"NexmarkSource: partitions must be an int >= 1, got {partitions!r}")
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"NexmarkSource: batch_size must be an int >= 1, got {batch_size!r}")
        if not _positive(event_rate):
            raise ConfigError(f"NexmarkSource: event_rate must be > 0 events/s, got {event_rate!r}")
        if base_time is not None and not isinstance(base_time, datetime):
            raise ConfigError(f"NexmarkSource: base_time must be a datetime or None, got {base_time!r}")
        bt = base_time or DEFAULT_BASE_TIME
        bt = bt if bt.tzinfo else bt.replace(tzinfo=timezone.utc)
        self.table: Table = table
        self.events = events
        self.seed = seed
        self.rate = None if rate is None else float(rate)
        self.partitions = partitions
        self.batch_size = batch_size
        self.base_time = bt
        self.event_rate = float(event_rate)
        self.bounded = events is not None
        delta = bt - datetime(1970, 1, 1, tzinfo=timezone.utc)
        self._base_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        self._delay_us = 1e6 / self.event_rate
        self._keys = [_mix_int((seed & _M64) ^ _mix_int(_SALTS[table] + i)) for i in range(5)]

    def schema(self) -> pa.Schema:
        return SCHEMAS[self.table]

    def list_parts(self) -> list[str]:
        return [f"nexmark-{self.table}-{k}-of-{self.partitions}" for k in range(self.partitions)]

    def build_part(self, part: str, resume_state: Any | None) -> NexmarkPartition:
        """Partition ``part``, continuing at event number ``resume_state`` (``None``: from event 0)."""
        parts = self.list_parts()
        if part not in parts:
            raise ConfigError(f"NexmarkSource: unknown partition {part!r}; this source has {parts[0]!r}.. "
                              f"(was the checkpoint taken with a different table or partitions count?)")
        if resume_state is not None and (not _is_int(resume_state) or resume_state < 0):
            raise ConfigError(f"NexmarkSource: resume state must be an event number >= 0, got {resume_state!r}")
        return NexmarkPartition(self, parts.index(part), resume_state or 0)

    # -- row generation, a pure function of the event numbers -------------------------------------------
    def generate(self, n: np.ndarray) -> pa.RecordBatch:
        """The rows of this table for the ascending int64 event numbers ``n``, all of this table's kind.

        Numeric columns are computed in chunks of ``_CHUNK`` rows: small temporaries stay in cache and in
        the allocator's free lists (whole-batch temporaries made glibc map and fault ~10 MB per batch).
        """
        kernel = getattr(self, f"_{self.table}_kernel")
        cols: list[np.ndarray] = []
        for start in range(0, len(n), _CHUNK):
            chunk = kernel(n[start : start + _CHUNK])
            if not cols:
                cols = [np.empty((len(n),) + a.shape[1:], a.dtype) for a in chunk]
            for col, a in zip(cols, chunk):
                col[start : start + len(a)] = a
        return getattr(self, f"_{self.table}_batch")(*cols)

    def _times_ms(self, n: np.ndarray) -> np.ndarray:
        """``base_time + trunc(n * 1e6 / event_rate)`` microseconds, floored to ms (integer math if exact)."""
        if self._delay_us.is_integer():
            offset_us = n * int(self._delay_us)
        else:
            offset_us = (n.astype(np.float64) * self._delay_us).astype(np.int64)
        offset_us += self._base_us
        offset_us //= 1000
        return offset_us

    def _person_kernel(self, n: np.ndarray) -> tuple[np.ndarray, ...]:
        z, k = _spread(n), self._keys
        h1, h2 = _hash(z, k[0]), _hash(z, k[1])
        return (n // PROPORTION_DENOMINATOR + FIRST_PERSON_ID, _below(h1 & _LOW16, 99, _S16),
                _below(h2 & _LOW32, 4096), _below(h2 >> _S32, 4096), _credit_card_bytes(_hash(z, k[2])),
                _below((h1 >> _S16) & _LOW16, 10, _S16), _below((h1 >> _S32) & _LOW16, 6, _S16),
                self._times_ms(n), (h1 >> np.uint64(54)).view(np.int64))

    def _person_batch(self, ids: np.ndarray, name: np.ndarray, local: np.ndarray, domain: np.ndarray,
                      card: np.ndarray, city: np.ndarray, state: np.ndarray, ts: np.ndarray,
                      extra: np.ndarray) -> pa.RecordBatch:
        p = _pools()
        email = pc.binary_join_element_wise(_take(p["email_local"], local), _take(p["email_domain"], domain), "@")
        offsets = np.arange(0, 19 * (len(ids) + 1), 19, dtype=np.int32)
        cards = pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(card))
        cols = [ids, _take(p["name"], name), email, cards, _take(p["city"], city), _take(p["state"], state),
                pa.array(ts, _TS), _take(p["person_extra"], extra)]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["person"])

    def _auction_kernel(self, n: np.ndarray) -> tuple[np.ndarray, ...]:
        z, k, epoch = _spread(n), self._keys, n // PROPORTION_DENOMINATOR
        h1, h2, h5 = _hash(z, k[0]), _hash(z, k[1]), _hash(z, k[4])
        hot_seller = epoch - epoch % HOT_BATCH
        seller = np.where((h1 & np.uint64(3)) != 0, hot_seller, _recent(epoch, h1 >> _S32, NUM_ACTIVE_PEOPLE - 1))
        initial = _price(_hash(z, k[2]))
        ts = self._times_ms(n)
        horizon = self._times_ms(n + EVENTS_FOR_AUCTIONS) - ts
        expires = ts + 1 + (_unit(h5) * np.maximum(2 * horizon, 1)).astype(np.int64)
        return (epoch * 3 + n % PROPORTION_DENOMINATOR - 1 + FIRST_AUCTION_ID,
                _below(h2 & _LOW32, 4096), _below(h2 >> _S32, 4096), initial, initial + _price(_hash(z, k[3])),
                ts, expires, seller + FIRST_PERSON_ID,
                FIRST_CATEGORY_ID + _below((h1 >> _S16) & _LOW16, NUM_CATEGORIES, _S16),
                (h5 & np.uint64(1023)).view(np.int64))

    def _auction_batch(self, ids: np.ndarray, item: np.ndarray, desc: np.ndarray, initial: np.ndarray,
                       reserve: np.ndarray, ts: np.ndarray, expires: np.ndarray, seller: np.ndarray,
                       category: np.ndarray, extra: np.ndarray) -> pa.RecordBatch:
        p = _pools()
        cols = [ids, _take(p["item_name"], item), _take(p["description"], desc), initial, reserve,
                pa.array(ts, _TS), pa.array(expires, _TS), seller, category, _take(p["auction_extra"], extra)]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["auction"])

    def _bid_kernel(self, n: np.ndarray) -> tuple[np.ndarray, ...]:
        z, k, epoch = _spread(n), self._keys, n // PROPORTION_DENOMINATOR
        h1, h2, h3 = _hash(z, k[0]), _hash(z, k[1]), _hash(z, k[2])
        last_auction = epoch * 3 + 2
        hot_auction = last_auction - last_auction % HOT_BATCH
        auction = np.where((h1 & np.uint64(1)) != 0, hot_auction,
                           _recent(last_auction, h1 >> _S32, NUM_IN_FLIGHT_AUCTIONS))
        hot_bidder = epoch - epoch % HOT_BATCH + 1
        bidder = np.where((h1 & np.uint64(6)) != 0, hot_bidder,
                          _recent(epoch, h2 & _LOW32, NUM_ACTIVE_PEOPLE - 1))
        auction += FIRST_AUCTION_ID
        bidder += FIRST_PERSON_ID
        channel = _CHANNEL_OF[_below(h2 >> _S32, 2 * NUM_CHANNELS)]
        return (auction, bidder, _price(h3), channel, self._times_ms(n), (h3 & np.uint64(1023)).view(np.int64))

    def _bid_batch(self, auction: np.ndarray, bidder: np.ndarray, price: np.ndarray, channel: np.ndarray,
                   ts: np.ndarray, extra: np.ndarray) -> pa.RecordBatch:
        p, ch = _pools(), pa.array(channel)
        cols = [auction, bidder, price, p["channel"].take(ch), p["url"].take(ch), pa.array(ts, _TS),
                _take(p["bid_extra"], extra)]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["bid"])


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _positive(x: object) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


class NexmarkPartition(SourcePartition):
    """Events ``n % P == k`` of one table; the ``j``-th such event is ``(j // c) * L + R[j % c]``.

    ``L = lcm(P, 50)`` is the period of (partition, kind); ``R`` holds the ``c <= 50`` owned residues of this
    kind in ``[0, L)``. All state is the index ``j``; ``snapshot()`` turns it back into an event number.
    """

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
        """How many events of this partition have an event number below ``n``."""
        c = len(self._residues)
        return (n // self._period) * c + bisect.bisect_left(self._residues, n % self._period)

    def _event_at(self, j: int) -> int:
        c = len(self._residues)
        return (j // c) * self._period + self._residues[j % c]

    def next_batch(self) -> pa.RecordBatch | None:
        """Up to ``batch_size`` rows (only those due when paced), ``None`` if none is due, ``StopIteration`` at the end."""
        src, c = self._src, len(self._residues)
        if c == 0 or (self._end is not None and self._j >= self._end):
            raise StopIteration
        count = src.batch_size if self._end is None else min(src.batch_size, self._end - self._j)
        if src.rate is not None:
            now = time.monotonic()
            if self._start is None:
                self._start = now
            due_below = self._resume_event + math.floor((now - self._start) * src.rate) + 1
            count = min(count, self._index_of(due_below) - self._j)
            if count <= 0:
                return None
        j = np.arange(self._j, self._j + count, dtype=np.int64)
        n = (j // c) * self._period + self._np_residues[j % c]
        self._j += count
        return src.generate(n)

    def next_awake(self) -> float | None:
        """When the next event falls due (paced partitions that have polled once), else ``None``."""
        src = self._src
        if src.rate is None or self._start is None or not self._residues:
            return None
        if self._end is not None and self._j >= self._end:
            return None
        return self._start + (self._event_at(self._j) - self._resume_event) / src.rate

    def snapshot(self) -> int:
        """The next event number this partition would emit (resume with ``build_part(part, it)``)."""
        return self._event_at(self._j) if self._residues else self._resume_event
