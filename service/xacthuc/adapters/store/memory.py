"""The embedded store: everything in one process, nothing on disk.

Assembled from one mixin per domain over the shared state in `memory_state.py`. Each
method runs to completion without awaiting, so on one event loop it is atomic. This is
the reference implementation of the contract; the pair store (`pair.py`: Lua in Redis,
plpgsql in PostgreSQL) mirrors it.
"""

from __future__ import annotations

from xacthuc.adapters.store.memory_guardian import GuardianOps
from xacthuc.adapters.store.memory_identity import IdentityOps
from xacthuc.adapters.store.memory_locks import LockOps
from xacthuc.adapters.store.memory_phone import PhoneOps
from xacthuc.domain.errors import (
    AttestationNotFound,
)
from xacthuc.domain.records import AttestationRecord, check_reason_code


class MemoryStore(PhoneOps, IdentityOps, GuardianOps, LockOps):
    """The `Store` contract in process memory (the embedded default)."""

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        check_reason_code(reason)
        p = self._platforms[platform]
        found = p.attestations.get(account_id)
        if found is None:
            raise AttestationNotFound()
        if found[0].status == "revoked":
            return found[0]
        return self._revoke(p, platform, now, found[0], reason)

    async def status_bits(self, platform: str) -> bytes:
        return bytes(self._platforms[platform].status_bits)

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        p = self._platforms[platform]
        self._audit(
            p, platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
        )
        return len(p.audit) - 1

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        found = self._platforms[platform].attestations.get(account_id)
        return found[0] if found else None

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return self._platforms[platform].audit[start:stop]

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
