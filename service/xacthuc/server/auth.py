"""Platform credentials: API keys stored only as SHA-256 hashes, each bound to a platform and a role.

A key reads `xk_<key id>_<secret>`: the id finds the entry, the 256-bit secret is checked
against its stored hash in constant time. Keys are high-entropy random strings, so a plain
SHA-256 is enough (no password hashing needed); the file holds no usable secret.
`xacthuc keys create` appends an entry to the keys file and prints the key once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from xacthuc.domain.errors import CredentialInvalid, CredentialMissing

_KEY = re.compile(r"xk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SEEN_MAX = 4096
PLATFORM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class Role(StrEnum):
    PLATFORM = "platform"  # verification calls
    AUDITOR = "auditor"  # audit calls


@dataclass(frozen=True, slots=True)
class Caller:
    platform: str
    role: Role
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_id: str
    platform: str
    role: Role
    sha256: str
    created: str = ""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(platform: str, role: Role) -> tuple[str, KeyEntry]:
    """A fresh API key and the entry to store for it. The key itself is never stored."""
    if not PLATFORM_ID.fullmatch(platform):
        raise ValueError(
            "platform id must be 1-63 of a-z 0-9 _ - (starting with a letter or digit)"
        )
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return f"xk_{key_id}_{secret}", KeyEntry(key_id, platform, role, _digest(secret), created)


class ApiKeys:
    def __init__(self, entries: list[KeyEntry] | None = None) -> None:
        self._entries = {e.key_id: e for e in entries or []}
        # Header -> caller for keys already checked: a platform sends the same header on
        # every call, so the hash is computed once. Only successes are kept; bounded.
        self._seen: dict[str, Caller] = {}

    def add(self, entry: KeyEntry) -> None:
        self._entries[entry.key_id] = entry
        self._seen.clear()

    def platforms(self) -> set[str]:
        """The platforms that have at least one key."""
        return {e.platform for e in self._entries.values()}

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise CredentialMissing()
        caller = self._seen.get(authorization)
        if caller is not None:
            return caller
        caller = self._check(authorization)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[authorization] = caller
        return caller

    def _check(self, authorization: str | None) -> Caller:
        if not authorization:
            raise CredentialMissing()
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise CredentialMissing()
        m = _KEY.fullmatch(token.strip())
        entry = self._entries.get(m.group(1)) if m else None
        # Hash even on a miss so timing does not tell a known key id from an unknown one.
        digest = _digest(m.group(2) if m else token)
        if entry is None or not hmac.compare_digest(digest, entry.sha256):
            raise CredentialInvalid()
        return Caller(entry.platform, entry.role, entry.key_id)

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        data = json.loads(path.read_text())
        return cls(
            [
                KeyEntry(e["id"], e["platform"], Role(e["role"]), e["sha256"], e.get("created", ""))
                for e in data["keys"]
            ]
        )

    @staticmethod
    def append_to_file(path: Path, entry: KeyEntry) -> None:
        data = json.loads(path.read_text()) if path.exists() else {"keys": []}
        data["keys"].append(
            {
                "id": entry.key_id,
                "platform": entry.platform,
                "role": entry.role.value,
                "sha256": entry.sha256,
                "created": entry.created,
            }
        )
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
