"""Start-up: how long until a 3-row pipeline shows its first output, from launching ``python pipeline.py``.

    flock /tmp/headwater-ray.lock python benchmarks/startup.py --repeat 3 --out benchmarks/results/startup-DATE.json

Every measurement is a fresh process, launched as a user would, timed from just before the launch to the
moment the pipeline's first batch reaches its map step (the step writes ``time.time()`` to a file; same clock),
and to the process's exit (wall). Rounds are interleaved, so a busy spell of the machine hits every variant:

* ``python -c "print(1)"`` and ``python -c "import headwater"`` — the references;
* ``executor="local"`` — in-process;
* ``ray, per-run Ray`` — ``keep_local_ray=False``: a local Ray started and stopped by the run (the old default);
* ``ray, kept Ray: cold`` — the default executor when no kept Ray runs (it is stopped first): starts one;
* ``ray, kept Ray: warm`` / ``headwater run, warm`` — the default executor when the kept Ray runs.

The kept Ray lives in a state directory of the benchmark's own and is stopped at the end. The defaults of a
user's run apply (the dashboard on); the result is printed as JSON (medians, all samples, ratios to the
``print(1)`` reference of the same run) and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

_PIPELINE = textwrap.dedent(
    """
    import os, time
    import headwater as hw
    from headwater.sinks import NullSink
    from headwater.testing import TestingSource

    def first_output(batch):
        with open(os.environ["STARTUP_FIRST_OUTPUT"], "a") as out:
            out.write(f"{time.time()}\\n")
        return batch

    flow = hw.Dataflow("startup-three-rows")
    flow.source("in", TestingSource([{"v": i} for i in range(3)])).map_batches(first_output).sink("out", NullSink())
    if __name__ == "__main__":
        hw.run(flow, executor=os.environ.get("STARTUP_EXECUTOR", "ray"))
    """
)


def _measure(command: list[str], env: dict[str, str], marker: Path | None) -> dict[str, float | None]:
    if marker is not None:
        marker.unlink(missing_ok=True)
    started = time.time()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    first = None
    if marker is not None:
        first = float(marker.read_text().split()[0]) - started
    return {"first_output_s": None if first is None else round(first, 3), "wall_s": round(wall, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    args = parser.parse_args()
    from headwater.engine.ray import kept

    work = Path(tempfile.mkdtemp(prefix="hwstartup-", dir="/tmp"))  # short: Ray's socket paths live under it
    state_dir = work / "kept"
    script = work / "pipeline.py"
    script.write_text(_PIPELINE)
    marker = work / "first-output"
    python = sys.executable
    headwater_cli = str(Path(python).with_name("headwater"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    base.update(RAY_USAGE_STATS_ENABLED="0", HEADWATER_LOCAL_RAY_DIR=str(state_dir), HEADWATER_KEEP_LOCAL_RAY="1",
                STARTUP_FIRST_OUTPUT=str(marker), HEADWATER_STATE_DIR=str(work / "state"))
    variants: list[tuple[str, list[str], dict[str, str], Path | None, bool]] = [
        ('python -c "print(1)"', [python, "-c", "print(1)"], base, None, False),
        ('python -c "import headwater"', [python, "-c", "import headwater"], base, None, False),
        ('executor="local"', [python, str(script)], {**base, "STARTUP_EXECUTOR": "local"}, marker, False),
        ("ray, per-run Ray (keep_local_ray=False)", [python, str(script)], {**base, "HEADWATER_KEEP_LOCAL_RAY": "0"},
         marker, True),
        ("ray, kept Ray: cold (starts it)", [python, str(script)], base, marker, True),
        ("ray, kept Ray: warm", [python, str(script)], base, marker, False),
        ("headwater run, kept Ray: warm", [headwater_cli, "run", str(script), "--no-progress"], base, marker, False),
    ]
    samples: dict[str, list[dict[str, float | None]]] = {name: [] for name, *_ in variants}
    try:
        for _ in range(args.repeat):
            for name, command, env, first, cold in variants:
                if cold:  # also before the per-run Ray: never two Rays at once
                    kept.stop(state_dir, reason="benchmark: a cold start")
                samples[name].append(_measure(command, env, first))
    finally:
        kept.stop(state_dir, reason="benchmark done")
        shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {}
    for name, runs in samples.items():
        entry: dict[str, Any] = {"samples": runs, "median_wall_s": statistics.median(r["wall_s"] or 0 for r in runs)}
        firsts = [r["first_output_s"] for r in runs if r["first_output_s"] is not None]
        if firsts:
            entry["median_first_output_s"] = statistics.median(firsts)
        results[name] = entry
    reference = results['python -c "print(1)"']["median_wall_s"]
    for entry in results.values():
        if "median_first_output_s" in entry and reference:
            entry["first_output_vs_print1"] = round(entry["median_first_output_s"] / reference, 1)
    report = {
        "benchmark": "startup", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, shared with other agents (noisy)",
        "load_average_at_end": os.getloadavg(), "repeat": args.repeat, "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
