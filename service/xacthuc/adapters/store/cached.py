"""Account state from process memory: Authorize without a store round trip (issue 11).

`CachedStore` wraps any `Store` and answers `account_state` (the attestation and the lock
that Authorize, GetCommercialLivestreamEligibility and IntrospectAttestation decide from)
from a bounded LRU of recent answers. Everything else goes straight to the wrapped store.

Correctness rests on an `InvalidationFeed`: every change of an account's attestation or
lock, made by any process, is announced on it (for the pair: a NOTIFY from the very
PostgreSQL function that makes the change, delivered at its commit, `pg_invalidations.py`),
and the feed drops the entry here. The cache
serves only while the feed is *current*: every change committed more than the feed's
staleness bound ago (100 ms by default) has been delivered, and nothing was lost since the
cache was last emptied. A feed that loses its connection empties the cache and is not
current until it listens again, so meanwhile every call goes to the store. Each entry also
ages out after `ttl` (a backstop for a writer that does not announce its changes, such as
a replica of an older version during a rolling upgrade).

Time never makes an entry wrong: the entry is the stored record, and every rule that
depends on time (expiry, the end of a temporary lock, a child's 16th birthday) is decided
by the caller from it at call time, with the caller's `now`.

A read racing a change cannot leave the old state behind: an invalidation that arrives while
a read of the same account is in flight marks the read, whose answer is then returned but
not kept; emptying the cache starts a new epoch, and answers read in an older one are not
kept either. The process's own writes drop their account's entry as soon as they return,
so a caller sees its own change at once (the announcement follows within milliseconds).

The in-memory store needs none of this (it is in the process already) and is not wrapped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from xacthuc.domain.locks import AccountLock, LockRequest
from xacthuc.domain.records import (
    AgingOut,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    GuardianLink,
    IdAttempt,
    Limits,
    LinkResult,
    NewChallenge,
    PendingAttestation,
)
from xacthuc.ports.store import Store

State = tuple[AttestationRecord | None, AccountLock | None]
Key = tuple[str, str]  # (platform, account id)


class InvalidationFeed(Protocol):
    """Where the cache hears that an account's state changed, whichever process changed it."""

    def start(self, cache: StateCache) -> None:
        """Start listening (once, inside the running event loop): call `cache.invalidate`
        for each announced change, `cache.flush` whenever announcements may have been lost."""
        ...

    def current(self) -> bool:
        """Every change committed more than the feed's staleness bound ago was delivered,
        and none was lost since the last `cache.flush`."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Fill:
    """A read in flight for one account: `stale` once that account changed meanwhile."""

    readers: int = 0
    stale: bool = False


@dataclass(slots=True)
class CacheStats:
    """What the cache did, since it was made (tests and the benchmark read it)."""

    hits: int = 0
    misses: int = 0  # read from the store, kept unless it raced a change
    bypasses: int = 0  # read from the store because the feed was not current
    invalidations: int = 0
    flushes: int = 0


class StateCache:
    """The LRU of account states, with the bookkeeping that keeps a racing read out."""

    def __init__(
        self, *, max_entries: int, ttl: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("a state cache needs max_entries >= 1 and ttl > 0")
        self._entries: OrderedDict[Key, tuple[float, State]] = OrderedDict()
        self._fills: dict[Key, _Fill] = {}
        self._epoch = 0
        self._max_entries = max_entries
        self._ttl = ttl
        self._monotonic = monotonic
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> State | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._monotonic() - entry[0] >= self._ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[1]

    def begin(self, key: Key) -> tuple[Key, _Fill, int]:
        """A read of `key` from the store starts; give the result to `end`."""
        fill = self._fills.get(key)
        if fill is None:
            fill = self._fills[key] = _Fill()
        fill.readers += 1
        return key, fill, self._epoch

    def end(self, read: tuple[Key, _Fill, int], state: State | None) -> None:
        """The read ended: keep `state` unless the account changed or the cache was emptied
        meanwhile (or the read failed: None)."""
        key, fill, epoch = read
        fill.readers -= 1
        if fill.readers == 0 and self._fills.get(key) is fill:
            del self._fills[key]
        if state is None or fill.stale or epoch != self._epoch:
            return
        self.stats.misses += 1
        self._entries[key] = (self._monotonic(), state)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, platform: str, account_id: str) -> None:
        """The account's attestation or lock changed."""
        key = (platform, account_id)
        self.stats.invalidations += 1
        self._entries.pop(key, None)
        fill = self._fills.get(key)
        if fill is not None:
            fill.stale = True

    def flush(self) -> None:
        """Changes may have been missed: forget everything, and every read in flight."""
        self.stats.flushes += 1
        self._entries.clear()
        for fill in self._fills.values():
            fill.stale = True
        self._fills.clear()
        self._epoch += 1


class CachedStore:
    """A `Store` whose `account_state` answers from process memory while `feed` is current.

    `backend` is the wrapped store, used as is for everything else and closed by `aclose`
    together with the feed. The feed starts at the first `account_state` (it needs the
    running event loop); until it is current, calls go to the store.
    """

    def __init__(
        self,
        backend: Store,
        feed: InvalidationFeed,
        *,
        max_entries: int = 100_000,
        ttl: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.cache = StateCache(max_entries=max_entries, ttl=ttl, monotonic=monotonic)
        self._feed = feed
        self._started = False

    async def account_state(self, platform: str, account_id: str) -> State:
        if not self._started:
            self._started = True
            self._feed.start(self.cache)
        if not self._feed.current():
            self.cache.stats.bypasses += 1
            return await self.backend.account_state(platform, account_id)
        key = (platform, account_id)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        read = self.cache.begin(key)
        state: State | None = None
        try:
            state = await self.backend.account_state(platform, account_id)
        finally:
            self.cache.end(read, state)
        return state

    # ---- writes that change an account's state: drop its entry as soon as they return --------
    # (whatever the outcome: a refusal changed nothing, a lost reply may have changed it)

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        try:
            return await self.backend.check_code(check, limits)
        finally:
            self.cache.invalidate(check.platform, check.account_id)

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        try:
            return await self.backend.finish_id_check(attempt, answer, pending, limits)
        finally:
            self.cache.invalidate(attempt.platform, attempt.account_id)

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        try:
            return await self.backend.link_guardian(link, limits)
        finally:
            self.cache.invalidate(link.platform, link.child_account_id)

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        # The child is named only by the stored link: known here from the revoked record;
        # when the call fails, the feed's announcement (sent by the function) drops it.
        revoked = await self.backend.end_guardian_link(platform, link_id, now, reason)
        if revoked is not None:
            self.cache.invalidate(platform, revoked.account_id)
        return revoked

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        try:
            return await self.backend.revoke_attestation(platform, account_id, now, reason)
        finally:
            self.cache.invalidate(platform, account_id)

    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        try:
            return await self.backend.lock_account(request)
        finally:
            self.cache.invalidate(request.platform, request.account_id)

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        try:
            return await self.backend.unlock_account(platform, account_id, now, reason)
        finally:
            self.cache.invalidate(platform, account_id)

    # sweep_aged_out runs in the background and names no account: its function's
    # announcements drop the entries (and a child's decision turns AGED_OUT at the
    # birthday from the cached record already).

    # ---- everything else, as the wrapped store does it ---------------------------------------

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        return await self.backend.start_challenge(new, limits)

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.backend.confirm_sent(platform, challenge_id, account_id, now)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.backend.abort_challenge(platform, challenge_id, account_id, now)

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        await self.backend.begin_id_check(attempt, limits)

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        return await self.backend.attestation_subject(platform, account_id)

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        return await self.backend.sweep_aged_out(platform, now, limit)

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        return await self.backend.list_aging_out(platform, from_time, to_time, limit, after)

    async def status_bits(self, platform: str) -> bytes:
        return await self.backend.status_bits(platform)

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        return await self.backend.locked_status_indexes(platform, now)

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
        return await self.backend.append_audit(
            platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
        )

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        return await self.backend.get_attestation(platform, account_id)

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return await self.backend.audit_records(platform, start, stop)

    async def ping(self) -> None:
        await self.backend.ping()

    async def aclose(self) -> None:
        await self._feed.aclose()
        await self.backend.aclose()
