"""Throughput and latency of xacthuc's hot RPCs, next to a bare gRPC echo server on the same machine.

    .venv/bin/python benchmarks/run.py [--duration 10] [--concurrency 32] [--store redis|memory]
                                       [--redis-url redis://127.0.0.1:6379/0] [--warmup 2] [--raw-stub]
                                       [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Method
------
Processes. The xacthuc server and a bare grpc.aio echo server (`servers.py`) each run in
their own OS process; this process is the load driver. Phases run one after another, never
together, so the server being measured shares the machine only with the driver and Redis.
Nothing is pinned to a CPU: on a small machine the server, the driver and Redis share the
cores, and the `cpu%` column shows who used how much (and how much went to unrelated
processes, which make a run's numbers low).

The xacthuc server is built exactly as in production (`build_app` + `start_server`): dev
mode, but fixed OTP and pseudonym HMAC keys, one platform API key made with `new_key`
(the driver keeps the key, the server gets only its hashed entry), real Redis under a fresh
random namespace whose keys are deleted at the end, and send limits raised through Settings
overrides so that the benchmark measures the service, not the rate limits. Every start uses
a new phone number, account, idempotency key and client IP (from 198.18.0.0/15, the range
set aside for benchmarks), so no per-number limit, cooldown or account cap is ever reached.

SMS. The server uses the production sender, `HttpSmsSender`, pointed at a small aiohttp
gateway on loopback inside this driver process, which keeps `message_id` (the challenge id)
-> code. This was chosen over a test sender writing codes to Redis because it keeps the
server's code path the production one (the HTTP hop to the gateway is part of what a start
costs, as it is in production) and it adds no Redis command of its own, so the Redis count
per start is the service's alone. Its cost: the gateway's CPU is charged to the driver in
the start phase.

Load. For each RPC, N workers (`--concurrency`, default 32) run a closed loop: call, wait,
record the latency, call again; first a warm-up (discarded), then `--duration` seconds.
Workers share N/8 channels (8 workers per channel; each channel has its own TCP connection
thanks to `grpc.use_local_subchannel_pool`), the same arrangement for echo and xacthuc. The
xacthuc RPCs go through the shipped `xacthuc.client.AsyncClient`, one per channel, as
platforms call them; `--raw-stub` adds a confirm phase through the generated stub, to show
what the client library itself costs.

Echo is timed first and again last; the better of the two is the yardstick, so that a burst
of unrelated load during one of them does not flatter every ratio.

Authorize is measured after confirm, on the accounts the confirm phases verified (each call
asks for "post" on the next of them, round robin), as a platform calls it before every post:
the decision table over the account's attestation and lock, which the server's state cache
(issue 11) answers from memory once it has read them (one `account_state` script otherwise).
The MONITOR check reads its accounts once before counting, so its figure is a warm cache's.

VerifyPersonalId is measured next, against the dev-mode identity registry: the in-process
sandbox (`SandboxRegistry`), loaded from a temporary JSON Lines file of synthetic citizens
written by the driver (`citizens.py`; at least 50,000, more for long runs) and given to the
server through the `registry_sandbox_file` override. Every call verifies a fresh account as
a different person (number, name and date of birth as on file, purpose
"no_vietnamese_mobile" with the user's declaration) through `AsyncClient.verify_personal_id`,
so each call is the first attempt on its account and its number and no attempt budget, lock
or accounts-per-number cap comes into play: the two store scripts (begin_id_check, then
finish_id_check with the match and the new attestation), the registry look-up and the
signed token. The registry answers from memory, so this measures the service, not a real
e-ID provider (whose network round trip would dominate in production). Should the file's
people run out, the phase ends early and the report says so.

Offline verification is measured in this process, after the timed RPCs (the servers idle):
the SDK's `AttestationVerifier.verify` on a real attestation token the server signed, against
the raw Ed25519 `verify` (`cryptography`) of that same token's signature over the same
signing input, in alternating rounds; each side's best round counts. The ratio is the share
of the bare signature check the SDK keeps (header, claims, audience, expiry checks and
JSON decoding included).

Confirm is measured alone: every confirm consumes a challenge made beforehand by a start
(first those of the start phase, then more made, untimed, before the timed confirm phase,
as many as the confirm warm-up rate says are needed). Should they still run out, the phase
ends early and the report says so.

Redis. Around each timed phase the driver reads `INFO commandstats` and reports the script
calls (EVALSHA, EVAL, ...) per RPC: the round trips, as the store makes one script call per
operation. Those counters are server-wide, so any other client of the same Redis inflates
them (the report warns when one is connected). After the timed phases, an untimed check
runs a thousand of each RPC under MONITOR and counts, exactly, the commands sent by the
xacthuc server's own connections, and those its scripts ran (see `redis_probe.py`; the
health probe's PINGs are shown apart: the audit log and its checkpointer are PostgreSQL's).

Redis memory (issue 11), last: `redis_memory.py` on a private redis-server of its own (free
port, nothing else connected, so `INFO memory` is exact): `--memory-starts` starts through
the real start path with nothing shared between them, bytes per pending challenge (its
state: the audit records go to PostgreSQL); the goal is at most 700 B.

Output: the table (rps, p50/p99 latency, rps as a fraction of echo's, Redis round trips,
CPU), then, as the last line, one JSON object. Exit status 1 if any timed call failed or
something could not start (the reason is printed), 130 on Ctrl-C; the child processes are
stopped in every case (and exit by themselves should this process be killed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from citizens import Citizen, make_citizens, write_citizens
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from loadgen import CpuMeter, Exhausted, Op, PhaseResult, closed_loop
from redis.exceptions import RedisError
from redis_memory import GOAL_BYTES, Footprint, measure, private_redis
from redis_probe import (
    SCRIPT_CALLS,
    SERVER_CLIENT_NAME,
    RedisProbe,
    RedisUnreachable,
    RoundTrips,
    with_client_name,
)
from sms_gateway import SmsGateway

from xacthuc.client import AsyncClient, AttestationVerifier
from xacthuc.client._wire import channel_options
from xacthuc.server.auth import Role, new_key
from xacthuc.v1 import verification_pb2, verification_pb2_grpc

SERVERS = Path(__file__).resolve().parent / "servers.py"
ECHO_METHOD = "/bench.Echo/Echo"
ECHO_PAYLOAD = bytes(range(100))
PLATFORM = "bench"
WORKERS_PER_CHANNEL = 8
CALL_TIMEOUT = 5.0
MONITOR_CALLS = 1000  # RPCs per kind in the MONITOR round-trip check
ECHO, START, CONFIRM, JWKS = "Echo", "StartPhoneVerification", "ConfirmPhoneVerification", "GetJwks"
AUTHORIZE = "Authorize"
VERIFY_ID = "VerifyPersonalId"
ECHO_AGAIN = "Echo (again, at the end)"
RAW_CONFIRM = "ConfirmPhoneVerification (raw stub)"
CEILING = "Ceiling: EVALSHA + Ed25519 sign"
CEILING_DURABLE = "Ceiling, durable: EVALSHA + group-committed INSERT + sign"
# Goals as ratios to echo rps in the same run, one worker (issue 11; meant with the durability
# of issue 10 on, --database-url), and issue 10's own floor with durability on.
GOALS = {
    AUTHORIZE: 0.60,
    CONFIRM: 0.35,
    START: 0.25,
    VERIFY_ID: 0.25,
}
DURABLE_GOALS = {CONFIRM: 0.30, AUTHORIZE: 0.50}
GOAL_OFFLINE_RATIO = 0.80
OFFLINE_ROUNDS = 6  # alternating SDK / raw rounds of the offline verification measurement
# Synthetic citizens in the sandbox registry file: one per VerifyPersonalId call (warm-up,
# timed phase and MONITOR check), sized for a rate well above what the server can reach.
CITIZENS_MIN = 50_000
CITIZENS_RPS_BOUND = 5_000
PG_STATS_DELAY = 1.2  # s: PostgreSQL backends report their statistics at most once a second
OTHER_LOAD_WARN = 15  # % of one core used by unrelated processes before the report warns

# Settings overrides of the xacthuc server (besides store, namespace and SMS gateway).
SERVER_SETTINGS: dict[str, Any] = {
    "mode": "dev",
    "log_level": "WARNING",
    # Fixed keys (dev mode would make random ones); not secrets, this is a benchmark.
    "otp_hmac_keys": "benchmark-otp-hmac-key-0123456789abcdef",
    "pseudonym_key": "benchmark-pseudonym-key-0123456789abcdef",
    "otp_ttl_seconds": 600,  # challenges must outlive their preparation and the confirm phase
    "sends_per_platform_hour": 100_000_000,
    "sends_per_client_ip_hour": 1_000_000,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_ms_per_call(row: Row, part: str = "server") -> float | None:
    """Server CPU per call (ms): the figure that carries over between machines (`part`
    "postgres": the scratch database's backends)."""
    cpu, rps = row.cpu.get(part), row.result.rps
    return None if cpu is None or not rps else cpu / 100 / rps * 1000


def base64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Child processes


class Child:
    """A server process from servers.py: started, waited for (`READY <port>`), stopped."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        # The child's stderr, kept for as long as we live, shown when the child fails.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, ready_within: float = 30.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVERS),
            *self.argv,
            stdin=asyncio.subprocess.PIPE,  # closes when we die, however: the child then exits
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,  # Ctrl-C reaches only the driver, which stops us in order
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), ready_within)
        except TimeoutError:
            raise BenchError(
                f"{self.name} did not start within {ready_within:.0f} s\n{self.log_tail()}"
            ) from None
        if not line.startswith(b"READY "):
            code = await self.proc.wait()
            raise BenchError(
                f"{self.name} failed to start (exit status {code}):\n{self.log_tail()}"
            )
        self.port = int(line.split()[1])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise BenchError(
                f"{self.name} exited (status {self.proc.returncode}):\n{self.log_tail()}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return ("..." + text[-chars:]) if len(text) > chars else text

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Row:
    """One timed phase."""

    name: str
    result: PhaseResult
    cpu: dict[str, float | None]
    script_calls_per_call: float | None = None  # INFO commandstats; None without Redis
    foreign_redis_clients: int = 0
    round_trips: RoundTrips | None = None  # the MONITOR check
    pg_transactions_per_call: float | None = None  # pg_stat_database; None without a database
    note: str = ""


class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.concurrency
        self.channel_count = math.ceil(self.n / WORKERS_PER_CHANNEL)
        self.probe: RedisProbe | None = None
        self.gateway = SmsGateway()
        self.namespace = "bench_" + secrets.token_hex(6)
        self.api_key, self.key_entry = new_key(PLATFORM, Role.PLATFORM)
        self.echo = Child("echo server", ["echo"])
        # The bare handler doing what a confirm must (servers.py `ceiling`): Redis store only.
        self.ceiling: Child | None = None
        self.ceiling_calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = []
        # The same with a group-committed PostgreSQL row per call (with --database-url).
        self.ceiling_durable: Child | None = None
        self.ceiling_durable_calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = []
        self.server = Child("xacthuc server", [])  # argv set once the gateway URL is known
        self.channels: list[grpc.aio.Channel] = []
        self.echo_calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = []
        self.clients: list[AsyncClient] = []
        self.raw_stubs: list[verification_pb2_grpc.VerificationServiceAsyncStub] = []
        self.challenges: deque[tuple[str, str, str]] = deque()  # (challenge id, account, code)
        self.verified: list[str] = []  # accounts the confirm phases verified, for Authorize
        self.sample_token = ""  # one attestation token, for the offline measurement
        self._authorize_turn = itertools.count()
        self.citizens: deque[Citizen] = deque()  # people on the sandbox file, not yet verified
        self.citizen_count = 0
        self.registry_file: Path | None = None
        self.offline: dict[str, float] | None = None
        self.memory: Footprint | None = None
        self._serial = itertools.count()
        self.rows: dict[str, Row] = {}
        self.check_failures: list[str] = []
        # --workers N: the same RPCs against N worker processes sharing one port.
        self.workers: list[Child] = []
        self.scaled: dict[str, Row] = {}
        self.sms_url = ""
        self.database_url = ""  # the scratch database on --database-url's server, if any

    # -- set-up ---------------------------------------------------------------------------

    async def setup(self, stack: contextlib.AsyncExitStack) -> None:
        """Start everything, registering each clean-up as it comes (they run in reverse)."""
        if self.args.store == "redis":
            self.probe = RedisProbe(self.args.redis_url)
            stack.push_async_callback(self.probe.close)
            try:
                await self.probe.check()
            except RedisUnreachable as e:
                raise BenchError(
                    f"Redis is not reachable at {self.args.redis_url} ({e}).\n"
                    "Start Redis, pass --redis-url, or use --store memory."
                ) from None
            stack.push_async_callback(self._delete_namespace)  # runs after the server stopped
        if self.args.database_url:
            await self._make_database(stack)
        sms_url = self.sms_url = await self.gateway.start()
        stack.push_async_callback(self.gateway.close)
        self._write_registry(
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xacthuc-bench-")))
        )

        self.server.argv = ["xacthuc", json.dumps(self._server_config(sms_url))]
        stack.push_async_callback(self.echo.stop)
        stack.push_async_callback(self.server.stop)
        if self.args.store == "redis":
            self.ceiling = Child("ceiling server", ["ceiling", self.args.redis_url])
            stack.push_async_callback(self.ceiling.stop)
            if self.database_url:
                self.ceiling_durable = Child(
                    "durable ceiling server", ["ceiling", self.args.redis_url, self.database_url]
                )
                stack.push_async_callback(self.ceiling_durable.stop)
        await asyncio.gather(
            self.echo.start(),
            self.server.start(),
            *([self.ceiling.start()] if self.ceiling else []),
            *([self.ceiling_durable.start()] if self.ceiling_durable else []),
        )

        for _ in range(self.channel_count):
            echo_channel = self._channel(self.echo.port)
            stack.push_async_callback(echo_channel.close)
            self.echo_calls.append(echo_channel.unary_unary(ECHO_METHOD))
            if self.ceiling is not None:
                ceiling_channel = self._channel(self.ceiling.port)
                stack.push_async_callback(ceiling_channel.close)
                self.ceiling_calls.append(ceiling_channel.unary_unary(ECHO_METHOD))
                self.channels.append(ceiling_channel)
            if self.ceiling_durable is not None:
                durable_channel = self._channel(self.ceiling_durable.port)
                stack.push_async_callback(durable_channel.close)
                self.ceiling_durable_calls.append(durable_channel.unary_unary(ECHO_METHOD))
                self.channels.append(durable_channel)
            # The SDK's own retry policy (gRPC's, from the channel's service config), as
            # AsyncClient.connect sets it up.
            channel = self._channel(self.server.port, channel_options(retries=2))
            client = AsyncClient(channel, api_key=self.api_key, timeout=CALL_TIMEOUT)
            stack.push_async_callback(client.close)
            self.clients.append(client)
            self.raw_stubs.append(verification_pb2_grpc.VerificationServiceStub(channel))
            self.channels += [echo_channel, channel]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)), 30)

    async def _make_database(self, stack: contextlib.AsyncExitStack) -> None:
        """A scratch database on --database-url's server, migrated; dropped at the end
        (after the server stopped: the callback is pushed first)."""
        import asyncpg

        from xacthuc.adapters.store.postgres import migrate

        name = self.namespace
        admin = await asyncpg.connect(self.args.database_url, timeout=10)
        await admin.execute(f'CREATE DATABASE "{name}"')

        async def drop() -> None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

        stack.push_async_callback(drop)
        parts = urlsplit(self.args.database_url)
        self.database_url = urlunsplit(parts._replace(path="/" + name))
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        log(f"scratch database {name} migrated (the audit log and checkpoints go there)")

    async def _pg_backends(self) -> list[int]:
        """The scratch database's backends (the servers' pooled connections, opened in the
        warm-up): their CPU, read from /proc, is PostgreSQL's work for the phase (PostgreSQL
        must run on this machine; [] without a database)."""
        if not self.database_url:
            return []
        import asyncpg

        conn = await asyncpg.connect(self.args.database_url, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.namespace
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    async def _pg_transactions(self) -> int | None:
        """Committed transactions of the scratch database so far (each statement outside a
        transaction block is one: a round trip at least)."""
        if not self.database_url:
            return None
        import asyncpg

        conn = await asyncpg.connect(self.args.database_url, timeout=10)
        try:
            value = await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                self.namespace,
            )
        finally:
            await conn.close()
        return int(value or 0)

    def _write_registry(self, directory: Path) -> None:
        """The sandbox registry's people, on a temporary file the server loads at start."""
        self.citizen_count = max(
            CITIZENS_MIN,
            MONITOR_CALLS
            + math.ceil(CITIZENS_RPS_BOUND * (self.args.warmup + self.args.duration))
            * (2 if self.args.workers > 1 else 1),  # a second VerifyPersonalId phase
        )
        began = time.perf_counter()
        people = make_citizens(self.citizen_count)
        self.registry_file = directory / "citizens.jsonl"
        write_citizens(self.registry_file, people)
        self.citizens.extend(people)
        log(
            f"wrote {len(people):,} synthetic citizens for the sandbox registry in "
            f"{time.perf_counter() - began:.1f} s"
        )

    def _server_config(self, sms_url: str) -> dict[str, Any]:
        store_url = (
            "memory://"
            if self.args.store == "memory"
            else with_client_name(self.args.redis_url, SERVER_CLIENT_NAME)
        )
        settings = SERVER_SETTINGS | {
            "store_url": store_url,
            "store_namespace": self.namespace,
            "sms_backend": "http",
            "sms_http_url": sms_url,
            "registry_sandbox_file": str(self.registry_file),
        }
        if self.database_url:
            settings["database_url"] = self.database_url
        entry = dataclasses.asdict(self.key_entry) | {"role": self.key_entry.role.value}
        return {"settings": settings, "api_key_entry": entry}

    @staticmethod
    def _channel(port: int, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        # A local subchannel pool gives every channel its own HTTP/2 connection; by default
        # channels with equal arguments share one.
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1), *(options or [])]
        )

    async def _delete_namespace(self) -> None:
        assert self.probe is not None
        try:
            deleted = await self.probe.delete_namespace(self.namespace)
            log(f"cleaned up: deleted {deleted} Redis keys {self.namespace}:*")
        except (RedisError, OSError) as e:
            log(f"warning: could not delete the Redis keys {self.namespace}:* ({e})")

    # -- the calls, one per worker turn -----------------------------------------------------

    def _client(self, worker: int) -> AsyncClient:
        return self.clients[worker // WORKERS_PER_CHANNEL]

    async def op_echo(self, worker: int) -> None:
        await self.echo_calls[worker // WORKERS_PER_CHANNEL](ECHO_PAYLOAD, timeout=CALL_TIMEOUT)

    async def op_ceiling(self, worker: int) -> None:
        await self.ceiling_calls[worker // WORKERS_PER_CHANNEL](ECHO_PAYLOAD, timeout=CALL_TIMEOUT)

    async def op_ceiling_durable(self, worker: int) -> None:
        await self.ceiling_durable_calls[worker // WORKERS_PER_CHANNEL](
            ECHO_PAYLOAD, timeout=CALL_TIMEOUT
        )

    async def op_jwks(self, worker: int) -> None:
        await self._client(worker).get_jwks()

    async def op_start(self, worker: int) -> None:
        n = next(self._serial)  # 091nnnnnnn: ten million numbers, hours of starts
        account = f"acct-{n}"
        challenge = await self._client(worker).start_phone_verification(
            account_id=account,
            phone_number=f"091{n:07d}",
            client_ip=f"198.18.{(n >> 8) & 0xFF}.{n & 0xFF}",
            idempotency_key=f"bench-{n}",
        )
        code = self.gateway.take(challenge.challenge_id)  # the SMS went out before the answer
        self.challenges.append((challenge.challenge_id, account, code))

    def _next_challenge(self) -> tuple[str, str, str]:
        try:
            return self.challenges.popleft()
        except IndexError:
            raise Exhausted() from None

    async def op_confirm(self, worker: int) -> None:
        challenge_id, account, code = self._next_challenge()
        attestation = await self._client(worker).confirm_phone_verification(
            challenge_id=challenge_id, account_id=account, code=code
        )
        self.verified.append(account)
        self.sample_token = attestation.token

    async def op_authorize(self, worker: int) -> None:
        account = self.verified[next(self._authorize_turn) % len(self.verified)]
        decision = await self._client(worker).authorize(account_id=account, action="post")
        if not decision.allowed:  # every account here was verified moments ago
            raise BenchError(f"Authorize refused a verified account: {decision}")

    async def op_verify_id(self, worker: int) -> None:
        try:
            person = self.citizens.popleft()
        except IndexError:
            raise Exhausted() from None
        n = next(self._serial)
        attestation = await self._client(worker).verify_personal_id(
            account_id=f"pid-{n}",
            personal_id_number=person.personal_id,
            full_name=person.full_name,
            date_of_birth=person.date_of_birth,
            purpose="no_vietnamese_mobile",
            declared_no_vietnamese_mobile=True,
            client_ip=f"198.19.{(n >> 8) & 0xFF}.{n & 0xFF}",
        )
        if attestation.method != "personal_id":
            raise BenchError(f"VerifyPersonalId answered with a {attestation.method} attestation")

    async def op_confirm_raw(self, worker: int) -> None:
        challenge_id, account, code = self._next_challenge()
        request = verification_pb2.ConfirmPhoneVerificationRequest(
            challenge_id=challenge_id, account_id=account, code=code
        )
        await self.raw_stubs[worker // WORKERS_PER_CHANNEL].ConfirmPhoneVerification(
            request, metadata=(("authorization", f"Bearer {self.api_key}"),), timeout=CALL_TIMEOUT
        )

    # -- phases -----------------------------------------------------------------------------

    async def warm_up(self, name: str, op: Op) -> PhaseResult:
        result = await closed_loop(name, op, concurrency=self.n, duration=self.args.warmup)
        if result.error_count:
            log(f"  warm-up of {name}: {result.error_count} failed calls {dict(result.errors)}")
        return result

    async def timed(
        self, name: str, op: Op, server: Child | list[Child], rows: dict[str, Row] | None = None
    ) -> Row:
        """One timed phase, with CPU and Redis counters read around it. `server` may be
        several processes (workers sharing a port): their CPU is summed."""
        servers = server if isinstance(server, list) else [server]
        for child in (self.echo, *servers):
            child.check_alive()
        backends = await self._pg_backends()
        meter = CpuMeter(
            {f"server#{i}": child.pid for i, child in enumerate(servers)}
            | {"driver": os.getpid(), "redis": self.probe.pid if self.probe else None}
            | {f"pg#{i}": pid for i, pid in enumerate(backends)}
        )
        before = await self.probe.command_calls() if self.probe else None
        foreign = await self.probe.foreign_clients() if self.probe else 0
        pg_before = await self._pg_transactions()
        # `profile_rpcs.py` attaches py-spy to the server processes on this line.
        log(f"  timing {name} ({' '.join(str(child.pid) for child in servers)})")
        meter.start()
        result = await closed_loop(name, op, concurrency=self.n, duration=self.args.duration)
        cpu = meter.stop()
        parts = [cpu.pop(f"server#{i}") for i in range(len(servers))]
        cpu["server"] = None if None in parts else sum(p for p in parts if p is not None)
        pg = [cpu.pop(f"pg#{i}") for i in range(len(backends))]
        cpu["postgres"] = sum(p for p in pg if p is not None) if backends else None
        row = Row(name, result, cpu, foreign_redis_clients=foreign)
        if pg_before is not None:
            await asyncio.sleep(PG_STATS_DELAY)  # backends report their counts at most 1/s
            pg_after = await self._pg_transactions()
            assert pg_after is not None
            row.pg_transactions_per_call = (pg_after - pg_before) / max(1, result.calls)
        if self.probe and before is not None:
            used = await self.probe.command_calls() - before
            scripts = sum(count for cmd, count in used.items() if cmd in SCRIPT_CALLS)
            row.script_calls_per_call = scripts / max(1, result.calls)
            row.foreign_redis_clients = max(foreign, await self.probe.foreign_clients())
        for child in servers:
            child.check_alive()
        (self.rows if rows is None else rows)[name] = row
        log(
            f"  {name}: {result.calls} calls, {result.rps:,.0f} rps, "
            f"p50 {result.percentile_ms(50):.2f} ms, p99 {result.percentile_ms(99):.2f} ms"
            + (f", {result.error_count} errors {dict(result.errors)}" if result.error_count else "")
        )
        return row

    async def prepare(self, count: int) -> None:
        """Make `count` more challenges (untimed) for the confirm phases."""
        if count <= 0:
            return
        began = time.perf_counter()
        result = await closed_loop("prepare", self.op_start, concurrency=self.n, calls=count)
        if result.error_count:
            raise BenchError(
                f"preparing challenges: {result.error_count} starts failed {dict(result.errors)}"
            )
        log(f"  prepared {count} challenges in {time.perf_counter() - began:.1f} s (untimed)")

    async def confirm_phase(
        self,
        name: str,
        op: Op,
        server: Child | list[Child] | None = None,
        rows: dict[str, Row] | None = None,
    ) -> None:
        await self.prepare(20 * self.n - len(self.challenges))
        warm = await self.warm_up(name, op)
        rate = len(warm.latencies) / warm.elapsed if warm.elapsed else 0.0
        need = math.ceil(rate * self.args.duration * 1.3) + self.n
        log(
            f"  {name} warm-up ran at ~{rate:,.0f} rps; {len(self.challenges)} challenges left, "
            f"want {need}"
        )
        await self.prepare(need - len(self.challenges))
        row = await self.timed(name, op, server or self.server, rows)
        if row.result.exhausted:
            row.note = "ran out of prepared challenges: the phase ended early"

    async def round_trip_check(self) -> None:
        """Untimed: exact Redis commands per RPC from the server's own connections (MONITOR)."""
        assert self.probe is not None
        log(f"Redis round-trip check under MONITOR ({MONITOR_CALLS} calls each, untimed)")
        self.challenges.clear()  # confirm the challenges made under MONITOR, nothing older
        for name, op in (
            (START, self.op_start),
            (CONFIRM, self.op_confirm),
            (JWKS, self.op_jwks),
            (AUTHORIZE, self.op_authorize),
            (VERIFY_ID, self.op_verify_id),
        ):
            outcome: list[PhaseResult] = []

            if name == AUTHORIZE:
                # The accounts the check asks for, read once first: a warm state cache
                # answers them with no Redis command (a cold one: one read each).
                first = next(self._authorize_turn)
                self._authorize_turn = itertools.count(first)
                await closed_loop("warm", op, concurrency=self.n, calls=MONITOR_CALLS)
                self._authorize_turn = itertools.count(first)

            async def work(op: Op = op, outcome: list[PhaseResult] = outcome) -> int:
                outcome.append(
                    await closed_loop("check", op, concurrency=self.n, calls=MONITOR_CALLS)
                )
                return outcome[0].calls

            trips = await self.probe.monitor(work)
            if outcome[0].errors or not outcome[0].calls:
                self.check_failures.append(
                    f"{name} in the round-trip check: failed calls {dict(outcome[0].errors)}"
                )
                log(f"  {self.check_failures[-1]}")
                continue
            self.rows[name].round_trips = trips
            log(f"  {name}: {trips.describe()}")

    async def run(self) -> None:
        log(
            f"echo server on :{self.echo.port}, xacthuc server on :{self.server.port}; "
            f"{self.n} workers over {self.channel_count} channels"
        )
        for name, op, server in (
            (ECHO, self.op_echo, self.echo),
            *([(CEILING, self.op_ceiling, self.ceiling)] if self.ceiling else []),
            *(
                [(CEILING_DURABLE, self.op_ceiling_durable, self.ceiling_durable)]
                if self.ceiling_durable
                else []
            ),
            (JWKS, self.op_jwks, self.server),
            (START, self.op_start, self.server),
        ):
            log(f"phase: {name}")
            await self.warm_up(name, op)
            await self.timed(name, op, server)
        log(f"phase: {CONFIRM} ({len(self.challenges)} challenges made by the start phase)")
        await self.confirm_phase(CONFIRM, self.op_confirm)
        if self.args.raw_stub:
            log(f"phase: {RAW_CONFIRM}")
            await self.confirm_phase(RAW_CONFIRM, self.op_confirm_raw)
        if not self.verified:
            raise BenchError("no account was verified by the confirm phase: nothing to authorize")
        log(f"phase: {AUTHORIZE} (on the {len(self.verified)} accounts the confirm phase verified)")
        # Every account read once first, untimed (as the MONITOR check does): the timed phase
        # measures a warm state cache, as on a platform's accounts that post; a cold account
        # costs one Redis read more, the first time (the `evalsha` column shows any left).
        await closed_loop("warm", self.op_authorize, concurrency=self.n, calls=len(self.verified))
        await self.warm_up(AUTHORIZE, self.op_authorize)
        await self.timed(AUTHORIZE, self.op_authorize, self.server)
        log(
            f"phase: {VERIFY_ID} (sandbox registry of {self.citizen_count:,} synthetic citizens, "
            "a fresh account and person per call)"
        )
        await self.warm_up(VERIFY_ID, self.op_verify_id)
        row = await self.timed(VERIFY_ID, self.op_verify_id, self.server)
        if row.result.exhausted:
            row.note = "ran out of synthetic citizens: the phase ended early"
        log(f"phase: {ECHO_AGAIN}")
        await self.warm_up(ECHO, self.op_echo)
        await self.timed(ECHO_AGAIN, self.op_echo, self.echo)
        if self.probe is not None:
            await self.round_trip_check()
        log("offline verification in the driver: SDK AttestationVerifier vs raw Ed25519 verify")
        self.offline = await self.measure_offline()
        log(
            f"  SDK {self.offline['sdk_per_s']:,.0f}/s, raw {self.offline['raw_per_s']:,.0f}/s, "
            f"ratio {self.offline['ratio']:.3f}"
        )
        if self.args.memory_starts:
            log(
                f"Redis memory: {self.args.memory_starts:,} starts on a private redis-server "
                "(redis_memory.py)"
            )
            with private_redis() as url:
                self.memory = await measure(url, self.args.memory_starts)
            log(f"  {self.memory.per_challenge:,.0f} B per pending challenge")
        if self.args.workers > 1:
            await self.scale_out(self.args.workers)

    async def scale_out(self, count: int) -> None:
        """The RPCs again, against `count` worker processes sharing one port (SO_REUSEPORT),
        started as `xacthuc serve --workers N` starts them; the single server is stopped
        first, so the machine runs one xacthuc setup at a time."""
        await self.server.stop()
        port = free_port()
        config = self._server_config(self.sms_url)
        self.workers = [
            Child(
                f"xacthuc worker {i}",
                ["xacthuc", json.dumps(config | {"worker": {"index": i, "port": port}})],
            )
            for i in range(count)
        ]
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
            single = self.clients
            self.clients = [
                AsyncClient(
                    self._channel(port, channel_options(retries=2)),
                    api_key=self.api_key,
                    timeout=CALL_TIMEOUT,
                )
                for _ in range(self.channel_count)
            ]
            log(f"{count} xacthuc workers on :{port} (pids {[w.pid for w in self.workers]})")
            self.challenges.clear()
            for name, op in ((JWKS, self.op_jwks), (START, self.op_start)):
                log(f"phase: {name} [{count} workers]")
                await self.warm_up(name, op)
                await self.timed(name, op, self.workers, self.scaled)
            log(f"phase: {CONFIRM} [{count} workers]")
            await self.confirm_phase(CONFIRM, self.op_confirm, self.workers, self.scaled)
            for name, op in ((AUTHORIZE, self.op_authorize), (VERIFY_ID, self.op_verify_id)):
                log(f"phase: {name} [{count} workers]")
                await self.warm_up(name, op)
                await self.timed(name, op, self.workers, self.scaled)
            for client in self.clients:
                await client.close()
            self.clients = single
        finally:
            for w in self.workers:
                await w.stop()

    async def measure_offline(self) -> dict[str, float]:
        """Verifications per second of one real token: the SDK's whole check, and the bare
        Ed25519 check of the same signature, in alternating rounds (best of each)."""
        token = self.sample_token
        jwks = json.loads(await self.clients[0].get_jwks())
        head, payload, signature = token.split(".")
        kid = json.loads(base64url(head))["kid"]
        public = Ed25519PublicKey.from_public_bytes(
            base64url(next(k["x"] for k in jwks["keys"] if k["kid"] == kid))
        )
        signing_input, raw_signature = f"{head}.{payload}".encode(), base64url(signature)
        claims = json.loads(base64url(payload))
        verifier = AttestationVerifier(jwks, issuer=claims["iss"], audience=claims["aud"])
        now = float(claims["iat"])
        verifier.verify(token, now=now)  # fails loudly here, not in the loop
        public.verify(raw_signature, signing_input)
        seconds = max(0.2, min(2.0, self.args.duration / 4)) / OFFLINE_ROUNDS * 2

        def rate(fn: Any) -> float:
            count, began = 0, time.perf_counter()
            deadline = began + seconds
            while True:
                for _ in range(200):
                    fn()
                count += 200
                if time.perf_counter() >= deadline:
                    return count / (time.perf_counter() - began)

        sdk, raw = 0.0, 0.0
        for _ in range(OFFLINE_ROUNDS // 2):
            sdk = max(sdk, rate(lambda: verifier.verify(token, now=now)))
            raw = max(raw, rate(lambda: public.verify(raw_signature, signing_input)))
            await asyncio.sleep(0)
        return {
            "sdk_per_s": round(sdk, 1),
            "raw_per_s": round(raw, 1),
            "ratio": round(sdk / raw, 3) if raw else 0.0,
        }

    def yardstick(self) -> Row:
        """The better of the two echo runs: the ceiling, least disturbed by anything else."""
        return max((self.rows[ECHO], self.rows[ECHO_AGAIN]), key=lambda row: row.result.rps)


# ---------------------------------------------------------------------------------------------
# Report


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def machine_summary(probe: RedisProbe | None) -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = ", " + line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({usable} usable{model}), {platform.system()} "
        f"{platform.machine()}, {load} at the end; {platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__}"
        + (f", Redis {probe.version}" if probe else "")
    )


def render(bench: Benchmark) -> tuple[str, dict[str, Any]]:
    """The human-readable report and the JSON summary."""
    args = bench.args
    echo = bench.yardstick().result
    lines = [
        "xacthuc benchmark",
        f"machine:  {machine_summary(bench.probe)}",
        f"load:     closed loop, {bench.n} calls in flight over {bench.channel_count} channels "
        f"({WORKERS_PER_CHANNEL} per channel), {args.warmup:g} s warm-up + {args.duration:g} s "
        f"timed per RPC, one RPC at a time; echo payload {len(ECHO_PAYLOAD)} B",
        f"store:    {args.store}"
        + (
            f" at {args.redis_url}, namespace {bench.namespace} (deleted)"
            if args.store == "redis"
            else ""
        ),
        "server:   dev mode, fixed HMAC keys, "
        + ", ".join(
            f"{k}={v}" for k, v in SERVER_SETTINGS.items() if k.startswith(("sends", "otp_ttl"))
        )
        + "; HttpSmsSender to a loopback gateway "
        "in the driver; a new phone, account, idempotency key and client IP per start",
        f"registry: sandbox (in-process) of {bench.citizen_count:,} synthetic citizens; a new "
        "account and person per VerifyPersonalId, purpose no_vietnamese_mobile",
        "",
    ]
    header = (
        f"{'rpc':<36}{'calls':>7}{'err':>5}{'rps':>8}{'p50_ms':>8}{'p99_ms':>8}{'vs_echo':>8}"
        f"{'redis_rt':>9}{'evalsha':>8}{'srv_ms':>8}{'pg_tx':>7}{'pg_ms':>7}"
        "  cpu% srv/drv/redis/pg/other"
    )
    lines += [header, "-" * len(header)]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None or math.isnan(value) else format(value, spec)

    for row in bench.rows.values():
        r = row.result
        lines.append(
            f"{row.name:<36}{r.calls:>7}{r.error_count:>5}{r.rps:>8.0f}"
            f"{r.percentile_ms(50):>8.2f}{r.percentile_ms(99):>8.2f}"
            f"{'' if row.name.startswith(ECHO) else fmt(r.rps / echo.rps, '.3f'):>8}"
            f"{fmt(row.round_trips.per_call() if row.round_trips else None, '.2f'):>9}"
            f"{'' if row.name.startswith(ECHO) else fmt(row.script_calls_per_call, '.2f'):>8}"
            f"{fmt(server_ms_per_call(row), '.3f'):>8}"
            f"{'' if row.name.startswith(ECHO) else fmt(row.pg_transactions_per_call, '.2f'):>7}"
            f"{'' if row.name.startswith(ECHO) else fmt(server_ms_per_call(row, 'postgres'), '.3f'):>7}  "
            + "/".join(
                fmt(row.cpu.get(k), ".0f")
                for k in ("server", "driver", "redis", "postgres", "other")
            )
        )
    lines += [
        "",
        f"vs_echo:  rps / echo rps, echo being the better of its two runs ({bench.yardstick().name}).",
        "redis_rt: Redis commands per call sent by the xacthuc server's own connections, counted "
        "exactly under MONITOR (untimed check).",
        "evalsha:  script calls (EVALSHA/EVAL) per call during the timed phase, from INFO "
        "commandstats (server-wide: other clients count too).",
        "srv_ms:   CPU time of the server process(es) per call, in ms: the portable figure.",
        "pg_tx:    PostgreSQL transactions per call during the timed phase (pg_stat_database of "
        "the scratch database, --database-url; group commit makes it below 1; '-': no database; "
        "background work counts too: the state cache's LISTEN connection answers a SELECT 1 "
        "every 25 ms per server process, the health probe one every 0.5 s).",
        "pg_ms:    CPU time of the scratch database's PostgreSQL backends per call, in ms (/proc: "
        "PostgreSQL on this machine; its WAL writer and checkpointer not counted).",
        "cpu%:     share of one core used in the timed phase (100 = one core busy) by the server "
        "measured, the driver, redis-server, the scratch database's PostgreSQL backends and "
        "everything else.",
    ]
    if bench.scaled:
        count = args.workers
        lines += [
            "",
            f"1 vs {count} workers (processes sharing one port; the echo yardstick is one process)",
            f"{'rpc':<36}{'rps 1':>8}{f'rps {count}':>8}{'x':>6}{'srv_ms 1':>10}"
            f"{f'srv_ms {count}':>10}  cpu% srv/other ({count})",
        ]
        for name, scaled in bench.scaled.items():
            one = bench.rows[name]
            gain = scaled.result.rps / one.result.rps if one.result.rps else float("nan")
            lines.append(
                f"{name:<36}{one.result.rps:>8.0f}{scaled.result.rps:>8.0f}{gain:>6.2f}"
                f"{fmt(server_ms_per_call(one), '.3f'):>10}"
                f"{fmt(server_ms_per_call(scaled), '.3f'):>10}  "
                f"{fmt(scaled.cpu.get('server'), '.0f')}/{fmt(scaled.cpu.get('other'), '.0f')}"
            )
    for row in bench.rows.values():
        if row.round_trips is not None:
            lines.append(f"redis {row.name}: {row.round_trips.describe()}")
    warnings = []
    busy = [
        row.name for row in bench.rows.values() if (row.cpu.get("other") or 0) > OTHER_LOAD_WARN
    ] + [
        f"{row.name} [{args.workers} workers]"
        for row in bench.scaled.values()
        if (row.cpu.get("other") or 0) > OTHER_LOAD_WARN
    ]
    if busy:
        warnings.append(
            f"other processes used over {OTHER_LOAD_WARN}% of a core during "
            f"{', '.join(busy)}: those rows are low by an unknown amount"
        )
    foreign = max(row.foreign_redis_clients for row in bench.rows.values())
    if foreign:
        warnings.append(
            f"{foreign} other Redis client(s) connected during the timed phases: "
            "the evalsha column may include their commands"
        )
    every_row = [*bench.rows.values(), *bench.scaled.values()]
    warnings += [f"{row.name}: {row.note}" for row in every_row if row.note]
    warnings += [
        f"{row.name}: failed calls {dict(row.result.errors)}"
        for row in every_row
        if row.result.errors
    ]
    warnings += bench.check_failures
    lines += [f"warning: {w}" for w in warnings]

    def ratio_of(name: str) -> float:
        return bench.rows[name].result.rps / echo.rps if echo.rps else 0.0

    durable = "durability on" if args.database_url else "durability OFF (no --database-url)"
    parts = []
    for name in (AUTHORIZE, CONFIRM, START, VERIFY_ID):
        want = GOALS[name]
        got = ratio_of(name)
        parts.append(f"{name} >= {want:.0%}: {'PASS' if got >= want else 'FAIL'} ({got:.1%})")
        floor = DURABLE_GOALS.get(name)
        if args.database_url and floor is not None:
            parts[-1] += f", issue 10 floor {floor:.0%}: {'PASS' if got >= floor else 'FAIL'}"
    goal = f"goals ({durable}, vs echo): " + "; ".join(parts)
    if CEILING in bench.rows:
        goal += (
            "; bare-handler ceiling (EVALSHA + sign)"
            f" {ratio_of(CEILING):.1%} of echo, confirm at {ratio_of(CONFIRM) / ratio_of(CEILING):.0%}"
            " of it"
            if ratio_of(CEILING)
            else ""
        )
    if CEILING_DURABLE in bench.rows and ratio_of(CEILING_DURABLE):
        goal += (
            "; durable ceiling (EVALSHA + group-committed INSERT + sign)"
            f" {ratio_of(CEILING_DURABLE):.1%} of echo, confirm at"
            f" {ratio_of(CONFIRM) / ratio_of(CEILING_DURABLE):.0%} of it"
        )
    confirm = bench.rows[CONFIRM]
    if confirm.round_trips is not None:
        rt = confirm.round_trips.per_call()
        goal += (
            f"; one Redis round trip per confirm: {'PASS' if round(rt, 2) <= 1.0 else 'FAIL'} "
            f"({rt:.2f})"
        )
    if bench.offline is not None:
        offline = bench.offline["ratio"]
        goal += (
            f"; offline verify >= {GOAL_OFFLINE_RATIO:.0%} of raw Ed25519: "
            f"{'PASS' if offline >= GOAL_OFFLINE_RATIO else 'FAIL'} ({offline:.1%})"
        )
    if bench.memory is not None:
        per = bench.memory.per_challenge
        goal += (
            f"; Redis <= {GOAL_BYTES} B per pending challenge: "
            f"{'PASS' if per <= GOAL_BYTES else 'FAIL'} ({per:.0f} B)"
        )
        lines.insert(
            -1,
            f"memory:   {per:,.0f} B of Redis per pending challenge (its audit records go to "
            f"PostgreSQL; {bench.memory.starts:,} starts, distinct numbers and IPs, "
            "128-character account ids, private redis-server, INFO used_memory)",
        )
    lines.append(goal)
    if bench.offline is not None:
        lines.insert(
            -1,
            f"offline:  SDK AttestationVerifier.verify {bench.offline['sdk_per_s']:,.0f}/s, "
            f"raw Ed25519 verify {bench.offline['raw_per_s']:,.0f}/s of the same "
            f"signature (driver process, best of {OFFLINE_ROUNDS // 2} rounds each)",
        )

    summary: dict[str, Any] = {
        "echo": {
            "rps": _round(echo.rps, 1),
            "p50_ms": _round(echo.percentile_ms(50), 3),
            "p99_ms": _round(echo.percentile_ms(99), 3),
        },
        "rpcs": {},
    }
    for name in (START, CONFIRM, JWKS, AUTHORIZE, VERIFY_ID, CEILING, CEILING_DURABLE):
        if name not in bench.rows:
            continue
        row = bench.rows[name]
        r = row.result
        summary["rpcs"][name] = {
            "rps": _round(r.rps, 1),
            "p50_ms": _round(r.percentile_ms(50), 3),
            "p99_ms": _round(r.percentile_ms(99), 3),
            "ratio_vs_echo": _round(r.rps / echo.rps, 3) if echo.rps else None,
            # Exact, from the MONITOR check; the timed phase's commandstats figure next to it.
            "redis_commands_per_call": _round(row.round_trips.per_call(), 2)
            if row.round_trips
            else None,
            "redis_script_calls_per_call_timed": _round(row.script_calls_per_call, 2),
            "server_cpu_ms_per_call": _round(server_ms_per_call(row), 4),
            "postgres_cpu_ms_per_call": _round(server_ms_per_call(row, "postgres"), 4),
            "postgres_transactions_per_call_timed": _round(row.pg_transactions_per_call, 3),
        }
    if bench.scaled:
        summary["workers"] = {
            str(args.workers): {
                name: {
                    "rps": _round(row.result.rps, 1),
                    "ratio_vs_echo": _round(row.result.rps / echo.rps, 3) if echo.rps else None,
                    "server_cpu_ms_per_call": _round(server_ms_per_call(row), 4),
                    "p99_ms": _round(row.result.percentile_ms(99), 3),
                }
                for name, row in bench.scaled.items()
            }
        }
    if bench.offline is not None:
        summary["offline_verify"] = dict(bench.offline)
    if bench.memory is not None:
        summary |= bench.memory.as_json() | {"redis_memory_starts": bench.memory.starts}
        del summary["starts"]
    return "\n".join(lines), summary


# ---------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10.0, help="timed seconds per RPC (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per RPC (2)")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    p.add_argument("--store", choices=("redis", "memory"), default="redis")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also time the RPCs against this many worker processes sharing one port, as "
        "`xacthuc serve --workers N` runs them (2; 1 = single process only)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--memory-starts",
        type=int,
        default=20_000,
        help="starts of the Redis memory phase, on a private redis-server (20000; 0: skip)",
    )
    p.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server (postgresql://postgres@127.0.0.1:5432/postgres) where a "
        "scratch database is made: the server keeps its durable state and audit log there "
        "(required with --store redis)",
    )
    p.add_argument(
        "--raw-stub",
        action="store_true",
        help="also time confirm through the generated stub, without AsyncClient",
    )
    args = p.parse_args(argv)
    if (
        args.duration <= 0
        or args.warmup < 0
        or args.concurrency < 1
        or args.memory_starts < 0
        or args.workers < 1
    ):
        p.error(
            "--duration must be > 0, --warmup >= 0, --concurrency and --workers >= 1 and "
            "--memory-starts >= 0"
        )
    if args.workers > 1 and args.store == "memory":
        p.error("--workers > 1 needs --store redis (workers share the store)")
    if bool(args.database_url) != (args.store == "redis"):
        p.error("--store redis needs --database-url (the pair: Redis + PostgreSQL), memory none")
    return args


async def run(args: argparse.Namespace) -> int:
    # SIGTERM takes the same way out as Ctrl-C: cancel, clean up, exit.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    bench = Benchmark(args)
    async with contextlib.AsyncExitStack() as stack:
        await bench.setup(stack)
        await bench.run()
        log("stopping the servers")
    text, summary = render(bench)
    print(text)
    print(json.dumps(summary), flush=True)
    failed = [
        name for name, row in bench.rows.items() if row.result.errors or not row.result.latencies
    ] + [
        f"{name} [{args.workers} workers]"
        for name, row in bench.scaled.items()
        if row.result.errors or not row.result.latencies
    ]
    if failed or bench.check_failures:
        log(
            f"benchmark failed: calls failed in {', '.join(failed) or 'the round-trip check'}\n"
            f"xacthuc server log (end):\n{bench.server.log_tail()}"
        )
        return 1
    return 0


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(run(args))
    except BenchError as e:
        log(f"benchmark failed: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; the servers were stopped")
        return 130
    except asyncio.CancelledError:
        log("terminated; the servers were stopped")
        return 143


if __name__ == "__main__":
    sys.exit(main())
