"""The real Prometheus of ``scripts/services.sh`` scrapes a running Ray pipeline: the expected series are there,
and the counters equal the rows the job processed.

The running Prometheus must have loaded ``cluster/prometheus/prometheus.yml`` (``scripts/services.sh start
prometheus`` writes it and reloads a running instance): its ``headwater`` scrape job reads file_sd target files,
and the test writes one naming its job's metrics endpoint (an ephemeral port), removed at the end.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

import headwater as hw
from headwater.sinks.null import NullSink
from headwater.sources.nexmark import NexmarkSource

pytestmark = [pytest.mark.prometheus, pytest.mark.ray, pytest.mark.slow]


def _file_sd_directory(client: httpx.Client, unavailable: Callable[[str], NoReturn]) -> Path:
    """Where the running Prometheus reads the ``headwater`` job's file_sd targets from."""
    flags = client.get("/api/v1/status/flags").json()["data"]
    loaded = yaml.safe_load(client.get("/api/v1/status/config").json()["data"]["yaml"])
    job = next((j for j in loaded.get("scrape_configs", []) if j.get("job_name") == "headwater"), None)
    files = [f for sd in (job or {}).get("file_sd_configs", []) for f in sd.get("files", [])]
    if not files:
        unavailable("the running Prometheus has no file_sd 'headwater' scrape job (it did not load "
                    "cluster/prometheus/prometheus.yml; `scripts/services.sh start prometheus` reloads it)")
    pattern = Path(files[0])
    if not pattern.is_absolute():
        pattern = Path(flags["config.file"]).parent / pattern
    if not pattern.parent.is_dir() or not os.access(pattern.parent, os.W_OK):
        unavailable(f"the file_sd directory {pattern.parent} of the running Prometheus is not writable here")
    return pattern.parent


@pytest.fixture
def scrape(prometheus_url: str, unavailable: Callable[[str], NoReturn]) -> Iterator[Callable[[str], None]]:
    """``scrape(metrics_url)``: make the test Prometheus scrape that endpoint (a file_sd target file) and wait
    until it does; the files are removed at teardown."""
    client = httpx.Client(base_url=prometheus_url, timeout=10)
    directory = _file_sd_directory(client, unavailable)
    written: list[Path] = []

    def add(metrics_url: str) -> None:
        address = urlsplit(metrics_url).netloc
        path = directory / f"headwater-test-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": {"test": "test_prometheus_metrics"}}]))
        tmp.rename(path)  # file_sd reads whole files only
        written.append(path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            targets = client.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]
            if any(t["scrapeUrl"] == metrics_url and t["health"] == "up" for t in targets):
                return
            time.sleep(0.25)
        pytest.fail(f"Prometheus did not scrape {metrics_url} within 60 s (file_sd file {path})")

    yield add
    for path in written:
        path.unlink(missing_ok=True)
    client.close()


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def value(prometheus_url: str, promql: str) -> float:
    result = query(prometheus_url, promql)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


def test_prometheus_scrapes_a_running_pipeline(ray_cluster: Any, prometheus_url: str, scrape: Callable[[str], None],
                                               tmp_path: Path) -> None:
    name = f"prometheus_it_{uuid.uuid4().hex[:8]}"
    flow = hw.Dataflow(name)
    # paced (about 8 s): Prometheus scrapes it several times while it runs
    bids = flow.source("bids", NexmarkSource("bid", events=80_000, rate=10_000, partitions=2, batch_size=2_000),
                       event_time="date_time")
    totals = bids.filter(hw.col("price") > 50).key_by("auction").aggregate(step_id="totals", bids=hw.count())
    totals.sink("out", NullSink())
    job = hw.start(flow, executor="ray", parallelism=2, metrics_port=0,
                   checkpoint=hw.CheckpointConfig(dir=tmp_path / "checkpoints", interval=timedelta(seconds=1)))
    assert job.metrics_url is not None and job.metrics_url.startswith("http://127.0.0.1:")
    scrape(job.metrics_url)
    # this endpoint's series only (the same process may serve other jobs on the default port too)
    selector = f'job="{name}",instance="{urlsplit(job.metrics_url).netloc}"'
    deadline = time.monotonic() + 60
    while not query(prometheus_url, f"headwater_records_out_total{{{selector},step=\"bids\"}} > 0"):
        assert time.monotonic() < deadline, "no scrape saw the job's first rows"
        time.sleep(0.5)
    # while it runs: it is up, and its (paced) source reports lag
    assert value(prometheus_url, f"headwater_job_up{{{selector}}}") == 1
    assert len(query(prometheus_url, f"headwater_source_lag_records{{{selector}}}")) == 2  # one per partition
    result = job.wait()

    # the ended job's exact final figures stay on the endpoint (with job_up 0): wait until Prometheus scraped them
    deadline = time.monotonic() + 30
    while value(prometheus_url, f"headwater_job_up{{{selector}}}") != 0:
        assert time.monotonic() < deadline, "Prometheus did not scrape the job's final figures"
        time.sleep(0.5)
    read = result.rows_out("bids")
    assert read == 73_600  # 46 of every 50 events are bids
    assert value(prometheus_url, f"sum(headwater_records_out_total{{{selector},step=\"bids\"}})") == read
    assert value(prometheus_url, f"sum(headwater_records_in_total{{{selector},step=\"totals\"}})") \
        == result.rows_in("totals")
    assert value(prometheus_url, f"sum(headwater_records_in_total{{{selector},step=\"out\"}})") \
        == result.rows_in("out") > 0
    per_subtask = query(prometheus_url, f"headwater_records_out_total{{{selector},step=\"bids\"}}")
    assert sorted(r["metric"]["subtask"] for r in per_subtask) == ["0", "1"]
    assert value(prometheus_url, f"sum(headwater_latency_seconds_count{{{selector}}})") == result.latency.total
    assert value(prometheus_url, f"sum(headwater_step_processing_seconds_count{{{selector},step=\"totals\"}})") \
        == result.steps["totals"].batches_in
    assert value(prometheus_url, f"sum(headwater_bytes_in_total{{{selector},step=\"totals\"}})") > 0
    assert result.checkpoints is not None
    completed = value(prometheus_url, f"headwater_checkpoints_total{{{selector},outcome=\"completed\"}}")
    assert completed == result.checkpoints.completed >= 1
    assert value(prometheus_url, f"headwater_checkpoint_duration_seconds_count{{{selector}}}") == completed
    assert value(prometheus_url, f"headwater_checkpoint_size_bytes{{{selector}}}") > 0
    assert value(prometheus_url, f"headwater_restarts_total{{{selector}}}") == 0
    # event time: one watermark per subtask of the aggregate, a plausible Unix time
    watermarks = query(prometheus_url, f"headwater_watermark_seconds{{{selector},step=\"totals\"}}")
    assert len(watermarks) == 2 and all(float(r["value"][1]) > 1e9 for r in watermarks)
    backlog = query(prometheus_url, f"headwater_channel_backlog_messages{{{selector}}}")
    assert backlog and all(float(r["value"][1]) >= 0 for r in backlog)
    kinds = {r["metric"]["step"]: r["metric"]["kind"] for r in query(prometheus_url, f"headwater_step_info{{{selector}}}")}
    assert kinds["bids"] == "source" and kinds["out"] == "sink"
