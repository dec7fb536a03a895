"""HttpSmsSender against a real aiohttp gateway on loopback: wire format, retries, no leaks."""


from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from xacthuc.sms.base import SmsDeliveryError, SmsMessage
from xacthuc.sms.http import HttpSmsSender

PHONE = "+84912345678"
CODE = "483915"
AUTH = "Bearer s3cr3t-gateway-token"
MESSAGE = SmsMessage(to=PHONE, text=f"Ma xac thuc cua ban: {CODE}", message_id="msg-0001")
SECRETS = (PHONE, CODE, AUTH)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Gateway:
    """A scripted SMS gateway: answers with `replies` in order, repeating the last one."""

    url: str = ""
    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"headers": dict(request.headers), "json": await request.json()})
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.json_response(
            {"ok": reply.status < 300}, status=reply.status, headers=reply.headers
        )


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/sms", gw.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gw.url = f"http://127.0.0.1:{port}/sms"
    try:
        yield gw
    finally:
        await runner.cleanup()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_sender(url: str, sleeps: list[float], **kwargs: Any) -> HttpSmsSender:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return HttpSmsSender(url=url, auth_header=AUTH, sleep=fake_sleep, **kwargs)


async def send(sender: HttpSmsSender, message: SmsMessage = MESSAGE) -> None:
    try:
        await sender.send(message)
    finally:
        await sender.aclose()


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def test_success_sends_json_body_auth_and_idempotency_key(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """A 2xx reply succeeds; the gateway got the JSON body, Authorization and Idempotency-Key."""
    await send(make_sender(gateway.url, sleeps))

    assert 1 == len(gateway.requests)
    request = gateway.requests[0]
    expected_body = {"to": PHONE, "text": MESSAGE.text, "message_id": "msg-0001"}
    assert expected_body == request["json"]
    assert AUTH == request["headers"]["Authorization"]
    assert "msg-0001" == request["headers"]["Idempotency-Key"]
    assert "application/json" == request["headers"]["Content-Type"]
    assert [] == sleeps


async def test_no_authorization_header_when_auth_is_none(gateway: Gateway) -> None:
    """With auth_header=None no Authorization header is sent."""
    await send(HttpSmsSender(url=gateway.url, auth_header=None))

    assert "Authorization" not in gateway.requests[0]["headers"]


async def test_503_twice_then_200_retries_with_same_idempotency_key(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """Two 503s then a 200: three requests, success, one Idempotency-Key throughout."""
    gateway.replies = [Reply(503), Reply(503), Reply(200)]

    await send(make_sender(gateway.url, sleeps))

    assert 3 == len(gateway.requests)
    assert ["msg-0001"] * 3 == [r["headers"]["Idempotency-Key"] for r in gateway.requests]
    assert 2 == len(sleeps)


async def test_400_is_permanent_and_not_retried(gateway: Gateway, sleeps: list[float]) -> None:
    """A 400 fails at once with SmsDeliveryError after a single request."""
    gateway.replies = [Reply(400)]

    with pytest.raises(SmsDeliveryError, match="HTTP 400"):
        await send(make_sender(gateway.url, sleeps))

    assert 1 == len(gateway.requests)
    assert [] == sleeps


async def test_always_500_gives_up_without_leaking_secrets(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """Persistent 500s: 1 + retries requests, then an error naming the status and no secrets."""
    gateway.replies = [Reply(500)]

    with pytest.raises(SmsDeliveryError) as caught:
        await send(make_sender(gateway.url, sleeps, retries=2))

    assert 3 == len(gateway.requests)
    assert "HTTP 500" in str(caught.value)
    assert [] == leaked(str(caught.value))
    assert [] == leaked(repr(caught.value))
    assert caught.value.__cause__ is None


async def test_slow_gateway_times_out_each_attempt_in_bounded_time(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """A gateway slower than `timeout` fails every attempt and the send ends in bounded time."""
    gateway.replies = [Reply(200, delay=1.0)]
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(SmsDeliveryError, match="Timeout"):
        await send(make_sender(gateway.url, sleeps, timeout=0.2, retries=2))

    elapsed = loop.time() - started
    assert 3 == len(gateway.requests)
    assert elapsed < 1.5, elapsed


async def test_connection_refused_raises_delivery_error(sleeps: list[float]) -> None:
    """Nothing listening on the port: every attempt fails to connect, then SmsDeliveryError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(SmsDeliveryError, match="ConnectError") as caught:
        await send(make_sender(f"http://127.0.0.1:{port}/sms", sleeps, retries=2))

    assert 2 == len(sleeps)
    assert [] == leaked(str(caught.value))


async def test_logs_never_contain_phone_code_or_auth(
    gateway: Gateway, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG for every logger (httpx, httpcore too) a failing send logs no number/code/auth."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "xacthuc"):
        caplog.set_level(logging.DEBUG, logger=name)
    gateway.replies = [Reply(502)]

    with pytest.raises(SmsDeliveryError):
        await send(make_sender(gateway.url, sleeps, retries=1))

    logger_roots = {record.name.split(".")[0] for record in caplog.records}
    assert set() == {"httpx", "httpcore", "xacthuc"} - logger_roots
    assert [] == [r.getMessage() for r in caplog.records if leaked(r.getMessage())]
    assert [] == leaked(caplog.text)
    ours = [r for r in caplog.records if r.name == "xacthuc.sms.http"]
    assert {logging.WARNING} == {r.levelno for r in ours}
    assert all("message_id=msg-0001" in r.getMessage() for r in ours)


async def test_429_retry_after_is_honoured(gateway: Gateway, sleeps: list[float]) -> None:
    """A 429 with Retry-After: 1 makes the sender wait exactly 1 s before retrying."""
    gateway.replies = [Reply(429, headers={"Retry-After": "1"}), Reply(200)]

    await send(make_sender(gateway.url, sleeps))

    assert [1.0] == sleeps
    assert 2 == len(gateway.requests)


async def test_retry_after_is_capped_at_five_seconds(gateway: Gateway, sleeps: list[float]) -> None:
    """A Retry-After longer than 5 s is cut to 5 s."""
    gateway.replies = [Reply(503, headers={"Retry-After": "120"}), Reply(200)]

    await send(make_sender(gateway.url, sleeps))

    assert [5.0] == sleeps


async def test_backoff_is_jittered_below_exponential_cap(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """Without Retry-After each wait lies in [0, min(2, backoff * 2**n)]."""
    gateway.replies = [Reply(500)]

    with pytest.raises(SmsDeliveryError):
        await send(make_sender(gateway.url, sleeps, retries=5, backoff=0.5))

    ceilings = [0.5, 1.0, 2.0, 2.0, 2.0]
    assert 5 == len(sleeps)
    assert [True] * 5 == [0.0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True)]


async def test_retries_zero_means_single_attempt(gateway: Gateway, sleeps: list[float]) -> None:
    """retries=0 makes exactly one attempt and never sleeps."""
    gateway.replies = [Reply(503)]

    with pytest.raises(SmsDeliveryError):
        await send(make_sender(gateway.url, sleeps, retries=0))

    assert 1 == len(gateway.requests)
    assert [] == sleeps


async def test_injected_client_is_reused_and_left_open(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """An injected client carries every send, and aclose() leaves it open for its owner."""
    async with httpx.AsyncClient() as client:
        sender = make_sender(gateway.url, sleeps, client=client)
        await sender.send(MESSAGE)
        await sender.send(SmsMessage(to=PHONE, text="again", message_id="msg-0002"))
        await sender.aclose()

        assert False is client.is_closed
    assert ["msg-0001", "msg-0002"] == [r["json"]["message_id"] for r in gateway.requests]


async def test_aclose_closes_own_client() -> None:
    """aclose() closes the client the sender created itself."""
    sender = HttpSmsSender(url="http://127.0.0.1:9/sms", auth_header=None)
    await sender.aclose()

    assert True is sender._client.is_closed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://gateway.example/sms"},
        {"timeout": 0.0},
        {"retries": -1},
        {"backoff": -0.1},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any]) -> None:
    """Nonsense settings fail at construction, not at the first SMS."""
    settings: dict[str, Any] = {"url": "https://gateway.example/sms", "auth_header": None}
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        HttpSmsSender(**{**settings, **kwargs})
