"""The SDK sends a start refused START_IN_PROGRESS again, after its retry-after and with the
same idempotency key, so a platform retrying a start whose first try is still sending gets
the one challenge (and the one SMS) instead of an error; bounded by a count and the call's
deadline, and never without a key. Against the in-process test server (xacthuc.testing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import xacthuc.client.aio
import xacthuc.client.sync
from xacthuc.client import _wire as w
from xacthuc.domain import errors
from xacthuc.ports.sms import SmsMessage
from xacthuc.server.auth import Role
from xacthuc.testing import CapturingSmsSender, InProcessServer

NUMBER = "0912345678"
IP = "203.0.113.7"


class HeldSms(CapturingSmsSender):
    """Holds every send until `release` is set (`entered` is set once one is held)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    async def send(self, message: SmsMessage) -> None:
        self.entered.set()
        await asyncio.to_thread(self.release.wait, 30)
        await super().send(message)


@pytest.fixture
def held() -> Iterator[tuple[InProcessServer, HeldSms]]:
    sms = HeldSms()
    try:
        with InProcessServer(sms=sms) as server:
            yield server, sms
    finally:
        sms.release.set()


async def refused_starts(server: InProcessServer) -> int:
    """START_IN_PROGRESS refusals the server audited."""
    async with await server.async_client(role=Role.AUDITOR) as auditor:
        page = await auditor.query_audit_records(event="verification_started", page_size=100)
    return sum(r.record.get("reason") == "START_IN_PROGRESS" for r in page.records)


async def test_the_async_client_retries_a_start_in_progress_with_the_same_key(
    held: tuple[InProcessServer, HeldSms], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sms = held
    client = await server.async_client(timeout=30)
    first = asyncio.create_task(
        client.start_phone_verification(
            account_id="a-1", phone_number=NUMBER, client_ip=IP, idempotency_key="signup-a-1"
        )
    )
    assert await asyncio.to_thread(sms.entered.wait, 10)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        """Refused once: let the first start finish sending, then retry at once."""
        waits.append(seconds)
        sms.release.set()
        await first

    monkeypatch.setattr(xacthuc.client.aio, "_sleep", sleep)
    again = await client.start_phone_verification(
        account_id="a-1", phone_number=NUMBER, client_ip=IP, idempotency_key="signup-a-1"
    )
    started = await first
    await client.close()
    assert ([1.0], 1) == (waits, await refused_starts(server))
    assert (started.challenge_id, False, True) == (
        again.challenge_id,
        started.replayed,
        again.replayed,
    )
    assert 1 == len(sms.messages)


def test_the_blocking_client_retries_the_same_way(
    held: tuple[InProcessServer, HeldSms], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sms = held
    results: list[object] = []
    with server.client(timeout=30) as client:

        def start_first() -> None:
            results.append(
                client.start_phone_verification(
                    account_id="b-1", phone_number=NUMBER, client_ip=IP, idempotency_key="k-b-1"
                )
            )

        thread = threading.Thread(target=start_first)
        thread.start()
        assert sms.entered.wait(10)
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            sms.release.set()
            thread.join(30)

        monkeypatch.setattr(xacthuc.client.sync, "_sleep", sleep)
        again = client.start_phone_verification(
            account_id="b-1", phone_number=NUMBER, client_ip=IP, idempotency_key="k-b-1"
        )
    (started,) = results
    assert isinstance(started, w.Challenge)
    assert ([1.0], started.challenge_id, True) == (waits, again.challenge_id, again.replayed)
    assert 1 == len(sms.messages)


async def test_the_retries_are_bounded(
    held: tuple[InProcessServer, HeldSms], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first start that keeps sending: after START_IN_PROGRESS_RETRIES waits the caller
    gets StartInProgress (with its retry-after)."""
    server, sms = held
    client = await server.async_client(timeout=30)
    first = asyncio.create_task(
        client.start_phone_verification(
            account_id="c-1", phone_number=NUMBER, client_ip=IP, idempotency_key="k-c-1"
        )
    )
    assert await asyncio.to_thread(sms.entered.wait, 10)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(xacthuc.client.aio, "_sleep", sleep)
    with pytest.raises(errors.StartInProgress) as refused:
        await client.start_phone_verification(
            account_id="c-1", phone_number=NUMBER, client_ip=IP, idempotency_key="k-c-1"
        )
    assert 1.0 == refused.value.retry_after
    assert [1.0] * w.START_IN_PROGRESS_RETRIES == waits
    assert 1 + w.START_IN_PROGRESS_RETRIES == await refused_starts(server)
    sms.release.set()
    await first
    await client.close()


async def test_no_retry_that_the_deadline_cannot_hold(
    held: tuple[InProcessServer, HeldSms], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a deadline shorter than the retry-after the refusal is raised at once."""
    server, sms = held
    client = await server.async_client(timeout=30)
    first = asyncio.create_task(
        client.start_phone_verification(
            account_id="d-1", phone_number=NUMBER, client_ip=IP, idempotency_key="k-d-1"
        )
    )
    assert await asyncio.to_thread(sms.entered.wait, 10)

    async def sleep(seconds: float) -> None:
        raise AssertionError("no wait expected")

    monkeypatch.setattr(xacthuc.client.aio, "_sleep", sleep)
    with pytest.raises(errors.StartInProgress):
        await client.start_phone_verification(
            account_id="d-1",
            phone_number=NUMBER,
            client_ip=IP,
            idempotency_key="k-d-1",
            timeout=0.9,
        )
    assert 1 == await refused_starts(server)
    sms.release.set()
    await first
    await client.close()


@pytest.mark.parametrize(
    ("error", "key", "retried", "remaining", "delay"),
    [
        (errors.StartInProgress(retry_after=1), "k", 0, 5.0, 1.0),
        (errors.StartInProgress(retry_after=1), "", 0, 5.0, None),  # no key: never
        (errors.StartInProgress(retry_after=1), "k", w.START_IN_PROGRESS_RETRIES, 5.0, None),
        (errors.StartInProgress(retry_after=1), "k", 0, 1.0, None),  # no room for an attempt
        (errors.StartInProgress(retry_after=60), "k", 0, 600.0, None),  # too long to wait
        (errors.StartInProgress(), "k", 0, 5.0, 1.0),  # no advice: one second
        (errors.SendLimitExceeded(retry_after=1), "k", 0, 5.0, None),  # other refusals: never
        (errors.Unavailable(), "k", 0, 5.0, None),
    ],
)
def test_only_a_start_in_progress_with_a_key_is_retried(
    error: errors.XacthucError, key: str, retried: int, remaining: float, delay: float | None
) -> None:
    assert delay == w.start_retry_delay(error, key, retried, remaining)
