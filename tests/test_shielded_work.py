"""Work that must finish after its caller has gone (the SMS send of a start, the registry
check of a personal-ID verification): its outcome is handled and logged once, without a
traceback and without a secret, never as asyncio's "Task exception was never retrieved"."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.registry import RegistryAnswer, RegistryQuery, RegistryUnavailableError
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage
from xacthuc.server.app import App, build_app
from xacthuc.server.config import Settings
from xacthuc.verifiers.personal_id_flow import Purpose

START = 1_800_000_000.0
PHONE = "0912345678"
IP = "203.0.113.7"
PERSONAL_ID = "001085336181"
NAME = "Nguyễn Văn An"


class Gate:
    """An outside system that answers only when released, then fails (or not)."""

    def __init__(self, fail: bool = True) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail

    async def wait(self) -> None:
        self.entered.set()
        await self.release.wait()


class GatedSms(Gate):
    async def send(self, message: SmsMessage) -> None:
        await self.wait()
        if self.fail:
            raise SmsDeliveryError("gateway down (test)")

    async def aclose(self) -> None:
        return None


class GatedRegistry(Gate):
    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        await self.wait()
        if self.fail:
            raise RegistryUnavailableError("registry down (test)")
        return RegistryAnswer.NO_MATCH

    async def aclose(self) -> None:
        return None


def _app(sms: GatedSms | None = None, registry: GatedRegistry | None = None) -> App:
    return build_app(
        Settings.load(otp_hmac_keys="k" * 32, pseudonym_key="p" * 32),
        store=MemoryStore(),
        sms=sms or GatedSms(fail=False),
        registry=registry or GatedRegistry(fail=False),
        clock=FixedClock(START),
    )


def _start(app: App) -> Coroutine[Any, Any, object]:
    return app.phone.start(
        platform="alpha", account_id="acc-1", phone_number=PHONE, client_ip=IP, idempotency_key=""
    )


def _verify(app: App) -> Coroutine[Any, Any, object]:
    return app.personal_id.verify(
        platform="alpha",
        account_id="acc-1",
        number=PERSONAL_ID,
        full_name=NAME,
        date_of_birth=datetime.date(1985, 3, 14),
        sex=None,
        purpose=Purpose.NO_VIETNAMESE_MOBILE,
        declared_no_vietnamese_mobile=True,
        client_ip=IP,
    )


async def _cancel_while_gated(
    gate: Gate, call: Coroutine[Any, Any, object], caplog: pytest.LogCaptureFixture
) -> list[logging.LogRecord]:
    """Run `call` until it waits on `gate`, cancel it (the caller goes), then let the gate
    fail and the shielded work finish; return what was logged from then on."""
    caller = asyncio.create_task(call)
    await gate.entered.wait()
    before = set(asyncio.all_tasks())
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    shielded = [t for t in before if t is not caller and not t.done()]
    caplog.clear()
    gate.release.set()
    await asyncio.wait([t for t in shielded if t is not asyncio.current_task()])
    del shielded, before, caller
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    await asyncio.sleep(0)
    return list(caplog.records)


@pytest.mark.parametrize("kind", ["sms", "registry"])
async def test_failure_after_the_caller_left_is_logged_once_without_traceback(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A start (gateway down) or a personal-ID check (registry down) whose caller was cancelled
    mid-call logs one WARNING naming the outcome's reason: no traceback, no secret, no
    'Task exception was never retrieved'."""
    caplog.set_level(logging.DEBUG)
    if kind == "sms":
        sms = GatedSms()
        app = _app(sms=sms)
        records = await _cancel_while_gated(sms, _start(app), caplog)
        reason = "SMS_DELIVERY_FAILED"
    else:
        registry = GatedRegistry()
        app = _app(registry=registry)
        records = await _cancel_while_gated(registry, _verify(app), caplog)
        reason = "REGISTRY_UNAVAILABLE"
    mine = [r for r in records if r.levelno >= logging.WARNING]
    assert [(logging.WARNING, True)] == [(r.levelno, reason in r.getMessage()) for r in mine]
    assert [None] == [r.exc_info for r in mine]
    text = " ".join(r.getMessage() for r in records)
    for secret in (PHONE, PHONE[1:], IP, PERSONAL_ID, NAME, "1985"):
        assert secret not in text
    await app.aclose()


async def test_success_after_the_caller_left_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An SMS that goes out after its caller left is kept (the challenge stays valid) and
    logged below WARNING."""
    caplog.set_level(logging.DEBUG)
    gate = GatedSms(fail=False)
    app = _app(sms=gate)
    records = await _cancel_while_gated(gate, _start(app), caplog)
    assert [] == [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    await app.aclose()
