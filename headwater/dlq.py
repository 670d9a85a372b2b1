"""Dead-letter queues: inspect stored dead letters and replay them into a fixed pipeline, exactly once.

    headwater dlq list DIR                                           counts by source step and reason
    headwater dlq replay PIPELINE --dead-letters DIR --source STEP   [--checkpoint-dir CKPT] [--executor ...]

A pipeline that sinks ``stream.dead_letters()`` as Parquet (``.sink("dlq", ParquetSink(DIR))``) keeps every record
its source could not convert. After fixing the pipeline (a schema, a decoder option), :func:`replay` runs it once
more as a bounded job whose source step ``STEP`` reads the dead letters of that step from ``DIR``
(:class:`~headwater.sources.dead_letters.DeadLetterReplaySource`) instead of its system; everything downstream —
transformations, sinks, the dead-letter sink itself — is the pipeline's own.

Exactly once: the replay checkpoints into its own directory (default ``<DIR>.replay-<STEP>``, never the pipeline's
own checkpoint directory, whose positions and state belong to the live job), so a crashed replay resumes and a
repeated replay skips what was replayed. State starts empty: keyed aggregates in the pipeline see only the
replayed records (their results are upserts/additions of those records, not merged with the live job's state).
Run a replay while the pipeline itself is stopped when they share sink directories (a sink directory is leased
to one run at a time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from headwater.core.dead_letters import DEAD_LETTER_SCHEMA
from headwater.dataflow import Dataflow
from headwater.engine.config import CheckpointConfig
from headwater.engine.job import JobResult
from headwater.errors import DeadLetterReplayError
from headwater.governance.job import governance_store
from headwater.logical import SourceStep
from headwater.runner import make_config, run
from headwater.sources.dead_letters import DeadLetterReplaySource
from headwater.store.audit import AuditLog


def default_checkpoint_dir(dead_letters: str | os.PathLike[str], source_step: str) -> str:
    """Where a replay of ``source_step``'s dead letters in ``dead_letters`` keeps its checkpoints by default."""
    return f"{os.path.abspath(os.fspath(dead_letters)).rstrip(os.sep)}.replay-{source_step}"


def replay(
    flow: Dataflow, source_step: str, dead_letters: str | os.PathLike[str], *,
    checkpoint_dir: str | os.PathLike[str] | None = None, pipeline_checkpoint: CheckpointConfig | None = None,
    **options: Any,
) -> JobResult:
    """Replay the dead letters of ``source_step`` stored under ``dead_letters`` through ``flow`` (see the module
    docstring). ``options`` are run options (``executor``, ``parallelism``, ...)."""
    step = flow.steps.get(source_step)
    if not isinstance(step, SourceStep):
        sources = [s for s, v in flow.steps.items() if isinstance(v, SourceStep)]
        raise DeadLetterReplayError(f"dataflow {flow.name!r} has no source step {source_step!r} "
                                    f"(its sources: {', '.join(sources) or 'none'})")
    directory = checkpoint_dir if checkpoint_dir is not None else default_checkpoint_dir(dead_letters, source_step)
    if pipeline_checkpoint is not None and _same_dir(pipeline_checkpoint.dir, directory):
        raise DeadLetterReplayError(
            f"the replay's checkpoint directory {str(directory)!r} is the pipeline's own: a replay must not restore "
            "the live job's positions and state; choose another --checkpoint-dir"
        )
    replaying = flow.with_source(source_step, DeadLetterReplaySource(step.source, source_step, dead_letters))
    audit = AuditLog(governance_store(replaying, make_config(None, dict(options))))
    base = {"job": flow.name, "source": source_step, "dead_letters": os.path.abspath(dead_letters),
            "checkpoint_dir": os.path.abspath(directory)}
    audit.append("dlq_replay", status="started", **base)
    try:
        result = run(replaying, checkpoint=CheckpointConfig(dir=os.fspath(directory)), **options)
    except BaseException as exc:
        audit.append("dlq_replay", status="failed", error=f"{type(exc).__name__}: {exc}", **base)
        raise
    audit.append("dlq_replay", status="completed", rows=result.rows_out(source_step), **base)
    return result


def summarize(dead_letters: str | os.PathLike[str]) -> pa.Table:
    """Counts of the stored dead letters under ``dead_letters`` by ``source_step`` and ``reason``, with the oldest
    and newest ``dead_lettered_at``."""
    path = os.fspath(dead_letters)
    if not os.path.isdir(path):
        raise DeadLetterReplayError(f"dead-letter directory {path!r} does not exist")
    dataset = ds.dataset(path, format="parquet", ignore_prefixes=["_", "."])
    missing = [n for n in ("source_step", "reason", "dead_lettered_at") if n not in dataset.schema.names]
    if missing:
        raise DeadLetterReplayError(f"{path!r} does not hold dead letters (no {', '.join(missing)} column)")
    table = dataset.to_table(columns=["source_step", "reason", "dead_lettered_at"])
    if table.num_rows == 0:
        return pa.table({"source_step": pa.array([], pa.string()), "reason": pa.array([], pa.string()),
                         "count": pa.array([], pa.int64()),
                         "first": pa.array([], DEAD_LETTER_SCHEMA.field("dead_lettered_at").type),
                         "last": pa.array([], DEAD_LETTER_SCHEMA.field("dead_lettered_at").type)})
    grouped = table.group_by(["source_step", "reason"]).aggregate(
        [("reason", "count"), ("dead_lettered_at", "min"), ("dead_lettered_at", "max")])
    summary = pa.table({
        "source_step": grouped["source_step"], "reason": grouped["reason"], "count": grouped["reason_count"],
        "first": grouped["dead_lettered_at_min"], "last": grouped["dead_lettered_at_max"],
    })
    return summary.sort_by([("source_step", "ascending"), ("reason", "ascending")])


def _same_dir(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    if "://" in os.fspath(a) or "://" in os.fspath(b):
        return os.fspath(a).rstrip("/") == os.fspath(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()
