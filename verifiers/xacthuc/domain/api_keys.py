"""Platform API keys as the system of record keeps them: hashed, each bound to a platform and
a role, revocable. No key itself is ever kept: only the SHA-256 of its secret.

A key reads `xk_<key id>_<secret>` (`xacthuc.server.auth`). The records here are what a key
store (`xacthuc.ports.api_keys`) holds and what every server's in-memory key table is built
from; `check_new_key` is the one validation every store applies before it writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLATFORM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY_ID = re.compile(r"[0-9a-f]{12}")
ROLES = ("platform", "auditor")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# An operator's note (who holds the key, which system): short, printable ASCII, no quotes.
LABEL = re.compile(r"[A-Za-z0-9 _.:@/+-]{0,64}")
# Why a key was revoked: a code as for attestations (no personal data fits in it).
REVOKE_REASON = re.compile(r"[a-z0-9_]{1,64}")

# The audit events of the key store, in the platform's own audit log (account "").
API_KEY_CREATED = "api_key_created"
API_KEY_REVOKED = "api_key_revoked"


class ApiKeyNotFound(LookupError):
    """No key with this id in the store."""


class ApiKeyExists(ValueError):
    """A key with this id is in the store already (ids are random: a second create of the
    same key)."""


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """One key in the store. `sha256` is the hex SHA-256 of the key's secret part."""

    key_id: str
    platform: str
    role: str  # one of ROLES
    sha256: str
    created_at: float
    label: str = ""
    revoked_at: float | None = None
    revoke_reason: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class ApiKeyChanges:
    """What changed in a store after a version: the store's version now and every key whose
    latest change came later. `full` means `keys` is the whole table (asked from version 0,
    or the store's version went backwards: a store that lost its data), to replace, not to
    merge."""

    version: int
    keys: tuple[StoredApiKey, ...]
    full: bool


def check_new_key(key: StoredApiKey) -> StoredApiKey:
    """The key as a store may write it; ValueError naming the first bad field otherwise."""
    if not KEY_ID.fullmatch(key.key_id):
        raise ValueError("key id must be 12 hex digits")
    if not PLATFORM_ID.fullmatch(key.platform):
        raise ValueError(
            "platform id must be 1-63 of a-z 0-9 _ - (starting with a letter or digit)"
        )
    if key.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not _SHA256_HEX.fullmatch(key.sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    if not LABEL.fullmatch(key.label):
        raise ValueError("label must be at most 64 of A-Z a-z 0-9 space _ . : @ / + -")
    return key


def check_revoke_reason(reason: str) -> str:
    if not REVOKE_REASON.fullmatch(reason):
        raise ValueError("reason must be 1-64 of a-z 0-9 _")
    return reason
