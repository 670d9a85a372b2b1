"""HTTP client settings shared by :class:`~headwater.sources.http.HttpSource` and
:class:`~headwater.sources.webhook.WebhookSource`: base URL, plain headers, a credential, timeouts and the retry
policy, plus the small helpers both need (secrets from the environment or a file, ``Retry-After``, the tenacity
wait that honours it).

Invariants:

* Settings are plain, picklable configuration (they travel to Ray actors); an ``httpx.Client`` is built from
  them with :meth:`HttpClientSettings.client` inside the process that uses it, never pickled, never put into a
  position.
* The credential is a :class:`pydantic.SecretStr` or the *name* of an environment variable or secrets file
  holding it: masked in ``repr``, never in logs, positions, metrics or error messages (those name the setting,
  e.g. ``token_env='GITHUB_TOKEN'``, never the value). A secrets file readable by group or others is refused.
* Credentials are sent only to ``base_url``'s origin, and over plain ``http://`` only to a loopback host unless
  ``allow_insecure_http=True``.
* Retries (5xx, 429, timeouts, connection errors) use tenacity: exponential backoff with jitter, and a 429's or
  503's ``Retry-After`` (seconds or an HTTP date) when the server sends one.
"""

from __future__ import annotations

import os
import stat
import time
from email.utils import parsedate_to_datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator, model_validator

from headwater.errors import ConfigError

#: statuses a wait may cure (retried); every other 4xx is the caller's mistake and fails at once
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: the longest Retry-After honoured; a larger one is capped (and the retry budget still applies)
MAX_RETRY_AFTER_SECONDS = 300.0


def read_secret(*, value: SecretStr | str | None, env: str | None, file: str | Path | None,
                what: str) -> SecretStr | None:
    """The secret given directly, or read from the environment variable ``env`` or the file ``file`` (its
    content with surrounding whitespace stripped). At most one of the three; ``None`` when none is given.

    Raises :class:`ConfigError` naming the *setting* (never the value) when the variable is unset, the file is
    missing, empty, or readable by group or others (``chmod 600`` it)."""
    given = [name for name, v in (("", value), ("_env", env), ("_file", file)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"{what}: give one of {what}, {what}_env or {what}_file, not several")
    if value is not None:
        secret = value if isinstance(value, SecretStr) else SecretStr(str(value))
        if not secret.get_secret_value():
            raise ConfigError(f"{what} is empty")
        return secret
    if env is not None:
        text = os.environ.get(env)
        if not text:
            raise ConfigError(f"{what}_env={env!r}: the environment variable is not set (or empty)")
        return SecretStr(text.strip())
    if file is not None:
        path = Path(file)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"{what}_file={str(path)!r}: cannot read it ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{what}_file={str(path)!r} is accessible by group or others "
                              f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise ConfigError(f"{what}_file={str(path)!r} is empty")
        return SecretStr(text)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds from now (it is either delay-seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER_SECONDS`; ``None`` when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class RetryableHttpError(Exception):
    """A response or transport failure a wait may cure; ``retry_after`` is the server's ``Retry-After``."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class HttpClientSettings(BaseModel):
    """How to reach an HTTP API.

    ``base_url``: ``http(s)://host[:port][/path]``. ``headers``: plain headers sent with every request (no
    secrets: use the credential fields). The credential goes into ``auth_header`` (default ``Authorization``) as
    ``"{auth_scheme} {secret}"`` (``auth_scheme=None``: the bare secret, as for ``X-API-Key``); give it as
    ``token`` (``str`` or ``SecretStr``), ``token_env`` (an environment variable's name) or ``token_file`` (a
    file readable only by its owner). ``connect_timeout`` / ``read_timeout``: seconds per attempt.
    ``initial_backoff`` / ``max_backoff``: the exponential backoff between retries (with jitter of up to
    ``initial_backoff``); ``max_retry_seconds``: how long one request is retried before it fails."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str
    headers: Mapping[str, str] = {}
    auth_header: str = "Authorization"
    auth_scheme: str | None = "Bearer"
    token: SecretStr | None = None
    token_env: str | None = None
    token_file: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_seconds: float = 300.0
    verify_tls: bool = True
    allow_insecure_http: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://host/... or https://host/..., not {value!r}")
        if parts.username or parts.password:
            raise ValueError("url must not hold credentials (user:password@); use token/token_env/token_file")
        if parts.fragment:
            raise ValueError(f"url must not have a #fragment, not {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        secretish = [k for k in value if k.lower() in ("authorization", "proxy-authorization", "cookie", "x-api-key")]
        if secretish:
            raise ValueError(f"headers {secretish} carry credentials: give them as token/token_env/token_file "
                             "(with auth_header=...) so they are masked")
        return dict(value)

    @field_validator("connect_timeout", "read_timeout", "initial_backoff", "max_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"timeouts and backoffs must be positive seconds, not {value}")
        return float(value)

    @field_validator("max_retry_seconds")
    @classmethod
    def _budget(cls, value: float) -> float:
        if not value >= 0:
            raise ValueError(f"max_retry_seconds must be >= 0, not {value}")
        return float(value)

    @model_validator(mode="after")
    def _consistent(self) -> HttpClientSettings:
        given = [n for n in ("token", "token_env", "token_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of token, token_env, token_file, not {' and '.join(given)}")
        parts = urlsplit(self.base_url)
        if given and parts.scheme == "http" and not is_loopback(parts.hostname or "") and not self.allow_insecure_http:
            raise ValueError(f"a credential would travel unencrypted to {parts.hostname}: use https:// (or "
                             "allow_insecure_http=True on a trusted network)")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(f"max_backoff ({self.max_backoff}) must be >= initial_backoff ({self.initial_backoff})")
        return self

    @classmethod
    def build(cls, base_url: str, **settings: Any) -> HttpClientSettings:
        """Validated settings, or :class:`ConfigError` saying what is wrong; also checks now that an
        environment variable or secrets file named for the credential can be read."""
        try:
            made = cls(base_url=base_url, **settings)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                                 for e in exc.errors())
            raise ConfigError(f"HTTP client settings: {problems}") from None
        made.secret()
        return made

    def secret(self) -> SecretStr | None:
        """The credential (read from the environment or file in the calling process)."""
        return read_secret(value=self.token, env=self.token_env, file=self.token_file, what="token")

    def auth_setting(self) -> str:
        """Which setting holds the credential, for error messages (never the value)."""
        if self.token_env is not None:
            return f"token_env={self.token_env!r}"
        if self.token_file is not None:
            return f"token_file={self.token_file!r}"
        if self.token is not None:
            return "token=..."
        return "no credential configured (token, token_env or token_file)"

    def describe(self) -> str:
        """For logs and reprs: where, and the kind of credential, never its value."""
        auth = "none"
        if self.token_env is not None:
            auth = f"{self.auth_header} from env {self.token_env}"
        elif self.token_file is not None:
            auth = f"{self.auth_header} from file {self.token_file}"
        elif self.token is not None:
            auth = f"{self.auth_header} (given)"
        return f"{self.base_url} (auth: {auth})"

    def client(self) -> Any:
        """A new ``httpx.Client`` with the credential header set (one per thread that uses it)."""
        import httpx

        headers = {"User-Agent": "headwater", "Accept": "application/json", **self.headers}
        secret = self.secret()
        if secret is not None:
            value = secret.get_secret_value()
            headers[self.auth_header] = f"{self.auth_scheme} {value}" if self.auth_scheme else value
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        return httpx.Client(headers=headers, timeout=timeout, verify=self.verify_tls, follow_redirects=False)

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` has the scheme, host and port of ``base_url`` (credentials go nowhere else)."""
        a, b = urlsplit(self.base_url), urlsplit(url)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    def retrying(self, *, stop_event: Any, before_sleep: Any = None) -> Any:
        """A tenacity ``Retrying`` for one request: retries :class:`RetryableHttpError` and httpx transport
        errors (timeouts, refused or reset connections) with exponential backoff and jitter, or the server's
        ``Retry-After``, for up to ``max_retry_seconds``; a set ``stop_event`` ends the waits and the retries."""
        import httpx
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_delay,
            stop_when_event_set,
            wait_exponential_jitter,
        )

        return Retrying(
            retry=retry_if_exception_type((RetryableHttpError, httpx.TransportError)),
            wait=_WaitRetryAfter(wait_exponential_jitter(multiplier=self.initial_backoff, max=self.max_backoff,
                                                         jitter=self.initial_backoff)),
            stop=stop_after_delay(self.max_retry_seconds) | stop_when_event_set(stop_event),
            sleep=lambda seconds: stop_event.wait(seconds),
            before_sleep=before_sleep,
            reraise=True,
        )


class _WaitRetryAfter:
    """A tenacity wait: the server's ``Retry-After`` when the failure carried one, else ``fallback``."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: Any) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RetryableHttpError) and error.retry_after is not None:
            return float(error.retry_after)
        return float(self.fallback(retry_state))
