"""Traces of sampled batches (headwater.engine.tracing): the span chain of one batch from its source through
operators and a channel to the sink's commit, on both executors, with the in-memory exporter."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import headwater as hw
from headwater.engine import tracing
from headwater.engine.config import RunConfig
from headwater.engine.tracing import SpanRecord
from headwater.errors import ConfigError
from headwater.sinks.testing import TestingSink
from headwater.sources.testing import TestingSource
from tests.conftest import Runner

pytestmark = pytest.mark.tracing


def flow(name: str, sink: TestingSink) -> hw.Dataflow:
    """Two partitions -> filter (fused into the source) -> hash edge -> aggregate -> sink (fused)."""
    rows = [{"k": i % 4, "v": i} for i in range(40)]
    f = hw.Dataflow(name)
    src = f.source("src", TestingSource(partitions=[rows[:20], rows[20:]], batch_size=10))
    src.filter(hw.col("v") >= 0, step_id="positive").key_by("k").aggregate(step_id="sums", s=hw.sum("v")) \
        .sink("out", sink)
    return f


ATTRIBUTES = {tracing.JOB, tracing.STEP, tracing.SUBTASK, tracing.CHECKPOINT, tracing.ROWS, tracing.EDGE,
              tracing.RECEIVER, tracing.PARTITION}


def chain(spans: list[SpanRecord], leaf: SpanRecord) -> list[SpanRecord]:
    """``leaf`` and its ancestors, root first (every parent must be among ``spans``)."""
    by_id = {s.span_id: s for s in spans}
    out = [leaf]
    while out[-1].parent_span_id is not None:
        parent = by_id.get(out[-1].parent_span_id)
        assert parent is not None, f"span {out[-1].name} has a parent that was not recorded"
        assert parent.trace_id == leaf.trace_id
        out.append(parent)
    return out[::-1]


def job_spans(job: str) -> list[SpanRecord]:
    return [s for s in tracing.finished_spans() if s.attributes.get(tracing.JOB) == job]


def test_one_batch_has_a_span_chain_from_source_to_sink_commit(runner: Runner) -> None:
    job = f"traced_{runner.__name__}"
    sink = TestingSink()
    # linger 0: every batch is sent on its own (a buffer concatenating traced batches carries only the first's trace)
    runner(flow(job, sink), parallelism=2, trace_exporter="memory", trace_sample=1.0, metrics_port=None,
           linger=timedelta(0))
    spans = job_spans(job)
    commits = [s for s in spans if s.name == tracing.SINK_COMMIT_SPAN]
    sources = [s for s in spans if s.name == tracing.SOURCE_SPAN]
    assert len(sources) == 4  # 40 rows in batches of 10, every one sampled
    assert commits
    for commit in commits:
        names = [(s.name, s.attributes[tracing.STEP]) for s in chain(spans, commit)]
        assert names == [
            (tracing.SOURCE_SPAN, "src"), (tracing.PROCESS_SPAN, "positive"), (tracing.CHANNEL_SPAN, "positive"),
            (tracing.PROCESS_SPAN, "sums"), (tracing.SINK_WRITE_SPAN, "out"), (tracing.SINK_COMMIT_SPAN, "out"),
        ]
        for s in chain(spans, commit):
            assert s.attributes[tracing.SUBTASK] in (0, 1)
            assert s.attributes[tracing.CHECKPOINT] == 1  # no checkpointing: everything belongs to the final one
            assert s.start_ns <= s.end_ns
            assert set(s.attributes) <= ATTRIBUTES  # ids and counts, never a record's values
    # each source batch reached a sink: all four roots have a commit in their trace
    assert {c.trace_id for c in commits} == {s.trace_id for s in sources}


def test_checkpoint_ids_follow_the_barriers(tmp_path: Path) -> None:
    """A batch belongs to the checkpoint after the last barrier its subtask passed; its commit comes when that
    checkpoint completes, labelled with it."""
    items: list[object] = []
    for i in range(200):
        items.append({"k": i % 4, "v": i})
        if i % 20 == 19:
            items.append(TestingSource.PAUSE(0.06))  # checkpoints (every 50 ms) fall between the batches
    f = hw.Dataflow("traced_checkpoints")
    src = f.source("src", TestingSource(partitions=[items], batch_size=10))
    src.key_by("k").aggregate(step_id="sums", s=hw.sum("v")).sink("out", TestingSink())
    hw.run(f, executor="local", trace_exporter="memory", trace_sample=1.0, metrics_port=None,
           checkpoint=hw.CheckpointConfig(dir=tmp_path, interval=timedelta(milliseconds=50)))
    spans = job_spans("traced_checkpoints")
    commits = [s for s in spans if s.name == tracing.SINK_COMMIT_SPAN]
    assert len({c.attributes[tracing.CHECKPOINT] for c in commits}) > 1
    for commit in commits:
        ids = [s.attributes[tracing.CHECKPOINT] for s in chain(spans, commit)]
        assert ids[-1] == ids[-2]  # committed with the checkpoint its write was prepared in
        assert ids == sorted(ids)  # a batch never moves back to an earlier checkpoint


def test_unsampled_batches_create_no_spans() -> None:
    sink = TestingSink()
    hw.run(flow("untraced", sink), executor="local", trace_exporter="memory", trace_sample=0.0, metrics_port=None)
    assert job_spans("untraced") == []
    hw.run(flow("untraced_none", TestingSink()), executor="local", trace_exporter="none", trace_sample=1.0,
           metrics_port=None)
    assert job_spans("untraced_none") == []


def test_sampling_share_is_a_share_of_batches() -> None:
    rows = [{"k": i % 4, "v": i} for i in range(4_000)]
    f = hw.Dataflow("traced_share")
    f.source("src", TestingSource(partitions=[rows], batch_size=10)).sink("out", TestingSink())
    hw.run(f, executor="local", trace_exporter="memory", trace_sample=0.1, metrics_port=None)
    roots = [s for s in job_spans("traced_share") if s.name == tracing.SOURCE_SPAN]
    assert 20 <= len(roots) <= 70  # 400 batches at 10 %: 40 expected, far outside this in < 1e-6 of runs


def test_configuration_errors_name_what_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="trace_sample"):
        RunConfig(trace_sample=1.5)
    with pytest.raises(ConfigError, match="trace_exporter must be one of"):
        RunConfig(trace_exporter="jaeger")  # type: ignore[arg-type]
    if not tracing.otlp_exporter_installed():
        with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp"):
            RunConfig(trace_exporter="otlp")
    monkeypatch.setenv("HEADWATER_TRACE_SAMPLE", "often")
    with pytest.raises(ConfigError, match="HEADWATER_TRACE_SAMPLE"):
        RunConfig()
    monkeypatch.setenv("HEADWATER_TRACE_SAMPLE", "0.5")
    monkeypatch.setenv("HEADWATER_TRACE_EXPORTER", "console")
    assert (RunConfig().trace_sample, RunConfig().trace_exporter) == (0.5, "console")


def test_traceparent_round_trips_in_w3c_form() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags

    context = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))
    text = tracing.traceparent(context)
    assert text == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parsed = tracing.parse_traceparent(text)
    assert (parsed.trace_id, parsed.span_id, parsed.is_remote) == (context.trace_id, context.span_id, True)
    with pytest.raises(ValueError):
        tracing.parse_traceparent("01-xyz")
