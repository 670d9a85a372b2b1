"""The source partition hooks for connectors: dead letters, on_checkpoint_complete, lag (both executors)."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import headwater as hw
from headwater.core.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter, DeadLetterReason, decode_position
from headwater.core.plain_data import PlainData
from headwater.errors import BuildError, SimulatedCrashError
from headwater.sinks.testing import TestingSink
from headwater.sources.base import Source, SourceLag, SourcePartition

SCHEMA = pa.schema([("n", pa.int64())])


class _Partition(SourcePartition):
    def __init__(self, source: _PayloadSource, part: str, index: int) -> None:
        self.source, self.part, self.index = source, part, index
        self._dead: list[DeadLetter] = []
        self._live_since: float | None = None

    def next_batch(self) -> pa.RecordBatch | None:
        items = self.source.items
        if self.index >= len(items):
            if self.source.end_after_a_complete_checkpoint and not self._heard_of_a_complete_checkpoint():
                return None  # stay live (an ended partition hears of no checkpoint) until one completed
            raise StopIteration
        good: list[int] = []
        end = min(self.index + 3, len(items))
        for position in range(self.index, end):
            payload = items[position]
            if payload == b"CRASH" and not Path(self.source.marker_dir, f"{self.part}-{position}").exists():
                Path(self.source.marker_dir, f"{self.part}-{position}").touch()
                raise SimulatedCrashError(f"crash at {position}")
            try:
                good.append(int(json.loads(payload)["n"]))
            except (ValueError, KeyError, TypeError) as exc:
                if payload != b"CRASH":
                    self._dead.append(DeadLetter(payload, DeadLetterReason.BAD_FORMAT, str(exc), self.part, position))
        self.index = end
        return pa.record_batch([pa.array(good, pa.int64())], schema=SCHEMA) if good else None

    def _heard_of_a_complete_checkpoint(self) -> bool:
        if self._live_since is None:
            self._live_since = time.monotonic()
        return Path(self.source.marker_dir, f"complete-{self.part}").exists() or time.monotonic() - self._live_since > 60

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def snapshot(self) -> PlainData:
        return self.index

    def on_checkpoint_complete(self, checkpoint_id: int, position: PlainData) -> None:
        with open(Path(self.source.marker_dir, f"complete-{self.part}"), "a") as f:
            f.write(f"{checkpoint_id} {position}\n")

    def lag(self) -> SourceLag | None:
        return SourceLag(records=len(self.source.items) - self.index)


class _PayloadSource(Source):
    """JSON payloads, 3 per batch; bad ones become dead letters; b"CRASH" fails once."""

    def __init__(self, items: list[bytes], parts: int = 1, end_after_a_complete_checkpoint: bool = False) -> None:
        self.items = items
        self.parts = parts
        self.end_after_a_complete_checkpoint = end_after_a_complete_checkpoint
        self.marker_dir = tempfile.mkdtemp(prefix="hw-hooks-")

    def schema(self) -> pa.Schema:
        return SCHEMA

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self.parts)]

    def build_part(self, part: str, resume_state: PlainData) -> SourcePartition:
        return _Partition(self, part, int(resume_state) if resume_state is not None else 0)  # type: ignore[arg-type]  # an int position


def _items() -> list[bytes]:
    items = []
    for i in range(40):
        items.append(b'{"n": %d}' % i)
        if i % 7 == 0:
            items.append(b"not json %d" % i)
        if i == 25:
            items.append(b"CRASH")
    return items


def _checkpointing(tmp_path: Path, **options: object) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=5),
                               restart_delay=timedelta(0), **options)  # type: ignore[arg-type]  # test options


def _flow(source: _PayloadSource, good: TestingSink, dead: TestingSink) -> hw.Dataflow:
    flow = hw.Dataflow("hooks")
    stream = flow.source("source", source)
    stream.filter(hw.col("n") >= 0).sink("good", good)
    stream.dead_letters().sink("dead", dead)
    return flow


def test_dead_letters_reach_their_stream_exactly_once_across_a_crash(runner, tmp_path: Path) -> None:
    source = _PayloadSource(_items())
    good, dead = TestingSink(), TestingSink()
    result = runner(_flow(source, good, dead), checkpoint=_checkpointing(tmp_path, max_restarts=2), batch_size=2)
    assert result.restarts == 1
    assert sorted(r["n"] for r in good.rows()) == list(range(40))
    letters = dead.table()
    assert letters.schema == DEAD_LETTER_SCHEMA
    assert sorted(letters.column("payload").to_pylist()) == sorted(b"not json %d" % i for i in range(0, 40, 7))
    assert set(letters.column("reason").to_pylist()) == {"bad_format"}
    assert set(letters.column("source_step").to_pylist()) == {"source"}
    positions = [decode_position(p) for p in letters.column("position").to_pylist()]
    assert all(source.items[p] == payload for p, payload in zip(positions, letters.column("payload").to_pylist()))
    assert result.steps["source"].dead_letters > 0


def test_checkpoint_complete_hook_gets_the_checkpointed_position(runner, tmp_path: Path) -> None:
    # The partition stays live until it heard of a complete checkpoint (or 60 s passed): on a fast run the
    # input could otherwise end before any checkpoint completed, and an ended partition hears of none.
    source = _PayloadSource([b'{"n": %d}' % i for i in range(300)], end_after_a_complete_checkpoint=True)
    good, dead = TestingSink(), TestingSink()
    runner(_flow(source, good, dead), checkpoint=_checkpointing(tmp_path), batch_size=2)
    marker = Path(source.marker_dir, "complete-p0")
    assert marker.exists(), "on_checkpoint_complete was never called while the partition was live (60 s)"
    lines = marker.read_text().split()
    ids = [int(x) for x in lines[0::2]]
    positions = [int(x) for x in lines[1::2]]
    assert ids == sorted(ids) and positions == sorted(positions)
    assert all(0 <= p <= len(source.items) for p in positions)


def test_dead_letters_of_a_non_source_step_fail_at_build_time() -> None:
    flow = hw.Dataflow("bad")
    filtered = flow.source("source", _PayloadSource([b"{}"])).filter(hw.col("n") > 0)
    with pytest.raises(BuildError, match="call it on a source's stream"):
        filtered.dead_letters()


def test_unread_dead_letters_are_counted(tmp_path: Path) -> None:
    flow = hw.Dataflow("unread")
    good = TestingSink()
    flow.source("source", _PayloadSource([b"{\"n\": 1}", b"bad", b"{\"n\": 2}"])).sink("good", good)
    result = hw.run(flow, executor="local")
    assert sorted(r["n"] for r in good.rows()) == [1, 2]
    assert result.steps["source"].dead_letters == 1


def test_progress_display_shows_lag_and_dead_letters() -> None:
    import io

    from headwater.engine.metrics import StepCounters, SubtaskMetrics
    from headwater.engine.progress import ProgressDisplay
    from headwater.runner import plan_flow

    flow = hw.Dataflow("shown")
    flow.source("source", _PayloadSource([b'{"n": 1}'])).sink("good", TestingSink())
    plan = plan_flow(flow, executor="local")
    metrics = [SubtaskMetrics(stage_id=0, subtask=0, steps={"source": StepCounters(0, 10, 0, dead_letters=3)},
                              source_lag={"p0": SourceLag(records=1234, seconds=2.5)})]
    text = ProgressDisplay(plan, io.StringIO()).render(metrics, 1.0)
    assert "dead letters" in text and "3 rows" in text
    assert "1,234 records / 2.5 s" in text
