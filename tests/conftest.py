"""Shared fixtures: a real Redis, a real Redis Cluster and a real PostgreSQL (all required,
never skipped) and a store per backend."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
from redis.cluster import RedisCluster

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.pg_audit import GroupAppender
from xacthuc.adapters.store.postgres import Database, migrate
from xacthuc.adapters.store.redis import RedisClient
from xacthuc.adapters.store.redis_cluster import parse_cluster_url
from xacthuc.domain.b64 import b64url_encode
from xacthuc.domain.records import (
    CHALLENGE_CHARS,
    CHALLENGE_PREFIX,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    Limits,
    NewChallenge,
    challenge_head,
    challenge_tag,
)
from xacthuc.domain.status_index import permuted_index
from xacthuc.ports.store import Store


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (XACTHUC_TEST_REDIS_URL); the run fails when it does not answer."""
    url = os.environ.get("XACTHUC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError:
        pytest.fail(
            f"Redis is required at {url} for these tests: start it (redis-server) "
            "or set XACTHUC_TEST_REDIS_URL",
            pytrace=False,
        )
    return url


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A fresh key namespace for one test; every key under it is deleted afterwards."""
    namespace = "t" + secrets.token_hex(6)
    yield namespace
    with redis.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)


def sync_cluster(url: str) -> RedisCluster:
    """A synchronous client of the cluster at a `redis+cluster://` URL (for fixtures; by
    its first startup node, the URL's options left out: the test clusters need none)."""
    (host, port), *_ = parse_cluster_url(url)[0]
    return RedisCluster(
        host=host,
        port=port,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
    )


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """The test Redis Cluster (XACTHUC_TEST_REDIS_CLUSTER_URL, `redis+cluster://host:port,...`,
    which scripts/test.sh starts: 3 masters); the run fails when it is unset or not ok."""
    url = os.environ.get("XACTHUC_TEST_REDIS_CLUSTER_URL", "")
    how = (
        "scripts/test.sh starts one (3 masters on free ports); by hand: "
        "`.venv/bin/python -m tests.local_cluster start DIR` prints the URL to export, "
        "`... stop DIR` ends it"
    )
    if not url:
        pytest.fail(
            f"a Redis Cluster is required for these tests: set XACTHUC_TEST_REDIS_CLUSTER_URL ({how})",
            pytrace=False,
        )
    try:
        with sync_cluster(url) as client:
            states = client.cluster_info(target_nodes=RedisCluster.PRIMARIES)
    except (redis.RedisError, redis.exceptions.RedisClusterException, ValueError) as e:
        pytest.fail(
            f"the Redis Cluster at {url} does not answer ({type(e).__name__}: {e}); {how}",
            pytrace=False,
        )
    bad = {node: info.get("cluster_state") for node, info in states.items()}
    if any(state != "ok" for state in bad.values()):
        pytest.fail(f"the Redis Cluster at {url} is not ok: {bad}", pytrace=False)
    return url


@pytest.fixture
def redis_cluster_namespace(redis_cluster_url: str) -> Iterator[str]:
    """A fresh key namespace on the test cluster; its keys, on every node, deleted after."""
    namespace = "t" + secrets.token_hex(6)
    yield namespace
    with sync_cluster(redis_cluster_url) as client:
        for key in client.scan_iter(
            match=f"{namespace}:*", count=1000, target_nodes=RedisCluster.PRIMARIES
        ):
            client.delete(key)


# ------------------------------------------------------------------------------ PostgreSQL

T = TypeVar("T")


def run_sync(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own loop in another thread (from a sync fixture,
    whatever loop the test has)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro()).result()


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def database_admin_url() -> str:
    """A PostgreSQL server where the tests may create databases (XACTHUC_TEST_DATABASE_URL,
    default the trust-auth server on 127.0.0.1:5432); the run fails when it does not answer."""
    url = os.environ.get(
        "XACTHUC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )

    async def ping() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        run_sync(ping)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        pytest.fail(
            f"PostgreSQL is required at {url} for these tests ({e}): start it or set "
            "XACTHUC_TEST_DATABASE_URL (scripts/test.sh starts one when it can)",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def new_database(database_admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases (no schema); every one is dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = "xacthuc_t" + secrets.token_hex(6)

        async def create() -> None:
            conn = await asyncpg.connect(database_admin_url, timeout=5)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        run_sync(create)
        made.append(name)
        return with_database(database_admin_url, name)

    yield make

    async def drop() -> None:
        conn = await asyncpg.connect(database_admin_url, timeout=5)
        try:
            for name in made:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(drop)


@pytest.fixture(scope="session")
def database_url(new_database: Callable[[], str]) -> str:
    """This run's database, migrated to this build's schema (fresh per test session)."""
    url = new_database()

    async def setup() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    run_sync(setup)
    return url


async def emptied_database(url: str) -> Database:
    """The migrated database at `url`, every table emptied, as an open pool (close it)."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names}")
    finally:
        await conn.close()
    db = Database(url, min_size=0, max_size=4)
    await db.open()
    return db


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """The migrated database, every table emptied, as a pool for one test. (An async
    fixture that picks backends by parameter uses `emptied_database(database_url)`.)"""
    db = await emptied_database(database_url)
    yield db
    await db.aclose()


# Contract stores draw no random status-index key and use small blocks, so a test knows the
# index of a platform's n-th token (nth_index) and sees blocks open after a few tokens.
STATUS_KEY = "5a" * 32
STATUS_BLOCK = 64


def nth_index(n: int) -> int:
    """The status-list index of a contract store's n-th token (from 0) on one platform."""
    return permuted_index(STATUS_KEY, n, STATUS_BLOCK)


def memory_store() -> MemoryStore:
    return MemoryStore(status_block=STATUS_BLOCK, status_keys=lambda: STATUS_KEY)


def pair_store(
    url: str,
    namespace: str,
    database: Database,
    client: RedisClient | None = None,
    *,
    audit: GroupAppender | None = None,
) -> PairStore:
    return PairStore(
        url,
        database,
        namespace=namespace,
        client=client,
        audit=audit,
        status_block=STATUS_BLOCK,
        status_keys=lambda: STATUS_KEY,
    )


@pytest.fixture
async def pair(
    redis_url: str, redis_namespace: str, database: Database
) -> AsyncIterator[PairStore]:
    """The pair store (Redis + PostgreSQL) over this test's namespace and database."""
    store = pair_store(redis_url, redis_namespace, database)
    yield store
    await store.aclose()


@pytest.fixture(params=["memory", "pair", "pair-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each storage backend in turn, empty; the contract suites run once per backend.
    "pair": Redis for the ephemeral state + PostgreSQL, the system of record (issue 10);
    "pair-cluster": the same with its Redis half on the test Redis Cluster (3 masters)."""
    if request.param == "memory":
        yield memory_store()
        return
    db = await emptied_database(request.getfixturevalue("database_url"))
    if request.param == "pair-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        namespace = request.getfixturevalue("redis_cluster_namespace")
    else:
        url = request.getfixturevalue("redis_url")
        namespace = request.getfixturevalue("redis_namespace")
    backend = pair_store(url, namespace, db)
    yield ServiceIds(backend) if request.param == "pair-cluster" else backend
    await backend.aclose()
    await db.aclose()


class ServiceIds:
    """A store whose challenge ids the contract suites name freely ("ch-1"), seen through
    ids of the service's form carrying their number's tag (records.py): a store sharded by
    number (the pair on a Redis Cluster) finds a challenge's shard from its id, so it is
    given only ids the service makes. Each name maps to one id, and back in what the store
    answers (views, audit records); ids of the service's form pass unchanged."""

    def __init__(self, inner: PairStore) -> None:
        self.inner = inner
        self._ids: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _id(self, name: str, phone: str = "") -> str:
        if challenge_tag(name) is not None:
            return name
        if name not in self._ids:
            digest = b64url_encode(hashlib.sha256(name.encode()).digest())
            head = challenge_head(phone, "")
            self._ids[name] = head + digest[: len(CHALLENGE_PREFIX) + CHALLENGE_CHARS - len(head)]
            self._names[self._ids[name]] = name
        return self._ids[name]

    def _view(self, view: ChallengeView) -> ChallengeView:
        name = self._names.get(view.challenge_id, view.challenge_id)
        return dataclasses.replace(view, challenge_id=name)

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        new = dataclasses.replace(new, challenge_id=self._id(new.challenge_id, new.phone))
        return self._view(await self.inner.start_challenge(new, limits))

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.inner.confirm_sent(platform, self._id(challenge_id), account_id, now)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.inner.abort_challenge(platform, self._id(challenge_id), account_id, now)

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        check = dataclasses.replace(check, challenge_id=self._id(check.challenge_id))
        return await self.inner.check_code(check, limits)

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        records = await self.inner.audit_records(platform, start, stop)
        for made, name in self._names.items():
            records = [
                r.replace(f'"challenge":"{made}"', f'"challenge":{json.dumps(name)}')
                for r in records
            ]
        return records
