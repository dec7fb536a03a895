"""Redis bytes per pending phone challenge (issue 11 item 5), measured on a private redis-server.

    .venv/bin/python benchmarks/redis_memory.py [--starts 20000]

The measurement: a redis-server of its own on a free loopback port (no persistence, nothing
else connected), `INFO memory` `used_memory` read before and after N starts, each through the
real start path (`PhoneOtpVerifier.start`: the store's start script, the SMS hand-off, then
`confirm_sent`, so each challenge ends "pending" as in production) with a distinct number,
account, idempotency key and client IP per start, and the send budgets raised so none refuses.
That is the worst case for memory: nothing is shared between two starts (a number's or an
address's key holds one send), and every account id is as long as a request may make it (128
characters, request_bounds.py: the challenge keeps a digest of it). One challenge is started
before the first reading, so the scripts and the platform's send list already exist.

The store is the pair's Redis half alone (`RedisStore`), its records discarded and
PostgreSQL's facts fixed (no linked child, room on every number): the audit log is
PostgreSQL's, so Redis holds the challenge state only, and that is the figure
(`per_challenge`). `benchmarks/run.py` runs it as its last phase; tests/test_redis_memory.py
holds the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import redis
import redis.asyncio as aioredis

from xacthuc.adapters.store.redis import RedisStore
from xacthuc.domain.clock import SystemClock
from xacthuc.domain.keyed import OtpMac, Pseudonymizer
from xacthuc.domain.records import ChallengeView, Limits, NewChallenge
from xacthuc.ports.sms import SmsMessage
from xacthuc.ports.store import Store
from xacthuc.server.request_bounds import ACCOUNT_ID
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier

PLATFORM = "bench"
NAMESPACE = "xacthuc"
# The bound issue 11 sets for the challenge state (everything but the audit records).
GOAL_BYTES = 700


@dataclass(frozen=True, slots=True)
class Footprint:
    starts: int
    per_challenge: float  # bytes of Redis per pending challenge: its state (no audit record)

    def as_json(self) -> dict[str, float | int]:
        return {
            "starts": self.starts,
            "redis_bytes_per_pending_challenge": round(self.per_challenge, 1),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (never the shared one); its URL."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis(port=port, socket_connect_timeout=1) as client:
                        client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


class _Accepted:
    """An SMS gateway that takes every message (the code is not needed here)."""

    async def send(self, message: SmsMessage) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Discard:
    """An audit sink that drops the records (PostgreSQL's part, not measured here)."""

    async def append(self, platform: str, records: Sequence[str]) -> int:
        return 0

    async def ready(self) -> None:
        return None


class _RedisHalf:
    """The phone start path of the pair store, on its Redis half only."""

    def __init__(self, url: str) -> None:
        self.redis = RedisStore(url, namespace=NAMESPACE, audit=_Discard())

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        return await self.redis.start_challenge(new, limits, linked=False, full=False)

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.redis.confirm_sent(platform, challenge_id, account_id, now)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.redis.abort_challenge(platform, challenge_id, account_id, now)

    async def aclose(self) -> None:
        await self.redis.aclose()


def account_id(n: int, chars: int = ACCOUNT_ID) -> str:
    """The `n`-th distinct account id, `chars` characters long."""
    return f"acct-{n}-".ljust(chars, "x")


async def measure(url: str, starts: int, account_chars: int = ACCOUNT_ID) -> Footprint:
    """Bytes per pending challenge after `starts` starts on the empty Redis at `url`, with
    account ids `account_chars` long (the longest a request may carry, by default)."""
    store = _RedisHalf(url)
    verifier = PhoneOtpVerifier(
        store=cast(Store, store),
        sms=_Accepted(),
        clock=SystemClock(),
        pseudonyms=Pseudonymizer(b"p" * 32),
        otp_mac=OtpMac([b"o" * 32]),
        limits=Limits(sends_per_platform_hour=starts + 10, sends_per_client_ip_hour=20),
        otp_ttl_seconds=300,
        token_ttl_seconds=86_400,
        sms_template="{code}",
    )

    async def start(n: int) -> None:
        await verifier.start(
            platform=PLATFORM,
            account_id=account_id(n, account_chars),
            phone_number=f"09{n:08d}",
            client_ip=f"10.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}",
            idempotency_key=f"bench-{n}",
        )

    async with aioredis.Redis.from_url(url) as admin:
        try:
            await start(starts)  # scripts loaded, the platform's send list exists
            used_before = (await admin.info("memory"))["used_memory"]
            for n in range(starts):
                await start(n)
            used_after = (await admin.info("memory"))["used_memory"]
        finally:
            await store.aclose()
    return Footprint(starts, (used_after - used_before) / starts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=20_000, help="starts to measure (20000)")
    args = p.parse_args()
    with private_redis() as url:
        figure = asyncio.run(measure(url, args.starts))
    print(
        f"{figure.per_challenge:.0f} bytes of Redis per pending challenge, {figure.starts} starts"
    )
    print(json.dumps(figure.as_json()))


if __name__ == "__main__":
    main()
