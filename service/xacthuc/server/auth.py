"""Platform credentials: API keys stored only as SHA-256 hashes, each bound to a platform and a role.

A key reads `xk_<key id>_<secret>`: the id finds the entry, the 256-bit secret is checked
against its stored hash in constant time. Keys are high-entropy random strings, so a plain
SHA-256 is enough (no password hashing needed); no source holds a usable secret.

Two sources make the table every call is checked against, locally (no store round trip):

* fixed entries, read once at start: the keys file (XACTHUC_API_KEYS_FILE, written by
  `xacthuc keys create --file`), the dev-mode demo keys, a test's keys;
* the key store (`xacthuc.ports.api_keys`, written by `xacthuc keys create|revoke`), which
  `KeyWatcher` polls every XACTHUC_API_KEYS_POLL_SECONDS and applies as it changes.

Precedence: the store wins. A key id the store holds is what the store says (a key revoked
there is refused even when the file lists it); the file adds only the ids the store does
not hold. Every change clears the remembered headers, so a revoked key is refused at the
next call after the change arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from xacthuc.domain.api_keys import PLATFORM_ID as PLATFORM_ID
from xacthuc.domain.api_keys import ApiKeyChanges, StoredApiKey
from xacthuc.domain.errors import CredentialInvalid, CredentialMissing
from xacthuc.ports.api_keys import ApiKeyStore

log = logging.getLogger("xacthuc.auth")

_KEY = re.compile(r"xk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SEEN_MAX = 4096


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


def new_stored_key(
    platform: str, role: Role, now: float, label: str = ""
) -> tuple[str, StoredApiKey]:
    """A fresh API key and the record a key store keeps for it (never the key itself)."""
    key, entry = new_key(platform, role)
    return key, StoredApiKey(entry.key_id, platform, role.value, entry.sha256, now, label)


_ROLES = frozenset(r.value for r in Role)


class ApiKeys:
    def __init__(self, entries: list[KeyEntry] | None = None) -> None:
        self._fixed = {e.key_id: e for e in entries or []}
        self._stored: dict[str, StoredApiKey] = {}
        self._version = 0
        self._entries: dict[str, KeyEntry] = {}
        self._platforms: frozenset[str] = frozenset()
        # Header -> caller for keys already checked: a platform sends the same header on
        # every call, so the hash is computed once. Only successes are kept; bounded;
        # emptied by every change of the table (a revoked key must not stay remembered).
        self._seen: dict[str, Caller] = {}
        self._rebuild()

    def add(self, entry: KeyEntry) -> None:
        """A fixed entry (the keys file, a demo or test key)."""
        self._fixed[entry.key_id] = entry
        self._rebuild()

    @property
    def version(self) -> int:
        """The key store's version this table reflects (0: nothing applied yet)."""
        return self._version

    def apply(self, changes: ApiKeyChanges) -> None:
        """Take in what the key store changed (all of it when `changes.full`)."""
        if changes.full:
            self._stored = {}
        for key in changes.keys:
            self._stored[key.key_id] = key
        self._version = changes.version
        self._rebuild()

    def _rebuild(self) -> None:
        entries = dict(self._fixed)
        platforms = {e.platform for e in self._fixed.values()}
        for key in self._stored.values():
            # A platform whose keys were all revoked keeps its checkpoints and status list.
            platforms.add(key.platform)
            entries.pop(key.key_id, None)  # the store wins over the file
            if key.revoked or key.role not in _ROLES:
                continue
            created = datetime.fromtimestamp(key.created_at, UTC).isoformat(timespec="seconds")
            entries[key.key_id] = KeyEntry(
                key.key_id, key.platform, Role(key.role), key.sha256, created
            )
        self._entries = entries
        self._platforms = frozenset(platforms)
        self._seen = {}

    def platforms(self) -> set[str]:
        """The platforms that have or had a key (revoked ones count: their logs go on)."""
        return set(self._platforms)

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

    def _check(self, authorization: str) -> Caller:
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

    def entry(self, key_id: str) -> KeyEntry | None:
        """The fixed (file) entry with this id, if any."""
        return self._fixed.get(key_id)

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


class KeyWatcher:
    """Keeps an ApiKeys table in step with a key store: `refresh` once before serving, then a
    poll every `interval` seconds (one cheap call while nothing changed, then only the keys
    that did). A store that does not answer leaves the table as it is until it does."""

    def __init__(self, keys: ApiKeys, store: ApiKeyStore, *, interval: float) -> None:
        self.keys = keys
        self._store = store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._loaded = False

    async def refresh(self) -> bool:
        """Apply the store's changes since the table's version; whether anything changed."""
        changes = await self._store.changes_since(self.keys.version)
        # An answer "from version 0" is always full: after the first one, an empty store
        # at the same version changes nothing (and the remembered headers stay).
        if self._loaded and changes.version == self.keys.version and not changes.keys:
            return False
        self.keys.apply(changes)
        self._loaded = True
        # Key ids and counts only: never a key, never a hash.
        log.info(
            "api keys: version %d (%s %d keys: %s)",
            changes.version,
            "loaded" if changes.full else "changed",
            len(changes.keys),
            ", ".join(k.key_id for k in changes.keys[:20]),
        )
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="xacthuc-api-keys")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as e:  # the table stays as it is; the next poll retries
                if not self._failing:
                    log.warning("api keys: cannot read the key store (%s)", type(e).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("api keys: the key store answers again")
                self._failing = False
