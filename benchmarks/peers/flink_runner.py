"""PyFlink (``apache-flink`` from PyPI): the Nexmark queries in Flink SQL on a local mini-cluster.

Run with its own venv: ``benchmarks/.venvs/flink/bin/python benchmarks/peers/flink_runner.py --query q5 ...``.

* ``TableEnvironment`` in **streaming** mode, ``parallelism.default = --parallelism``; the mini-cluster runs in
  the JVM that PyFlink starts (a child of this process, so its RSS is counted). No Python UDF: every operator
  runs in the JVM.
* Input: the ``filesystem`` connector with ``format = 'parquet'`` over the materialised files, i.e. the
  ``flink-sql-parquet`` jar from Maven Central plus Hadoop's shaded client jars (``hadoop-client-api`` and
  ``hadoop-client-runtime``; the Parquet format needs ``org.apache.hadoop.conf.Configuration``) and
  ``commons-logging``, all fetched by ``setup_peers.sh`` with ``mvn dependency:copy`` into
  ``benchmarks/.venvs/flink/jars/``. Only the columns a query uses are read (projection push-down).
* Event time: ``WATERMARK FOR date_time AS date_time - INTERVAL 'N' DAY`` with N whole days above the
  event-time span of the input. A reader may read its files in any order, so any smaller bound could drop
  rows as late; with this one no row is late and every window fires once, at the end of the bounded input
  (final results only).
* q5/q7/q8 use window TVFs (``HOP``/``TUMBLE``), window aggregations and window joins: the plans are
  append-only (no retractions), checked with ``EXPLAIN CHANGELOG_MODE`` while writing them.
* q1 computes ``CAST(price AS DOUBLE) * 0.908``: Flink types the literal ``0.908`` as ``DECIMAL``, and the other
  engines compute in binary floating point; with ``DOUBLE`` all engines produce bit-identical results.

Timing: ``startup_s`` is creating the ``TableEnvironment`` (starting the JVM and the Py4J gateway);
``elapsed_s`` is ``INSERT INTO ... .wait()``: planning, starting the mini-cluster, the job.
``engine_runtime_s`` is Flink's own ``JobExecutionResult.getNetRuntime()`` of the job (informative: the
job without planning and the mini-cluster's start). The timed run
inserts into a ``blackhole`` table; the verification run into a ``filesystem`` Parquet table in a temporary
directory that is read back with pyarrow for the digest.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

ROOT = HERE.parents[1]
JARS_DIR = ROOT / "benchmarks" / ".venvs" / "flink" / "jars"

SCHEMAS = {
    "bid": [("auction", "BIGINT"), ("bidder", "BIGINT"), ("price", "BIGINT"), ("channel", "STRING"),
            ("url", "STRING"), ("date_time", "TIMESTAMP(3)"), ("extra", "STRING")],
    "auction": [("id", "BIGINT"), ("item_name", "STRING"), ("description", "STRING"), ("initial_bid", "BIGINT"),
                ("reserve", "BIGINT"), ("date_time", "TIMESTAMP(3)"), ("expires", "TIMESTAMP(3)"),
                ("seller", "BIGINT"), ("category", "BIGINT"), ("extra", "STRING")],
    "person": [("id", "BIGINT"), ("name", "STRING"), ("email_address", "STRING"), ("credit_card", "STRING"),
               ("city", "STRING"), ("state", "STRING"), ("date_time", "TIMESTAMP(3)"), ("extra", "STRING")],
}
SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "str": "STRING", "ts": "TIMESTAMP(3)"}

TUMBLE10 = "INTERVAL '10' SECOND"
VIEWS: dict[str, list[str]] = {
    "q5": [
        f"""CREATE TEMPORARY VIEW q5_counts AS
            SELECT window_start, window_end, window_time, auction, COUNT(*) AS num
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '{common.Q5_SLIDE_MS // 1000}' SECOND,
                           INTERVAL '{common.Q5_SIZE_MS // 1000}' SECOND))
            GROUP BY window_start, window_end, window_time, auction""",
        """CREATE TEMPORARY VIEW q5_max AS
            SELECT window_start, window_end, window_time, MAX(num) AS maxn
            FROM q5_counts GROUP BY window_start, window_end, window_time""",
    ],
    "q7": [
        f"""CREATE TEMPORARY VIEW q7_max AS
            SELECT window_start, window_end, window_time, MAX(price) AS maxprice
            FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), {TUMBLE10}))
            GROUP BY window_start, window_end, window_time""",
    ],
    "q8": [
        f"""CREATE TEMPORARY VIEW q8_persons AS
            SELECT window_start, window_end, window_time, id, name
            FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), {TUMBLE10}))
            GROUP BY window_start, window_end, window_time, id, name""",
        f"""CREATE TEMPORARY VIEW q8_sellers AS
            SELECT window_start, window_end, window_time, seller
            FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), {TUMBLE10}))
            GROUP BY window_start, window_end, window_time, seller""",
    ],
}
SELECTS = {
    "q0": "SELECT auction, bidder, price, channel, url, date_time, extra FROM bid",
    "q1": f"SELECT auction, bidder, CAST(price AS DOUBLE) * {common.Q1_RATE} AS price, date_time, extra FROM bid",
    "q2": f"SELECT auction, price FROM bid WHERE MOD(auction, {common.Q2_MODULUS}) = 0",
    "q5": """SELECT C.window_start, C.window_end, C.auction, C.num
             FROM q5_counts C JOIN q5_max M
             ON C.window_start = M.window_start AND C.window_end = M.window_end AND C.num = M.maxn""",
    "q7": f"""SELECT B.window_start, B.window_end, B.auction, B.bidder, B.price
              FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), {TUMBLE10})) B JOIN q7_max M
              ON B.window_start = M.window_start AND B.window_end = M.window_end AND B.price = M.maxprice""",
    "q8": """SELECT P.window_start, P.id, P.name
             FROM q8_persons P JOIN q8_sellers A
             ON P.id = A.seller AND P.window_start = A.window_start AND P.window_end = A.window_end""",
}


def _java_home() -> None:
    if os.environ.get("JAVA_HOME"):
        return
    for candidate in ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-17-openjdk-arm64"):
        if os.path.isdir(candidate):
            os.environ["JAVA_HOME"] = candidate
            return


def _source_ddl(table: str, path: str, watermark_days: int | None) -> str:
    cols = [f"`{n}` {t}" for n, t in SCHEMAS[table]]
    if watermark_days is not None:
        cols.append(f"WATERMARK FOR date_time AS date_time - INTERVAL '{watermark_days}' DAY")
    return (f"CREATE TABLE {table} ({', '.join(cols)}) WITH ('connector' = 'filesystem', "
            f"'path' = 'file://{path}', 'format' = 'parquet')")


def _sink_ddl(query: str, verify_dir: str | None) -> str:
    cols = ", ".join(f"`{n}` {SQL_TYPES[k]}" for n, k in common.OUTPUT[query])
    if verify_dir is None:
        return f"CREATE TABLE sink ({cols}) WITH ('connector' = 'blackhole')"
    return (f"CREATE TABLE sink ({cols}) WITH ('connector' = 'filesystem', 'path' = 'file://{verify_dir}', "
            "'format' = 'parquet', 'parquet.utc-timezone' = 'true')")


def run(args: Any) -> dict[str, Any]:
    _java_home()
    os.environ.setdefault("TZ", "UTC")
    started = time.perf_counter()
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    startup = time.perf_counter() - started
    config = env.get_config()
    jars = sorted(glob.glob(str(JARS_DIR / "*.jar")))
    if not jars:
        raise SystemExit(f"flink runner: no jars in {JARS_DIR}; run benchmarks/setup_peers.sh")
    config.set("pipeline.jars", ";".join(f"file://{j}" for j in jars))
    config.set("parallelism.default", str(args.parallelism))
    config.set("table.local-time-zone", "UTC")
    config.set("pipeline.name", f"nexmark-{args.query}")

    meta = common.manifest(args.events_dir)
    windowed = args.query in common.WINDOWED
    span_ms = (meta["last_ms"] or 0) - (meta["first_ms"] or 0)
    watermark_days = span_ms // 86_400_000 + 1 if windowed else None
    for table in common.INPUT[args.query]:
        env.execute_sql(_source_ddl(table, common.table_path(args.events_dir, table), watermark_days))
    for view in VIEWS.get(args.query, []):
        env.execute_sql(view)
    verify_dir = tempfile.mkdtemp(prefix="flink-verify-") if args.verify else None
    try:
        env.execute_sql(_sink_ddl(args.query, verify_dir))
        started = time.perf_counter()
        result = env.execute_sql(f"INSERT INTO sink {SELECTS[args.query]}")
        result.wait()
        elapsed = time.perf_counter() - started
        out: dict[str, Any] = {"elapsed_s": elapsed, "startup_s": startup,
                               "flink_mode": "streaming", "input": "filesystem connector, format=parquet"}
        try:  # the job's own run time, without planning, submission and the mini-cluster's start
            client = result.get_job_client()
            if client is not None:
                out["engine_runtime_s"] = client.get_job_execution_result().result().get_net_runtime() / 1000
        except Exception as exc:  # noqa: BLE001 - informative only
            out["engine_runtime_note"] = f"net runtime unavailable: {exc}"[:200]
        if verify_dir is not None:
            import pyarrow.dataset as ds

            digest = common.Digest(args.query, args.dump)
            files = [str(p) for p in Path(verify_dir).rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
            if files:
                digest.add_arrow(ds.dataset(files, format="parquet").to_table())
            out["digest"] = digest
        return out
    finally:
        if verify_dir is not None:
            shutil.rmtree(verify_dir, ignore_errors=True)


def version() -> str:
    from importlib.metadata import version as v

    return v("apache-flink")


if __name__ == "__main__":
    raise SystemExit(common.main("flink", version, run))
