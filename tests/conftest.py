"""Shared fixtures: a real Redis (required, never skipped) and a store per backend."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.redis import RedisStore
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


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each storage backend in turn, empty; the contract suite runs once per backend."""
    if request.param == "memory":
        yield MemoryStore()
        return
    backend = RedisStore(
        request.getfixturevalue("redis_url"), namespace=request.getfixturevalue("redis_namespace")
    )
    yield backend
    await backend.aclose()
