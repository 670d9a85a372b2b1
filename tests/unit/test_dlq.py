"""Dead letters end to end: a strict pipeline dead-letters bad records into Parquet; after a fix, ``headwater dlq
replay`` feeds them through the fixed pipeline exactly once (also across a crash of the replay)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from headwater.cli import main
from headwater.errors import DeadLetterReplayError

SOURCE_MODULE = '''
"""A file of JSON payloads, one per line; strict or lenient about numbers given as strings."""
import json
from pathlib import Path

import pyarrow as pa

from headwater.core.dead_letters import DeadLetter, DeadLetterReason, decode_position
from headwater.errors import SimulatedCrashError
from headwater.sources.base import Source, SourcePartition

SCHEMA = pa.schema([("n", pa.int64()), ("line", pa.int64())])


def _decode(payload, lenient):
    value = json.loads(payload)["n"]
    if isinstance(value, str) and lenient:
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"n is {type(value).__name__}, not int")
    return value


class NumbersSource(Source):
    def __init__(self, path, lenient=False, crash_once_at=None):
        self.path, self.lenient, self.crash_once_at = str(path), lenient, crash_once_at

    def schema(self):
        return SCHEMA

    def list_parts(self):
        return ["p0"]

    def build_part(self, part, resume_state):
        return _Part(self, int(resume_state or 0))

    def replay_dead_letters(self, letters):
        rows, dead = [], []
        for letter in letters.to_pylist():
            line = decode_position(letter["position"])
            if self.crash_once_at is not None and line == self.crash_once_at:
                marker = Path(self.path + ".crashed")
                if not marker.exists():
                    marker.touch()
                    raise SimulatedCrashError("replay crash")
            try:
                rows.append({"n": _decode(letter["payload"], self.lenient), "line": line})
            except (ValueError, TypeError, KeyError) as exc:
                dead.append(DeadLetter(letter["payload"], DeadLetterReason.WRONG_TYPE, str(exc), letter["partition"], line))
        return (pa.RecordBatch.from_pylist(rows, schema=SCHEMA) if rows else None), dead


class _Part(SourcePartition):
    def __init__(self, source, line):
        self.source, self.line, self.dead = source, line, []
        self.lines = Path(source.path).read_bytes().splitlines()

    def next_batch(self):
        if self.line >= len(self.lines):
            raise StopIteration
        rows = []
        for line in range(self.line, min(self.line + 4, len(self.lines))):
            try:
                rows.append({"n": _decode(self.lines[line], self.source.lenient), "line": line})
            except (ValueError, TypeError, KeyError) as exc:
                self.dead.append(DeadLetter(self.lines[line], DeadLetterReason.WRONG_TYPE, str(exc), "p0", line))
            self.line = line + 1
        return pa.RecordBatch.from_pylist(rows, schema=SCHEMA) if rows else None

    def take_dead_letters(self):
        taken, self.dead = self.dead, []
        return taken

    def snapshot(self):
        return self.line
'''


def _pipeline(directory: Path, name: str, lenient: bool, crash_once_at: int | None = None) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(f'''
        from datetime import timedelta
        import headwater as hw
        from headwater.sinks import ParquetSink
        from numbers_source import NumbersSource

        flow = hw.Dataflow("numbers")
        numbers = flow.source("numbers", NumbersSource({str(directory / "input.jsonl")!r}, lenient={lenient},
                                                      crash_once_at={crash_once_at!r}))
        numbers.sink("out", ParquetSink({str(directory / "out")!r}))
        numbers.dead_letters().sink("dlq", ParquetSink({str(directory / "dlq")!r}))
        checkpoint = hw.CheckpointConfig(dir={str(directory / "checkpoints")!r}, interval=timedelta(milliseconds=5),
                                         restart_delay=timedelta(0))
    '''))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "numbers_source.py").write_text(SOURCE_MODULE)
    lines = []
    for i in range(30):
        lines.append(json.dumps({"n": str(i) if i % 5 == 0 else i}))  # every fifth is a numeric string
    lines.append(json.dumps({"n": [1]}))  # bad in every version
    (tmp_path / "input.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def _out(directory: Path) -> list[int]:
    return sorted(ds.dataset(directory / "out", format="parquet", ignore_prefixes=["_"]).to_table().column("n").to_pylist())


def _dead(directory: Path) -> list[dict[str, object]]:
    table = ds.dataset(directory / "dlq", format="parquet", ignore_prefixes=["_"]).to_table()
    return table.select(["payload", "reason", "source_step", "partition", "position"]).to_pylist()


def test_strict_run_dead_letters_then_replay_after_the_fix_exactly_once(workspace: Path, capsys) -> None:
    strict = _pipeline(workspace, "strict.py", lenient=False)
    assert main(["run", str(strict), "--executor", "local", "--no-progress"]) == 0
    assert _out(workspace) == [i for i in range(30) if i % 5]
    dead = _dead(workspace)
    assert len(dead) == 7 and {d["reason"] for d in dead} == {"wrong_type"}
    assert {d["source_step"] for d in dead} == {"numbers"}

    capsys.readouterr()
    assert main(["dlq", "list", str(workspace / "dlq")]) == 0
    listing = capsys.readouterr().out
    assert "numbers" in listing and "wrong_type" in listing and "7" in listing

    fixed = _pipeline(workspace, "fixed.py", lenient=True)
    replay = ["dlq", "replay", str(fixed), "--dead-letters", str(workspace / "dlq"), "--source", "numbers",
              "--executor", "local"]
    assert main(replay) == 0
    assert _out(workspace) == list(range(30))  # the six numeric strings arrived, once
    still_dead = [d for d in _dead(workspace) if d["payload"] == b'{"n": [1]}']
    assert len(still_dead) == 2  # dead in the first run, and dead again after the replay

    assert main(replay) == 0  # a second replay of the same files replays nothing again
    assert _out(workspace) == list(range(30))


def test_replay_resumes_after_a_crash_without_duplicates(workspace: Path) -> None:
    assert main(["run", str(_pipeline(workspace, "strict.py", lenient=False)), "--executor", "local",
                 "--no-progress"]) == 0
    fixed = _pipeline(workspace, "fixed.py", lenient=True, crash_once_at=20)
    assert main(["dlq", "replay", str(fixed), "--dead-letters", str(workspace / "dlq"), "--source", "numbers",
                 "--executor", "local"]) == 0
    assert (workspace / "input.jsonl.crashed").exists()
    assert _out(workspace) == list(range(30))


def test_replay_refuses_the_pipelines_own_checkpoint_dir_and_unknown_steps(workspace: Path, capsys) -> None:
    strict = _pipeline(workspace, "strict.py", lenient=False)
    assert main(["run", str(strict), "--executor", "local", "--no-progress"]) == 0
    capsys.readouterr()
    own = ["dlq", "replay", str(strict), "--dead-letters", str(workspace / "dlq"), "--source", "numbers",
           "--checkpoint-dir", str(workspace / "checkpoints"), "--executor", "local"]
    assert main(own) == 2
    assert "is the pipeline's own" in capsys.readouterr().err
    assert main(["dlq", "replay", str(strict), "--dead-letters", str(workspace / "dlq"), "--source", "nope",
                 "--executor", "local"]) == 2
    assert "no source step 'nope'" in capsys.readouterr().err
    assert main(["dlq", "list", str(workspace / "out")]) == 2
    assert "does not hold dead letters" in capsys.readouterr().err


def test_sources_without_replay_support_say_so() -> None:
    from headwater.sources import ParquetSource  # noqa: F401 - any source without replay_dead_letters
    from headwater.sources.testing import TestingSource

    with pytest.raises(DeadLetterReplayError, match="cannot replay dead letters"):
        TestingSource([{"a": 1}]).replay_dead_letters(None)  # type: ignore[arg-type]  # refused before reading


def test_a_replay_and_its_runs_are_audited(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater.store.audit import AuditLog

    monkeypatch.setenv("HEADWATER_STORE", str(workspace / "store"))
    assert main(["run", str(_pipeline(workspace, "strict.py", lenient=False)), "--executor", "local",
                 "--no-progress"]) == 0
    fixed = _pipeline(workspace, "fixed.py", lenient=True)
    assert main(["dlq", "replay", str(fixed), "--dead-letters", str(workspace / "dlq"), "--source", "numbers",
                 "--executor", "local"]) == 0
    log = AuditLog(str(workspace / "store"))
    assert [e.event for e in log.entries()] == ["job_start", "job_stop", "dlq_replay", "job_start", "job_stop",
                                                "dlq_replay"]
    started, done = log.entries(event="dlq_replay")
    assert (started.fields["status"], done.fields["status"]) == ("started", "completed")
    assert done.fields["source"] == "numbers" and done.fields["dead_letters"] == str(workspace / "dlq")
    assert log.verify().ok
