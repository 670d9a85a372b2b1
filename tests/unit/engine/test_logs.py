"""Structured logs (headwater.engine.logs): every line of a run's stderr parses as JSON and carries the known
fields; secrets and record values never appear; plain text is opt-in."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from headwater.engine import logs
from headwater.engine.config import RunConfig
from headwater.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]

#: a run whose step code logs (with a secret in the message) and one of whose batches is traced
SCRIPT = textwrap.dedent('''
    import logging, sys
    from datetime import timedelta
    import headwater as hw
    from headwater.sinks.testing import TestingSink
    from headwater.sources.testing import TestingSource

    def noisy(batch):
        logging.getLogger("user.step").warning(
            "rows=%d via postgresql://app:hunter2@db/x password=hunter2", batch.num_rows)
        return batch

    rows = [{"k": i % 3, "v": 1000 + i, "secret_col": "PAYLOAD-%d" % i} for i in range(30)]
    flow = hw.Dataflow("json_logs")
    src = flow.source("src", TestingSource(partitions=[rows[:15], rows[15:]], batch_size=5))
    src.map_batches(noisy, step_id="noisy").key_by("k").aggregate(step_id="sums", s=hw.sum("v")).sink("out", TestingSink())
    hw.run(flow, executor=sys.argv[1], parallelism=2, metrics_port=None, trace_exporter="memory", trace_sample=1.0,
           linger=timedelta(0), num_cpus=2)
    logging.getLogger("headwater.test").info("done")
''')


#: markers Ray itself writes into worker log files (to attribute lines to actors and tasks): not log lines
RAY_MARKERS = (":actor_name:", ":task_name:", ":job_id:")


def run_script(executor: str, tmp_path: Path, **env: str) -> tuple[list[str], list[str]]:
    """The run's stderr lines, and (Ray) the lines of its workers' log files, which hold every worker line:
    Ray forwards them to the driver asynchronously, and a driver that exits may not wait for the last ones."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    state = tempfile.mkdtemp(prefix="hw-logs-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HEADWATER_STATE_DIR": state, "RAY_ADDRESS": "", **env}
    environment.pop("RAY_ADDRESS")
    try:
        done = subprocess.run([sys.executable, str(script), executor], capture_output=True, text=True, timeout=240,
                              env=environment, cwd=tmp_path)
        worker_lines = [line for f in sorted(Path(state).glob("ray/session_latest/logs/worker-*.err"))
                        for line in f.read_text(errors="replace").splitlines()
                        if line.strip() and not line.startswith(RAY_MARKERS)]
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.strip()], worker_lines


#: Ray forwards a worker's lines to the driver's stderr behind "(ActorName pid=N[, ip=...]) "; the line is the rest
RAY_PREFIX = re.compile(r"^\x1b\[\d+m\((?:\w+) pid=\d+(?:, ip=[\d.]+)?\)\x1b\[0m |^\((?:\w+) pid=\d+(?:, ip=[\d.]+)?\) ")


def check_lines(lines: list[str]) -> list[dict[str, object]]:
    parsed = []
    for line in lines:
        body = RAY_PREFIX.sub("", line)
        try:
            parsed.append(json.loads(body))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    text = "\n".join(lines)
    assert "hunter2" not in text  # the secret is redacted
    assert "PAYLOAD-" not in text  # record values never appear
    return parsed


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_every_line_of_a_run_is_json_with_the_known_fields(executor: str, tmp_path: Path) -> None:
    # Ray folds similar lines of different workers into one unless told not to (docs/operations.md, Logs)
    stderr, worker_lines = run_script(executor, tmp_path, RAY_DEDUP_LOGS="0")
    lines = check_lines(stderr)
    workers = check_lines(worker_lines)
    step_lines = [p for p in (workers if executor == "ray" else lines) if p.get("logger") == "user.step"]
    assert len(step_lines) == 6  # one per source batch
    for p in step_lines:
        assert p["job"] == "json_logs" and p["step"] == "noisy" and p["subtask"] in (0, 1)
        assert re.fullmatch(r"[0-9a-f]{32}", str(p["trace_id"]))  # every batch traced: each line names its trace
        assert "app:***@db" in str(p["message"]) and "password=***" in str(p["message"])
        assert p["level"] == "WARNING" and str(p["time"]).endswith("Z")
    assert any(p.get("logger") == "headwater.test" for p in lines)


def test_plain_text_is_opt_in(tmp_path: Path) -> None:
    lines, _ = run_script("local", tmp_path, HEADWATER_LOG_FORMAT="text")
    step_lines = [line for line in lines if "user.step" in line]
    assert len(step_lines) == 6
    for line in step_lines:
        assert not line.startswith("{") and "job=json_logs step=noisy" in line and "hunter2" not in line


def test_formatter_fields_scope_and_redaction() -> None:
    record = logging.LogRecord("headwater.x", logging.ERROR, __file__, 1, "checkpoint %d failed: token=%s", (7, "abc"),
                               None)
    record.checkpoint_id = 7
    with logs.log_scope(job="j", step="s"):
        with logs.log_scope(subtask=1):
            line = json.loads(logs.JsonFormatter().format(record))
    assert line["job"] == "j" and line["step"] == "s" and line["subtask"] == 1 and line["checkpoint_id"] == 7
    assert line["message"] == "checkpoint 7 failed: token=***"
    assert "job" not in json.loads(logs.JsonFormatter().format(record))  # the scope ended with its block
    assert logs.redact("s3://AKIA:wJalr%2Fx@bucket/key") == "s3://AKIA:***@bucket/key"
    assert logs.redact('{"api_key": "k-123"}') == '{"api_key": "***"}'
    assert logs.redact("plain rows=5 step=x") == "plain rows=5 step=x"


def test_log_format_is_checked() -> None:
    with pytest.raises(ConfigError, match="log_format must be 'json' or 'text'"):
        RunConfig(log_format="xml")  # type: ignore[arg-type]
