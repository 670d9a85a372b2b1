"""API tokens: created once, shown once, stored as a SHA-256 digest, mapped to a role.

A token is ``hw_<id>_<secret>``: ``<id>`` (8 hex) names it in listings and the audit log, ``<secret>`` is 32
random bytes (``secrets.token_urlsafe``). ``<store>/access/tokens.json`` keeps only ``sha256(token)``, so a
copy of the file gives no usable token; because the token has 256 bits of entropy a fast hash is enough (a
slow password hash such as scrypt protects *low*-entropy secrets). Look-up is by digest, and the stored digest
is compared again with :func:`hmac.compare_digest`.

Format::

    {"format": "headwater-tokens", "format_version": 1,
     "tokens": [{"id": "1a2b3c4d", "sha256": "<64 hex>", "role": "analyst", "created_at": "<ISO 8601>",
                 "note": "dashboards"}]}
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from headwater.access.errors import AuthenticationError, PolicyError
from headwater.access.files import Watched, access_dir, locked, write_private
from headwater.store.layout import read_json

FORMAT = "headwater-tokens"
TOKEN = re.compile(r"hw_([0-9a-f]{8})_[A-Za-z0-9_-]{20,100}")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    sha256: str
    role: str
    created_at: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "role": self.role, "created_at": self.created_at,
                "note": self.note}


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's id (never the token) and its role."""

    token_id: str
    role: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _parse(document: dict[str, Any] | None) -> dict[str, TokenRecord]:
    if document is None:
        return {}
    if document.get("format") != FORMAT:
        raise PolicyError(f"tokens file: format must be {FORMAT!r}")
    try:
        records = [TokenRecord(str(t["id"]), str(t["sha256"]), str(t["role"]), str(t.get("created_at", "")),
                               str(t.get("note", ""))) for t in document.get("tokens", [])]
    except (KeyError, TypeError) as exc:
        raise PolicyError(f"tokens file: a token entry lacks {exc}") from None
    return {r.sha256: r for r in records}


class TokenStore:
    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(access_dir(root), "tokens.json")
        self._watched = Watched(self.path, _parse)

    def records(self) -> list[TokenRecord]:
        return sorted(self._watched.get().values(), key=lambda r: r.created_at)

    def _save(self, records: list[TokenRecord]) -> None:
        write_private(self.path, {"format": FORMAT, "format_version": 1, "tokens": [r.to_json() for r in records]})

    def create(self, role: str, note: str = "") -> tuple[TokenRecord, str]:
        """A new token for ``role``: its record and the token itself (shown once, never stored)."""
        with locked(self.root):
            records = list(_parse(read_json(self.path)).values())
            ids = {r.id for r in records}
            token_id = secrets.token_hex(4)
            while token_id in ids:
                token_id = secrets.token_hex(4)
            token = f"hw_{token_id}_{secrets.token_urlsafe(32)}"
            record = TokenRecord(token_id, digest(token), role, datetime.now(UTC).isoformat(), note)
            self._save([*records, record])
        return record, token

    def revoke(self, token_id: str) -> bool:
        with locked(self.root):
            records = list(_parse(read_json(self.path)).values())
            kept = [r for r in records if r.id != token_id]
            if len(kept) != len(records):
                self._save(kept)
            return len(kept) != len(records)

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token`` (AuthenticationError when missing, malformed, unknown or revoked)."""
        if not token:
            raise AuthenticationError("no token: send 'Authorization: Bearer <token>'")
        if not TOKEN.fullmatch(token):
            raise AuthenticationError("the token is not a Headwater token (hw_<id>_<secret>)")
        wanted = digest(token)
        record = self._watched.get().get(wanted)
        if record is None or not hmac.compare_digest(record.sha256, wanted):
            raise AuthenticationError("the token is unknown or revoked")
        return Principal(record.id, record.role)
