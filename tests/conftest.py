"""Shared fixtures: a real Redis (required, never skipped) and a store per backend."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.redis import RedisStore
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


# Contract stores draw no random status-index key and use small blocks, so a test knows the
# index of a platform's n-th token (nth_index) and sees blocks open after a few tokens.
STATUS_KEY = "5a" * 32
STATUS_BLOCK = 64


def nth_index(n: int) -> int:
    """The status-list index of a contract store's n-th token (from 0) on one platform."""
    return permuted_index(STATUS_KEY, n, STATUS_BLOCK)


def memory_store() -> MemoryStore:
    return MemoryStore(status_block=STATUS_BLOCK, status_keys=lambda: STATUS_KEY)


def redis_store(url: str, namespace: str, client: aioredis.Redis | None = None) -> RedisStore:
    return RedisStore(
        url,
        namespace=namespace,
        client=client,
        status_block=STATUS_BLOCK,
        status_keys=lambda: STATUS_KEY,
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each storage backend in turn, empty; the contract suite runs once per backend."""
    if request.param == "memory":
        yield memory_store()
        return
    backend = redis_store(
        request.getfixturevalue("redis_url"), request.getfixturevalue("redis_namespace")
    )
    yield backend
    await backend.aclose()
