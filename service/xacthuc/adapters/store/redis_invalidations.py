"""The invalidation feed of `CachedStore` on Redis: the store's scripts announce each change.

Every script that changes an account's attestation or lock publishes the changed key
(`<ns>:{<platform>}:acct:<account>` or `...:lock:<account>`) on the channel `<ns>:inv`, in
the same atomic step as the change (`invalidate()` in lua/common.lua; called by
check_code, finish_id_check, link_guardian, end_guardian_link, revoke_attestation,
sweep_aged_out, lock_account and unlock_account). Each process keeps one subscribed
connection and drops the entries it is told about.

How the feed knows it has missed nothing. Redis delivers a connection's replies and
messages in order, so once the answer to a PING sent at time t arrives, every message
published before Redis read that PING has been handled: the cache then reflects every
change committed before t. The feed sends a PING every quarter of `max_staleness` and is
*current* while the latest answered PING was sent at most `max_staleness` ago; a connection
that stalls (a silent network partition, a blocked loop) stops the cache serving within
`max_staleness`, with no change lost on the way. A connection that fails, or answers
nothing for `dead_after` seconds, is dropped: the cache is emptied (messages may have been
lost with it), and the feed is not current until a new connection has subscribed and
answered a PING. Reconnection backs off from 50 ms to 1 s.

The connection is made by hand, not with redis-py's PubSub: PubSub reconnects and
subscribes again by itself after a failure, silently losing the messages in between, which
is exactly what must never go unnoticed here.

Why not Redis' own client-side caching (RESP3 `CLIENT TRACKING`)? Redis 7 does track keys
read inside a script (checked on 7.0.15: an EVAL that reads a hash gets its invalidation),
but redis-py's client-side cache (`cache_config`) exists only for the synchronous client and
caches only plain read commands (EVALSHA is not on its allow list), so the asyncio store
could not use it; tracking also invalidates on any write of a key, follows only Redis-held
state (not a record moved to another database), and needs the same loss detection as this
feed. Explicit announcements from the scripts keep it in our hands, and any other backend can
announce the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from xacthuc.adapters.store.cached import StateCache

log = logging.getLogger("xacthuc.store")

RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0


def invalidation_channel(namespace: str) -> str:
    """The channel the store's scripts announce changes on (lua/common.lua builds the same)."""
    return f"{namespace}:inv"


class RedisInvalidationFeed:
    """Listens on `<namespace>:inv` at `url` for `CachedStore` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        max_staleness: float = 0.1,
        dead_after: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_staleness <= 0 or dead_after <= max_staleness:
            raise ValueError("the feed needs 0 < max_staleness < dead_after")
        # No retries: a failed connection must end the session (and empty the cache).
        self._pool: ConnectionPool = ConnectionPool.from_url(
            url, protocol=2, retry=Retry(NoBackoff(), 0), socket_connect_timeout=dead_after
        )
        self._channel = invalidation_channel(namespace)
        self._prefix = f"{namespace}:{{"
        self._max_staleness = max_staleness
        self._heartbeat = max_staleness / 4
        self._dead_after = dead_after
        self._monotonic = monotonic
        self._answered = -math.inf  # when the latest answered PING of this session was sent
        self._cache: StateCache | None = None
        self._task: asyncio.Task[None] | None = None
        self.sessions = 0  # connections that subscribed, since start (tests read it)
        self.client_id: int | None = None  # the current connection's CLIENT ID

    def start(self, cache: StateCache) -> None:
        if self._task is None:
            self._cache = cache
            self._task = asyncio.get_running_loop().create_task(self._run(cache))

    def current(self) -> bool:
        return self._monotonic() - self._answered <= self._max_staleness

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._pool.disconnect()

    async def _run(self, cache: StateCache) -> None:
        delay = RECONNECT_FIRST
        while True:
            subscribed_before = self.sessions
            try:
                await self._session(cache)
            except asyncio.CancelledError:
                self._lost(cache)
                raise
            except Exception as e:  # any failure ends the session alike
                log.warning(
                    "state cache: invalidation feed lost (%s); cache emptied and bypassed "
                    "until it listens again",
                    type(e).__name__,
                )
            self._lost(cache)
            if self.sessions > subscribed_before:
                delay = RECONNECT_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _lost(self, cache: StateCache) -> None:
        """Announcements may have been lost: not current, and nothing cached survives."""
        self._answered = -math.inf
        self.client_id = None
        cache.flush()

    async def _session(self, cache: StateCache) -> None:
        conn: Any = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            await conn.connect()
            await conn.send_command("CLIENT", "ID")
            client_id = int(await conn.read_response(timeout=self._dead_after))
            await conn.send_command("SUBSCRIBE", self._channel)
            reader = asyncio.create_task(self._read(conn, cache))
            pinger = asyncio.create_task(self._ping(conn))
            self.client_id = client_id
            try:
                done, _ = await asyncio.wait({reader, pinger}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                reader.cancel()
                pinger.cancel()
                await asyncio.gather(reader, pinger, return_exceptions=True)
            for task in done:
                task.result()  # the reason the session ended
            raise ConnectionError("the invalidation feed stopped")  # not reached: both loop
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _ping(self, conn: Any) -> None:
        """A PING carrying its send time, every heartbeat; fail once none is answered for
        `dead_after` seconds (the reader may be waiting on a dead connection forever)."""
        started = self._monotonic()
        while True:
            now = self._monotonic()
            if now - max(self._answered, started) > self._dead_after:
                raise TimeoutError("no answer to PING")
            await conn.send_command("PING", repr(now))
            await asyncio.sleep(self._heartbeat)

    async def _read(self, conn: Any, cache: StateCache) -> None:
        while True:
            reply = await conn.read_response(timeout=math.inf)
            if not isinstance(reply, list) or len(reply) < 2:
                raise ConnectionError("unexpected reply on the invalidation feed")
            kind = _text(reply[0])
            if kind == "message":
                self._message(_text(reply[2]), cache)
            elif kind == "pong":
                # Every message published before Redis read this PING was handled above.
                self._answered = max(self._answered, float(_text(reply[1])))
            elif kind == "subscribe":
                self.sessions += 1
            else:
                raise ConnectionError("unexpected reply on the invalidation feed")

    def _message(self, key: str, cache: StateCache) -> None:
        """`<ns>:{<platform>}:acct:<account>` or `...:lock:<account>`: drop that account.
        Anything else (a newer version's format?) names nothing we can find: drop everything."""
        platform, sep, rest = key.removeprefix(self._prefix).partition("}:")
        kind, sep2, account = rest.partition(":")
        if key.startswith(self._prefix) and sep and sep2 and kind in ("acct", "lock"):
            cache.invalidate(platform, account)
        else:
            cache.flush()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
