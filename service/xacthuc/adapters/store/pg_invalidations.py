"""The invalidation feed of `CachedStore` on PostgreSQL: the state's functions announce changes.

Every function that changes an account's attestation or lock calls
`xacthuc_invalidate(platform, account)` (migrations 0002 and 0004: xacthuc_attest,
xacthuc_revoke, xacthuc_sweep_aged_out, xacthuc_lock_account, xacthuc_unlock_account), a
`pg_notify('xacthuc_inv', '["<platform>", "<account>"]')` that PostgreSQL delivers when, and
only if, the transaction commits. Each process keeps one connection of its own (not from the
pool) LISTENing on `xacthuc_inv`, and drops the entries it is told about.

How the feed knows it has missed nothing. A listening backend that is told of a commit sends
the notification to its client before it reads the client's next query (it is signalled
before the writer's commit returns), so once the answer to a `SELECT 1` sent at time t
arrives, every notification of a change committed before t has been handled: the cache then
reflects every change committed before t. The feed sends one every quarter of
`max_staleness` and is *current* while the latest answered one was sent at most
`max_staleness` ago; a connection that stalls (a silent network partition, a blocked
backend) stops the cache serving within `max_staleness`, with no change lost on the way. A
connection that fails, is terminated, or answers nothing for `dead_after` seconds is
dropped: the cache is emptied (notifications may have been lost with it), and the feed is not
current until a new connection has LISTENed and answered a `SELECT 1`. Reconnection backs off
with full jitter from 50 ms to 1 s (xacthuc.domain.backoff).

The same semantics as the Redis feed this replaces (its PUBLISHes came from the Lua scripts
that changed the state in Redis; the state is in PostgreSQL now).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xacthuc.adapters.store.cached import StateCache
from xacthuc.domain.backoff import full_jitter

if TYPE_CHECKING:
    import asyncpg

    from xacthuc.adapters.store.postgres import Database

log = logging.getLogger("xacthuc.store")

CHANNEL = "xacthuc_inv"  # xacthuc_invalidate() in migration 0002 notifies on it
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0


class PgInvalidationFeed:
    """Listens on `xacthuc_inv` of `database` for `CachedStore` (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        *,
        max_staleness: float = 0.1,
        dead_after: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_staleness <= 0 or dead_after <= max_staleness:
            raise ValueError("the feed needs 0 < max_staleness < dead_after")
        self._database = database
        self._max_staleness = max_staleness
        self._heartbeat = max_staleness / 4
        self._dead_after = dead_after
        self._monotonic = monotonic
        self._answered = -math.inf  # when the latest answered SELECT 1 of this session was sent
        self._task: asyncio.Task[None] | None = None
        self.sessions = 0  # connections that LISTENed, since start (tests read it)
        self.backend_pid: int | None = None  # the current connection's backend (tests kill it)

    def start(self, cache: StateCache) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(cache))

    def current(self) -> bool:
        return self._monotonic() - self._answered <= self._max_staleness

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, cache: StateCache) -> None:
        failures = 0
        while True:
            listened_before = self.sessions
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
            failures = 1 if self.sessions > listened_before else failures + 1
            await asyncio.sleep(full_jitter(failures, base=RECONNECT_FIRST, cap=RECONNECT_MAX))

    def _lost(self, cache: StateCache) -> None:
        """Notifications may have been lost: not current, and nothing cached survives."""
        self._answered = -math.inf
        self.backend_pid = None
        cache.flush()

    async def _session(self, cache: StateCache) -> None:
        conn = await asyncio.wait_for(self._database.connect(), self._dead_after)
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def terminated(_: object) -> None:  # closed by the server, the network or us
            if not closed.done():
                closed.set_result(None)

        def notified(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            self._message(payload, cache)

        conn.add_termination_listener(terminated)
        try:
            await conn.add_listener(CHANNEL, notified)  # LISTEN, answered
            self.backend_pid = conn.get_server_pid()
            self.sessions += 1
            pinger = asyncio.ensure_future(self._ping(conn))
            try:
                await asyncio.wait({pinger, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pinger.cancel()
                await asyncio.gather(pinger, return_exceptions=True)
                closed.cancel()
            if pinger.done() and not pinger.cancelled():
                pinger.result()  # the reason the session ended (a failed or late SELECT 1)
            raise ConnectionError("the LISTEN connection closed")
        finally:
            conn.terminate()  # no goodbye: it may be dead, and its LISTEN ends with it

    async def _ping(self, conn: asyncpg.Connection[Any]) -> None:
        """A SELECT 1 every heartbeat, answered within `dead_after` or the session ends (the
        connection may be dead without a word: a partition)."""
        while True:
            sent = self._monotonic()
            await conn.execute("SELECT 1", timeout=self._dead_after)
            # Every notification of a change committed before `sent` was handled above.
            self._answered = max(self._answered, sent)
            await asyncio.sleep(self._heartbeat)

    def _message(self, payload: object, cache: StateCache) -> None:
        """`["<platform>", "<account>"]`: drop that account. Anything else (a newer version's
        format?) names nothing we can find: drop everything."""
        try:
            parsed = json.loads(payload) if isinstance(payload, str) else None
        except ValueError:
            parsed = None
        if (
            isinstance(parsed, list)
            and len(parsed) == 2
            and all(isinstance(part, str) for part in parsed)
        ):
            cache.invalidate(parsed[0], parsed[1])
        else:
            cache.flush()
