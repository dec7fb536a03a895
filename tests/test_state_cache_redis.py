"""Two replicas, one Redis (issue 11): a change made through one is seen by the other's cache
within 100 ms, and a replica whose subscription drops stops serving from its cache.

Each replica is a RedisStore with its own connections behind a CachedStore with its own
RedisInvalidationFeed, as two server processes would have. No fixed sleeps: every wait polls
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from xacthuc.adapters.store.cached import CachedStore, State
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.redis import RedisStore
from xacthuc.adapters.store.redis_invalidations import RedisInvalidationFeed
from xacthuc.client import AsyncClient
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.locks import LockKind, LockRequest
from xacthuc.server.app import build_app, make_store
from xacthuc.server.auth import Role
from xacthuc.server.runtime import start_server

from .integration.conftest import make_keys, make_settings
from .test_store_contract import LIMITS, NOW, PLATFORM, check, sent
from .test_store_contract import new as new_challenge
from .test_store_contract_guardian import AGED, link, phone_guardian

STALENESS = 0.1  # the default bound, and the issue's


class CountingRedisStore(RedisStore):
    """Counts account_state round trips."""

    reads = 0

    async def account_state(self, platform: str, account_id: str) -> State:
        self.reads += 1
        return await super().account_state(platform, account_id)


@dataclass
class Replica:
    store: CachedStore
    backend: CountingRedisStore
    feed: RedisInvalidationFeed


def replica(url: str, namespace: str) -> Replica:
    backend = CountingRedisStore(url, namespace=namespace)
    feed = RedisInvalidationFeed(url, namespace=namespace, max_staleness=STALENESS)
    return Replica(CachedStore(backend, feed), backend, feed)


async def until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    """Poll `condition` (every ms) until it holds; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.001)


async def listening(r: Replica) -> None:
    """Start the replica's feed (its first read) and wait until it is current."""
    await r.store.account_state(PLATFORM, "warm-up")
    await until(r.feed.current)


@pytest.fixture
async def replicas(redis_url: str, redis_namespace: str) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = replica(redis_url, redis_namespace), replica(redis_url, redis_namespace)
    await listening(a)
    await listening(b)
    yield a, b
    await a.store.aclose()
    await b.store.aclose()


async def verify(r: Replica, account: str, n: int) -> None:
    """Phone-verify `account` through replica `r` at NOW + 100 n (token tok-n)."""
    now = NOW + 100 * n
    await sent(r.store, new_challenge(f"ch-{n}", account=account, now=now))
    await r.store.check_code(
        check(f"ch-{n}", account=account, now=now + 1, token_id=f"tok-{n}"), LIMITS
    )


async def cached_on(r: Replica, account: str) -> State:
    """Read the account through `r` until an answer comes from its cache (the first read may
    race the announcement of the change that set the test up, and is then not kept)."""
    end = time.monotonic() + 5
    while True:
        reads = r.backend.reads
        state = await r.store.account_state(PLATFORM, account)
        if reads == r.backend.reads:
            return state
        assert time.monotonic() < end, f"never served from the cache: {r.store.cache.stats}"
        await asyncio.sleep(0.001)


async def seen_within_staleness(
    r: Replica, account: str, changed: Callable[[State], bool], write: Awaitable[object]
) -> float:
    """Run `write` (through the other replica), then read through `r` until `changed` holds.
    Every read that starts STALENESS or more after the write returned must see the change;
    returns how long after the write the change was first seen."""
    await write
    written = time.monotonic()
    while True:
        began = time.monotonic()
        state = await r.store.account_state(PLATFORM, account)
        if changed(state):
            return began - written
        assert began - written < STALENESS, (
            f"a read {began - written:.3f} s after the change still returned the old state"
        )
        await asyncio.sleep(0.001)


async def test_a_revocation_through_one_replica_is_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """Revoke via A: B, which had the active attestation cached, denies within 100 ms."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    record, _ = await cached_on(b, "acc-1")
    assert record is not None
    assert "active" == record.status

    await seen_within_staleness(
        b,
        "acc-1",
        lambda s: s[0] is not None and s[0].status == "revoked",
        a.store.revoke_attestation(PLATFORM, "acc-1", NOW + 500, "user_request"),
    )


async def test_a_lock_and_an_unlock_through_one_replica_are_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """Lock via A: B sees the lock within 100 ms; unlock via A: B sees it lifted."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    assert (await cached_on(b, "acc-1"))[1] is None
    lock = LockRequest(PLATFORM, "acc-1", LockKind.PERMANENT, None, "court_order", "r-1", NOW + 500)

    await seen_within_staleness(
        b, "acc-1", lambda s: s[1] is not None and s[1].holds(NOW + 501), a.store.lock_account(lock)
    )
    held = (await cached_on(b, "acc-1"))[1]
    assert held is not None
    assert held.holds(NOW + 501)
    await seen_within_staleness(
        b,
        "acc-1",
        lambda s: s[1] is not None and not s[1].holds(NOW + 601),
        a.store.unlock_account(PLATFORM, "acc-1", NOW + 600, "appeal_upheld"),
    )


async def test_a_withdrawn_link_through_one_replica_is_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """Withdraw a guardian link via A: B stops allowing the child within 100 ms."""
    a, b = replicas
    await phone_guardian(a.store)
    result = await a.store.link_guardian(link(), LIMITS)
    record, _ = await cached_on(b, "kid-1")
    assert record is not None
    assert "active" == record.status

    await seen_within_staleness(
        b,
        "kid-1",
        lambda s: s[0] is not None and s[0].status == "revoked",
        a.store.end_guardian_link(PLATFORM, result.link_id, NOW + 20),
    )


async def test_an_aged_out_child_through_one_replica_is_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """The age-out sweep via A (a background job naming no account): B sees `aged_out`."""
    a, b = replicas
    await phone_guardian(a.store)
    await a.store.link_guardian(link(), LIMITS)
    await cached_on(b, "kid-1")

    await seen_within_staleness(
        b,
        "kid-1",
        lambda s: s[0] is not None and s[0].status == "aged_out",
        a.store.sweep_aged_out(PLATFORM, AGED + 1, 10),
    )


async def test_a_new_verification_through_one_replica_is_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """Re-verify via A (a new attestation replaces a revoked one): B sees the new one."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    await a.store.revoke_attestation(PLATFORM, "acc-1", NOW + 150, "user_request")
    record, _ = await cached_on(b, "acc-1")
    assert record is not None
    assert "revoked" == record.status

    await seen_within_staleness(
        b,
        "acc-1",
        lambda s: s[0] is not None and (s[0].token_id, s[0].status) == ("tok-3", "active"),
        verify(a, "acc-1", 3),
    )


async def test_repeated_reads_cost_one_round_trip(
    redis_url: str, redis_namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    """A hundred reads of one (unchanging) account through a replica: one round trip."""
    a, _ = replicas
    await verify(a, "acc-1", 1)
    c = replica(redis_url, redis_namespace)  # listening after the change: no announcement due
    try:
        await listening(c)
        before = c.backend.reads
        for _ in range(100):
            record, _ = await c.store.account_state(PLATFORM, "acc-1")
            assert record is not None
        assert 1 == c.backend.reads - before
        assert 99 == c.store.cache.stats.hits
    finally:
        await c.store.aclose()


async def test_a_dropped_subscription_empties_and_bypasses_the_cache_until_it_is_back(
    redis_url: str, replicas: tuple[Replica, Replica]
) -> None:
    """CLIENT KILL of B's subscriber: B's cache is emptied at once, every read goes to Redis
    until B has subscribed again, then B caches again."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    await cached_on(b, "acc-1")
    sessions, flushes = b.feed.sessions, b.store.cache.stats.flushes
    killed_id = b.feed.client_id
    assert killed_id is not None

    async with aioredis.Redis.from_url(redis_url) as admin:
        assert 1 == await admin.client_kill_filter(_id=str(killed_id))
    await until(lambda: b.store.cache.stats.flushes > flushes)

    assert 0 == len(b.store.cache)
    reads = b.backend.reads
    while b.feed.sessions == sessions or not b.feed.current():  # until it listens again
        await b.store.account_state(PLATFORM, "acc-1")
        assert b.backend.reads == reads + 1, "a read was served while the feed was down"
        reads += 1
        await asyncio.sleep(0.001)
    assert killed_id != b.feed.client_id
    await cached_on(b, "acc-1")  # caching again


# ---- a Redis of our own, to stall it (CLIENT PAUSE would stall every helper on the shared one)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < end, "redis-server did not start"
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_stalled_subscription_stops_serving_within_the_staleness_bound(
    private_redis: str,
) -> None:
    """Redis answers nothing for a while (CLIENT PAUSE, as a silent partition would): the
    replica stops serving from its cache within 100 ms, without waiting to notice a broken
    connection, and serves again once PINGs are answered."""
    r = replica(private_redis, "stall")
    try:
        await listening(r)
        async with aioredis.Redis.from_url(private_redis) as admin:
            await admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
            paused = time.monotonic()
            await until(lambda: not r.feed.current())
            assert time.monotonic() - paused < STALENESS + 0.05
            await until(r.feed.current)
        assert time.monotonic() - paused >= 0.5
    finally:
        await r.store.aclose()


async def test_a_replica_that_cannot_subscribe_never_serves_from_its_cache(
    redis_url: str, redis_namespace: str
) -> None:
    """No subscription (an unreachable feed), no cache: every read is a round trip."""
    backend = CountingRedisStore(redis_url, namespace=redis_namespace)
    feed = RedisInvalidationFeed(f"redis://127.0.0.1:{_free_port()}/0", namespace=redis_namespace)
    store = CachedStore(backend, feed)
    try:
        for _ in range(5):
            await store.account_state(PLATFORM, "acc-1")
        assert 5 == backend.reads
        assert 5 == store.cache.stats.bypasses
    finally:
        await store.aclose()


async def test_a_redis_url_gives_the_pair_without_the_redis_fed_cache(
    redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """make_store: a Redis URL gives the pair (Redis + PostgreSQL). The state changes in
    PostgreSQL, so the cache fed by Redis announcements is not put in front of it (its
    PostgreSQL feed is the next step); memory gets none."""
    pair = make_store(
        make_settings(
            store_url=redis_url, store_namespace=redis_namespace, database_url=database_url
        )
    )
    try:
        assert type(pair) is PairStore
        assert not isinstance(make_store(make_settings()), CachedStore)
    finally:
        await pair.aclose()


async def test_repeated_authorize_calls_read_redis_once(
    redis_url: str, redis_namespace: str
) -> None:
    """Through the gRPC server: twenty Authorize calls for one account, one Redis read; a
    RevokeAttestation through the same server is seen by the very next call."""
    r = replica(redis_url, redis_namespace)
    keys, raw = make_keys()
    app = build_app(make_settings(), store=r.store, api_keys=keys, clock=FixedClock(NOW + 200))
    server = await start_server(app, "127.0.0.1:0")
    client = await AsyncClient.connect(
        f"127.0.0.1:{server.port}", api_key=raw[("alpha", Role.PLATFORM)], timeout=10
    )
    try:
        await verify(r, "acc-1", 1)
        await listening(r)
        await cached_on(r, "acc-1")
        before = r.backend.reads
        for _ in range(20):
            assert (await client.authorize(account_id="acc-1", action="post")).allowed
        assert before == r.backend.reads
        await client.revoke_attestation(account_id="acc-1", reason="user_request")
        assert not (await client.authorize(account_id="acc-1", action="post")).allowed
    finally:
        await client.close()
        await server.stop(grace=0)
