"""Account locks (R7) in the embedded store; `pg_guardian.py` (PostgreSQL) mirrors it."""

from __future__ import annotations

from dataclasses import replace

from xacthuc.adapters.store.memory_state import MemoryBase
from xacthuc.domain.locks import AccountLock, LockKind, LockRequest
from xacthuc.domain.records import AttestationRecord


class LockOps(MemoryBase):
    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        p = self._platforms[request.platform]
        previous = p.locks.get(request.account_id)
        if (
            previous is not None
            and previous.holds(request.now)
            and (previous.kind, previous.until, previous.reason, previous.request_reference)
            == (request.kind.value, request.until, request.reason, request.request_reference)
        ):
            return previous, False
        temporary = previous.temporary_locks if previous is not None else 0
        if request.kind is LockKind.TEMPORARY:
            temporary += 1
        lock = AccountLock(
            account_id=request.account_id,
            kind=request.kind.value,
            locked_at=request.now,
            until=request.until,
            reason=request.reason,
            request_reference=request.request_reference,
            temporary_locks=temporary,
        )
        p.locks[request.account_id] = lock
        self._audit(
            p,
            request.platform,
            request.now,
            account=request.account_id,
            event="account_locked",
            outcome="ok",
            reason=request.reason,
            kind=request.kind.value,
            lock_until=int(request.until) if request.until is not None else "",
            request=request.request_reference,
        )
        return lock, True

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        p = self._platforms[platform]
        lock = p.locks.get(account_id)
        if lock is None or not lock.holds(now):
            return None
        ended = replace(lock, ended_at=now, unlock_reason=reason)
        p.locks[account_id] = ended
        self._audit(
            p,
            platform,
            now,
            account=account_id,
            event="account_unlocked",
            outcome="ok",
            reason=reason,
            kind=lock.kind,
        )
        return ended

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        p = self._platforms[platform]
        found = p.attestations.get(account_id)
        return (found[0] if found else None), p.locks.get(account_id)

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        p = self._platforms[platform]
        return sorted(
            idx
            for account, lock in p.locks.items()
            if lock.holds(now)
            for idx in p.account_idxs.get(account, ())
        )
