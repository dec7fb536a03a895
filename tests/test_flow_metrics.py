"""What the verification flows report through the FlowMetrics port (no metrics library)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import (
    GuardianChildLimit,
    IdAttemptsExceeded,
    PersonalIdNotMatched,
    RegistryUnavailable,
    ResendTooSoon,
    SmsDeliveryFailed,
)
from xacthuc.domain.keyed import OtpMac, Pseudonymizer
from xacthuc.domain.records import Limits
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage
from xacthuc.verifiers.guardian_flow import GuardianLinker
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier, Purpose
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier

from .test_guardian_flow import NOW, link, verified_guardian
from .test_personal_id_flow import AN, UNKNOWN, FlakyRegistry

START = 1_800_000_000.0


class Recorded:
    """A FlowMetrics that keeps what it is told, minus the durations."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.durations: list[float] = []

    def sms_send(self, platform: str, outcome: str, seconds: float) -> None:
        self.events.append(("sms", platform, outcome))
        self.durations.append(seconds)

    def registry_call(self, platform: str, outcome: str, seconds: float) -> None:
        self.events.append(("registry", platform, outcome))
        self.durations.append(seconds)

    def refused(self, platform: str, reason: str) -> None:
        self.events.append(("refused", platform, reason))


class Sms:
    def __init__(self) -> None:
        self.fail = False

    async def send(self, message: SmsMessage) -> None:
        if self.fail:
            raise SmsDeliveryError("down (test)")

    async def aclose(self) -> None:
        return None


def phone_flow(metrics: Recorded, sms: Sms) -> PhoneOtpVerifier:
    return PhoneOtpVerifier(
        store=MemoryStore(),
        sms=sms,
        clock=FixedClock(START),
        pseudonyms=Pseudonymizer(b"p" * 32),
        otp_mac=OtpMac([b"k" * 32]),
        limits=Limits(),
        otp_ttl_seconds=300,
        token_ttl_seconds=86_400,
        sms_template="{code} ({minutes} min)",
        metrics=metrics,
    )


async def test_phone_flow_reports_sends_and_refusals() -> None:
    """A sent SMS, a refused resend (by its reason) and a gateway failure, by platform."""
    metrics, sms = Recorded(), Sms()
    verifier = phone_flow(metrics, sms)
    start = {"account_id": "a-1", "phone_number": "0912345678", "client_ip": "203.0.113.5"}
    await verifier.start(platform="alpha", idempotency_key="", **start)
    with pytest.raises(ResendTooSoon):
        await verifier.start(platform="alpha", idempotency_key="", **start)
    sms.fail = True
    with pytest.raises(SmsDeliveryFailed):
        await verifier.start(
            platform="beta",
            idempotency_key="",
            account_id="a-2",
            phone_number="0912345679",
            client_ip="203.0.113.5",
        )
    assert [
        ("sms", "alpha", "sent"),
        ("refused", "alpha", "RESEND_TOO_SOON"),
        ("sms", "beta", "failed"),
    ] == metrics.events
    assert all(d >= 0 for d in metrics.durations)


async def test_personal_id_flow_reports_registry_calls_and_refusals() -> None:
    """Each registry answer by outcome, an outage as "unavailable", and the account's
    hourly budget running out as a refusal that never reaches the registry."""
    metrics, registry = Recorded(), FlakyRegistry()
    verifier = PersonalIdVerifier(
        store=MemoryStore(),
        registry=registry,
        clock=FixedClock(START),
        pseudonyms=Pseudonymizer(b"p" * 32),
        limits=Limits(id_attempts_per_account_hour=3),
        token_ttl_seconds=86_400,
        metrics=metrics,
    )

    async def verify(person: dict[str, Any]) -> None:
        await verifier.verify(
            platform="alpha",
            account_id="acc-1",
            sex=None,
            purpose=Purpose.NO_VIETNAMESE_MOBILE,
            declared_no_vietnamese_mobile=True,
            client_ip="203.0.113.20",
            **person,
        )

    with pytest.raises(PersonalIdNotMatched):
        await verify(UNKNOWN)
    registry.mode = "down"
    with pytest.raises(RegistryUnavailable):
        await verify(AN)
    registry.mode = "up"
    await verify(AN)
    await verify(AN)
    with pytest.raises(IdAttemptsExceeded):
        await verify(AN)
    assert [
        ("registry", "alpha", "no_match"),
        ("registry", "alpha", "unavailable"),
        ("registry", "alpha", "match"),
        ("registry", "alpha", "match"),
        ("refused", "alpha", "ID_ATTEMPTS_EXCEEDED"),
    ] == metrics.events


async def test_guardian_flow_reports_the_children_cap() -> None:
    """A guardian at the cap of children is a refusal by its reason (GUARDIAN_CHILD_LIMIT)."""
    metrics, store = Recorded(), MemoryStore()
    await verified_guardian(store)
    guardian = GuardianLinker(
        store=store,
        clock=FixedClock(NOW),
        pseudonyms=Pseudonymizer(b"p" * 32),
        limits=Limits(max_children_per_guardian=1),
        token_ttl_seconds=86_400,
        metrics=metrics,
    )
    await link(guardian, "kid-1", dt.date(2018, 5, 1))
    with pytest.raises(GuardianChildLimit):
        await link(guardian, "kid-2", dt.date(2019, 6, 2))
    assert [("refused", "alpha", "GUARDIAN_CHILD_LIMIT")] == metrics.events
