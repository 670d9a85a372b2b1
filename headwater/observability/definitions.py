"""Every metric Headwater exports, defined once: name (as Prometheus shows it), type, help text, labels.

Labels are bounded: ``job`` (the dataflow's name), ``step`` (a step id), ``subtask`` (its index), ``partition``
(a source partition's name), ``edge`` (a channel of the physical plan), ``outcome``, ``kind``, ``name`` (an
operator figure's name). Never a record key or a value from the data.

The collector (:mod:`headwater.observability.collector`) emits exactly these families, and
:func:`exported_names` lists the series names they produce; the Grafana dashboard's test checks every query
against that list. :data:`EXTERNAL` names metrics that other packages export into the same scrape (the alert
rules use them) — Headwater's engine does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from headwater.engine import metrics as engine_metrics

Kind = Literal["counter", "gauge", "histogram"]

STEP = ("job", "step", "subtask")


@dataclass(frozen=True)
class MetricDef:
    """One exported metric. ``name`` is what a query names: counters end in ``_total``, histograms are
    queried through ``<name>_bucket``, ``<name>_sum`` and ``<name>_count``."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]

    @property
    def family(self) -> str:
        """The name prometheus_client's metric families take (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def series(self) -> tuple[str, ...]:
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def _m(name: str, kind: Kind, help: str, labels: tuple[str, ...] = STEP) -> MetricDef:
    return MetricDef(name, kind, help, labels)


RECORDS_IN = _m("headwater_records_in_total", "counter", "Rows handed to the step (0 for a source step).")
RECORDS_OUT = _m("headwater_records_out_total", "counter",
                 "Rows the step produced (a source: rows read; a sink: rows it passed on, usually 0).")
BATCHES_IN = _m("headwater_batches_in_total", "counter", "Arrow batches handed to the step.")
BATCHES_OUT = _m("headwater_batches_out_total", "counter", "Arrow batches the step produced.")
BYTES_IN = _m("headwater_bytes_in_total", "counter", "Arrow bytes (nbytes) of the batches handed to the step.")
BYTES_OUT = _m("headwater_bytes_out_total", "counter", "Arrow bytes (nbytes) of the batches the step produced.")
PROCESSING = _m("headwater_step_processing_seconds", "histogram",
                "Time of one call of the step with one input batch (a source: one read that returned rows).")
LATENCY = _m("headwater_latency_seconds", "histogram",
             "End-to-end latency of rows reaching a sink step: from when a source read them (or, for results a "
             "watermark released, from when the source computed it); one observation per row.")
LAG_RECORDS = _m("headwater_source_lag_records", "gauge",
                 "Records a source partition is behind the head of its system (a paced generator: behind its "
                 "schedule).", ("job", "step", "subtask", "partition"))
LAG_SECONDS = _m("headwater_source_lag_seconds", "gauge",
                 "Seconds a source partition is behind the head of its system (a paced generator: behind its "
                 "schedule).", ("job", "step", "subtask", "partition"))
BACKLOG = _m("headwater_channel_backlog_messages", "gauge",
             "Messages queued at a subtask's input, per input channel (step: the receiving stage's first step).",
             ("job", "step", "subtask", "edge"))
BUFFERED = _m("headwater_channel_buffered_rows", "gauge",
              "Rows waiting in a subtask's output buffer, per output channel (step: the sending stage's last step).",
              ("job", "step", "subtask", "edge"))
WATERMARK = _m("headwater_watermark_seconds", "gauge", "The subtask's event-time watermark (Unix seconds).")
WATERMARK_LAG = _m("headwater_watermark_lag_seconds", "gauge",
                   "Wall-clock time at the scrape minus the subtask's watermark.")
LATE = _m("headwater_late_records_total", "counter",
          "Records too late for every window (to the late side output, or dropped and counted by the operator).")
DEAD_LETTERS = _m("headwater_dead_letters_total", "counter",
                  "Records a source step could not decode or convert (its dead-letter output).")
CHECKPOINT_DURATION = _m("headwater_checkpoint_duration_seconds", "histogram",
                         "Time from a checkpoint's trigger to its completion (metadata written and verified).",
                         ("job",))
CHECKPOINT_SIZE = _m("headwater_checkpoint_size_bytes", "gauge", "Bytes written by the last completed checkpoint.",
                     ("job",))
CHECKPOINT_ALIGNMENT = _m("headwater_checkpoint_alignment_seconds", "histogram",
                          "Time from a checkpoint's first barrier reaching a subtask to its snapshot (step: the "
                          "stage's first step).")
CHECKPOINTS = _m("headwater_checkpoints_total", "counter",
                 "Checkpoints that ended, by outcome: completed, aborted (timed out) or failed (verification).",
                 ("job", "outcome"))
LAST_CHECKPOINT = _m("headwater_last_checkpoint_timestamp_seconds", "gauge",
                     "When the last checkpoint completed (Unix seconds).", ("job",))
RESTARTS = _m("headwater_restarts_total", "counter", "Automatic restarts of the job from a checkpoint.", ("job",))
JOB_UP = _m("headwater_job_up", "gauge", "1 while the job runs, 0 once it ended (its last figures stay).", ("job",))
JOB_START = _m("headwater_job_start_time_seconds", "gauge", "When the job started (Unix seconds).", ("job",))
STEP_INFO = _m("headwater_step_info", "gauge",
               "1 per step, with its kind (source, sink, map, aggregate, window, ...) and stage, for joins in queries.",
               ("job", "step", "kind", "stage"))
OPERATOR_VALUE = _m("headwater_operator_value", "gauge",
                    "A figure the step's operator reports (keys held, open windows, buffered rows, ...).",
                    ("job", "step", "subtask", "name"))

QUALITY_SCORE = _m(engine_metrics.QUALITY_SCORE, "gauge",
                   "Share (0..1) of the rows a validation step checked that passed a rule (rule=\"*\": the whole "
                   "dataset), over the job's subtasks (see docs/governance.md).", ("job", "step", "rule"))
QUALITY_ROWS = _m(engine_metrics.QUALITY_ROWS, "counter",
                  "Rows a validation step checked, by rule and outcome (passed, failed); windows for drift checks.",
                  ("job", "step", "rule", "outcome"))

PARALLELISM = _m("headwater_parallelism", "gauge",
                 "The job's default parallelism now (changes when the autoscaler rescales it).", ("job",))
AUTOSCALE_DECISIONS = _m("headwater_autoscale_decisions_total", "counter",
                         "Rescales the autoscaler decided, by direction (up, down); reasons are in the log.",
                         ("job", "direction"))

METRICS: tuple[MetricDef, ...] = (
    RECORDS_IN, RECORDS_OUT, BATCHES_IN, BATCHES_OUT, BYTES_IN, BYTES_OUT, PROCESSING, LATENCY, LAG_RECORDS,
    LAG_SECONDS, BACKLOG, BUFFERED, WATERMARK, WATERMARK_LAG, LATE, DEAD_LETTERS, CHECKPOINT_DURATION,
    CHECKPOINT_SIZE, CHECKPOINT_ALIGNMENT, CHECKPOINTS, LAST_CHECKPOINT, RESTARTS, JOB_UP, JOB_START, STEP_INFO,
    OPERATOR_VALUE, QUALITY_SCORE, QUALITY_ROWS, PARALLELISM, AUTOSCALE_DECISIONS,
)

#: exported into the same scrape by other packages, not by the engine (none yet)
EXTERNAL: tuple[MetricDef, ...] = ()


def exported_names() -> frozenset[str]:
    """Every series name the engine's exporter can produce."""
    return frozenset(name for m in METRICS for name in m.series())
