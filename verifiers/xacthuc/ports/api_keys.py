"""Where platform API keys are kept (the port): the system of record of who may call.

Every write is one atomic step with its audit record (`api_key_created`,
`api_key_revoked`, in the key's platform's log, naming the key id and role, never the key
or its hash), and bumps one version number. Servers poll `changes_since(their version)`:
a cheap call while nothing changed, then only the keys that did.
"""

from __future__ import annotations

from typing import Protocol

from xacthuc.domain.api_keys import ApiKeyChanges, StoredApiKey


class ApiKeyStore(Protocol):
    async def create(self, key: StoredApiKey) -> int:
        """Store a new key (`check_new_key` applies; `revoked_at` must be None) and audit it;
        the store's new version. ApiKeyExists when the id is taken."""
        ...

    async def revoke(
        self, key_id: str, at: float, reason: str, *, fallback: StoredApiKey | None = None
    ) -> StoredApiKey:
        """Revoke the key and audit it; the key as now stored. A key revoked already is
        returned as it is (nothing changes, nothing is audited). A key the store does not
        hold: `fallback` (a key from a read-only source, the keys file) is stored revoked,
        so the store's word wins over that source; without one, ApiKeyNotFound."""
        ...

    async def list(self, platform: str | None = None) -> list[StoredApiKey]:
        """Every key (of the platform), revoked ones included, oldest first."""
        ...

    async def changes_since(self, version: int) -> ApiKeyChanges:
        """The version now and the keys changed after `version` (0: all of them)."""
        ...
