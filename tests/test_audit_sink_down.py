"""The pair store's Redis half, its audit log in PostgreSQL (issue 10): while PostgreSQL is
known to be out of reach, a state-changing call is refused BEFORE its Redis step, so no Redis state
changes without its audit records; the first call after the database answers again goes
through. Real Redis; PostgreSQL stood in for by a log that fails on command."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from xacthuc.adapters.store.pg_audit import GroupAppender, NewRecord, PostgresAuditLog
from xacthuc.adapters.store.redis import RedisStore
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import StoreUnavailable

from .test_store_contract import LIMITS, new, pseudonym

NO_FACTS = {"linked": False, "full": False}  # PostgreSQL's facts of a start (pair.py)


class FlakyLog(PostgresAuditLog):
    """Stands in for PostgreSQL: appends fail while `down`, else count."""

    def __init__(self) -> None:
        self.down = False
        self.appended = 0

    async def append(self, platform: str, records: Sequence[NewRecord | str], **_: object) -> int:
        if self.down:
            raise StoreUnavailable()
        first = self.appended
        self.appended += len(records)
        return first


class Probe:
    def __init__(self, log: FlakyLog) -> None:
        self.log, self.calls = log, 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.log.down:
            raise StoreUnavailable()


@pytest.fixture
async def world(
    redis_url: str, redis_namespace: str
) -> AsyncIterator[tuple[RedisStore, FlakyLog, Probe, FixedClock]]:
    log, clock = FlakyLog(), FixedClock(0.0)
    probe = Probe(log)
    store = RedisStore(
        redis_url,
        namespace=redis_namespace,
        audit=GroupAppender(log, probe=probe, probe_interval=1.0, clock=clock),
    )
    yield store, log, probe, clock
    await store.aclose()


async def keys_of(redis_url: str, namespace: str) -> set[str]:
    async with aioredis.Redis.from_url(redis_url) as client:
        return {k.decode() async for k in client.scan_iter(match=f"{namespace}:*")}


async def test_no_redis_change_while_the_database_is_known_down(
    world: tuple[RedisStore, FlakyLog, Probe, FixedClock], redis_url: str, redis_namespace: str
) -> None:
    store, log, probe, clock = world
    log.down = True
    # The first failure is only learnt after the Redis step (it cannot be foreseen) ...
    with pytest.raises(StoreUnavailable):
        await store.start_challenge(new("ch-1"), LIMITS, **NO_FACTS)
    before = await keys_of(redis_url, redis_namespace)
    # ... from then on, calls are refused before touching Redis, with one probe per second.
    other = pseudonym("0987654321")
    for i in range(5):
        with pytest.raises(StoreUnavailable):
            await store.start_challenge(new(f"ch-{i + 2}", phone=other), LIMITS, **NO_FACTS)
    assert before == await keys_of(redis_url, redis_namespace)
    assert 0 == probe.calls
    clock.advance(1.5)
    with pytest.raises(StoreUnavailable):
        await store.start_challenge(new("ch-9", phone=other), LIMITS, **NO_FACTS)
    assert (1, before) == (probe.calls, await keys_of(redis_url, redis_namespace))
    # The database answers again: the next probe lets the call through, records stored.
    log.down = False
    clock.advance(1.5)
    view = await store.start_challenge(new("ch-10", phone=other), LIMITS, **NO_FACTS)
    assert view.challenge_id
    assert 2 == probe.calls
    assert log.appended > 0
