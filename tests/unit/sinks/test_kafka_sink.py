"""KafkaSink without a broker: configuration errors, staging per owner, tokens as plain data, abort and clean-up.
What needs the broker (commits, markers, fencing, faults) is in tests/integration/test_kafka_sink.py."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from headwater.core import plain_data
from headwater.errors import ConfigError, SinkError
from headwater.sinks import KafkaCommitToken, KafkaSink, SinkOwner

BOOTSTRAP = "127.0.0.1:1"  # nothing listens: none of these tests talks to a broker


def batch(n: int, start: int = 0) -> pa.RecordBatch:
    return pa.record_batch({"id": list(range(start, start + n)), "name": [f"n{i}" for i in range(start, start + n)]})


def bound(tmp_path: Path, **options: object) -> KafkaSink:
    return KafkaSink(BOOTSTRAP, "orders", key="id", **options).staging_as(  # type: ignore[arg-type]
        SinkOwner("job-0123456789abcdef", str(tmp_path / "ckpt")))


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="format must be"):
        KafkaSink(BOOTSTRAP, "t", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs avro_schema"):
        KafkaSink(BOOTSTRAP, "t", format="avro")
    with pytest.raises(ConfigError, match="topic must be a non-empty string"):
        KafkaSink(BOOTSTRAP, "")
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        KafkaSink("nohost", "t")
    with pytest.raises(ConfigError, match="max_record_bytes"):
        KafkaSink(BOOTSTRAP, "t", max_record_bytes=0)
    with pytest.raises(ConfigError, match="may not set transactional.id"):
        KafkaSink(BOOTSTRAP, "t", options={"transactional.id": "x"})
    sink = KafkaSink(BOOTSTRAP, "t", key="missing")
    with pytest.raises(ConfigError, match="key column 'missing' is not in the input"):
        sink.check_schema(batch(1).schema)


def test_secrets_stay_out_of_repr_and_pickles_stay_plain(tmp_path: Path) -> None:
    sink = KafkaSink(BOOTSTRAP, "t", security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                     sasl_password="s3cr3t-value")
    assert "s3cr3t" not in repr(sink) and "s3cr3t" not in repr(sink.settings)
    assert pickle.loads(pickle.dumps(sink)).topic == "t"


def test_prepare_stages_encoded_records_durably_and_the_token_is_plain_data(tmp_path: Path) -> None:
    sink = bound(tmp_path)
    part = sink.build_part(1, 2)
    part.write(batch(3))
    part.write(batch(2, start=3))
    token = part.prepare(7)
    part.close()
    assert token.records == 5 and token.checkpoint_id == 7 and token.subtask == 1
    assert token.sink_id == "job-0123456789abcdef:orders"
    assert token.staged.startswith(str(tmp_path / "ckpt" / "_kafka_sinks" / "job-0123456789abcdef" / "orders"))
    assert os.path.basename(token.staged) == f"prepared-000007-0001-{token.writer}.arrow"
    with open(token.staged, "rb") as f:
        table = ipc.open_stream(f).read_all()
    assert table.column("key").to_pylist() == [str(i).encode() for i in range(5)]
    assert [json.loads(v) for v in table.column("value").to_pylist()] == batch(5).to_pylist()
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(token)))) == token


def test_a_prepare_without_rows_gives_an_empty_token_whose_commit_needs_no_broker(tmp_path: Path) -> None:
    part = bound(tmp_path).build_part(0, 1)
    token = part.prepare(1)
    assert token.records == 0 and token.staged == ""
    part.commit(token)  # nothing to produce: no client is made (the bootstrap address is unreachable)
    part.close()


def test_abort_deletes_in_progress_files_of_any_writer_and_keeps_prepared_ones(tmp_path: Path) -> None:
    sink = bound(tmp_path)
    first = sink.build_part(0, 1)
    first.write(batch(2))
    prepared = first.prepare(1)
    first.write(batch(2))  # in progress, then the subtask "crashes"
    first.close()
    other = sink.build_part(1, 2)
    other.write(batch(1))
    other.close()
    area = sink.staging_area()
    assert sum(n.startswith("inprogress-") for n in area.names()) == 2
    sink.build_part(0, 1).abort()  # a later incarnation of subtask 0
    names = area.names()
    assert os.path.basename(prepared.staged) in names
    assert [n for n in names if n.startswith("inprogress-")] == [n for n in names if n.startswith("inprogress-0001-")]


def test_clean_up_keeps_only_what_tokens_name_and_never_another_jobs_area(tmp_path: Path) -> None:
    staging = str(tmp_path / "staging")
    mine = KafkaSink(BOOTSTRAP, "orders", staging_dir=staging).staging_as(SinkOwner("job-aaaa", "/c/a"))
    theirs = KafkaSink(BOOTSTRAP, "orders", staging_dir=staging).staging_as(SinkOwner("job-bbbb", "/c/b"))
    unchecked = KafkaSink(BOOTSTRAP, "orders", staging_dir=staging)
    tokens = []
    for sink in (mine, mine, theirs, unchecked):
        part = sink.build_part(0, 1)
        part.write(batch(1))
        tokens.append(part.prepare(len(tokens) + 1))
        part.close()
    assert mine.owned_locations() == (staging,)
    mine.clean_up([tokens[1]])
    assert not os.path.exists(tokens[0].staged)  # prepared by this job, named by no token of the restored checkpoint
    assert os.path.exists(tokens[1].staged)
    assert os.path.exists(tokens[2].staged)  # another checkpointed job's: it commits it when it resumes
    assert not os.path.exists(tokens[3].staged)  # a run without checkpointing: ended, nothing can commit it


def test_records_over_the_limit_fail_with_the_limit_named(tmp_path: Path) -> None:
    part = bound(tmp_path, max_record_bytes=100).build_part(0, 1)
    part.write(pa.record_batch({"id": [1], "name": ["x" * 10]}))
    with pytest.raises(SinkError, match=r"record of 1\d\d bytes .* exceeds the limit of 100 bytes") as info:
        part.write(pa.record_batch({"id": [1, 2], "name": ["x", "y" * 100]}))
    assert info.value.transient is False
    part.close()


def test_values_that_do_not_encode_are_a_deterministic_sink_error(tmp_path: Path) -> None:
    avro = {"type": "record", "name": "S", "fields": [{"name": "id", "type": "string"}]}
    sink = KafkaSink(BOOTSTRAP, "t", format="avro", avro_schema=avro).staging_as(SinkOwner("job-x", str(tmp_path)))
    part = sink.build_part(0, 1)
    with pytest.raises(SinkError, match="cannot encode a batch") as info:
        part.write(pa.record_batch({"id": pa.array(["a", None])}))  # null, and the field is not nullable
    assert info.value.transient is False
    part.close()


def test_tokens_register_as_plain_data() -> None:
    token = KafkaCommitToken("job-x:t", 0, 3, "w" * 16, "t", "/s/prepared.arrow", 10)
    assert plain_data.registered_name(KafkaCommitToken) == "headwater.KafkaCommitToken"
    assert plain_data.decode(plain_data.encode(token)) == token
