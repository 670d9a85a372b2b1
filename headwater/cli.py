"""The ``headwater`` command.

    headwater run path/to/pipeline.py [--parallelism N] [--executor ray|local] [--timeout S] [--no-progress]
                                      [--checkpoint-dir DIR] [--checkpoint-interval S] [--no-checkpoint]
    headwater plan path/to/pipeline.py [--parallelism N]      # the physical plan
    headwater graph path/to/pipeline.py                        # the logical graph as Mermaid
    headwater dlq list DIR                                     # stored dead letters by source step and reason
    headwater dlq replay path/to/pipeline.py --dead-letters DIR --source STEP [--checkpoint-dir CKPT]
                                      [--executor ray|local] [--parallelism N]   # see headwater.dlq
<<<<<<< HEAD
    headwater local status|stop                                    # the kept local Ray (headwater.engine.ray.kept)
=======
    headwater status [--json]                                  # running jobs (headwater.observability.registry)
>>>>>>> h-obs
    headwater serve --store DIR [--host 127.0.0.1] [--port 8000]   # the query and feature API (docs/serving.md)
    headwater token create --store DIR --role ROLE                 # and token list|revoke, role create|delete|list,
    headwater grant|revoke|pii --store DIR ...                     # grants and PII columns: headwater.access.commands
    headwater lineage DATASET [--json] [--store DIR]               # upstream and downstream of a dataset
    headwater audit verify|list [--store DIR]                      # the audit log: headwater.governance.commands
    headwater schemas list|show SUBJECT [--version N]|diff SUBJECT V1 V2|mode SUBJECT [MODE]
                                      [--registry URL] [--store DIR] [--json]   # the schema registry

A pipeline file is a Python file that defines a :class:`headwater.Dataflow` at module level (any variable
name). If it defines several, pick one with ``--flow NAME`` (the dataflow's name). Loading the file must not
run the flow: guard ``hw.run(flow)`` with ``if __name__ == "__main__":``. A module-level
:class:`~headwater.CheckpointConfig` (exactly one) makes ``headwater run`` exactly-once and resumable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from headwater.dataflow import Dataflow
from headwater.engine.config import CheckpointConfig
from headwater.errors import HeadwaterError, JobFailedError, PipelineNotFoundError
from headwater.governance import commands as governance_commands
from headwater.governance.schemas import commands as schema_commands
from headwater.observability.registry import registry_dir, running_jobs
from headwater.runner import plan_flow, run


def load_dataflow(path: str | Path, name: str | None = None) -> Dataflow:
    """Import the pipeline file at ``path`` and return its dataflow (the one named ``name`` if given)."""
    return load_pipeline(path, name)[0]


def load_pipeline(path: str | Path, name: str | None = None) -> tuple[Dataflow, CheckpointConfig | None]:
    """Import the pipeline file: its dataflow, and its ``CheckpointConfig`` if it defines exactly one."""
    file = Path(path).resolve()
    if not file.is_file():
        raise PipelineNotFoundError(f"pipeline file {str(path)!r} does not exist")
    module_name = f"headwater_pipeline_{file.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PipelineNotFoundError(f"{file} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.parent))  # let the pipeline import its neighbours
    spec.loader.exec_module(module)
    flows = [v for v in vars(module).values() if isinstance(v, Dataflow)]
    unique = list({id(f): f for f in flows}.values())
    if name is not None:
        unique = [f for f in unique if f.name == name]
    if not unique:
        wanted = f" named {name!r}" if name else ""
        raise PipelineNotFoundError(
            f"{file} defines no Dataflow{wanted} at module level; assign one, e.g. flow = hw.Dataflow('my-flow')"
        )
    if len(unique) > 1:
        names = ", ".join(f.name for f in unique)
        raise PipelineNotFoundError(f"{file} defines several dataflows ({names}); choose one with --flow NAME")
    checkpoints = [v for v in vars(module).values() if isinstance(v, CheckpointConfig)]
    return unique[0], checkpoints[0] if len(checkpoints) == 1 else None


#: commands of this module; any other first argument (``token``, ``grant``, ``--help``, ...) also loads the
#: access commands, whose module imports the query layer (lancedb: ~1.2 s), which ``headwater run`` never needs
_OWN_COMMANDS = ("run", "plan", "graph", "dlq", "local", "serve", "status")


def _parser(with_access: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description="Run and inspect Headwater dataflows.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("run", "run a pipeline file"),
        ("plan", "print the physical plan of a pipeline file"),
        ("graph", "print the logical graph of a pipeline file as Mermaid"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("pipeline", help="path to a Python file defining a Dataflow")
        sub.add_argument("--flow", default=None, help="name of the dataflow, if the file defines several")
        if command in ("run", "plan"):
            sub.add_argument("--parallelism", type=int, default=None)
            sub.add_argument("--executor", choices=["ray", "local"], default="ray")
            sub.add_argument("--store", default=None,
                             help="Headwater's table store for TableSinks without store= (sets $HEADWATER_STORE)")
        if command == "run":
            sub.add_argument("--timeout", type=float, default=None, help="stop gracefully after S seconds")
            sub.add_argument("--progress", dest="progress", action="store_true", default=None,
                             help="live rows/s display (default: on when stderr is a terminal)")
            sub.add_argument("--no-progress", dest="progress", action="store_false")
            sub.add_argument("--checkpoint-dir", default=None,
                             help="checkpoint here (exactly-once; resumes from it); default: the file's CheckpointConfig")
            sub.add_argument("--checkpoint-interval", type=float, default=None, help="seconds between checkpoints")
            sub.add_argument("--no-checkpoint", action="store_true", help="ignore the file's CheckpointConfig")
    dead = commands.add_parser("dlq", help="inspect and replay dead letters").add_subparsers(dest="dlq", required=True)
    listing = dead.add_parser("list", help="count stored dead letters by source step and reason")
    listing.add_argument("dead_letters", help="directory a sink of stream.dead_letters() writes (Parquet)")
    again = dead.add_parser("replay", help="feed stored dead letters through the (fixed) pipeline, exactly once")
    again.add_argument("pipeline", help="path to a Python file defining a Dataflow")
    again.add_argument("--flow", default=None, help="name of the dataflow, if the file defines several")
    again.add_argument("--dead-letters", required=True, help="directory of the stored dead letters (Parquet)")
    again.add_argument("--source", required=True, help="the source step whose dead letters to replay")
    again.add_argument("--checkpoint-dir", default=None,
                       help="the replay's own checkpoints (default: <dead-letters>.replay-<source>)")
    again.add_argument("--parallelism", type=int, default=None)
    again.add_argument("--executor", choices=["ray", "local"], default="ray")
    local = commands.add_parser("local", help="the kept local Ray that runs join (docs/operations.md)")
    local_commands = local.add_subparsers(dest="local", required=True)
    local_commands.add_parser("status", help="whether the kept local Ray runs, where, and how long it has been idle")
    local_commands.add_parser("stop", help="stop the kept local Ray now (jobs connected to it fail)")
    serve = commands.add_parser("serve", help="serve the store's tables over HTTP (Ray Serve; docs/serving.md)")
    serve.add_argument("--store", default=None, help="the store (default: $HEADWATER_STORE, else .headwater/store)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray it starts (default: all)")
    status = commands.add_parser("status", help="list running jobs: steps, parallelism, rates, lag, checkpoints")
    status.add_argument("--json", action="store_true", help="print the jobs as JSON (for scripts)")
    status.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="also list the jobs reporting to this Ray cluster, from any machine "
                             "(default: $RAY_ADDRESS; none: this machine's jobs only)")
    if with_access:
        from headwater.access import commands as access_commands

        access_commands.add_commands(commands)
    governance_commands.add_commands(commands)
    schema_commands.add_commands(commands)
    return parser


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _number(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def _cluster_jobs(address: str) -> list[Any]:
    """The jobs reporting to the Ray cluster at ``address`` (HeadwaterError when it cannot be reached)."""
    import ray

    from headwater.observability.cluster_jobs import cluster_jobs

    try:
        host, _, port = address.rpartition(":")
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()  # Ray itself retries a minute
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - said as what to fix
        raise JobFailedError(f"could not reach the Ray cluster at {address!r} for its jobs: {type(exc).__name__}: "
                             f"{exc} (is it running, and is its token in $RAY_AUTH_TOKEN_PATH?)") from None
    try:
        return cluster_jobs(ray)
    finally:
        ray.shutdown()


def _status(as_json: bool, address: str | None = None) -> int:
    now = time.time()
    directory = registry_dir()
    jobs = running_jobs(directory, now)
    if address:
        seen = {(j.host, j.pid, j.job, j.started_at) for j in jobs}
        jobs += [j for j in _cluster_jobs(address) if (j.host, j.pid, j.job, j.started_at) not in seen]
        jobs.sort(key=lambda j: j.started_at)
    if as_json:
        print(json.dumps({"registry": str(directory) if directory else None, "cluster": address,
                          "jobs": [j.to_json(now) for j in jobs]}, indent=2))
        return 0
    if directory is None and not jobs:
        print("headwater: the job registry is off (HEADWATER_REGISTRY_DIR=off)", file=sys.stderr)
        return 0
    if not jobs:
        where = f"{directory}" + (f" or with the Ray cluster at {address}" if address else "")
        print(f"headwater: no running jobs (none registered in {where}; jobs register while they run, "
              "see docs/operations.md, 'headwater status')")
        return 0
    for job in jobs:
        data = job.to_json(now)
        checkpoint = ("none yet" if job.last_checkpoint_id is None else
                      f"{job.last_checkpoint_id} ({_age(data['last_checkpoint_age_s'])} ago)")
        print(f"{job.job}  pid {job.pid} on {job.host}  {job.executor}  up {_age(data['uptime_s'])}  "
              f"restarts {job.restarts}  last checkpoint {checkpoint}  metrics {job.metrics_url or '-'}")
        print(f"  {'step':<28} {'kind':<12} {'par':>3} {'rows in':>12} {'in/s':>10} {'out/s':>10} "
              f"{'lag rows':>9} {'lag s':>7}  watermark")
        for s in job.steps:
            watermark = "-" if s.watermark_ms is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.watermark_ms / 1000))
            lag_s = "-" if s.lag_seconds is None else f"{s.lag_seconds:.1f}"
            print(f"  {s.step:<28} {s.kind:<12} {s.parallelism:>3} {s.rows_in:>12,} {_number(s.rate_in):>10} "
                  f"{_number(s.rate_out):>10} {_number(s.lag_records):>9} {lag_s:>7}  {watermark}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from headwater.serve import ServeConfig, serve_forever

    serve_forever(ServeConfig(store=args.store, host=args.host, port=args.port), num_cpus=args.num_cpus)
    return 0


def _local(args: argparse.Namespace) -> int:
    from headwater.engine.ray import kept

    if args.local == "status":
        kept.describe(kept.status(), sys.stdout)
        return 0
    state = kept.stop()
    if state is None:
        print("headwater: no kept local Ray was running")
    else:
        print(f"headwater: stopped the kept local Ray at {state.address}")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    from headwater import dlq  # pyarrow.dataset (and pandas): ~0.25 s that `headwater run` does not need

    if args.dlq == "list":
        summary = dlq.summarize(args.dead_letters)
        print(f"{'source step':<24} {'reason':<16} {'count':>10}  first .. last")
        for row in summary.to_pylist():
            print(f"{row['source_step']:<24} {row['reason']:<16} {row['count']:>10,}  {row['first']} .. {row['last']}")
        print(f"{'total':<41} {sum(summary.column('count').to_pylist()):>10,}")
        return 0
    flow, checkpoint = load_pipeline(args.pipeline, args.flow)
    options: dict[str, object] = {"executor": args.executor}
    if args.parallelism is not None:
        options["parallelism"] = args.parallelism
    directory = args.checkpoint_dir or dlq.default_checkpoint_dir(args.dead_letters, args.source)
    print(f"headwater: replaying dead letters of {args.source!r} from {args.dead_letters} "
          f"(checkpoints: {directory})", file=sys.stderr)
    result = dlq.replay(flow, args.source, args.dead_letters, checkpoint_dir=directory,
                        pipeline_checkpoint=checkpoint, **options)
    print(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    own = bool(arguments) and arguments[0] in _OWN_COMMANDS
    args = _parser(with_access=not own).parse_args(arguments)
    try:
        if args.command == "dlq":
            return _dlq(args)
        if args.command in governance_commands.COMMANDS:
            return governance_commands.run_command(args)
        if args.command == schema_commands.COMMAND:
            return schema_commands.run_command(args)
        if args.command not in _OWN_COMMANDS:
            from headwater.access import commands as access_commands

            return access_commands.run_command(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "local":
            return _local(args)
        if args.command == "status":
            return _status(args.json, args.address)
        if getattr(args, "store", None) is not None:  # before the file builds its TableSinks, which resolve it
            os.environ["HEADWATER_STORE"] = os.path.abspath(args.store)
        flow, checkpoint = load_pipeline(args.pipeline, args.flow)
        if args.command == "graph":
            print(flow.to_mermaid())
            return 0
        options = {"executor": args.executor}
        if args.parallelism is not None:
            options["parallelism"] = args.parallelism
        if args.command == "plan":
            print(plan_flow(flow, **options).describe())
            return 0
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        if args.checkpoint_dir is not None:
            checkpoint = CheckpointConfig(dir=args.checkpoint_dir)
        if checkpoint is not None and args.checkpoint_interval is not None:
            checkpoint = replace(checkpoint, interval=timedelta(seconds=args.checkpoint_interval))
        if args.no_checkpoint:
            checkpoint = None
        result = run(flow, timeout=args.timeout, progress=progress, checkpoint=checkpoint, **options)
        print(result)
        return 0
    except HeadwaterError as exc:
        print(f"headwater: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
