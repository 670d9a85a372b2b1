"""Exactly-once end to end: crashes anywhere, stop and resume, rescaling, savepoints and upgrades, damaged
checkpoints, and the restart policy — in-process and on Ray.

The oracle of the aggregate tests is a plain-Python model of the running aggregate. Committed output must be
a changelog a clean run could have produced: per key, ``n`` strictly increases along the committed rows (a
replayed or duplicated update would make it stall or go back), every committed row equals the aggregate of
*some* prefix of that key's input in each source partition (checked exactly for small inputs), and the last
row per key equals the aggregate of all its input (nothing lost). Stateless pipelines are compared with a clean
run as multisets of rows.

ABORT markers crash a source subtask the first time they are read; PAUSE markers leave time for checkpoints
between items. Runs that are stopped read a ``PacedSource`` (rate-limited, resume state = row index), so they
cannot end before the stop while the runs that resume them read the rest at full speed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.engine.checkpoints.storage import METADATA, CheckpointStorage
from headwater.errors import (
    CheckpointCorruptError,
    ConfigError,
    SimulatedCrashError,
    StateCompatibilityError,
    UserCodeError,
)
from headwater.sinks.base import Sink
from headwater.sinks.files import ParquetSink
from headwater.sources import NexmarkSource, Source, SourcePartition
from headwater.testing import TestingSink, TestingSource

ABORT, PAUSE = TestingSource.ABORT, TestingSource.PAUSE
LOCAL = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ON_RAY = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])



def checkpointing(directory: Path, **overrides: Any) -> hw.CheckpointConfig:
    options: dict[str, Any] = {"interval": timedelta(milliseconds=10), "restart_delay": timedelta(0), **overrides}
    return hw.CheckpointConfig(dir=directory, **options)


def wait_for_checkpoint(directory: Path, after: int = 0, timeout: float = 30.0) -> int:
    """Block until a complete checkpoint with an id above ``after`` exists in ``directory``; return its id."""
    storage = CheckpointStorage(str(directory))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [i for i, _ in storage.completed()]
        if ids and ids[-1] > after:
            return ids[-1]
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint after {after} in {directory} within {timeout}s")


def without_markers(items: Sequence[Any]) -> list[Any]:
    return [item for item in items if isinstance(item, dict)]


# -- the reference model of the running aggregate -------------------------------------------------------------------
@dataclass(frozen=True)
class Agg:
    n: int = 0
    total: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, value: int) -> Agg:
        return Agg(self.n + 1, self.total + value, value if self.low is None else min(self.low, value),
                   value if self.high is None else max(self.high, value))

    def merge(self, other: Agg) -> Agg:
        lows = [x for x in (self.low, other.low) if x is not None]
        highs = [x for x in (self.high, other.high) if x is not None]
        return Agg(self.n + other.n, self.total + other.total, min(lows, default=None), max(highs, default=None))

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Agg:
        return cls(row["n"], row["total"], row["low"], row["high"])


def prefixes(values: Sequence[int]) -> list[Agg]:
    """The aggregate of the first ``i`` values, for ``i`` in ``0..len(values)``."""
    out = [Agg()]
    for value in values:
        out.append(out[-1].add(value))
    return out


def per_key_sequences(partitions: Sequence[Sequence[dict[str, Any]]]) -> dict[Any, list[list[int]]]:
    """Key -> the values of that key in each source partition, in partition order."""
    keys = {row["k"] for part in partitions for row in part}
    return {key: [[row["v"] for row in part if row["k"] == key] for part in partitions] for key in keys}


def combined(parts: Sequence[Agg]) -> Agg:
    total = Agg()
    for part in parts:
        total = total.merge(part)
    return total


def is_prefix_aggregate(agg: Agg, tables: Sequence[Sequence[Agg]]) -> bool:
    """Whether ``agg`` is the aggregate of some prefix of each partition's values (``tables``: their prefixes)."""
    *head, last = tables
    for counts in itertools.product(*(range(len(t)) for t in head)):
        rest = agg.n - sum(counts)
        if 0 <= rest < len(last) and combined([t[c] for t, c in zip(head, counts)] + [last[rest]]) == agg:
            return True
    return False


def is_subset_aggregate(agg: Agg, values: Sequence[int]) -> bool:
    """Whether ``agg`` is the aggregate of some ``agg.n`` of ``values`` (order unknown: round-robin edges)."""
    if agg.n == 0 or agg.low is None or agg.high is None:
        return False
    inside = sorted(v for v in values if agg.low <= v <= agg.high)
    if agg.low == agg.high:
        return agg.total == agg.n * agg.low and inside.count(agg.low) >= agg.n
    if agg.low not in inside or agg.high not in inside or agg.n < 2:
        return False
    inside.remove(agg.low)
    inside.remove(agg.high)
    reachable = {(0, 0)}  # (how many, their sum) of subsets of the remaining values
    for value in inside:
        reachable |= {(n + 1, total + value) for n, total in reachable if n + 1 <= agg.n - 2}
    return (agg.n - 2, agg.total - agg.low - agg.high) in reachable


EXACT_CHECK_LIMIT = 20_000  # prefix combinations per row beyond which only the monotonic checks run


def assert_clean_changelog(
    committed: Sequence[dict[str, Any]], partitions: Sequence[Sequence[dict[str, Any]]], ordered: bool = True,
) -> None:
    """``committed`` (in commit order) is a changelog a clean run could have produced, and complete.

    ``ordered``: each partition's rows reach the aggregate in order (hash or forward edges only), so every row is
    the aggregate of a prefix of each partition; otherwise (a round-robin edge on the way) of some subset. For
    large inputs (more than ``EXACT_CHECK_LIMIT`` prefix combinations) only what any changelog of a growing
    aggregate satisfies is checked: ``n`` strictly grows, ``low`` never grows, ``high`` never shrinks.
    """
    sequences = per_key_sequences(partitions)
    tables = {key: [prefixes(s) for s in seqs] for key, seqs in sequences.items()}
    last: dict[Any, Agg] = {}
    for row in committed:
        key = row["k"]
        assert key in tables, f"committed row for a key that is not in the input: {row}"
        agg, before = Agg.of_row(row), last.get(row["k"], Agg())
        assert agg.n > before.n, f"key {key!r}: n went from {before.n} to {agg.n} (replayed?)"
        if before.low is not None and before.high is not None:
            assert agg.low <= before.low and agg.high >= before.high, f"key {key!r}: {before} -> {agg}"
        combinations = 1
        for table in tables[key][:-1]:
            combinations *= len(table)
        if not ordered:
            values = [v for seq in sequences[key] for v in seq]
            assert is_subset_aggregate(agg, values), f"{row} is no aggregate of input rows of key {key!r}"
        elif combinations <= EXACT_CHECK_LIMIT:
            assert is_prefix_aggregate(agg, tables[key]), f"{row} is no prefix aggregate of key {key!r}"
        last[key] = agg
    expected = {key: combined([t[-1] for t in key_tables]) for key, key_tables in tables.items()}
    assert latest_aggs(committed) == expected, "the last committed row per key is the aggregate of all its input"


def latest_aggs(rows: Sequence[dict[str, Any]]) -> dict[Any, Agg]:
    return {row["k"]: Agg.of_row(row) for row in rows}


# -- scripted inputs ------------------------------------------------------------------------------------------------
@dataclass
class Script:
    """Rows per source partition, and the same with ABORT / PAUSE markers inserted."""

    key_type: pa.DataType
    rows: list[list[dict[str, Any]]]
    items: list[list[Any]]
    batch_size: int
    aborts: int

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([("k", self.key_type), ("v", pa.int64())])

    @property
    def total_rows(self) -> int:
        return sum(len(part) for part in self.rows)


@st.composite
def scripts(draw: st.DrawFn, partitions: int = 1, max_aborts: int = 3, max_rows: int = 30,
            pauses: tuple[float, float] = (0.01, 0.03)) -> Script:
    key_type = draw(st.sampled_from([pa.string(), pa.int64()]))
    pool: list[Any] = ["a", "b", "c", "d", "e"] if key_type == pa.string() else [-3, 0, 7, 2**40, 11]
    keys = pool[: draw(st.integers(1, len(pool)))]
    row = st.builds(lambda k, v: {"k": k, "v": v}, st.sampled_from(keys), st.integers(-50, 50))
    rows = [draw(st.lists(row, min_size=1, max_size=max_rows)) for _ in range(partitions)]
    pause = st.floats(*pauses).map(PAUSE)
    markers: list[tuple[int, int, int, Any]] = []  # (partition, row position, order at that position, marker)
    aborts = draw(st.integers(1, max_aborts))
    for _ in range(aborts):
        part = draw(st.integers(0, partitions - 1))
        position = draw(st.integers(0, len(rows[part])))
        markers.append((part, position, 1, ABORT()))
        if draw(st.booleans()):  # time for a checkpoint right before the crash
            markers.append((part, position, 0, draw(pause)))
    for _ in range(draw(st.integers(0, 3))):
        part = draw(st.integers(0, partitions - 1))
        markers.append((part, draw(st.integers(0, len(rows[part]))), 2, draw(pause)))
    items: list[list[Any]] = [list(part) for part in rows]
    for part, position, _, marker in sorted(markers, key=lambda m: m[:3], reverse=True):
        items[part].insert(position, marker)  # last first: positions refer to the rows, lower orders go first
    return Script(key_type, rows, items, draw(st.integers(1, 6)), aborts)


def aggregate_flow(script: Script, sink: Sink, clean: bool = False, union: bool = False) -> hw.Dataflow:
    """Running count/sum/min/max per key. ``union``: the last partition is a second source, unioned in."""
    items = [without_markers(part) if clean else part for part in script.items]
    flow = hw.Dataflow("exactly_once")
    main = items[:-1] if union else items
    stream = flow.source("in", TestingSource(partitions=main, batch_size=script.batch_size, schema=script.schema))
    if union:
        extra = flow.source("extra", TestingSource(items[-1], batch_size=script.batch_size, schema=script.schema))
        stream = stream.union(extra, step_id="merged")
    stream.key_by("k").aggregate(
        step_id="per_key", n=hw.count(), total=hw.sum("v"), low=hw.min("v"), high=hw.max("v")
    ).sink("out", sink)
    return flow


def check_recovery(script: Script, base: Path, executor: str, parallelism: int, union: bool = False) -> None:
    clean = TestingSink(base / "clean")
    hw.run(aggregate_flow(script, clean, clean=True, union=union), executor="local", parallelism=parallelism)
    out = TestingSink(base / "out")

    result = hw.run(aggregate_flow(script, out, union=union), executor=executor, parallelism=parallelism,
                    checkpoint=checkpointing(base / "checkpoints"))

    if executor == "local":
        assert result.restarts == script.aborts, "every ABORT marker fires once and is recovered from"
    else:  # two subtasks may both reach their ABORT before the attempt is torn down
        assert 1 <= result.restarts <= script.aborts
    assert result.last_checkpoint.kind == "final"
    # a union with more subtasks than its inputs redistributes rows round-robin: their order is not kept
    assert_clean_changelog(out.rows(), script.rows, ordered=not union or parallelism == 1)
    assert out.latest(["k"]) == clean.latest(["k"])
    read_by_last_attempt = sum(result.rows_out(s) for s in ("in", "extra") if s in result.steps)
    event("resumed mid-input" if read_by_last_attempt < script.total_rows else "resumed from the start")


# -- recovery: ABORTs anywhere, in-process and on Ray ---------------------------------------------------------------
@pytest.mark.parametrize("parallelism", [1, 3])
@LOCAL
@given(script=scripts())
def test_aborts_anywhere_lose_and_duplicate_nothing(
    tmp_path_factory: pytest.TempPathFactory, parallelism: int, script: Script
) -> None:
    check_recovery(script, tmp_path_factory.mktemp("recovery"), "local", parallelism)


@pytest.mark.parametrize("parallelism", [1, 3])
@settings(LOCAL, max_examples=15)
@given(script=scripts(partitions=3, max_rows=15))
def test_aborts_in_partitioned_and_unioned_sources_lose_and_duplicate_nothing(
    tmp_path_factory: pytest.TempPathFactory, parallelism: int, script: Script
) -> None:
    check_recovery(script, tmp_path_factory.mktemp("union"), "local", parallelism, union=True)


def test_restart_resumes_from_the_checkpoint_not_from_the_start(tmp_path: Path) -> None:
    rows = [{"k": "abc"[i % 3], "v": i} for i in range(40)]
    script = Script(pa.string(), [rows], [rows[:25] + [PAUSE(0.1), ABORT()] + rows[25:]], 4, 1)
    out = TestingSink(tmp_path / "out")
    result = hw.run(aggregate_flow(script, out), executor="local", checkpoint=checkpointing(tmp_path / "chk"))
    assert result.restarts == 1
    assert result.rows_out("in") == 15, "the restarted attempt read only the rows after the checkpoint"
    assert_clean_changelog(out.rows(), script.rows)


@pytest.mark.ray
@pytest.mark.chaos
@ON_RAY
@given(script=scripts(max_aborts=2, max_rows=20, pauses=(0.2, 0.4)))  # a checkpoint on Ray takes ~0.1 s
def test_aborts_anywhere_on_ray(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory, script: Script) -> None:
    check_recovery(script, tmp_path_factory.mktemp("ray-recovery"), "ray", parallelism=2)


def test_recovery_of_an_aggregate_keyed_by_a_nullable_integer(tmp_path: Path) -> None:
    rows = [{"k": 1, "v": 1}, {"k": 2, "v": 2}, {"k": None, "v": 100}, {"k": 1, "v": 1}, {"k": None, "v": 1}]
    # pauses longer than the linger keep the first keys in separate batches: slots 1 -> 0, 2 -> 1, None -> 2
    items = [rows[0], PAUSE(0.05), rows[1], PAUSE(0.05), rows[2], PAUSE(0.1), ABORT(), *rows[3:]]
    script = Script(pa.int64(), [rows], [items], 1, 1)
    out = TestingSink(tmp_path / "out")
    result = hw.run(aggregate_flow(script, out), executor="local", checkpoint=checkpointing(tmp_path / "chk"))
    assert result.restarts == 1
    assert latest_aggs(out.rows()) == {1: Agg(2, 2, 1, 1), 2: Agg(1, 2, 2, 2), None: Agg(2, 101, 1, 100)}


# -- exactly-once into files ----------------------------------------------------------------------------------------
PART_FILE = re.compile(r"^part-\d{6}-\d{4}-\d{4}-[0-9a-f]{16}\.parquet$")  # checkpoint, subtask, n, writer id


def stateless_flow(source: Source, sink: Sink) -> hw.Dataflow:
    flow = hw.Dataflow("files")
    (
        flow.source("in", source)
        .filter(hw.col("v") % 3 != 0)
        .with_columns(w=hw.col("v") * 2, tag=hw.lit("x"))
        .sink("out", sink)
    )
    return flow


def parquet_rows(directory: Path) -> list[dict[str, Any]]:
    if not directory.exists():
        return []
    dataset = ds.dataset(directory, format="parquet")
    return dataset.to_table().to_pylist() if dataset.files else []


def as_multiset(rows: Sequence[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(sorted(row.items())) for row in rows)


def assert_only_committed_files_visible(directory: Path) -> None:
    visible = [p for p in directory.rglob("*")
               if p.is_file() and not any(part.startswith("_") for part in p.relative_to(directory).parts)]
    assert all(PART_FILE.match(p.name) and p.parent == directory for p in visible), visible
    leftovers = [p.name for p in (directory / "_staging").rglob("*") if p.is_file() and p.name != "_owner"]
    assert leftovers == [], f"staged files of failed attempts were not cleaned up: {leftovers}"


def check_files_exactly_once(script: Script, base: Path, executor: str, parallelism: int) -> hw.JobResult:
    def source(items: list[list[Any]]) -> TestingSource:
        return TestingSource(partitions=items, batch_size=script.batch_size, schema=script.schema)

    hw.run(stateless_flow(source([without_markers(p) for p in script.items]), ParquetSink(base / "clean")),
           executor="local", parallelism=parallelism)
    out = base / "out"
    result = hw.run(stateless_flow(source(script.items), ParquetSink(out)), executor=executor,
                    parallelism=parallelism, checkpoint=checkpointing(base / "checkpoints"))
    assert result.restarts >= 1
    expected = as_multiset(parquet_rows(base / "clean"))
    assert sum(expected.values()) == sum(1 for p in script.rows for r in p if r["v"] % 3 != 0)
    assert as_multiset(parquet_rows(out)) == expected
    assert_only_committed_files_visible(out)
    return result


@pytest.mark.parametrize("parallelism", [1, 2])
@settings(LOCAL, max_examples=15)
@given(script=scripts(partitions=2))
def test_aborts_with_a_parquet_sink_commit_every_row_once(
    tmp_path_factory: pytest.TempPathFactory, parallelism: int, script: Script
) -> None:
    check_files_exactly_once(script, tmp_path_factory.mktemp("files"), "local", parallelism)


@pytest.mark.ray
@pytest.mark.chaos
def test_aborts_with_a_parquet_sink_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    rows = [[{"k": f"k{i % 4}", "v": i} for i in range(p, 200, 2)] for p in range(2)]
    items = [rows[0][:30] + [PAUSE(0.5), ABORT()] + rows[0][30:], rows[1][:60] + [PAUSE(0.8), ABORT()] + rows[1][60:]]
    script = Script(pa.string(), rows, items, 5, 2)
    result = check_files_exactly_once(script, tmp_path, "ray", parallelism=2)
    assert result.rows_out("in") < 200, "the last attempt resumed from a checkpoint, not from the start"


# -- stop and resume ------------------------------------------------------------------------------------------------
SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])
RATE = 250.0  # rows/s per partition of the paced inputs that runs are stopped in (in-process)
RAY_RATE = 100.0
FINE = 8  # batch_size of resumed aggregate runs: a fine-grained changelog shows any replayed update


class PacedSource(Source):
    """Rows of each partition, at most ``rate`` rows/s per partition (``None``: as fast as they are read).

    The resume state is the index of the next row, whatever the rate: a run stopped while the input was paced
    (so it cannot have ended before the stop) resumes at full speed. TestingSource positions count PAUSE
    markers, so a resumed run would wait them all out again.
    """

    def __init__(self, partitions: Sequence[Sequence[dict[str, Any]]], rate: float | None) -> None:
        self.partitions = [list(p) for p in partitions]
        self.rate = rate

    def schema(self) -> pa.Schema:
        return SCHEMA

    def list_parts(self) -> list[str]:
        return [f"part-{i}" for i in range(len(self.partitions))]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        return _PacedPartition(self.partitions[int(part.split("-")[1])], int(resume_state or 0), self.rate)


class _PacedPartition(SourcePartition):
    def __init__(self, rows: list[dict[str, Any]], position: int, rate: float | None) -> None:
        self.rows, self.position, self.rate = rows, position, rate
        self.first = position
        self.started: float | None = None

    def next_batch(self) -> pa.RecordBatch | None:
        if self.position >= len(self.rows):
            raise StopIteration
        end = min(len(self.rows), self.position + 8)
        if self.rate is not None:
            now = time.monotonic()
            self.started = now if self.started is None else self.started
            end = min(end, self.first + int((now - self.started) * self.rate) + 1)
            if end <= self.position:
                return None
        batch = pa.RecordBatch.from_pylist(self.rows[self.position : end], schema=SCHEMA)
        self.position = end
        return batch

    def next_awake(self) -> float | None:
        if self.rate is None or self.started is None:
            return None
        return self.started + (self.position - self.first) / self.rate

    def snapshot(self) -> int:
        return self.position


def spread(rows: int, partitions: int, keys: int = 5) -> list[list[dict[str, Any]]]:
    """``rows`` rows dealt round-robin to ``partitions`` partitions."""
    parts: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
    for i in range(rows):
        parts[i % partitions].append({"k": f"k{i % keys}", "v": i})
    return parts


def aggregate_of(source: Source, sink: Sink, emit: str = "updates") -> hw.Dataflow:
    flow = hw.Dataflow("resumable")
    flow.source("in", source).key_by("k").aggregate(
        step_id="per_key", emit=emit, n=hw.count(), total=hw.sum("v"), low=hw.min("v"), high=hw.max("v")
    ).sink("out", sink)
    return flow


def start_and_stop_after_checkpoints(flow: hw.Dataflow, directory: Path, checkpoints: int = 2,
                                     savepoint: bool = False, settle: float = 0.0, **options: Any) -> hw.JobResult:
    """Start ``flow``, wait for ``checkpoints`` new complete checkpoints (and ``settle`` seconds more), stop."""
    config = options.pop("checkpoint", None) or checkpointing(directory, interval=timedelta(milliseconds=30))
    last = CheckpointStorage(str(config.dir)).next_id() - 1
    job = hw.start(flow, checkpoint=config, **{"batch_size": FINE, **options})
    for _ in range(checkpoints):
        last = wait_for_checkpoint(Path(config.dir), after=last)
    time.sleep(settle)
    job.stop(savepoint=savepoint)
    result = job.wait()
    assert result.stopped, "the job ended before it was stopped: give it more input"
    return result


def test_stop_and_resume_stateless_commits_every_row_once(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=2)
    reference = TestingSink(tmp_path / "clean")
    hw.run(stateless_flow(PacedSource(parts, None), reference), executor="local")
    clean = as_multiset(reference.rows())
    out1, out2 = TestingSink(tmp_path / "out1"), TestingSink(tmp_path / "out2")

    stopped = start_and_stop_after_checkpoints(stateless_flow(PacedSource(parts, RATE), out1), tmp_path / "chk",
                                               executor="local", parallelism=2)
    resumed = hw.run(stateless_flow(PacedSource(parts, None), out2), executor="local", parallelism=2,
                     checkpoint=checkpointing(tmp_path / "chk"))

    assert stopped.stopped and stopped.last_checkpoint.kind == "final"
    assert 0 < len(out1.rows()) < sum(clean.values()), "the first run was stopped mid-input"
    assert 0 < resumed.rows_out("in") < 2_000, "the second run read only what the first had not"
    assert as_multiset(out1.rows() + out2.rows()) == clean


def test_stop_and_resume_aggregate_continues_its_state(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=2)
    out1, out2 = TestingSink(tmp_path / "out1"), TestingSink(tmp_path / "out2")
    start_and_stop_after_checkpoints(aggregate_of(PacedSource(parts, RATE), out1), tmp_path / "chk",
                                     executor="local", parallelism=2)
    hw.run(aggregate_of(PacedSource(parts, None), out2), batch_size=FINE, executor="local", parallelism=2,
           checkpoint=checkpointing(tmp_path / "chk"))

    assert out1.rows() and out2.rows()
    assert_clean_changelog(out1.rows() + out2.rows(), parts)
    assert latest_aggs(out2.rows()) == latest_aggs(out1.rows() + out2.rows())


@pytest.mark.ray
def test_stop_and_resume_a_paced_nexmark_job_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    def flow(sink: TestingSink, rate: float | None) -> hw.Dataflow:
        flow = hw.Dataflow("nexmark_resume")
        (
            flow.source("bids", NexmarkSource("bid", events=40_000, rate=rate, partitions=2, batch_size=500))
            .filter(hw.col("price") > 5_000)
            .select("auction", "bidder", "price", "date_time")
            .sink("out", sink)
        )
        return flow

    clean = TestingSink(tmp_path / "clean")
    hw.run(flow(clean, rate=None), executor="local", parallelism=2)
    out1, out2 = TestingSink(tmp_path / "out1"), TestingSink(tmp_path / "out2")
    config = checkpointing(tmp_path / "chk", interval=timedelta(milliseconds=150))

    stopped = start_and_stop_after_checkpoints(flow(out1, rate=10_000), tmp_path / "chk", checkpoint=config,
                                               executor="ray", parallelism=2)
    hw.run(flow(out2, rate=None), executor="ray", parallelism=2, checkpoint=config)

    assert stopped.stopped and 0 < len(out1.rows()) < len(clean.rows())
    assert as_multiset(out1.rows() + out2.rows()) == as_multiset(clean.rows())


@pytest.mark.parametrize("emit", ["updates", "final"])
def test_a_finished_job_run_again_commits_nothing_new(tmp_path: Path, emit: str) -> None:
    parts = spread(30, partitions=1, keys=3)
    config = checkpointing(tmp_path / "chk")
    first, again = TestingSink(tmp_path / "first"), TestingSink(tmp_path / "again")
    finished = hw.run(aggregate_of(PacedSource(parts, None), first, emit), executor="local", parallelism=2,
                      checkpoint=config)

    rerun = hw.run(aggregate_of(PacedSource(parts, None), again, emit), executor="local", parallelism=2,
                   checkpoint=config)

    assert finished.last_checkpoint.kind == rerun.last_checkpoint.kind == "final"
    assert rerun.last_checkpoint.checkpoint_id > finished.last_checkpoint.checkpoint_id
    assert rerun.rows_out("in") == 0 and again.rows() == []
    assert_clean_changelog(first.rows(), parts)
    if emit == "final":
        assert len(first.rows()) == 3


# -- rescaling ------------------------------------------------------------------------------------------------------
def rescale(tmp_path: Path, executor: str, parallelisms: Sequence[int]) -> None:
    """Stop after a checkpoint at each parallelism but the last; the last run finishes the input."""
    rate = RATE if executor == "local" else RAY_RATE
    parts = spread(4 * 2_000, partitions=4, keys=11)
    sinks = [TestingSink(tmp_path / f"out{i}") for i in range(len(parallelisms))]
    directory = tmp_path / "chk"
    config = checkpointing(directory, interval=timedelta(milliseconds=30 if executor == "local" else 150))
    for sink, parallelism in zip(sinks[:-1], parallelisms[:-1]):
        last = CheckpointStorage(str(directory)).next_id() - 1
        stopped = start_and_stop_after_checkpoints(aggregate_of(PacedSource(parts, rate), sink), directory,
                                                   checkpoints=1, checkpoint=config, executor=executor,
                                                   parallelism=parallelism)
        assert stopped.last_checkpoint.checkpoint_id > last
    final = hw.run(aggregate_of(PacedSource(parts, None), sinks[-1]), batch_size=FINE, executor=executor,
                   parallelism=parallelisms[-1], checkpoint=config)

    assert final.last_checkpoint.kind == "final"
    assert all(sink.rows() for sink in sinks[:-1]), "every run before the last committed output"
    assert_clean_changelog([row for sink in sinks for row in sink.rows()], parts)


def test_rescale_one_two_one_keeps_every_keys_state(tmp_path: Path) -> None:
    rescale(tmp_path, "local", [1, 2, 1])


def test_rescale_three_to_two(tmp_path: Path) -> None:
    rescale(tmp_path, "local", [3, 2])


@pytest.mark.ray
def test_rescale_one_two_one_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    rescale(tmp_path, "ray", [1, 2, 1])


def test_rescale_down_into_parquet_commits_and_aborts_the_wider_runs_subtasks(tmp_path: Path) -> None:
    """3 -> 2 with a committing file sink: the restore settles the staging of sink subtask 2, which the new run
    no longer has (found by the autoscaler's first scale-down into Parquet)."""
    parts = spread(4 * 1_500, partitions=4)
    out, directory = tmp_path / "parquet", tmp_path / "chk"
    config = checkpointing(directory, interval=timedelta(milliseconds=30))
    start_and_stop_after_checkpoints(stateless_flow(PacedSource(parts, RATE), ParquetSink(out)), directory,
                                     settle=0.05, checkpoint=config, executor="local", parallelism=3)
    hw.run(stateless_flow(PacedSource(parts, None), ParquetSink(out)), executor="local", parallelism=2,
           checkpoint=config)
    expected = sorted(r["v"] for p in parts for r in p if r["v"] % 3 != 0)
    assert sorted(r["v"] for r in parquet_rows(out)) == expected
    assert_only_committed_files_visible(out)


def test_rescale_through_a_savepoint_in_the_same_dir(tmp_path: Path) -> None:
    parts = spread(4 * 2_000, partitions=4, keys=7)
    out1, out2 = TestingSink(tmp_path / "out1"), TestingSink(tmp_path / "out2")
    config = checkpointing(tmp_path / "chk", interval=timedelta(milliseconds=300))
    stopped = start_and_stop_after_checkpoints(aggregate_of(PacedSource(parts, RATE), out1), tmp_path / "chk",
                                               checkpoints=1, savepoint=True, settle=0.1, checkpoint=config,
                                               executor="local", parallelism=1)  # output after the checkpoint
    assert CheckpointStorage(str(tmp_path / "chk")).load(stopped.savepoint_path).kind == "savepoint"
    hw.run(aggregate_of(PacedSource(parts, None), out2), batch_size=FINE, executor="local", parallelism=2,
           checkpoint=config)
    assert_clean_changelog(out1.rows() + out2.rows(), parts)


# -- savepoints and upgrades ----------------------------------------------------------------------------------------
def counting_flow(source: Source, sink: TestingSink, counts_id: str = "counts") -> hw.Dataflow:
    flow = hw.Dataflow("upgrade")
    flow.source("in", source).key_by("k").aggregate(step_id=counts_id, n=hw.count()).sink("out", sink)
    return flow


def upgraded_flow(source: Source, counts: TestingSink, totals: TestingSink) -> hw.Dataflow:
    """v2: a new stateless step before the kept aggregate, and a new aggregate step."""
    flow = hw.Dataflow("upgrade")
    scaled = flow.source("in", source).with_columns(w=hw.col("v") * 10)
    scaled.key_by("k").aggregate(step_id="counts", n=hw.count()).sink("out", counts)
    scaled.key_by("k").aggregate(step_id="totals", total=hw.sum("w")).sink("totals_out", totals)
    return flow


def count_keys(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(row["k"] for row in rows))


def savepoint_of_a_stopped_job(tmp_path: Path, rows: list[dict[str, Any]], executor: str = "local",
                               ) -> tuple[str, int, TestingSink]:
    """Run v1 over paced ``rows``, stop it with a savepoint; returns the savepoint, its source position (rows
    read) and v1's sink."""
    out = TestingSink(tmp_path / "v1")
    local = executor == "local"
    config = checkpointing(tmp_path / "v1-chk", interval=timedelta(milliseconds=30 if local else 150))
    stopped = start_and_stop_after_checkpoints(counting_flow(PacedSource([rows], RATE if local else RAY_RATE), out),
                                               tmp_path / "v1-chk", savepoint=True, checkpoint=config,
                                               executor=executor, parallelism=2)
    assert stopped.stopped and stopped.last_checkpoint.kind == "savepoint"
    savepoint = stopped.savepoint_path
    assert savepoint is not None and Path(savepoint).name.startswith("savepoint-")
    assert Path(savepoint, METADATA).is_file() and savepoint == stopped.last_checkpoint.directory
    metadata = CheckpointStorage(str(Path(savepoint).parent)).load(savepoint)
    assert metadata.kind == "savepoint"
    position = metadata.source_positions()["in"]["part-0"]
    assert 0 < position < len(rows), "stopped mid-input"
    assert out.latest(["k"]) == {k: {"k": k, "n": n} for k, n in count_keys(rows[:position]).items()}, (
        "the savepoint's output is committed and matches its state"
    )
    return savepoint, position, out


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_upgrade_from_a_savepoint_keeps_state_and_starts_new_steps_empty(
    request: pytest.FixtureRequest, tmp_path: Path, executor: str
) -> None:
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    rows = spread(2_000, partitions=1, keys=4)[0]
    savepoint, position, v1 = savepoint_of_a_stopped_job(tmp_path, rows, executor)
    counts, totals = TestingSink(tmp_path / "v2-counts"), TestingSink(tmp_path / "v2-totals")

    hw.run(upgraded_flow(PacedSource([rows], None), counts, totals), batch_size=FINE, executor=executor, parallelism=2,
           checkpoint=checkpointing(tmp_path / "v2-chk", restore_from=savepoint))

    assert count_keys(rows) == {k: row["n"] for k, row in counts.latest(["k"]).items()}
    changelog: dict[str, int] = {}
    for row in v1.rows() + counts.rows():  # the kept step continues: counts keep growing from the savepoint's
        assert row["n"] > changelog.get(row["k"], 0)
        changelog[row["k"]] = row["n"]
    expected_totals: Counter[str] = Counter()
    for row in rows[position:]:
        expected_totals[row["k"]] += row["v"] * 10
    assert {k: row["total"] for k, row in totals.latest(["k"]).items()} == dict(expected_totals), (
        "the new step started empty at the savepoint's position"
    )


def test_renamed_stateful_step_is_refused_unless_allowed(tmp_path: Path) -> None:
    rows = spread(2_000, partitions=1, keys=4)[0]
    savepoint, position, _ = savepoint_of_a_stopped_job(tmp_path, rows)
    renamed = TestingSink(tmp_path / "renamed")

    with pytest.raises(StateCompatibilityError, match=r"'counts'") as refused:
        hw.run(counting_flow(PacedSource([rows], None), renamed, counts_id="counts_v2"), executor="local",
               checkpoint=checkpointing(tmp_path / "refused-chk", restore_from=savepoint))
    assert "allow_non_restored_state" in str(refused.value)
    assert renamed.rows() == []

    hw.run(counting_flow(PacedSource([rows], None), renamed, counts_id="counts_v2"), batch_size=FINE, executor="local",
           checkpoint=checkpointing(tmp_path / "allowed-chk", restore_from=savepoint, allow_non_restored_state=True))
    assert {k: row["n"] for k, row in renamed.latest(["k"]).items()} == count_keys(rows[position:])


def test_upgrade_that_adds_an_aggregation_to_a_kept_step(tmp_path: Path) -> None:
    rows = spread(2_000, partitions=1, keys=4)[0]
    savepoint, position, _ = savepoint_of_a_stopped_job(tmp_path, rows)
    out = TestingSink(tmp_path / "v2")
    flow = hw.Dataflow("upgrade")
    flow.source("in", PacedSource([rows], None)).key_by("k").aggregate(
        step_id="counts", n=hw.count(), total=hw.sum("v")
    ).sink("out", out)
    try:
        hw.run(flow, batch_size=FINE, executor="local",
               checkpoint=checkpointing(tmp_path / "v2-chk", restore_from=savepoint))
    except StateCompatibilityError as refused:  # refusing, naming the step, would be acceptable too
        assert "'counts'" in str(refused)
        return
    assert {k: row["n"] for k, row in out.latest(["k"]).items()} == count_keys(rows)
    totals: Counter[str] = Counter()
    for row in rows[position:]:
        totals[row["k"]] += row["v"]
    assert {k: row["total"] for k, row in out.latest(["k"]).items()} == dict(totals), "the new aggregation starts empty"


def test_restoring_with_other_max_key_groups_is_refused(tmp_path: Path) -> None:
    rows = spread(2_000, partitions=1, keys=4)[0]
    savepoint, _, _ = savepoint_of_a_stopped_job(tmp_path, rows)
    with pytest.raises(StateCompatibilityError, match="max_key_groups=128"):
        hw.run(counting_flow(PacedSource([rows], None), TestingSink(tmp_path / "v2")), executor="local",
               max_key_groups=64, checkpoint=checkpointing(tmp_path / "v2-chk", restore_from=savepoint))


def test_stop_with_savepoint_needs_checkpointing(tmp_path: Path) -> None:
    out = TestingSink(tmp_path / "out")
    job = hw.start(counting_flow(PacedSource(spread(2_000, partitions=1), RATE), out), executor="local")
    try:
        with pytest.raises(ConfigError, match="needs checkpointing"):
            job.stop(savepoint=True)
    finally:
        job.stop()
        result = job.wait()
    assert result.stopped and result.savepoint_path is None


def test_restore_from_wins_over_older_checkpoints_in_the_dir(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=1, keys=4)
    out1, out2 = TestingSink(tmp_path / "out1"), TestingSink(tmp_path / "out2")
    config = checkpointing(tmp_path / "chk", interval=timedelta(milliseconds=300))
    stopped = start_and_stop_after_checkpoints(counting_flow(PacedSource(parts, RATE), out1), tmp_path / "chk",
                                               checkpoints=1, savepoint=True, settle=0.1, checkpoint=config,
                                               executor="local")  # output after the last periodic checkpoint
    hw.run(counting_flow(PacedSource(parts, None), out2), batch_size=FINE, executor="local",
           checkpoint=dataclasses.replace(config, restore_from=stopped.savepoint_path))
    changelog: dict[str, int] = {}
    for row in out1.rows() + out2.rows():
        assert row["n"] > changelog.get(row["k"], 0), "replayed output"
        changelog[row["k"]] = row["n"]
    assert changelog == count_keys(parts[0])


@pytest.mark.parametrize("interval_ms, v2_rate", [(20, 16 * RATE), (60_000, None)],
                         ids=["v2 takes checkpoints", "v2 ends before its first checkpoint"])
def test_upgrade_into_a_new_dir_keeps_every_committed_file(
    tmp_path: Path, interval_ms: int, v2_rate: float | None
) -> None:
    """The upgraded run writes to the same Parquet directory: its checkpoint ids (in file names) must continue
    after the savepoint's, and its last output must be committed."""
    parts = spread(2_000, partitions=1)
    out = tmp_path / "parquet"
    stopped = start_and_stop_after_checkpoints(stateless_flow(PacedSource(parts, RATE), ParquetSink(out)),
                                               tmp_path / "v1", savepoint=True, executor="local")
    hw.run(stateless_flow(PacedSource(parts, v2_rate), ParquetSink(out)), executor="local",
           checkpoint=checkpointing(tmp_path / "v2", interval=timedelta(milliseconds=interval_ms),
                                    restore_from=stopped.savepoint_path))
    expected = [r["v"] for r in parts[0] if r["v"] % 3 != 0]
    assert sorted(r["v"] for r in parquet_rows(out)) == expected
    assert_only_committed_files_visible(out)


def test_upgrade_to_a_new_output_directory(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=1)
    config = checkpointing(tmp_path / "v1", interval=timedelta(milliseconds=300))
    v1 = stateless_flow(PacedSource(parts, RATE), ParquetSink(tmp_path / "v1-out"))
    stopped = start_and_stop_after_checkpoints(v1, tmp_path / "v1", checkpoints=1, savepoint=True, settle=0.1,
                                               checkpoint=config, executor="local")  # output pending at the stop
    hw.run(stateless_flow(PacedSource(parts, None), ParquetSink(tmp_path / "v2-out")), executor="local",
           checkpoint=checkpointing(tmp_path / "v2", restore_from=stopped.savepoint_path))
    got = parquet_rows(tmp_path / "v1-out") + parquet_rows(tmp_path / "v2-out")
    assert sorted(r["v"] for r in got) == [r["v"] for r in parts[0] if r["v"] % 3 != 0]


# -- damaged checkpoints end to end ---------------------------------------------------------------------------------
def parquet_changelog(directory: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    """Rows of the committed files in commit order (checkpoint, subtask, n), optionally up to a checkpoint id."""
    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("part-*.parquet")):
        if up_to is None or int(path.name.split("-")[1]) <= up_to:
            rows += pq.read_table(path).to_pylist()
    return rows


def truncate_a_state_file(checkpoint: Path) -> Path:
    victim = sorted(checkpoint.rglob("*.arrow"))[0]
    victim.write_bytes(victim.read_bytes()[:-16])
    return victim


def delete_a_state_file(checkpoint: Path) -> Path:
    victim = sorted(checkpoint.rglob("*.arrow"))[-1]
    victim.unlink()
    return victim


def delete_the_metadata(checkpoint: Path) -> Path:
    victim = checkpoint / METADATA
    victim.unlink()
    return victim


def damage_any(checkpoint: Path) -> Path:
    """Truncate a state file of ``checkpoint``, or make its metadata unreadable if it has none."""
    if any(checkpoint.rglob("*.arrow")):
        return truncate_a_state_file(checkpoint)
    victim = checkpoint / METADATA
    victim.write_bytes(b"garbage")
    return victim


@pytest.mark.parametrize("damage", [truncate_a_state_file, delete_a_state_file, delete_the_metadata])
def test_resume_after_the_newest_checkpoint_was_damaged(
    tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The resumed run falls back to the previous checkpoint and is exactly-once *relative to it*: the output
    committed up to that checkpoint plus the resumed run's output is a clean, complete changelog. (Output the
    damaged checkpoint had committed after it is produced again: a sink cannot take back published output.)"""
    parts = spread(2_000, partitions=2)
    first, second = tmp_path / "out1", tmp_path / "out2"
    stopped = start_and_stop_after_checkpoints(aggregate_of(PacedSource(parts, RATE), ParquetSink(first)),
                                               tmp_path / "chk", checkpoints=2, executor="local", parallelism=2)
    storage = CheckpointStorage(str(tmp_path / "chk"))
    (previous, _), (newest, newest_dir) = storage.completed()[-2:]
    assert newest == stopped.last_checkpoint.checkpoint_id
    victim = damage(Path(newest_dir))

    with caplog.at_level(logging.WARNING, logger="headwater.checkpoint"):
        resumed = hw.run(aggregate_of(PacedSource(parts, None), ParquetSink(second)), batch_size=FINE, executor="local",
                         parallelism=2, checkpoint=checkpointing(tmp_path / "chk"))

    if victim.name != METADATA:  # a checkpoint without _metadata simply does not exist: nothing to warn about
        assert any(str(victim) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert resumed.restarts == 0 and resumed.last_checkpoint.kind == "final"
    assert_clean_changelog(parquet_changelog(first, up_to=previous) + parquet_changelog(second), parts)


def test_stateless_resume_after_the_newest_checkpoint_lost_its_metadata(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=2)
    first, second = tmp_path / "out1", tmp_path / "out2"
    start_and_stop_after_checkpoints(stateless_flow(PacedSource(parts, RATE), ParquetSink(first)), tmp_path / "chk",
                                     executor="local", parallelism=2)
    (previous, _), (_, newest_dir) = CheckpointStorage(str(tmp_path / "chk")).completed()[-2:]
    delete_the_metadata(Path(newest_dir))

    hw.run(stateless_flow(PacedSource(parts, None), ParquetSink(second)), executor="local", parallelism=2,
           checkpoint=checkpointing(tmp_path / "chk"))

    expected = [r["v"] for p in parts for r in p if r["v"] % 3 != 0]
    got = parquet_changelog(first, up_to=previous) + parquet_changelog(second)
    assert sorted(r["v"] for r in got) == sorted(expected)
    assert_only_committed_files_visible(second)


def test_every_checkpoint_damaged_fails_naming_the_file(tmp_path: Path) -> None:
    parts = spread(2_000, partitions=1)
    start_and_stop_after_checkpoints(aggregate_of(PacedSource(parts, RATE), TestingSink(tmp_path / "out1")),
                                     tmp_path / "chk", executor="local")
    victims = [damage_any(Path(d)) for _, d in CheckpointStorage(str(tmp_path / "chk")).completed()]
    again = TestingSink(tmp_path / "out2")

    with pytest.raises(CheckpointCorruptError) as raised:
        hw.run(aggregate_of(PacedSource(parts, None), again), batch_size=FINE, executor="local",
               checkpoint=checkpointing(tmp_path / "chk"))

    assert raised.value.path in {str(v) for v in victims} and raised.value.path in str(raised.value)
    assert again.rows() == []


# -- the restart policy ---------------------------------------------------------------------------------------------
def test_user_code_errors_fail_at_once_without_restarts(tmp_path: Path) -> None:
    def fragile(batch: pa.RecordBatch) -> pa.RecordBatch:
        if 13 in batch.column("v").to_pylist():
            raise ValueError("unlucky 13")
        return batch

    flow = hw.Dataflow("fragile")
    flow.source("in", TestingSource([{"v": i} for i in range(40)], batch_size=1)).map_batches(
        fragile, step_id="fragile"
    ).sink("out", TestingSink(tmp_path / "out"))
    job = hw.start(flow, executor="local",
                   checkpoint=checkpointing(tmp_path / "chk", restart_delay=timedelta(seconds=30), max_restarts=5))
    started = time.monotonic()

    with pytest.raises(UserCodeError, match="unlucky 13") as raised:
        job.wait()

    assert time.monotonic() - started < 10, "no restart (each would first wait restart_delay=30s)"
    assert job.attempt == 1
    assert raised.value.step_id == "fragile" and isinstance(raised.value.__cause__, ValueError)


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_more_aborts_than_max_restarts_fail_the_run(tmp_path: Path, max_restarts: int) -> None:
    rows = [{"k": f"k{i % 2}", "v": i} for i in range(30)]
    items = rows[:10] + [PAUSE(0.05), ABORT()] + rows[10:20] + [PAUSE(0.05), ABORT()] + rows[20:] + [ABORT()]
    script = Script(pa.string(), [rows], [items], 2, 3)
    out = TestingSink(tmp_path / "out")
    job = hw.start(aggregate_flow(script, out), executor="local",
                   checkpoint=checkpointing(tmp_path / "chk", max_restarts=max_restarts))

    with pytest.raises(SimulatedCrashError, match="ABORT marker"):
        job.wait()

    assert job.attempt == max_restarts + 1
    committed = out.rows()  # what was committed before giving up is still a clean changelog prefix
    last: dict[str, int] = {}
    for row in committed:
        assert row["n"] > last.get(row["k"], 0)
        last[row["k"]] = row["n"]
    assert sum(last.values()) <= 30


def test_as_many_aborts_as_max_restarts_recover(tmp_path: Path) -> None:
    rows = [{"k": f"k{i % 2}", "v": i} for i in range(30)]
    items = [ABORT()] + rows[:10] + [PAUSE(0.05), ABORT()] + rows[10:] + [ABORT()]
    script = Script(pa.string(), [rows], [items], 2, 3)
    out = TestingSink(tmp_path / "out")
    result = hw.run(aggregate_flow(script, out), executor="local",
                    checkpoint=checkpointing(tmp_path / "chk", max_restarts=3))
    assert result.restarts == 3
    assert_clean_changelog(out.rows(), script.rows)


def test_testing_source_aborts_fire_once_per_source_object(tmp_path: Path) -> None:
    """The premise of the tests above: a fresh TestingSource fires its ABORTs again, a restarted one does not."""
    rows = [{"k": "a", "v": i} for i in range(5)]
    script = Script(pa.string(), [rows], [rows[:2] + [ABORT()] + rows[2:]], 1, 1)
    for run in range(2):
        result = hw.run(aggregate_flow(script, TestingSink(tmp_path / f"out{run}")), executor="local",
                        checkpoint=checkpointing(tmp_path / f"chk{run}"))
        assert result.restarts == 1
