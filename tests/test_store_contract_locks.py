"""Store contract for account locks (R7), memory and Redis alike, down to the audit bytes."""

from __future__ import annotations

from xacthuc.domain.locks import AccountLock, LockKind, LockRequest
from xacthuc.ports.store import Store

from .conftest import nth_index
from .test_store_contract import LIMITS, NOW, PLATFORM, check, rec, sent
from .test_store_contract import new as new_challenge

DAY = 86_400.0
REF = "CV-123/A05"


def lock(
    kind: LockKind = LockKind.TEMPORARY,
    *,
    account: str = "acc-1",
    now: float = NOW,
    days: float = 7,
    reason: str = "unlawful_content_5_in_30_days",
    ref: str = REF,
) -> LockRequest:
    until = now + days * DAY if kind is LockKind.TEMPORARY else None
    return LockRequest(PLATFORM, account, kind, until, reason, ref, now)


def locked_rec(seq: int, r: LockRequest) -> str:
    return rec(
        seq,
        r.now,
        "account_locked",
        "ok",
        r.reason,
        account=r.account_id,
        kind=r.kind.value,
        lock_until=int(r.until) if r.until is not None else "",
        request=r.request_reference,
    )


async def verify_phone(store: Store, account: str, n: int, now: float) -> int:
    """Phone-verify `account` (challenge ch-n); returns the new token's status index."""
    await sent(store, new_challenge(f"ch-{n}", account=account, now=now))
    record = await store.check_code(
        check(f"ch-{n}", account=account, now=now + 1, token_id=f"tok-{n}"), LIMITS
    )
    return record.status_idx


async def test_a_lock_is_stored_audited_and_read_with_the_attestation(store: Store) -> None:
    """LockAccount writes the lock and one account_locked record; account_state reads both."""
    request = lock()
    result, changed = await store.lock_account(request)

    expected = AccountLock(
        account_id="acc-1",
        kind="temporary",
        locked_at=NOW,
        until=NOW + 7 * DAY,
        reason="unlawful_content_5_in_30_days",
        request_reference=REF,
        temporary_locks=1,
    )
    assert (expected, True) == (result, changed)
    assert (None, expected) == await store.account_state(PLATFORM, "acc-1")
    assert [locked_rec(0, request)] == await store.audit_records(PLATFORM)


async def test_the_same_lock_again_changes_nothing(store: Store) -> None:
    """A retry of the holding lock is returned unchanged, with no second audit record."""
    first, _ = await store.lock_account(lock())
    again, changed = await store.lock_account(lock(now=NOW + 60, days=7 - 60 / DAY))

    assert (first, False) == (again, changed)
    assert 1 == len(await store.audit_records(PLATFORM))


async def test_a_new_lock_replaces_and_counts_temporary_locks(store: Store) -> None:
    """Extending, then making permanent: each replaces the last; temporary ones are counted."""
    await store.lock_account(lock())
    extended, _ = await store.lock_account(lock(now=NOW + 10, days=30))
    permanent_request = lock(LockKind.PERMANENT, now=NOW + 20, reason="national_security")
    permanent, changed = await store.lock_account(permanent_request)

    assert (2, NOW + 10 + 30 * DAY) == (extended.temporary_locks, extended.until)
    assert ("permanent", None, 2, True) == (
        permanent.kind,
        permanent.until,
        permanent.temporary_locks,
        changed,
    )
    assert locked_rec(2, permanent_request) == (await store.audit_records(PLATFORM))[2]


async def test_unlock_lifts_a_holding_lock_once(store: Store) -> None:
    """UnlockAccount ends the lock now and audits it; a second unlock finds none."""
    await store.lock_account(lock(LockKind.PERMANENT))
    ended = await store.unlock_account(PLATFORM, "acc-1", NOW + 5, "appeal_upheld")
    again = await store.unlock_account(PLATFORM, "acc-1", NOW + 6, "appeal_upheld")

    assert ended is not None
    assert (NOW + 5, "appeal_upheld") == (ended.ended_at, ended.unlock_reason)
    assert not ended.holds(NOW + 5)
    assert None is again
    unlocked = rec(1, NOW + 5, "account_unlocked", "ok", "appeal_upheld", kind="permanent")
    assert unlocked == (await store.audit_records(PLATFORM))[1]
    assert 2 == len(await store.audit_records(PLATFORM))
    _, kept = await store.account_state(PLATFORM, "acc-1")
    assert kept == ended


async def test_a_temporary_lock_ends_by_itself(store: Store) -> None:
    """At `until` the lock no longer holds: no unlock needed, none possible, nothing listed."""
    await store.lock_account(lock(days=7))
    await verify_phone(store, "acc-1", 1, NOW)
    end = NOW + 7 * DAY

    _, held = await store.account_state(PLATFORM, "acc-1")
    assert held is not None
    assert (True, False) == (held.holds(end - 1), held.holds(end))
    assert [nth_index(0)] == await store.locked_status_indexes(PLATFORM, end - 1)
    assert [] == await store.locked_status_indexes(PLATFORM, end)
    assert None is await store.unlock_account(PLATFORM, "acc-1", end, "request_withdrawn")


async def test_every_token_of_a_locked_account_is_listed(store: Store) -> None:
    """The lock covers the tokens issued before it and one issued by re-verifying during it
    (a lock survives re-verification); other accounts' tokens are not listed."""
    first = await verify_phone(store, "acc-1", 1, NOW)
    other = await verify_phone(store, "acc-2", 2, NOW + 100)
    await store.lock_account(lock(LockKind.PERMANENT, now=NOW + 200))
    second = await verify_phone(store, "acc-1", 3, NOW + 300)

    assert other not in (first, second)
    assert sorted([first, second]) == await store.locked_status_indexes(PLATFORM, NOW + 400)
    record, held = await store.account_state(PLATFORM, "acc-1")
    assert record is not None
    assert held is not None
    assert ("tok-3", True) == (record.token_id, held.holds(NOW + 400))

    await store.unlock_account(PLATFORM, "acc-1", NOW + 500, "appeal_upheld")
    assert [] == await store.locked_status_indexes(PLATFORM, NOW + 500)


async def test_locks_are_per_platform(store: Store) -> None:
    """Another platform's account of the same id is not locked."""
    await store.lock_account(lock(LockKind.PERMANENT))
    assert (None, None) == await store.account_state("beta", "acc-1")
    assert [] == await store.locked_status_indexes("beta", NOW)
