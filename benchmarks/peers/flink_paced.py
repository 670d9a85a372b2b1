"""PyFlink 2.3, paced: Flink SQL over a socket source fed on schedule, results back over a socket.

Run with its own venv: ``benchmarks/.venvs/flink/bin/python benchmarks/peers/flink_paced.py --query q1 ...``
(contract and latency definition: ``paced.py``).

Flink's Python API has no user-defined sources, so the pacing happens outside the JVM:

* **Source**: this process listens on a local TCP port; the job reads it with ``socketTextStream`` (Flink's
  socket source, parallelism 1). When the job connects the schedule starts, and a thread sends each due
  slice of rows as ``|``-separated lines (encoded before the schedule starts). ``fromDataStream`` turns the
  lines into a table whose ``date_time`` (``TO_TIMESTAMP_LTZ`` of the integer ms) is the rowtime, with
  ``WATERMARK FOR date_time AS date_time`` (the largest event time seen: the input is in order); a view
  splits the other columns out. The queries are then the SQL of ``flink_runner.py`` (q5: ``HOP`` window
  aggregation, the cascaded max, the window join).
* **Sink**: the result rows are formatted as one string each (``CONCAT_WS``, plus a newline), turned into a
  ``DataStream<String>`` (``toDataStream``) and written with ``writeToSocket`` to a second port of this
  process, where a thread stamps every received chunk with ``time.time()``: the latency includes the socket
  hop back (tens of microseconds on loopback).
* Configuration: parallelism 1, ``execution.buffer-timeout.interval = 20 ms`` and
  ``pipeline.auto-watermark-interval = 20 ms`` (Flink's defaults, 100 ms and 200 ms, are throughput
  settings; 20 ms matches Headwater's output linger and watermark interval). The q5 output is digested and
  checked against the reference.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import paced  # noqa: E402
from flink_runner import SELECTS, VIEWS, _java_home  # noqa: E402

COLUMNS = {"q1": ["auction", "bidder", "price", "date_time", "extra"], "q5": ["auction", "date_time"]}
SQL_TYPES = {"auction": "BIGINT", "bidder": "BIGINT", "price": "BIGINT", "extra": "STRING"}
FLUSH = "20 ms"
OUTPUT_SQL = {
    # one line per result row; q1 keeps date_time as the integer ms it came in as (``dt_ms``)
    "q1": f"""SELECT CONCAT(CONCAT_WS('|', CAST(auction AS STRING), CAST(bidder AS STRING),
                     CAST(CAST(price AS DOUBLE) * {common.Q1_RATE} AS STRING), CAST(dt_ms AS STRING), extra), CHR(10))
              FROM bid""",
    "q5": """SELECT CONCAT(CONCAT_WS('|', CAST(window_start AS STRING), CAST(window_end AS STRING),
                     CAST(auction AS STRING), CAST(num AS STRING)), CHR(10))
             FROM ({select})""",
}


def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def _ms(text: bytes) -> int:
    """'2026-01-01 00:00:10.000' (UTC) -> epoch ms."""
    stamp = datetime.strptime(text.decode(), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def _serve_source(server: socket.socket, lines: list[bytes], releaser: paced.Releaser, errors: list) -> None:
    try:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            paced.release_all(releaser, lambda i, j: conn.sendall(b"".join(lines[i:j])))
            conn.shutdown(socket.SHUT_WR)
    except Exception as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)
    finally:
        server.close()


def _serve_sink(server: socket.socket, query: str, log: paced.LatencyLog, digest: common.Digest | None,
                errors: list) -> None:
    try:
        conn, _ = server.accept()
        rest = b""
        with conn:
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                received = time.time()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if query == "q1":
                    log.record(received, [int(line.split(b"|", 4)[3]) for line in lines])
                else:
                    rows = [line.split(b"|") for line in lines]
                    rows = [(_ms(s), _ms(e), int(a), int(n)) for s, e, a, n in rows]
                    log.record(received, [r[1] for r in rows])
                    assert digest is not None
                    digest.add_all(rows)
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)
    finally:
        server.close()


def run_rate(args: Any, rate: float, events_dir: str) -> dict[str, Any]:
    _java_home()
    os.environ.setdefault("TZ", "UTC")
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.data_stream import DataStream
    from pyflink.java_gateway import get_gateway
    from pyflink.table import DataTypes, Schema, StreamTableEnvironment
    from pyflink.table.types import _to_java_data_type

    names = COLUMNS[args.query]
    table = paced.load_bids(events_dir, names)
    times = paced.event_ms(table)
    cols = [times if n == "date_time" else table.column(n).to_pylist() for n in names]
    lines = [("|".join(map(str, row)) + "\n").encode() for row in zip(*cols)]
    releaser = paced.Releaser(paced.Schedule(rate, times), times, args.max_lag)
    log = paced.LatencyLog()
    digest = common.Digest(args.query) if args.query in common.WINDOWED else None
    errors: list = []
    source, sink = _listener(), _listener()
    threads = [threading.Thread(target=_serve_source, args=(source, lines, releaser, errors), daemon=True),
               threading.Thread(target=_serve_sink, args=(sink, args.query, log, digest, errors), daemon=True)]
    for thread in threads:
        thread.start()

    config = Configuration()
    config.set_string("execution.buffer-timeout.interval", FLUSH)
    config.set_string("pipeline.auto-watermark-interval", FLUSH)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    j_env = env._j_stream_execution_environment
    lines_stream = DataStream(j_env.socketTextStream("127.0.0.1", source.getsockname()[1], "\n", 0))
    dt_index = names.index("date_time")
    schema = (Schema.new_builder().column("f0", DataTypes.STRING())
              .column_by_expression("date_time",
                                    f"TO_TIMESTAMP_LTZ(CAST(SPLIT_INDEX(f0, '|', {dt_index}) AS BIGINT), 3)")
              .watermark("date_time", "date_time").build())
    t_env.create_temporary_view("socket_lines", t_env.from_data_stream(lines_stream, schema))
    fields = [f"CAST(SPLIT_INDEX(f0, '|', {k}) AS {SQL_TYPES[n]}) AS {n}" if SQL_TYPES[n] != "STRING"
              else f"SPLIT_INDEX(f0, '|', {k}) AS {n}" for k, n in enumerate(names) if n != "date_time"]
    fields.append(f"CAST(SPLIT_INDEX(f0, '|', {dt_index}) AS BIGINT) AS dt_ms")
    t_env.execute_sql(f"CREATE TEMPORARY VIEW bid AS SELECT {', '.join(fields)}, date_time FROM socket_lines")
    for view in VIEWS.get(args.query, []):
        t_env.execute_sql(view)
    out_table = t_env.sql_query(OUTPUT_SQL[args.query].format(select=SELECTS.get(args.query, "")))
    gateway = get_gateway()
    j_out = t_env._j_tenv.toDataStream(out_table._j_table, _to_java_data_type(DataTypes.STRING()))
    j_out.writeToSocket("127.0.0.1", sink.getsockname()[1],
                        gateway.jvm.org.apache.flink.api.common.serialization.SimpleStringSchema())
    env.execute(f"paced-{args.query}")
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise SystemExit(f"flink paced runner: {errors[0]!r}")
    out: dict[str, Any] = {"schedule": releaser.schedule, "log": log, **releaser.summary(),
                           "flink_config": {"buffer_timeout": FLUSH, "watermark_interval": FLUSH}}
    if digest is not None:
        out["digest"] = digest
        out["rows_out"] = digest.rows
    return out


def version() -> str:
    from importlib.metadata import version as v

    return v("apache-flink")


if __name__ == "__main__":
    raise SystemExit(paced.main("flink", version, run_rate))
