"""The process-local cache of account state (issue 11), against a fake invalidation feed:
what it keeps, what it drops, and the reads it refuses to keep."""

from __future__ import annotations

import asyncio

import pytest

from xacthuc.adapters.store.cached import CachedStore, State, StateCache
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.errors import AttestationNotFound
from xacthuc.domain.locks import LockKind, LockRequest
from xacthuc.ports.store import Store

from .conftest import memory_store
from .test_store_contract import LIMITS, NOW, PLATFORM, check, sent
from .test_store_contract import new as new_challenge


class FakeFeed:
    """A feed that is current until told otherwise and delivers nothing by itself."""

    def __init__(self) -> None:
        self.is_current = True
        self.cache: StateCache | None = None
        self.closed = False

    def start(self, cache: StateCache) -> None:
        self.cache = cache

    def current(self) -> bool:
        return self.is_current

    async def aclose(self) -> None:
        self.closed = True


class CountingStore(MemoryStore):
    """A memory store that counts `account_state` reads and can hold one until released."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def account_state(self, platform: str, account_id: str) -> State:
        self.reads += 1
        state = await super().account_state(platform, account_id)
        if self.hold is not None:
            self.entered.set()
            await self.hold.wait()
        return state


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cached(
    backend: Store | None = None,
    *,
    entries: int = 100,
    ttl: float = 30.0,
    clock: Clock | None = None,
) -> tuple[CachedStore, CountingStore, FakeFeed]:
    inner = backend if isinstance(backend, CountingStore) else CountingStore()
    feed = FakeFeed()
    store = CachedStore(inner, feed, max_entries=entries, ttl=ttl, monotonic=clock or Clock())
    return store, inner, feed


async def verify(store: Store, account: str, n: int) -> None:
    """Phone-verify `account` at NOW + 100 n (challenge ch-n, token tok-n)."""
    now = NOW + 100 * n
    await sent(store, new_challenge(f"ch-{n}", account=account, now=now))
    await store.check_code(
        check(f"ch-{n}", account=account, now=now + 1, token_id=f"tok-{n}"), LIMITS
    )


async def test_repeated_reads_of_one_account_reach_the_store_once() -> None:
    """Authorize's read, asked again and again for one account, is one store round trip."""
    store, inner, _ = cached()
    await verify(store, "acc-1", 1)

    states = [await store.account_state(PLATFORM, "acc-1") for _ in range(50)]

    assert 1 == inner.reads
    assert all(s == states[0] for s in states)
    assert states[0][0] is not None
    assert "tok-1" == states[0][0].token_id
    assert (49, 1) == (store.cache.stats.hits, store.cache.stats.misses)


async def test_accounts_and_platforms_are_cached_apart() -> None:
    """Each (platform, account) is its own entry, absent accounts included."""
    store, inner, _ = cached()
    await verify(store, "acc-1", 1)
    for _ in range(3):
        assert (None, None) == await store.account_state(PLATFORM, "nobody")
        assert (None, None) == await store.account_state("beta", "acc-1")
        assert (None, None) != await store.account_state(PLATFORM, "acc-1")
    assert 3 == inner.reads


async def test_each_write_drops_its_accounts_entry_before_it_returns() -> None:
    """Revoke, lock, unlock and a new verification through this process are seen at once."""
    store, inner, _ = cached()
    await verify(store, "acc-1", 1)
    record, lock = await store.account_state(PLATFORM, "acc-1")
    assert record is not None
    assert "active" == record.status
    assert lock is None

    await store.lock_account(
        LockRequest(PLATFORM, "acc-1", LockKind.PERMANENT, None, "court_order", "r-1", NOW + 500)
    )
    assert (await store.account_state(PLATFORM, "acc-1"))[1] is not None
    await store.unlock_account(PLATFORM, "acc-1", NOW + 600, "appeal_upheld")
    lock = (await store.account_state(PLATFORM, "acc-1"))[1]
    assert lock is not None
    assert lock.ended_at == NOW + 600
    await store.revoke_attestation(PLATFORM, "acc-1", NOW + 700, "user_request")
    record = (await store.account_state(PLATFORM, "acc-1"))[0]
    assert record is not None
    assert "revoked" == record.status
    await verify(store, "acc-1", 9)
    record = (await store.account_state(PLATFORM, "acc-1"))[0]
    assert record is not None
    assert ("tok-9", "active") == (record.token_id, record.status)
    assert 5 == inner.reads


async def test_a_refused_write_still_drops_the_entry() -> None:
    """Whatever a write's outcome, the next read goes to the store (a lost reply may hide a
    change)."""
    store, inner, _ = cached()
    await store.account_state(PLATFORM, "acc-1")
    with pytest.raises(AttestationNotFound):
        await store.revoke_attestation(PLATFORM, "acc-1", NOW, "user_request")
    await store.account_state(PLATFORM, "acc-1")
    assert 2 == inner.reads


async def test_an_announced_change_drops_the_entry() -> None:
    """What the feed delivers (a change made by another process) is read afresh."""
    store, inner, feed = cached()
    await store.account_state(PLATFORM, "acc-1")
    assert feed.cache is store.cache
    feed.cache.invalidate(PLATFORM, "acc-1")
    await store.account_state(PLATFORM, "acc-1")
    await store.account_state(PLATFORM, "acc-1")
    assert 2 == inner.reads


async def test_a_read_racing_a_change_is_returned_but_not_kept() -> None:
    """A change announced while a read of the same account is in flight: that read may hold
    the old state, so it is not cached."""
    store, inner, feed = cached()
    inner.hold = asyncio.Event()
    reading = asyncio.create_task(store.account_state(PLATFORM, "acc-1"))
    await inner.entered.wait()
    assert feed.cache is not None
    feed.cache.invalidate(PLATFORM, "acc-1")
    inner.hold.set()
    await reading
    inner.hold = None

    await store.account_state(PLATFORM, "acc-1")
    assert (2, 0) == (inner.reads, store.cache.stats.hits)


async def test_a_read_racing_a_flush_is_not_kept() -> None:
    """A read that began before the cache was emptied (announcements lost) is not kept."""
    store, inner, feed = cached()
    inner.hold = asyncio.Event()
    reading = asyncio.create_task(store.account_state(PLATFORM, "acc-1"))
    await inner.entered.wait()
    assert feed.cache is not None
    feed.cache.flush()
    inner.hold.set()
    await reading
    inner.hold = None

    await store.account_state(PLATFORM, "acc-1")
    assert 2 == inner.reads


async def test_a_change_to_another_account_does_not_spoil_a_read() -> None:
    """Only the account read is concerned: other accounts' changes keep the read."""
    store, inner, feed = cached()
    inner.hold = asyncio.Event()
    reading = asyncio.create_task(store.account_state(PLATFORM, "acc-1"))
    await inner.entered.wait()
    assert feed.cache is not None
    feed.cache.invalidate(PLATFORM, "acc-2")
    inner.hold.set()
    await reading
    inner.hold = None

    await store.account_state(PLATFORM, "acc-1")
    assert 1 == inner.reads


async def test_a_feed_that_is_not_current_sends_every_read_to_the_store() -> None:
    """No serving and no keeping while announcements may be missing."""
    store, inner, feed = cached()
    await store.account_state(PLATFORM, "acc-1")
    feed.is_current = False
    for _ in range(3):
        await store.account_state(PLATFORM, "acc-1")
    assert (4, 3) == (inner.reads, store.cache.stats.bypasses)
    feed.is_current = True
    await store.account_state(PLATFORM, "acc-1")
    assert 4 == inner.reads


async def test_entries_age_out_after_the_ttl() -> None:
    """The TTL is a backstop: an entry older than it is read again."""
    clock = Clock()
    store, inner, _ = cached(ttl=30.0, clock=clock)
    await store.account_state(PLATFORM, "acc-1")
    clock.now = 29.9
    await store.account_state(PLATFORM, "acc-1")
    assert 1 == inner.reads
    clock.now = 30.0
    await store.account_state(PLATFORM, "acc-1")
    assert 2 == inner.reads


async def test_the_cache_keeps_the_most_recently_used_entries() -> None:
    """Bounded: past `max_entries`, the least recently used entry goes."""
    store, inner, _ = cached(entries=2)
    for account in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        await store.account_state(PLATFORM, account)
    assert 2 == len(store.cache)
    await store.account_state(PLATFORM, "a")
    await store.account_state(PLATFORM, "c")
    assert 3 == inner.reads
    await store.account_state(PLATFORM, "b")
    assert 4 == inner.reads


async def test_time_decides_at_call_time_from_the_cached_record() -> None:
    """A cached lock that runs out no longer holds: the entry is the record, not a verdict."""
    store, inner, _ = cached()
    await store.lock_account(
        LockRequest(PLATFORM, "acc-1", LockKind.TEMPORARY, NOW + 60, "spam", "r-1", NOW)
    )
    _, lock = await store.account_state(PLATFORM, "acc-1")
    _, again = await store.account_state(PLATFORM, "acc-1")
    assert lock is not None
    assert again is lock
    assert 1 == inner.reads
    assert lock.holds(NOW + 59)
    assert not lock.holds(NOW + 60)


async def test_closing_closes_the_feed_and_the_store() -> None:
    """aclose stops listening, then closes the wrapped store."""
    store, _, feed = cached(memory_store())
    await store.aclose()
    assert feed.closed
