"""What the benchmark asks of Redis itself: is it there, how many commands did a phase cost,
who else is connected, and the clean-up of the benchmark's namespace.

Two ways of counting commands, because `INFO commandstats` alone cannot tell round trips:

* `command_calls()`: the server-wide `INFO commandstats` counters. Cheap enough to read
  around a timed phase, but Redis counts there every command a Lua script runs
  (`redis.call`) as well as the script call itself, and the commands of every other client
  of the same Redis. The script calls (EVALSHA, EVAL, ...) per RPC are the round trips,
  provided the store issues nothing else and nobody else is using the Redis.
* `monitor()`: MONITOR, which names the connection of each command and tags the commands
  run inside a script as `lua`, each listed right after the call that ran it. Filtered to
  the xacthuc server's own connections it gives exact round trips, and the work each does
  inside Redis, whatever else is going on. MONITOR slows Redis down, so it is only used
  in an untimed check. The server's only background command to Redis is its health probe's
  PING, counted apart (the audit log and its checkpoints are PostgreSQL's).

The server's connections are recognised by name: the store URL carries `client_name=`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

DRIVER_CLIENT_NAME = "xacthuc-bench-driver"
SERVER_CLIENT_NAME = "xacthuc-bench-server"
SCRIPT_CALLS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
SCRIPT_CALL_NAMES = frozenset(name.upper() for name in SCRIPT_CALLS)
# Sent once per connection, not per RPC.
HANDSHAKE = frozenset({"HELLO", "CLIENT", "SELECT", "AUTH"})
# Commands sent by the server's health probe (a PING every probe interval, whatever the
# load): background work, not per call. (The state cache's feed listens on PostgreSQL now.)
BACKGROUND_COMMANDS = frozenset({"PING"})


class RedisUnreachable(Exception):
    pass


def with_client_name(url: str, name: str) -> str:
    """The URL with `client_name=` added: redis-py then names every connection it opens."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


def _is_local_redis(pid: int) -> bool:
    """Only a redis-server on this machine (and in our PID namespace) can be measured via /proc."""
    try:
        return pid > 0 and Path(f"/proc/{pid}/comm").read_text().startswith("redis")
    except OSError:
        return False


def _first_key(name: str, args: str) -> str:
    """The first key of a command as MONITOR shows it: `EVALSHA sha numkeys key1 ...`, or
    the first argument of any other command."""
    words = args.split(" ", 3)
    if name in SCRIPT_CALL_NAMES:
        return words[2] if len(words) > 2 and words[1] != "0" else ""
    return words[0]


@dataclass
class RoundTrips:
    """Commands the xacthuc server sent during a MONITOR check, and what its scripts ran."""

    calls: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # command name -> count (round trips)
    background: Counter[str] = field(default_factory=Counter)  # the health probe's, off the RPCs
    in_scripts: Counter[str] = field(default_factory=Counter)  # command name -> count, inside Lua

    def per_call(self) -> float:
        return sum(self.sent.values()) / self.calls if self.calls else 0.0

    def in_scripts_per_call(self) -> float:
        return sum(self.in_scripts.values()) / self.calls if self.calls else 0.0

    def describe(self) -> str:
        if not self.calls:
            return "no calls"
        sent = (
            ", ".join(f"{k} {v / self.calls:.2f}" for k, v in sorted(self.sent.items())) or "none"
        )
        inner = ", ".join(f"{k} {v / self.calls:.1f}" for k, v in self.in_scripts.most_common())
        text = f"{self.per_call():.2f} round trips/call ({sent})"
        if inner:
            text += f"; inside scripts {self.in_scripts_per_call():.1f} commands/call ({inner})"
        if self.background:
            reads = ", ".join(
                f"{k} {v / self.calls:.3f}" for k, v in sorted(self.background.items())
            )
            text += f"; not counted, background work (health probe) per call: {reads}"
        return text


class RedisProbe:
    def __init__(self, url: str) -> None:
        self.url = url
        self.version = "?"
        self.pid: int | None = None
        self._r = aioredis.Redis.from_url(
            with_client_name(url, DRIVER_CLIENT_NAME),
            decode_responses=True,
            socket_connect_timeout=3,
            socket_timeout=30,
        )

    async def check(self) -> None:
        """Raise RedisUnreachable with the reason unless Redis answers."""
        try:
            await self._r.ping()
            info = await self._r.info("server")
        except (RedisError, OSError) as e:
            raise RedisUnreachable(f"{type(e).__name__}: {e}") from None
        self.version = str(info.get("redis_version", "?"))
        pid = int(info.get("process_id", 0))
        self.pid = pid if _is_local_redis(pid) else None

    async def command_calls(self) -> Counter[str]:
        """Server-wide calls per command since Redis started (INFO commandstats)."""
        stats = await self._r.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

    async def foreign_clients(self) -> int:
        """Connected clients that are neither this driver nor the xacthuc server."""
        clients = await self._r.client_list()
        return sum(
            1 for c in clients if c.get("name") not in (DRIVER_CLIENT_NAME, SERVER_CLIENT_NAME)
        )

    async def _server_addresses(self) -> set[str]:
        clients = await self._r.client_list()
        return {c["addr"] for c in clients if c.get("name") == SERVER_CLIENT_NAME}

    async def monitor(self, work: Callable[[], Awaitable[int]]) -> RoundTrips:
        """Run `work` (returning how many RPCs it made) under MONITOR and count what the xacthuc
        server's connections sent, and what the scripts they called ran."""
        marker = "xacthuc-bench-marker-" + secrets.token_hex(4)
        seen: list[tuple[str, str, str]] = []  # (client "addr:port" or "lua", command, first key)
        async with self._r.monitor() as monitor:

            async def read() -> None:
                async for line in monitor.listen():
                    name, _, args = line["command"].partition(" ")
                    name = name.upper()
                    if name == "ECHO" and args == marker:
                        return
                    client = (
                        "lua"
                        if line["client_type"] == "lua"
                        else f"{line['client_address']}:{line['client_port']}"
                    )
                    seen.append((client, name, _first_key(name, args)))

            reader = asyncio.create_task(read())
            try:
                calls = await work()
                await self._r.echo(marker)  # everything before it has been fed to MONITOR
                await asyncio.wait_for(reader, 60)
            finally:
                reader.cancel()
        server = await self._server_addresses()
        result = RoundTrips(calls)
        current = ""  # the connection whose script call the following `lua` lines belong to
        for client, name, _key in seen:
            if client == "lua":
                if current in server:
                    result.in_scripts[name] += 1
                continue
            current = client
            if client not in server or name in HANDSHAKE:
                continue
            if name in BACKGROUND_COMMANDS:
                result.background[name] += 1
            else:
                result.sent[name] += 1
        return result

    async def delete_namespace(self, namespace: str) -> int:
        deleted = 0
        batch: list[str] = []
        async for key in self._r.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self._r.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._r.unlink(*batch)
        return deleted

    async def close(self) -> None:
        await self._r.aclose()
