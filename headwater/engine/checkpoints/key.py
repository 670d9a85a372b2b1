"""The per-deployment key that authenticates checkpoint metadata (HMAC-SHA256), kept outside checkpoint dirs.

Where the key comes from (first match wins, see :func:`load_key`):

1. ``$HEADWATER_CHECKPOINT_KEY``: the key as text, hex (``openssl rand -hex 32``) or base64; at least 16 bytes.
2. The key file ``$HEADWATER_CHECKPOINT_KEY_FILE``, default ``~/.headwater/checkpoint.key``: the same text.
   It is created on first use (32 random bytes, hex) with mode 0600 in a 0700 directory; an existing file
   that is group- or world-accessible, or owned by another user, is refused (like ssh refuses such keys).

Invariants: the key never appears in a checkpoint file, a log line, an exception message or a ``repr`` (only
its *key id*, a 16-hex-digit digest that identifies it without revealing it); creating the file is race-free
(two processes creating it at once end up with the same key). Only the driver process loads the key; Ray
workers receive it as an actor argument (the coordinator's worker) and never create one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Mapping

from headwater.engine.private_files import create_private_file
from headwater.errors import ConfigError

log = logging.getLogger("headwater.checkpoint")

ENV_KEY = "HEADWATER_CHECKPOINT_KEY"
ENV_KEY_FILE = "HEADWATER_CHECKPOINT_KEY_FILE"
DEFAULT_KEY_FILE = "~/.headwater/checkpoint.key"
MIN_KEY_BYTES = 16
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


class CheckpointKey:
    """A secret key for checkpoint metadata HMACs (masked when printed)."""

    __slots__ = ("_secret", "source")

    def __init__(self, secret: bytes, source: str) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(
                f"the checkpoint key from {source} has {len(secret)} bytes; it needs at least {MIN_KEY_BYTES} "
                "(create one with: openssl rand -hex 32)"
            )
        self._secret = bytes(secret)
        self.source = source  # where it came from (an environment variable's name or a file path), never the key

    @property
    def key_id(self) -> str:
        """Identifies the key without revealing it (recorded in metadata to tell a key mismatch from tampering)."""
        return hashlib.sha256(b"headwater-checkpoint-key-id\0" + self._secret).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data``, hex."""
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(data), signature)

    def __repr__(self) -> str:
        return f"CheckpointKey(key_id={self.key_id}, source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckpointKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled only to travel inside Ray to the coordinator's worker (see the module docstring).
        return (CheckpointKey, (self._secret, self.source))


def parse_key_text(text: str, source: str) -> CheckpointKey:
    """A key from its text form: hex, else base64 (surrounding whitespace ignored)."""
    text = text.strip()
    if _HEX.match(text):
        return CheckpointKey(bytes.fromhex(text), source)
    try:
        return CheckpointKey(base64.b64decode(text, validate=True), source)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"the checkpoint key in {source} is neither hex nor base64 text (create one with: openssl rand -hex 32)"
        ) from None


def key_file_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_KEY_FILE) or DEFAULT_KEY_FILE).expanduser()


def load_key(environ: Mapping[str, str] | None = None) -> CheckpointKey:
    """The deployment's checkpoint key (see the module docstring); creates the key file on first use."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_KEY)
    if text:
        return parse_key_text(text, f"${ENV_KEY}")
    path = key_file_path(environ)
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _read_key_file(path: Path) -> CheckpointKey:
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read the checkpoint key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"the checkpoint key file {path} is not a regular file")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigError(f"the checkpoint key file {path} belongs to another user (uid {info.st_uid}); "
                          f"use your own key file (${ENV_KEY_FILE}) or set ${ENV_KEY}")
    if info.st_mode & 0o077:
        raise ConfigError(f"the checkpoint key file {path} is accessible by other users (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the checkpoint key file {path}: {exc}") from exc
    return parse_key_text(text, str(path))


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` (:func:`~headwater.engine.private_files.create_private_file`: never a
    partial or world-readable file; if another process created the key first, theirs wins)."""
    if create_private_file(path, secrets.token_hex(32) + "\n"):
        log.info("created the checkpoint key file %s (mode 0600); back it up to restore savepoints elsewhere", path)
