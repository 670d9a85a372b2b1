"""Plumbing shared by ``compare.py``, ``latency_bench.py`` and ``scaling.py``: where the engines live, how a runner
process is started, watched and killed, and what the machine is.

Every runner is a fresh process of its engine's own interpreter (``ENGINES``), started with a clean, fixed
environment (``TZ=UTC``, Ray's usage stats and auth off), its output to a log file, and killed with its whole
process tree (children collected while it still lives) when it times out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PEERS = BENCH / "peers"
HW_VENV = ROOT / ".venv"
HW_PY = HW_VENV / "bin" / "python"
RESULTS = BENCH / "results"

ENGINES: dict[str, tuple[Path, str]] = {
    "headwater": (HW_PY, "headwater_runner.py"),
    "bytewax": (BENCH / ".venvs" / "bytewax" / "bin" / "python", "bytewax_runner.py"),
    "flink": (BENCH / ".venvs" / "flink" / "bin" / "python", "flink_runner.py"),
    "pathway": (BENCH / ".venvs" / "pathway" / "bin" / "python", "pathway_runner.py"),
    "raydata": (BENCH / ".venvs" / "raydata" / "bin" / "python", "raydata_runner.py"),
    "python": (HW_PY, "python_runner.py"),
}
#: engines with a paced (latency) runner ``peers/<engine>_paced.py``; Ray Data is a batch library
PACED = ("headwater", "python", "bytewax", "flink", "pathway")
PEER_VENVS = ("bytewax", "flink", "pathway", "raydata")
REFERENCE = "python"
ALL_QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8")
NO_DUMP = {"bytewax"}  # runners without --dump support
ENV = {"TZ": "UTC", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


class RunnerError(RuntimeError):
    pass


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _tree(pid: int) -> list[int]:
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    from common import tree_pids

    return tree_pids(pid)


def kill_tree(pid: int) -> None:
    """Kill a runner and every process it started, by id, children first collected while it still lives."""
    pids = _tree(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in reversed(pids):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


def run_process(name: str, cmd: list[str], out: Path, log_path: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (which writes its JSON result to ``out``) and return that result; raise RunnerError."""
    out.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                cwd=str(ROOT))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            raise RunnerError(f"{name}: timed out after {timeout:.0f} s (log: {log_path})") from None
    if code != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RunnerError(f"{name}: exit code {code} (log: {log_path})\n    " + "\n    ".join(tail))
    return json.loads(out.read_text())


def run_runner(engine: str, query: str, parallelism: int, events_dir: Path, verify: bool, out: Path,
               log_path: Path, timeout: float, dump: Path | None = None) -> dict[str, Any]:
    """One throughput/verification run of ``peers/<engine>_runner.py`` (contract: ``peers/common.py``)."""
    python, script = ENGINES[engine]
    cmd = [str(python), str(PEERS / script), "--query", query, "--events-dir", str(events_dir),
           "--parallelism", str(parallelism), "--out", str(out)]
    if verify:
        cmd.append("--verify")
    if dump is not None:
        cmd += ["--dump", str(dump)]
    return run_process(f"{engine} {query} p={parallelism}", cmd, out, log_path, timeout)


def run_paced(engine: str, runs: list[tuple[str, float, Path]], max_lag: float, out: Path, log_path: Path,
              timeout: float) -> dict[str, Any]:
    """One process of ``peers/<engine>_paced.py`` doing each ``(query, rate, events_dir)`` in turn
    (contract: ``peers/paced.py``)."""
    python = ENGINES[engine][0]
    spec = ",".join(f"{query}:{rate:g}:{directory}" for query, rate, directory in runs)
    cmd = [str(python), str(PEERS / f"{engine}_paced.py"), "--runs", spec, "--max-lag", str(max_lag),
           "--out", str(out)]
    return run_process(f"{engine} paced", cmd, out, log_path, timeout)


def sequence_length(bids: int) -> int:
    """Smallest event-sequence length holding ``bids`` bids (events 4..49 of every 50 are bids)."""
    full, rest = divmod(bids, 46)
    return full * 50 + (rest + 4 if rest else 0)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["load_average_at_start"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        info["java"] = (java.stderr or java.stdout).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info


def source_commit() -> str | None:
    """The checked-out commit, read from ``.git`` (HEAD, then the ref file or ``packed-refs``)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip() or None
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def csv_arg(kind: type, allowed: tuple | None = None) -> Any:
    def parse(text: str) -> list:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {allowed}, got {text!r}")
        return values
    return parse
