"""A script that changes state runs at most once per call, even on a client that retries.

redis-py 6+ retries a failed command three times by default (`Retry` on every `Redis`), and
a command whose reply was lost may have run: a code consumed twice, a budget charged twice,
a record handed back twice. The store sends its scripts (every one changes state) on a
pooled connection without the client's `Retry`.

The fault: a TCP proxy in front of Redis that forwards a script's call, lets Redis run it,
then drops the connection instead of forwarding a successful reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import StoreUnavailable

from .conftest import pair_store
from .test_store_contract import LIMITS, PLATFORM, new, phone_n


@dataclass
class LossyProxy:
    """Forwards to Redis; drops the connection in place of the first `drops` successful
    replies to EVALSHA (error replies, such as NOSCRIPT, pass)."""

    target: tuple[str, int]
    drops: int
    port: int = 0
    dropped: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(*self.target)
        armed = asyncio.Event()

        async def upstream() -> None:
            while data := await cr.read(65536):
                if b"EVALSHA" in data.upper():
                    armed.set()
                sw.write(data)
                await sw.drain()
            sw.close()

        async def downstream() -> None:
            while data := await sr.read(65536):
                if armed.is_set() and not data.startswith(b"-") and self.dropped < self.drops:
                    self.dropped += 1
                    cw.transport.abort()
                    sw.transport.abort()
                    return
                armed.clear()
                cw.write(data)
                await cw.drain()
            cw.close()

        up = asyncio.create_task(upstream())
        self._tasks.add(up)
        with contextlib.suppress(ConnectionError, OSError):
            await downstream()
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await up
        self._tasks.discard(up)


@contextlib.asynccontextmanager
async def lossy_proxy(redis_url: str, drops: int) -> AsyncIterator[LossyProxy]:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    proxy = LossyProxy((host, int(port)), drops)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = int(server.sockets[0].getsockname()[1])
    async with server:
        yield proxy


def retrying_client(port: int) -> aioredis.Redis:
    """What an operator might pass in: a client that retries every failed command 3 times."""
    return aioredis.Redis(
        host="127.0.0.1", port=port, decode_responses=True, retry=Retry(NoBackoff(), 3)
    )


async def test_a_script_runs_once_on_a_retrying_client(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    """The reply to start_challenge is lost: the caller sees StoreUnavailable, and the
    script ran once (one send counted; a retrying client would have sent it four times).
    The connection that lost its reply is not put back in use: the next call works."""
    async with lossy_proxy(redis_url, drops=1) as proxy:
        client = retrying_client(proxy.port)
        store = pair_store(redis_url, redis_namespace, database, client=client)
        with pytest.raises(StoreUnavailable):
            await store.start_challenge(new("ch-1"), LIMITS)
        assert 1 == proxy.dropped
        await store.start_challenge(new("ch-2", phone=phone_n(2)), LIMITS)
        await client.aclose()
    async with aioredis.Redis.from_url(redis_url) as direct:
        assert 2 == await direct.llen(f"{redis_namespace}:{PLATFORM}:{{pl:{PLATFORM}}}:pl")
