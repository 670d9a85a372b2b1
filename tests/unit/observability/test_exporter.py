"""The metrics exporter: what a scrape of a job's endpoint shows (in-process executor), its configuration, its
servers, and how it merges partial answers."""

from __future__ import annotations

import socket
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import headwater as hw
from headwater.engine.checkpoints.coordinator import CheckpointStats
from headwater.engine.config import DEFAULT_METRICS_PORT, RunConfig
from headwater.engine.metrics import StepCounters, SubtaskMetrics
from headwater.errors import ConfigError
from headwater.observability import METRICS, JobSnapshot, MetricsExporter, exported_names
from headwater.observability.collector import families, merge
from headwater.sinks.null import NullSink
from headwater.sources.testing import TestingSource


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` of one scrape."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return sum(v for key, v in samples.get(name, {}).items() if set(labels.items()) <= set(key))


def windowed_flow(name: str) -> hw.Dataflow:
    """Two partitions of timed rows; one row arrives after the watermark passed its window (late)."""
    rows = [{"k": i % 3, "v": i, "ts": 1_000 * i} for i in range(40)]
    late = {"k": 0, "v": -1, "ts": 0}
    flow = hw.Dataflow(name)
    src = flow.source("src", TestingSource(partitions=[rows[:20] + [late], rows[20:]], batch_size=5), event_time="ts")
    src.filter(hw.col("v") >= -5).window(hw.TumblingWindow(seconds=5)).aggregate(step_id="win", n=hw.count()) \
        .sink("out", NullSink())
    return flow


def test_a_scrape_shows_exact_counters_of_an_ended_job() -> None:
    job = hw.start(windowed_flow("exporter_counts"), executor="local", parallelism=2, metrics_port=0,
                   watermark_interval=timedelta(0))
    assert job.metrics_url is not None and job.metrics_url.startswith("http://127.0.0.1:")
    result = job.wait()
    samples = scrape(job.metrics_url)
    j = {"job": "exporter_counts"}
    assert total(samples, "headwater_job_up", **j) == 0  # ended; its final figures stay
    for step_id, counters in result.steps.items():
        assert total(samples, "headwater_records_in_total", step=step_id, **j) == counters.rows_in
        assert total(samples, "headwater_records_out_total", step=step_id, **j) == counters.rows_out
        assert total(samples, "headwater_batches_in_total", step=step_id, **j) == counters.batches_in
    assert total(samples, "headwater_records_out_total", step="src", **j) == 41
    assert total(samples, "headwater_parallelism", **j) == 2
    decisions = samples.get("headwater_autoscale_decisions_total", {})
    assert not [k for k in decisions if dict(k)["job"] == "exporter_counts"], "not autoscaled: no series"
    assert total(samples, "headwater_late_records_total", step="win", **j) == 1 == result.steps["win"].late
    assert total(samples, "headwater_latency_seconds_count", step="out", **j) == result.latency.total > 0
    assert total(samples, "headwater_step_processing_seconds_count", step="win", **j) == result.steps["win"].batches_in
    assert total(samples, "headwater_bytes_in_total", step="win", **j) > 0
    assert "headwater_source_lag_records" not in samples  # ended partitions report no lag: no series
    # a histogram's buckets are cumulative and end in +Inf with the count
    buckets = {dict(k)["le"]: v for k, v in samples["headwater_step_processing_seconds_bucket"].items()
               if dict(k)["step"] == "win" and dict(k)["subtask"] == "0"}
    ordered = sorted(buckets.items(), key=lambda kv: float(kv[0]))
    assert [v for _, v in ordered] == sorted(v for _, v in ordered)
    assert ordered[-1][0] == "+Inf"
    watermarks = [v for k, v in samples["headwater_watermark_seconds"].items() if dict(k)["step"] == "win"]
    # the window's watermark is the smaller of its inputs': partition 0's largest time, 19 000 ms
    assert watermarks and max(watermarks) == pytest.approx(19.0)
    assert {"edge", "step", "subtask", "job"} == {k for k, _ in next(iter(samples["headwater_channel_backlog_messages"]))}


def test_every_exported_family_is_defined_and_the_scrape_names_only_defined_series(tmp_path: Path) -> None:
    job = hw.start(windowed_flow("exporter_names"), executor="local", metrics_port=0,
                   checkpoint=hw.CheckpointConfig(dir=tmp_path / "cp", interval=timedelta(milliseconds=10)))
    job.wait()
    assert job.metrics_url is not None
    names = set(scrape(job.metrics_url))
    known = exported_names() | {n.removesuffix("_total") + "_created" for n in exported_names()}
    assert names <= known, sorted(names - known)
    for required in ("headwater_checkpoints_total", "headwater_checkpoint_duration_seconds_count",
                     "headwater_last_checkpoint_timestamp_seconds", "headwater_checkpoint_size_bytes",
                     "headwater_checkpoint_alignment_seconds_count", "headwater_restarts_total",
                     "headwater_step_info"):
        assert required in names


def test_counters_are_read_while_the_job_runs() -> None:
    rows = [{"v": i} for i in range(10)]
    flow = hw.Dataflow("exporter_live")
    flow.source("src", TestingSource(rows + [TestingSource.PAUSE(1.5)] + rows, batch_size=10)).sink("out", NullSink())
    job = hw.start(flow, executor="local", metrics_port=0)
    assert job.metrics_url is not None
    deadline = time.monotonic() + 10
    while total(scrape(job.metrics_url), "headwater_records_in_total", step="out", job="exporter_live") < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live = scrape(job.metrics_url)
    assert total(live, "headwater_job_up", job="exporter_live") == 1
    assert total(live, "headwater_records_in_total", step="out", job="exporter_live") == 10
    job.wait()
    assert total(scrape(job.metrics_url), "headwater_records_in_total", step="out", job="exporter_live") == 20


def test_no_server_when_metrics_are_off() -> None:
    flow = hw.Dataflow("exporter_off")
    flow.source("src", TestingSource([{"v": 1}])).sink("out", NullSink())
    job = hw.start(flow, executor="local", metrics_port=None)
    job.wait()
    assert job.metrics_url is None


def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_METRICS_PORT", raising=False)
    assert RunConfig().metrics_port == DEFAULT_METRICS_PORT
    assert RunConfig().metrics_host == "127.0.0.1"
    for text, expected in (("0", 0), ("9300", 9300), ("off", None), ("None", None)):
        monkeypatch.setenv("HEADWATER_METRICS_PORT", text)
        assert RunConfig().metrics_port == expected
    monkeypatch.setenv("HEADWATER_METRICS_PORT", "ninety")
    with pytest.raises(ConfigError, match="HEADWATER_METRICS_PORT"):
        RunConfig()
    monkeypatch.delenv("HEADWATER_METRICS_PORT")
    monkeypatch.setenv("HEADWATER_METRICS_HOST", "0.0.0.0")
    assert RunConfig().metrics_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="metrics_port"):
        RunConfig(metrics_port=70_000)


def _taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_configured_port_that_is_taken_fails_and_the_default_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            MetricsExporter().serve("127.0.0.1", port)
        monkeypatch.setattr("headwater.observability.exporter.DEFAULT_METRICS_PORT", port)
        url = MetricsExporter().serve("127.0.0.1", port)
        assert url.startswith("http://127.0.0.1:") and f":{port}/" not in url


def test_a_server_binds_loopback_and_is_shared_by_the_jobs_of_a_process() -> None:
    exporter = MetricsExporter()
    url = exporter.serve("127.0.0.1", 0)
    assert exporter.serve("127.0.0.1", 0) == url
    server = exporter._servers[("127.0.0.1", 0)][0]
    assert server.server_address[0] == "127.0.0.1"  # type: ignore[attr-defined]


def _snapshot(job: str, rows: int, subtasks: tuple[int, ...] = (0, 1)) -> JobSnapshot:
    plan = hw.plan_flow(windowed_flow(job), executor="local", parallelism=2)
    metrics = [SubtaskMetrics(stage_id=0, subtask=i, steps={"src": StepCounters(rows_out=rows)}) for i in subtasks]
    return JobSnapshot(job, plan, metrics, CheckpointStats(completed=2, aborted=1))


def test_two_running_jobs_with_one_name_get_distinct_labels_and_ended_jobs_are_bounded() -> None:
    exporter = MetricsExporter()
    first = exporter.register("same", lambda: _snapshot("same", 1))
    second = exporter.register("same", lambda: _snapshot("same", 2))
    assert (first, second) == ("same", "same#2")
    assert {s.job for s in exporter.snapshots()} == {"same", "same#2"}
    exporter.finish(first)
    exporter.finish(second)
    assert all(not s.running for s in exporter.snapshots())
    for n in range(40):
        label = exporter.register(f"job{n}", lambda: _snapshot("x", 1))
        exporter.snapshots()
        exporter.finish(label)
    assert len(exporter.snapshots()) == 32


def test_a_subtask_that_did_not_answer_keeps_its_previous_figures() -> None:
    merged = merge(_snapshot("j", 5), _snapshot("j", 7, subtasks=(0,)))
    by_subtask = {m.subtask: m.steps["src"].rows_out for m in merged.subtasks}
    assert by_subtask == {0: 7, 1: 5}


def test_a_failing_job_source_keeps_the_last_figures() -> None:
    exporter = MetricsExporter()
    calls = iter([_snapshot("flaky", 3)])

    def snapshot() -> JobSnapshot:
        return next(calls)  # the second call raises StopIteration: the job cannot answer

    exporter.register("flaky", snapshot)
    assert exporter.snapshots()[0].subtasks[0].steps["src"].rows_out == 3
    assert exporter.snapshots()[0].subtasks[0].steps["src"].rows_out == 3


def test_families_carry_the_definitions_labels() -> None:
    by_name = {m.name: m for m in METRICS}
    for family in families([_snapshot("labels", 4)]):
        definition = by_name.get(family.name) or by_name[family.name + "_total"]
        for sample in family.samples:
            assert set(definition.labels) <= set(sample.labels)
            assert set(sample.labels) - set(definition.labels) <= {"le"}
    checkpoints = next(f for f in families([_snapshot("labels", 4)]) if f.name == "headwater_checkpoints")
    assert {s.labels["outcome"]: s.value for s in checkpoints.samples if s.name.endswith("_total")} == \
        {"completed": 2, "aborted": 1, "failed": 0}


def test_each_server_shows_only_the_jobs_registered_for_it() -> None:
    exporter = MetricsExporter()
    first = exporter.serve("127.0.0.1", 0)
    with _taken_port() as taken:  # a second endpoint needs a fixed port (every port-0 job shares one server)
        free = taken.getsockname()[1]
    second = exporter.serve("127.0.0.1", free)
    exporter.register("on_first", lambda: _snapshot("on_first", 1), ("127.0.0.1", 0))
    exporter.register("on_second", lambda: _snapshot("on_second", 1), ("127.0.0.1", free))
    assert {dict(k)["job"] for k in scrape(first)["headwater_job_up"]} == {"on_first"}
    assert {dict(k)["job"] for k in scrape(second)["headwater_job_up"]} == {"on_second"}
    assert {s.job for s in exporter.snapshots()} == {"on_first", "on_second"}


def test_validation_steps_export_their_quality_score_and_rows() -> None:
    flow = hw.Dataflow("exporter_quality")
    rows = [{"price": p} for p in (1, 2, None, 4, None)]
    flow.source("src", TestingSource(rows)).validate(hw.rules.not_null("price"), step_id="checked") \
        .sink("out", NullSink())
    job = hw.start(flow, executor="local", metrics_port=0)
    result = job.wait()
    assert job.metrics_url is not None
    samples = scrape(job.metrics_url)
    j = {"job": "exporter_quality", "step": "checked"}
    assert total(samples, "headwater_quality_score", rule="*", **j) == pytest.approx(0.6)
    assert total(samples, "headwater_quality_score", rule="*", **j) == result.quality_score("checked")
    assert total(samples, "headwater_quality_rows_total", rule="*", outcome="failed", **j) == 2
    assert total(samples, "headwater_quality_rows_total", rule="*", outcome="passed", **j) == 3
