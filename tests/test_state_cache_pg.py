"""Two replicas, one PostgreSQL (issue 11): a change made through one is seen by the other's
cache within 100 ms, and a replica whose LISTEN connection drops stops serving from its cache.

Each replica is a PairStore with its own pool behind a CachedStore with its own
PgInvalidationFeed (its own LISTEN connection), as two server processes would have; one test
runs the other replica as a real `xacthuc serve` process. No fixed sleeps: every wait polls
with a deadline, and every bound is asserted on what a read saw, never on how fast the
machine was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from xacthuc.adapters.store.cached import CachedStore, State
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.pg_invalidations import PgInvalidationFeed
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import AsyncClient
from xacthuc.domain import errors
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.locks import LockKind, LockRequest
from xacthuc.server.app import build_app, make_store
from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.runtime import start_server

from .conftest import STATUS_BLOCK, STATUS_KEY, emptied_database
from .integration.conftest import make_keys, make_settings
from .test_store_contract import LIMITS, NOW, PLATFORM, check, sent
from .test_store_contract import new as new_challenge
from .test_store_contract_guardian import AGED, link, phone_guardian

STALENESS = 0.1  # the default bound, and the issue's


class CountingPairStore(PairStore):
    """Counts account_state round trips."""

    reads = 0

    async def account_state(self, platform: str, account_id: str) -> State:
        self.reads += 1
        return await super().account_state(platform, account_id)


class GatedDatabase(Database):
    """A Database whose dedicated connections (the feed's) wait for `gate` to be open."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = asyncio.Event()
        self.gate.set()

    async def connect(self) -> asyncpg.Connection[asyncpg.Record]:
        await self.gate.wait()
        return await super().connect()


@dataclass
class Replica:
    store: CachedStore
    backend: CountingPairStore
    feed: PgInvalidationFeed
    database: Database

    async def aclose(self) -> None:
        await self.store.aclose()
        await self.database.aclose()


async def replica(
    redis_url: str, namespace: str, database_url: str, *, feed_url: str | None = None
) -> Replica:
    """A replica on `database_url`; its feed listens through `feed_url` (default the same)."""
    db = Database(database_url, min_size=0, max_size=4)
    await db.open()
    backend = CountingPairStore(
        redis_url,
        db,
        namespace=namespace,
        status_block=STATUS_BLOCK,
        status_keys=lambda: STATUS_KEY,
    )
    feed_db = GatedDatabase(feed_url or database_url)
    feed = PgInvalidationFeed(feed_db, max_staleness=STALENESS, dead_after=0.5)
    return Replica(CachedStore(backend, feed), backend, feed, db)


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
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
async def replicas(
    redis_url: str, redis_namespace: str, database_url: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    await (await emptied_database(database_url)).aclose()
    a = await replica(redis_url, redis_namespace, database_url)
    b = await replica(redis_url, redis_namespace, database_url)
    await listening(a)
    await listening(b)
    yield a, b
    await a.aclose()
    await b.aclose()


async def verify(r: Replica | CachedStore, account: str, n: int, now: float = NOW) -> None:
    """Phone-verify `account` through `r` at `now` + 100 n (token tok-n)."""
    store = r.store if isinstance(r, Replica) else r
    at = now + 100 * n
    await sent(store, new_challenge(f"ch-{n}", account=account, now=at))
    await store.check_code(
        check(f"ch-{n}", account=account, now=at + 1, token_id=f"tok-{n}"), LIMITS
    )


async def cached_on(r: Replica, account: str) -> State:
    """Read the account through `r` until an answer comes from its cache (the first read may
    race the notification of the change that set the test up, and is then not kept)."""
    end = time.monotonic() + 10
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


def revoked(s: State) -> bool:
    return s[0] is not None and s[0].status == "revoked"


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
        revoked,
        a.store.revoke_attestation(PLATFORM, "acc-1", NOW + 500, "user_request"),
    )
    assert b.store.cache.stats.invalidations > 0  # told, not only bypassing


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
        b, "kid-1", revoked, a.store.end_guardian_link(PLATFORM, result.link_id, NOW + 20)
    )


async def test_a_new_link_through_one_replica_is_seen_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """Link a child via A while B has "no attestation" cached: B sees the child's within 100 ms."""
    a, b = replicas
    await phone_guardian(a.store)
    assert (None, None) == await cached_on(b, "kid-1")

    await seen_within_staleness(
        b, "kid-1", lambda s: s[0] is not None, a.store.link_guardian(link(), LIMITS)
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


async def test_a_change_rolled_back_announces_nothing(
    replicas: tuple[Replica, Replica],
) -> None:
    """xacthuc_invalidate inside a transaction that rolls back: no notification (they are
    delivered at commit only); the same call committed: B drops the entry."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    await cached_on(b, "acc-1")
    invalidations = b.store.cache.stats.invalidations
    async with a.database.connection() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT xacthuc_invalidate($1, $2)", PLATFORM, "acc-1")
        await tx.rollback()
        await conn.execute("SELECT xacthuc_invalidate($1, $2)", PLATFORM, "acc-2")
    await until(lambda: b.store.cache.stats.invalidations > invalidations)
    assert invalidations + 1 == b.store.cache.stats.invalidations
    await cached_on(b, "acc-1")  # still cached: nothing dropped it


async def test_repeated_reads_cost_one_round_trip(
    redis_url: str, redis_namespace: str, database_url: str, replicas: tuple[Replica, Replica]
) -> None:
    """A hundred reads of one (unchanging) account through a replica: one round trip."""
    a, _ = replicas
    await verify(a, "acc-1", 1)
    c = await replica(redis_url, redis_namespace, database_url)  # listening after the change
    try:
        await listening(c)
        before = c.backend.reads
        for _ in range(100):
            record, _ = await c.store.account_state(PLATFORM, "acc-1")
            assert record is not None
        assert 1 == c.backend.reads - before
        assert 99 == c.store.cache.stats.hits
    finally:
        await c.aclose()


async def terminate(database: Database, pid: int) -> None:
    async with database.connection() as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)


async def test_a_dropped_listen_connection_empties_and_bypasses_the_cache_until_it_is_back(
    replicas: tuple[Replica, Replica],
) -> None:
    """pg_terminate_backend of B's LISTEN connection: B's cache is emptied at once, every
    read goes to PostgreSQL until B listens again, then B caches again."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    await cached_on(b, "acc-1")
    sessions, flushes = b.feed.sessions, b.store.cache.stats.flushes
    killed = b.feed.backend_pid
    assert killed is not None

    await terminate(a.database, killed)
    await until(lambda: b.store.cache.stats.flushes > flushes)

    assert 0 == len(b.store.cache)
    reads = b.backend.reads
    while b.feed.sessions == sessions or not b.feed.current():  # until it listens again
        await b.store.account_state(PLATFORM, "acc-1")
        assert b.backend.reads == reads + 1, "a read was served while the feed was down"
        reads += 1
        await asyncio.sleep(0.001)
    assert killed != b.feed.backend_pid
    await cached_on(b, "acc-1")  # caching again


async def test_a_change_made_while_the_feed_is_down_is_seen_after_it_reconnects(
    replicas: tuple[Replica, Replica],
) -> None:
    """B's LISTEN connection is killed and kept from reconnecting; A revokes meanwhile (the
    notification goes nowhere). B denies while it bypasses, and still denies once it listens
    again: no stale allow from what it had cached before the drop."""
    a, b = replicas
    await verify(a, "acc-1", 1)
    assert not revoked(await cached_on(b, "acc-1"))
    gate = b.feed._database
    assert isinstance(gate, GatedDatabase)
    gate.gate.clear()
    flushes, sessions = b.store.cache.stats.flushes, b.feed.sessions
    pid = b.feed.backend_pid
    assert pid is not None
    await terminate(a.database, pid)
    await until(lambda: b.store.cache.stats.flushes > flushes)

    await a.store.revoke_attestation(PLATFORM, "acc-1", NOW + 500, "user_request")
    assert not b.feed.current()
    assert revoked(await b.store.account_state(PLATFORM, "acc-1"))

    gate.gate.set()
    await until(lambda: b.feed.sessions > sessions and b.feed.current())
    assert revoked(await cached_on(b, "acc-1"))


async def test_a_replica_that_cannot_listen_never_serves_from_its_cache(
    redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """No LISTEN connection (an unreachable server for the feed), no cache: every read is a
    round trip."""
    unreachable = _with_port(database_url, _free_port())
    r = await replica(redis_url, redis_namespace, database_url, feed_url=unreachable)
    try:
        for _ in range(5):
            await r.store.account_state(PLATFORM, "acc-1")
        assert 5 == r.backend.reads
        assert 5 == r.store.cache.stats.bypasses
    finally:
        await r.aclose()


# ---- a connection that stalls: a TCP relay to PostgreSQL we can pause ------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


class Relay:
    """Forwards TCP connections to `upstream`; `paused` holds every byte (a silent
    partition: nothing is closed, nothing arrives)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.paused_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def pause(self) -> None:
        self.paused_at = time.monotonic()
        self.flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_stalled_listen_connection_stops_serving_within_the_staleness_bound(
    redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """The feed's connection goes silent (a partition: no error, no byte): from STALENESS
    after the stall on, the cache serves nothing, without waiting to notice a broken
    connection; past `dead_after` the connection is dropped, and once bytes flow again the
    feed listens again and serves."""
    parts = urlsplit(database_url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    r = await replica(
        redis_url, redis_namespace, database_url, feed_url=_with_port(database_url, port)
    )
    try:
        await listening(r)
        sessions, flushes = r.feed.sessions, r.store.cache.stats.flushes
        relay.pause()
        while r.store.cache.stats.flushes == flushes:  # until the feed gives up on it
            now = time.monotonic()
            assert now - relay.paused_at < 10, "the stalled connection was never dropped"
            current = r.feed.current()
            if now - relay.paused_at >= STALENESS:
                assert not current, f"current {now - relay.paused_at:.3f} s into the stall"
            await asyncio.sleep(0.001)
        relay.flowing.set()
        await until(lambda: r.feed.sessions > sessions and r.feed.current())
    finally:
        await r.aclose()
        await relay.aclose()


# ---- the composition -----------------------------------------------------------------------


async def test_a_redis_url_gives_the_pair_behind_the_state_cache(
    redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """make_store: a Redis URL gives the pair (Redis + PostgreSQL) behind the state cache fed
    by PostgreSQL; XACTHUC_STATE_CACHE_ENTRIES=0 gives the bare pair; memory gets none."""
    settings = {"store_url": redis_url, "store_namespace": redis_namespace}
    cached = make_store(make_settings(**settings, database_url=database_url))
    bare = make_store(make_settings(**settings, database_url=database_url, state_cache_entries=0))
    try:
        assert isinstance(cached, CachedStore)
        assert type(cached.backend) is PairStore
        assert isinstance(cached._feed, PgInvalidationFeed)
        assert type(bare) is PairStore
        assert not isinstance(make_store(make_settings()), CachedStore)
    finally:
        await cached.aclose()
        await bare.aclose()


async def test_repeated_authorize_calls_read_postgres_once(
    redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """Through the gRPC server: twenty Authorize calls for one account, one PostgreSQL read;
    a RevokeAttestation through the same server is seen by the very next call."""
    await (await emptied_database(database_url)).aclose()
    r = await replica(redis_url, redis_namespace, database_url)
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
        await r.aclose()


# ---- two processes -------------------------------------------------------------------------


async def test_a_revocation_through_another_server_process_is_denied_here_within_100_ms(
    tmp_path: Path, redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """Process A is a real `xacthuc serve` on the same Redis and PostgreSQL; process B (this
    one) answers Authorize from its cache. RevokeAttestation through A: every Authorize B
    starts 100 ms or more after A answered is denied."""
    await (await emptied_database(database_url)).aclose()
    keys_file = tmp_path / "keys.json"
    api_key, entry = new_key("alpha", Role.PLATFORM)
    ApiKeys.append_to_file(keys_file, entry)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}
    env.update(
        XACTHUC_API_KEYS_FILE=str(keys_file),
        XACTHUC_STORE_URL=redis_url,
        XACTHUC_STORE_NAMESPACE=redis_namespace,
        XACTHUC_DATABASE_URL=database_url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xacthuc.cli", "serve", "--listen", f"127.0.0.1:{port}",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    b = await replica(redis_url, redis_namespace, database_url)
    keys = ApiKeys()
    keys.add(entry)
    now = time.time() - 1000  # process A decides with the real clock: verified before it
    app = build_app(make_settings(), store=b.store, api_keys=keys, clock=FixedClock(now + 1000))
    server = await start_server(app, "127.0.0.1:0")
    here = await AsyncClient.connect(f"127.0.0.1:{server.port}", api_key=api_key, timeout=10)
    there = await AsyncClient.connect(f"127.0.0.1:{port}", api_key=api_key, timeout=30)
    try:
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(errors.XacthucError):
                    await there.get_jwks(timeout=1)
                    break
                await asyncio.sleep(0.1)
        await verify(b, "acc-1", 1, now=now)
        await listening(b)
        await cached_on(b, "acc-1")
        reads = b.backend.reads
        assert (await here.authorize(account_id="acc-1", action="post")).allowed
        assert reads == b.backend.reads  # from the cache

        await there.revoke_attestation(account_id="acc-1", reason="user_request")
        written = time.monotonic()
        while True:
            began = time.monotonic()
            if not (await here.authorize(account_id="acc-1", action="post")).allowed:
                break
            assert began - written < STALENESS, (
                f"allowed {began - written:.3f} s after process A revoked"
            )
            await asyncio.sleep(0.001)
        assert b.store.cache.stats.invalidations > 0
    finally:
        await here.close()
        await there.close()
        await server.stop(grace=0)
        await b.aclose()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
