"""Kinesis client settings shared by :class:`~headwater.sources.kinesis.KinesisSource` (and a future Kinesis
sink): region, endpoint, credentials and the retry and timeout policy of the boto3 client.

Invariants:

* Settings are plain, picklable configuration (they travel to Ray actors); a client is built from them with
  :meth:`KinesisClientSettings.client` inside the process that uses it, never pickled, never put into a position.
* Credentials come from the usual boto3 chain (environment, shared config/credentials files and ``profile``,
  container or instance roles) unless given here. Given ones are :class:`pydantic.SecretStr`: masked in ``repr``
  and logs, revealed only inside :meth:`client`. ``aws_access_key_id`` is not a secret by itself but is masked as
  well, so a log never pairs it with anything.
* Throttling (``ProvisionedThroughputExceededException``, ``LimitExceededException``) and connection errors are
  retried by botocore's ``standard`` retry mode with exponential backoff and jitter, up to ``max_attempts``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from headwater.errors import ConfigError


class KinesisClientSettings(BaseModel):
    """How to reach Kinesis.

    ``region``: the AWS region (``"eu-west-1"``). ``endpoint_url``: another endpoint (a local server such as
    moto's, a VPC endpoint), ``http(s)://host[:port]``. ``profile``: a named profile of the shared AWS config.
    ``aws_access_key_id`` + ``aws_secret_access_key`` (+ ``aws_session_token``): explicit credentials, otherwise
    boto3's chain decides. ``max_attempts``: total attempts per call (botocore ``standard`` retries, >= 1).
    ``connect_timeout`` / ``read_timeout``: seconds per HTTP attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    max_attempts: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 10.0

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not value or not value.replace("-", "").isalnum():
            raise ValueError(f"region must be an AWS region name such as 'us-east-1', not {value!r}")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must start with http:// or https://, not {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("max_attempts")
    @classmethod
    def _attempts(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_attempts must be >= 1, not {value}")
        return value

    @field_validator("connect_timeout", "read_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"timeouts must be positive seconds, not {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KinesisClientSettings:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("give both aws_access_key_id and aws_secret_access_key, or neither (boto3's chain)")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("aws_session_token needs aws_access_key_id and aws_secret_access_key")
        if self.profile is not None and self.aws_access_key_id is not None:
            raise ValueError("give profile or explicit keys, not both")
        return self

    @classmethod
    def build(cls, region: str, **settings: Any) -> KinesisClientSettings:
        """Validated settings, or :class:`~headwater.errors.ConfigError` saying what is wrong. Plain ``str``
        credentials are accepted and wrapped into ``SecretStr``."""
        try:
            return cls(region=region, **settings)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ConfigError(f"Kinesis client settings: {exc}") from None

    def client(self) -> Any:
        """A new boto3 Kinesis client (one per thread: boto3 clients are thread-safe, sessions are not)."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            profile_name=self.profile,
            aws_access_key_id=_reveal(self.aws_access_key_id),
            aws_secret_access_key=_reveal(self.aws_secret_access_key),
            aws_session_token=_reveal(self.aws_session_token),
            region_name=self.region,
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            user_agent_extra="headwater",
        )
        return session.client("kinesis", endpoint_url=self.endpoint_url, config=config)

    def describe(self) -> str:
        """For logs and reprs: where, never who."""
        where = self.endpoint_url or f"kinesis.{self.region}"
        auth = "profile " + self.profile if self.profile else ("explicit keys" if self.aws_access_key_id else "boto3 chain")
        return f"{where} (region {self.region}, credentials: {auth})"


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
