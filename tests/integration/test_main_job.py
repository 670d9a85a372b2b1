"""The main job end to end: streaming vs backfill equivalence, the CLI, and the benchmark harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import headwater as hw
from headwater.cli import load_dataflow, main
from headwater.errors import PipelineNotFoundError
from headwater.sinks import ParquetSink
from headwater.sources import NexmarkSource, ParquetSource

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from auction_analytics import build  # noqa: E402
from auction_report import _latest  # noqa: E402

EVENTS = 120_000


def _results(output: Path) -> tuple[list[dict], list[dict]]:
    auctions = _latest(ds.dataset(output / "auction_stats", format="parquet").to_table(), ["auction"])
    channels = _latest(ds.dataset(output / "channel_stats", format="parquet").to_table(), ["channel", "price_band"])
    auctions = sorted(auctions.drop_columns([]).to_pylist(), key=lambda r: r["auction"])
    channels = sorted(channels.to_pylist(), key=lambda r: (r["channel"], r["price_band"]))
    return auctions, channels


@pytest.mark.ray
def test_backfill_over_parquet_equals_streaming_run(ray_cluster, tmp_path: Path) -> None:
    # A "day" of bids stored as Parquet by a pipeline (the kind of files a nightly batch job reads).
    archive = hw.Dataflow("archive")
    archive.source("bids", NexmarkSource("bid", events=EVENTS, partitions=2, batch_size=8_192)).sink(
        "store", ParquetSink(tmp_path / "bids")
    )
    hw.run(archive, executor="local", parallelism=2)

    streaming = build(NexmarkSource("bid", events=EVENTS, partitions=2, batch_size=8_192), tmp_path / "stream")
    backfill = build(ParquetSource(tmp_path / "bids", batch_size=5_000), tmp_path / "backfill", name="backfill")
    stream_result = hw.run(streaming, parallelism=2, batch_size=4_096)
    backfill_result = hw.run(backfill, parallelism=2, batch_size=10_000)

    assert stream_result.rows_out("bids") == backfill_result.rows_out("bids") > 100_000
    stream_auctions, stream_channels = _results(tmp_path / "stream")
    backfill_auctions, backfill_channels = _results(tmp_path / "backfill")
    assert len(stream_auctions) > 1_000
    for got, want in zip(backfill_auctions, stream_auctions, strict=True):
        assert (got["auction"], got["bids"], got["top_bid_eur"], got["last_bid_at"]) == (
            want["auction"], want["bids"], want["top_bid_eur"], want["last_bid_at"])
        assert got["volume_eur"] == pytest.approx(want["volume_eur"], rel=1e-9)
    for got, want in zip(backfill_channels, stream_channels, strict=True):
        assert (got["channel"], got["price_band"], got["bids"]) == (want["channel"], want["price_band"], want["bids"])
        assert got["mean_price_eur"] == pytest.approx(want["mean_price_eur"], rel=1e-9)


def test_cli_plan_graph_and_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HEADWATER_EVENTS", "20000")
    monkeypatch.setenv("HEADWATER_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("HEADWATER_CHECKPOINTS", str(tmp_path / "checkpoints"))
    example = str(ROOT / "examples" / "auction_analytics.py")

    assert main(["plan", example, "--parallelism", "2"]) == 0
    plan_text = capsys.readouterr().out
    assert "stage 0 x2: bids -> valid_bids -> enriched" in plan_text
    assert "TumblingWindow(60000 ms) by channel" in plan_text
    assert "[hash by (auction)] columns (auction, price_eur, date_time)" in plan_text

    assert main(["graph", example]) == 0
    assert capsys.readouterr().out.startswith("flowchart LR")

    assert main(["run", example, "--executor", "local", "--no-progress"]) == 0
    assert "auction_stats" in capsys.readouterr().out
    auctions, _ = _results(tmp_path / "out")
    assert sum(r["bids"] for r in auctions) == 18_400  # 46 of every 50 events are bids
    assert (tmp_path / "checkpoints").is_dir()  # the file's CheckpointConfig made the run exactly-once

    # Running again with the same checkpoint directory resumes after the finished run: nothing new is written.
    assert main(["run", example, "--executor", "local", "--no-progress"]) == 0
    auctions_again, _ = _results(tmp_path / "out")
    assert sum(r["bids"] for r in auctions_again) == 18_400


def test_cli_reports_a_file_without_dataflow(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "nothing.py"
    empty.write_text("x = 1\n")
    assert main(["run", str(empty)]) == 2
    assert "defines no Dataflow" in capsys.readouterr().err
    with pytest.raises(PipelineNotFoundError, match="does not exist"):
        load_dataflow(tmp_path / "missing.py")


@pytest.mark.ray
def test_benchmark_harness_prints_one_json_line(ray_cluster) -> None:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "nexmark.py"), "--query", "q2", "--events", "200000",
         "--parallelism", "2", "--json", "--reference"],
        capture_output=True, text=True, env=env, timeout=240, check=True,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, completed.stdout
    report = json.loads(lines[0])
    assert report["query"] == "q2" and report["parallelism"] == 2 and report["events"] == 200_000
    assert report["events_per_second"] > 0 and report["peak_rss_mb"] > 0
    assert report["reference_events_per_second"] > 0


@pytest.mark.serve
@pytest.mark.http
def test_the_demo_serves_the_main_jobs_tables_over_http_and_ends(tmp_path: Path) -> None:
    """`make demo`'s last step: its own Ray and Serve app, one SQL query and one feature look-up over HTTP,
    the answers printed, the run's token revoked, and the process ends by itself."""
    import socket

    from headwater.access.tokens import TokenStore

    store = tmp_path / "store"
    flow = build(NexmarkSource("bid", events=20_000, partitions=2, batch_size=4_096), tmp_path / "out", store=store)
    hw.run(flow, executor="local", parallelism=2)
    auctions, _ = _results(tmp_path / "out")
    top = max(auctions, key=lambda r: (r["bids"], -r["auction"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HEADWATER_SERVE_PORT": str(port), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "auction_query.py"), str(store)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert f"at http://127.0.0.1:{port}" in printed and "POST /sql" in printed
    assert f"GET /features/auction_stats/{top['auction']}" in printed, printed
    feature = json.loads(printed[printed.index("{", printed.index("GET /features")):])
    assert feature["row"]["auction"] == top["auction"] and feature["row"]["bids"] == top["bids"]
    assert TokenStore(str(store)).records() == [], "the demo's token was revoked"
