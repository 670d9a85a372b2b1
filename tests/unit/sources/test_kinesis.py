"""KinesisSource without a server: configuration, secrets, positions (the reading is tested in
tests/integration/test_kinesis.py against a real Kinesis-compatible server)."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pytest

from headwater.clients.kinesis import KinesisClientSettings
from headwater.core import plain_data
from headwater.errors import ConfigError, SourceError
from headwater.sources import KinesisShardPosition, KinesisSource
from headwater.sources.kinesis import METADATA_COLUMNS, retriable_code

SCHEMA = pa.schema([("n", pa.int64())])
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_schema_is_the_decoded_columns_then_the_metadata() -> None:
    source = KinesisSource("clicks", "eu-west-1", schema=SCHEMA)
    assert source.schema().names == ["n", "partition_key", "sequence_number", "arrival_time"]
    assert source.schema().field("arrival_time").type == pa.timestamp("ms", tz="UTC")
    raw = KinesisSource("clicks", "eu-west-1", format="raw")
    assert raw.schema() == pa.schema([pa.field("value", pa.binary())] + list(METADATA_COLUMNS))
    assert source.replayable and not source.bounded
    assert KinesisSource("clicks", "eu-west-1", schema=SCHEMA, bounded=True).bounded


@pytest.mark.parametrize(("options", "message"), [
    ({"stream": "bad name!"}, "stream must be a Kinesis stream name"),
    ({"region": "eu west"}, "region must be an AWS region"),
    ({"schema": None}, "format='json' needs schema"),
    ({"format": "raw"}, "format='raw' yields a 'value' binary column"),
    ({"format": "avro"}, "format must be 'json' or 'raw'"),
    ({"start": "earliest"}, "start must be 'trim_horizon' or 'latest'"),
    ({"schema": pa.schema([("sequence_number", pa.string())])}, "clash with the metadata columns"),
    ({"poll_interval": 0.05}, "poll_interval must be >= 0.2"),
    ({"max_records_per_call": 20_000}, "max_records_per_call must be an int in 1..10000"),
    ({"prefetch": 0}, "prefetch must be an int >= 1"),
    ({"bounded": "yes"}, "bounded must be True or False"),
    ({"endpoint_url": "localhost:4566"}, "endpoint_url must start with http"),
    ({"aws_access_key_id": "AKIA"}, "give both aws_access_key_id and aws_secret_access_key"),
    ({"max_attempts": 0}, "max_attempts must be >= 1"),
])
def test_configuration_is_validated_with_a_hint(options: dict, message: str) -> None:
    arguments = {"stream": "clicks", "region": "eu-west-1", "schema": SCHEMA, **options}
    with pytest.raises(ConfigError, match=message):
        KinesisSource(arguments.pop("stream"), arguments.pop("region"), **arguments)


def test_secrets_are_masked_in_reprs_and_kept_for_the_client() -> None:
    source = KinesisSource("clicks", "eu-west-1", schema=SCHEMA, aws_access_key_id="AKIAEXAMPLE",
                           aws_secret_access_key=SECRET, aws_session_token=SECRET + "-token")
    shown = repr(source) + repr(source.settings) + str(source.settings) + source.settings.describe()
    assert SECRET not in shown and "AKIAEXAMPLE" not in shown
    assert "explicit keys" in repr(source)
    copy = pickle.loads(pickle.dumps(source))  # the source travels to Ray actors
    assert copy.settings.aws_secret_access_key is not None
    assert copy.settings.aws_secret_access_key.get_secret_value() == SECRET
    credentials = copy.settings.client()._request_signer._credentials
    assert credentials.secret_key == SECRET and credentials.token == SECRET + "-token"


def test_settings_build_reports_every_problem_as_config_error() -> None:
    with pytest.raises(ConfigError, match="profile or explicit keys"):
        KinesisClientSettings.build("eu-west-1", profile="dev", aws_access_key_id="a", aws_secret_access_key="b")
    with pytest.raises(ConfigError, match="aws_session_token needs"):
        KinesisClientSettings.build("eu-west-1", aws_session_token="t")


@pytest.mark.parametrize("position", [
    KinesisShardPosition(sequence_number="49590338271490256608559692538361571095921575989136588898"),
    KinesisShardPosition(started_at_ms=1_767_000_000_000),
    KinesisShardPosition(sequence_number="17", shard_ended=True),
])
def test_positions_are_plain_data(position: KinesisShardPosition) -> None:
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(position)))) == position


def test_build_part_checks_the_resume_state_and_starts_latest_at_a_fixed_time() -> None:
    source = KinesisSource("clicks", "eu-west-1", schema=SCHEMA, start="latest")
    with pytest.raises(SourceError, match="must be a KinesisShardPosition"):
        source.build_part("shardId-000000000000", "17")
    part = source.build_part("shardId-000000000000", None)
    assert part.snapshot().started_at_ms is not None and part.snapshot().sequence_number is None
    ended = source.build_part("shardId-000000000000", KinesisShardPosition("9", shard_ended=True))
    with pytest.raises(StopIteration):
        ended.next_batch()
    ended.close()
    part.close()  # never started: nothing to stop


def test_error_codes_are_classified() -> None:
    assert retriable_code("ProvisionedThroughputExceededException") is True
    assert retriable_code("ResourceNotFoundException") is False
    assert retriable_code("SomethingNew") is None
