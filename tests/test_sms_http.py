"""HttpSmsSender against a real aiohttp gateway on loopback: wire format, retries, no leaks."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from xacthuc.adapters.sms.http import HttpSmsSender, failure_kind
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage

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

    with pytest.raises(SmsDeliveryError, match="HTTP 400") as caught:
        await send(make_sender(gateway.url, sleeps))

    assert 1 == len(gateway.requests)
    assert [] == sleeps
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_redirect_is_not_followed_and_is_permanent(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """A 302 is neither followed nor retried: one request, SmsDeliveryError naming the status."""
    gateway.replies = [Reply(302, headers={"Location": "/elsewhere"})]

    with pytest.raises(SmsDeliveryError, match="HTTP 302"):
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
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        (b"", "ServerDisconnectedError"),  # the connection closes before any reply
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "ClientPayloadError"),  # cut short
        (b"SMTP ready\r\n\r\n", "ClientResponseError"),  # not HTTP at all
    ],
)
async def test_dropped_or_garbled_exchange_is_retried(
    sleeps: list[float], answer: bytes, failure: str
) -> None:
    """A connection dropped mid-exchange or a malformed reply is retried, then reported."""
    connections: list[bytes] = []

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmsDeliveryError, match=failure) as caught:
            await send(make_sender(f"http://127.0.0.1:{port}/sms", sleeps, retries=2))
    finally:
        server.close()
        await server.wait_closed()

    assert 3 == len(connections)
    assert 2 == len(sleeps)
    assert [] == leaked(str(caught.value))
    assert caught.value.__context__ is None


async def test_logs_never_contain_phone_code_or_auth(
    gateway: Gateway, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG for every logger (aiohttp's too) a failing send logs no number/code/auth."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "asyncio", "xacthuc"):
        caplog.set_level(logging.DEBUG, logger=name)
    gateway.replies = [Reply(502)]

    with pytest.raises(SmsDeliveryError):
        await send(make_sender(gateway.url, sleeps, retries=1))

    logger_roots = {record.name.split(".")[0] for record in caplog.records}
    # aiohttp's client logs little per request; its server (the gateway here) logs each one.
    assert set() == {"aiohttp", "xacthuc"} - logger_roots
    assert [] == [r.getMessage() for r in caplog.records if leaked(r.getMessage())]
    assert [] == leaked(caplog.text)
    ours = [r for r in caplog.records if r.name == "xacthuc.adapters.sms.http"]
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


async def test_retry_after_as_a_date_is_read_on_the_senders_clock(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """A Retry-After HTTP date 3 s after the injected clock's time waits 3 s; a past one 0."""
    clock = FixedClock(1_800_000_000.0)
    later = format_datetime(datetime.fromtimestamp(clock.now() + 3, UTC), usegmt=True)
    earlier = format_datetime(datetime.fromtimestamp(clock.now() - 60, UTC), usegmt=True)
    gateway.replies = [
        Reply(503, headers={"Retry-After": later}),
        Reply(503, headers={"Retry-After": earlier}),
        Reply(200),
    ]

    await send(make_sender(gateway.url, sleeps, clock=clock))

    assert [3.0, 0.0] == sleeps


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
    """An injected session carries every send, and aclose() leaves it open for its owner."""
    async with aiohttp.ClientSession() as client:
        sender = make_sender(gateway.url, sleeps, client=client)
        await sender.send(MESSAGE)
        await sender.send(SmsMessage(to=PHONE, text="again", message_id="msg-0002"))
        await sender.aclose()

        assert False is client.closed
        assert client is sender._client
    assert ["msg-0001", "msg-0002"] == [r["json"]["message_id"] for r in gateway.requests]


async def test_injected_session_raise_for_status_does_not_change_retries(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """An injected session with raise_for_status=True still gets 503 retried and 400 final."""
    gateway.replies = [Reply(503), Reply(400)]
    async with aiohttp.ClientSession(raise_for_status=True) as client:
        with pytest.raises(SmsDeliveryError, match="HTTP 400"):
            await send(make_sender(gateway.url, sleeps, client=client))

    assert 2 == len(gateway.requests)
    assert 1 == len(sleeps)


async def test_own_session_is_made_on_first_send_and_closed_by_aclose(gateway: Gateway) -> None:
    """The sender makes its session lazily, reuses it, and aclose() closes it."""
    sender = HttpSmsSender(url=gateway.url, auth_header=None)
    assert sender._client is None

    await sender.send(MESSAGE)
    session = sender._client
    await sender.send(SmsMessage(to=PHONE, text="again", message_id="msg-0002"))
    assert session is not None
    assert session is sender._client
    await sender.aclose()

    assert True is session.closed
    assert 2 == len(gateway.requests)


async def test_aclose_before_any_send_makes_no_session_and_later_sends_fail() -> None:
    """aclose() without a send is fine; a send after aclose() fails instead of leaking a session."""
    sender = HttpSmsSender(url="http://127.0.0.1:9/sms", auth_header=None)
    await sender.aclose()

    assert sender._client is None
    with pytest.raises(RuntimeError):
        await sender.send(MESSAGE)
    assert sender._client is None


def test_sender_can_be_built_outside_an_event_loop() -> None:
    """build_app() constructs the sender before `xacthuc serve` starts its loop."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    sender = HttpSmsSender(url="https://gateway.example/sms", auth_header=AUTH)

    assert sender._client is None


async def test_proxy_from_environment_is_used(
    gateway: Gateway, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured (as it was with httpx): the request goes through the proxy."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", gateway.url.removesuffix("/sms"))

    await send(make_sender("http://sms-gateway.invalid/sms", sleeps))

    assert 1 == len(gateway.requests)
    assert "sms-gateway.invalid" == gateway.requests[0]["headers"]["Host"]


async def test_no_proxy_bypasses_the_environment_proxy(
    gateway: Gateway, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway host listed in NO_PROXY is reached directly."""
    for name in ("no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    await send(make_sender(gateway.url, sleeps))

    assert 1 == len(gateway.requests)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://gateway.example/sms"},
        {"url": "not a url"},
        {"url": "http:///sms"},
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


async def test_every_failed_attempt_is_reported_by_kind(
    gateway: Gateway, sleeps: list[float]
) -> None:
    """Each failed attempt is reported, retried ones included, by a bounded kind; a
    successful attempt is not."""
    kinds: list[str] = []
    gateway.replies = [Reply(429), Reply(503), Reply(200)]
    await send(make_sender(gateway.url, sleeps, on_failed_attempt=kinds.append))
    gateway.replies = [Reply(404)]
    with pytest.raises(SmsDeliveryError):
        await send(make_sender(gateway.url, sleeps, on_failed_attempt=kinds.append))
    assert ["HTTP 429", "HTTP 5xx", "HTTP 4xx"] == kinds


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        ("HTTP 429", "HTTP 429"),
        ("HTTP 503", "HTTP 5xx"),
        ("HTTP 500", "HTTP 5xx"),
        ("HTTP 404", "HTTP 4xx"),
        ("HTTP 302", "HTTP 3xx"),
        ("TimeoutError", "TimeoutError"),
        ("ConnectError", "ConnectError"),
    ],
)
def test_failure_kinds_are_bounded(failure: str, kind: str) -> None:
    """HTTP statuses fold into classes (429 apart), so the metric's label set stays small."""
    assert kind == failure_kind(failure)
