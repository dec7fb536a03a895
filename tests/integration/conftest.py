"""A real xacthuc gRPC server on a loopback port, over the pair store (real Redis + real
PostgreSQL), driven through the shipped client.

The flows of ON_CLUSTER's modules run twice: the pair's Redis half on the test Redis server
and on the test Redis Cluster (issue 11)."""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypedDict

import pytest

from xacthuc.client import AsyncClient
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage
from xacthuc.server.app import App, build_app
from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.config import Settings
from xacthuc.server.runtime import Server, start_server

from ..conftest import emptied_database, pair_store

START = 1_800_000_000.0  # 2027-01-15, a fixed instant: tests move the clock themselves


class Citizen(TypedDict):
    """The identity arguments of `verify_personal_id` for one (synthetic) citizen."""

    personal_id_number: str
    full_name: str
    date_of_birth: datetime.date


class CapturingSms:
    """An SMS channel that keeps what it is given, can be told to fail, or to hold each
    message until `hold` is set (`entered` is set once a message is being held)."""

    def __init__(self) -> None:
        self.messages: list[SmsMessage] = []
        self.fail = False
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def send(self, message: SmsMessage) -> None:
        if self.fail:
            raise SmsDeliveryError("gateway down (test)")
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        self.messages.append(message)

    async def aclose(self) -> None:
        return None

    def code_for(self, challenge_id: str) -> str:
        for m in reversed(self.messages):
            if m.message_id == challenge_id:
                found = re.search(r"\b(\d{6})\b", m.text)
                assert found is not None
                return found.group(1)
        raise AssertionError(f"no SMS for {challenge_id}")


@dataclass
class Harness:
    app: App
    server: Server
    sms: CapturingSms
    clock: FixedClock
    keys: dict[tuple[str, Role], str] = field(default_factory=dict)
    clients: list[AsyncClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def client(self, platform: str = "alpha", role: Role = Role.PLATFORM) -> AsyncClient:
        c = await AsyncClient.connect(self.target, api_key=self.keys[(platform, role)], timeout=10)
        self.clients.append(c)
        return c


def make_settings(**overrides: object) -> Settings:
    return Settings.load(otp_hmac_keys="k" * 32, pseudonym_key="p" * 32, **overrides)


def make_keys() -> tuple[ApiKeys, dict[tuple[str, Role], str]]:
    """Keys of both roles for platforms alpha and beta."""
    keys = ApiKeys()
    raw: dict[tuple[str, Role], str] = {}
    for platform in ("alpha", "beta"):
        for role in Role:
            key, entry = new_key(platform, role)
            keys.add(entry)
            raw[(platform, role)] = key
    return keys, raw


ON_CLUSTER = frozenset(
    {
        "tests.integration.test_phone_verification",
        "tests.integration.test_guardian",
        "tests.integration.test_locks",
        "tests.integration.test_personal_id",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" in metafunc.fixturenames and metafunc.module.__name__ in ON_CLUSTER:
        metafunc.parametrize("harness", ["redis", "redis-cluster"], indirect=True)


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The server over the pair: its Redis half on the test Redis, or (param
    "redis-cluster") on the test Redis Cluster; PostgreSQL emptied."""
    if getattr(request, "param", "redis") == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster_url")
        redis_namespace = request.getfixturevalue("redis_cluster_namespace")
    else:
        redis_url = request.getfixturevalue("redis_url")
        redis_namespace = request.getfixturevalue("redis_namespace")
    database = await emptied_database(request.getfixturevalue("database_url"))
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        sms=sms,
        clock=clock,
        api_keys=keys,
        database=database,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)  # the app closes the database
