"""Idempotent starts under interleavings (issue 13, defect 6), on both stores.

A replay answers only for a code that was sent. The interleavings are injected, never waited
for: a store whose reply is held after its step ran (the caller gives up in that window), a
gateway that holds the message (a duplicate start arrives meanwhile), a start that dies right
after the store step (its process stopped). `asyncio.timeout` appears only as a bound that
turns a hang into a failure, never as the synchronisation of a passing run.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

import pytest

from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import (
    ChallengeNotFound,
    SendLimitExceeded,
    SmsDeliveryFailed,
    StartInProgress,
    XacthucError,
)
from xacthuc.domain.keyed import OtpMac, Pseudonymizer
from xacthuc.domain.phone import normalize_vn_mobile
from xacthuc.domain.records import (
    CHALLENGE_ID,
    CHALLENGE_PREFIX,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    Limits,
    NewChallenge,
    challenge_head,
    challenge_tag,
    idempotency_slot,
    number_tag,
)
from xacthuc.ports.sms import SmsMessage
from xacthuc.ports.store import Store
from xacthuc.server.app import limits_from
from xacthuc.server.config import ConfigError, Settings
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier, StartedChallenge

NOW = 1_800_000_000.0
PLATFORM = "alpha"
PHONE = "0912345678"
IP = "203.0.113.7"
GUARD = 30  # seconds before a hang fails the test; a passing run never waits on it


class Gateway:
    """An SmsSender that records messages; with `hold` set it keeps each one until released."""

    def __init__(self) -> None:
        self.messages: list[SmsMessage] = []
        self.entered = asyncio.Event()
        self.hold: asyncio.Event | None = None

    async def send(self, message: SmsMessage) -> None:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        self.messages.append(message)

    async def aclose(self) -> None:
        return None


class Interleaved:
    """The store, with hooks in the start flow's three steps."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.stored = asyncio.Event()  # a start_challenge step has run
        self.reply_held: asyncio.Event | None = None  # keep its reply until set
        self.die_after_store = False  # the start's task ends right after the store step
        self.confirmed = asyncio.Event()

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        view = await self.inner.start_challenge(new, limits)
        self.stored.set()
        if self.die_after_store:
            self.die_after_store = False
            raise asyncio.CancelledError  # as when the process stops: nothing after runs
        if self.reply_held is not None:
            await self.reply_held.wait()
        return view

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.inner.confirm_sent(platform, challenge_id, account_id, now)
        self.confirmed.set()

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self.inner.abort_challenge(platform, challenge_id, account_id, now)

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        return await self.inner.check_code(check, limits)


def verifier(
    store: Interleaved, gateway: Gateway, clock: FixedClock, limits: Limits
) -> PhoneOtpVerifier:
    return PhoneOtpVerifier(
        store=cast(Store, store),
        sms=gateway,
        clock=clock,
        pseudonyms=Pseudonymizer(b"p" * 32),
        otp_mac=OtpMac([b"m" * 32]),
        limits=limits,
        otp_ttl_seconds=300,
        token_ttl_seconds=86_400,
        sms_template="{code}",
    )


async def start(flow: PhoneOtpVerifier, key: str) -> StartedChallenge:
    return await flow.start(
        platform=PLATFORM, account_id="acc-1", phone_number=PHONE, client_ip=IP, idempotency_key=key
    )


async def test_a_caller_giving_up_after_the_store_step_still_gets_its_code_sent(
    store: Store,
) -> None:
    """The caller is cancelled while the store's reply is on its way: the start still sends
    its code (once), and the retry replays exactly that challenge."""
    hooks, gateway = Interleaved(store), Gateway()
    flow = verifier(hooks, gateway, FixedClock(NOW), Limits())
    hooks.reply_held = asyncio.Event()
    caller = asyncio.create_task(start(flow, "k-1"))
    await hooks.stored.wait()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    hooks.reply_held.set()
    async with asyncio.timeout(GUARD):
        await hooks.confirmed.wait()
    retry = await start(flow, "k-1")

    assert [retry.view.challenge_id] == [m.message_id for m in gateway.messages]
    assert retry.view.replayed


async def test_a_concurrent_duplicate_sends_no_second_code_and_charges_nothing(
    store: Store,
) -> None:
    """A second start with the same key while the first is in the gateway: START_IN_PROGRESS,
    no second message, no budget spent; afterwards the key replays the one code sent."""
    hooks, gateway = Interleaved(store), Gateway()
    limits = Limits(resend_cooldown_seconds=0, sends_per_phone_15m=2)
    flow = verifier(hooks, gateway, FixedClock(NOW), limits)
    gateway.hold = asyncio.Event()
    first = asyncio.create_task(start(flow, "k-1"))
    await gateway.entered.wait()

    with pytest.raises(StartInProgress):
        await start(flow, "k-1")
    gateway.hold.set()
    a = await first
    again = await start(flow, "k-1")
    other = await start(flow, "k-2")  # the second send of the 15 minutes: B charged nothing
    with pytest.raises(SendLimitExceeded):
        await start(flow, "k-3")

    assert (a.view.challenge_id, False, True) == (
        again.view.challenge_id,
        a.view.replayed,
        again.view.replayed,
    )
    assert [a.view.challenge_id, other.view.challenge_id] == [
        m.message_id for m in gateway.messages
    ]


async def test_a_start_that_died_before_sending_is_started_afresh_after_its_lease(
    store: Store,
) -> None:
    """The start's task ends right after the store step (its process stopped): within the
    send lease a retry is START_IN_PROGRESS; after it, the retry sends a new code, once, which
    confirms; the dead challenge is gone."""
    hooks, gateway = Interleaved(store), Gateway()
    clock = FixedClock(NOW)
    flow = verifier(hooks, gateway, clock, Limits(send_lease_seconds=60))
    hooks.die_after_store = True
    with pytest.raises(asyncio.CancelledError):
        await start(flow, "k-1")

    clock.advance(59)
    with pytest.raises(StartInProgress):
        await start(flow, "k-1")
    clock.advance(1)
    retry = await start(flow, "k-1")

    assert False is retry.view.replayed
    assert [retry.view.challenge_id] == [m.message_id for m in gateway.messages]
    attestation = await flow.confirm(
        platform=PLATFORM,
        challenge_id=retry.view.challenge_id,
        account_id="acc-1",
        code=gateway.messages[0].text,
    )
    assert "acc-1" == attestation.account_id
    events = [json.loads(r)["event"] for r in await store.audit_records(PLATFORM)]
    assert [
        "verification_started",  # the start that died
        "verification_started",  # refused: START_IN_PROGRESS
        "code_send_abandoned",
        "verification_started",
        "code_sent",
        "check_ok",
        "attestation_issued",
    ] == events


async def test_a_send_is_cut_off_at_half_the_lease_and_undone(store: Store) -> None:
    """The gateway gets at most half the send lease (here 0: cut at its first wait); the
    start is SMS_DELIVERY_FAILED and undone, so the same key starts afresh at once."""
    hooks, gateway = Interleaved(store), Gateway()
    flow = verifier(hooks, gateway, FixedClock(NOW), Limits(send_lease_seconds=0))
    gateway.hold = asyncio.Event()  # never released

    with pytest.raises(SmsDeliveryFailed):
        async with asyncio.timeout(GUARD):
            await start(flow, "k-1")
    gateway.hold = None
    retry = await start(flow, "k-1")

    assert False is retry.view.replayed
    assert [retry.view.challenge_id] == [m.message_id for m in gateway.messages]


def test_the_send_lease_must_cover_twice_the_gateways_worst_case() -> None:
    """3 attempts of 20 s plus two 5 s waits is 70 s: a 60 s lease is refused, 140 s is not;
    the lease reaches the flow's Limits."""
    http = {"sms_backend": "http", "sms_http_url": "https://sms.example/send"}
    with pytest.raises(ConfigError) as e:
        Settings.load(**http, sms_http_timeout_seconds=20)
    assert any("XACTHUC_SMS_SEND_LEASE_SECONDS" in p and "140" in p for p in e.value.problems)
    settings = Settings.load(**http, sms_http_timeout_seconds=20, sms_send_lease_seconds=140)
    assert 140 == limits_from(settings).send_lease_seconds


@pytest.mark.parametrize(
    ("number", "ip", "reason"),
    [
        ("091234567x", IP, "PHONE_MALFORMED"),
        ("+14155552671", IP, "PHONE_NOT_VIETNAMESE"),
        (PHONE, "999.1.1.1", "FIELD_INVALID"),
    ],
)
async def test_a_start_refused_on_its_input_is_audited_alike_on_both_stores(
    store: Store, number: str, ip: str, reason: str
) -> None:
    """One `verification_started` refused record with the reason, the client's pseudonym
    when its IP is valid, and nothing of the number; the same fields on memory and Redis."""
    flow = verifier(cast(Interleaved, store), Gateway(), FixedClock(NOW), Limits())
    with pytest.raises(XacthucError) as e:
        await flow.start(
            platform=PLATFORM,
            account_id="acc-1",
            phone_number=number,
            client_ip=ip,
            idempotency_key="",
        )
    assert reason == e.value.reason
    records = [json.loads(r) for r in await store.audit_records(PLATFORM)]
    kept = {"event", "outcome", "reason", "account", "method", "time"}
    expected = {
        "event": "verification_started",
        "outcome": "refused",
        "reason": reason,
        "account": "acc-1",
        "method": "phone_otp",
        "time": "2027-01-15T08:00:00.000Z",  # NOW
    }
    assert [expected] == [{k: v for k, v in r.items() if k in kept} for r in records]
    assert ("client" in records[0]) == (ip == IP)
    assert [] == sorted(set(records[0]) - kept - {"client", "platform", "seq", "v"})
    assert PLATFORM == records[0]["platform"]


@pytest.mark.parametrize("key", ["", "k-1"])
async def test_a_challenge_id_carries_its_numbers_tag_in_the_form_the_proto_promises(
    store: Store, key: str
) -> None:
    """`ch_` + 22 base64url characters (25 in all), the first two after `ch_` its number's
    tag (a store sharded by number finds the shard from the id), then the idempotency key's
    slot when there is a key; the rest is random, so two starts never share an id."""
    pseudonyms, gateway = Pseudonymizer(b"p" * 32), Gateway()
    flow = verifier(Interleaved(store), gateway, FixedClock(NOW), Limits(resend_cooldown_seconds=0))
    first = (await start(flow, key)).view.challenge_id
    tag = number_tag(pseudonyms.phone(normalize_vn_mobile(PHONE)))
    assert CHALLENGE_ID.fullmatch(first)
    assert len(first) == 25
    assert (tag, tag) == (first[3:5], challenge_tag(first))
    assert first.startswith(challenge_head(pseudonyms.phone(normalize_vn_mobile(PHONE)), key))
    if key:
        assert first[5:16] == idempotency_slot(key)
    else:
        flow_2 = verifier(
            Interleaved(store), gateway, FixedClock(NOW + 1), Limits(resend_cooldown_seconds=0)
        )
        second = (await start(flow_2, key)).view.challenge_id
        assert second != first
        assert second[:5] == first[:5]


async def test_an_id_of_the_form_before_the_tag_is_challenge_not_found(store: Store) -> None:
    """An id issued before challenge ids carried their number's tag (`ch_` + the key's slot
    + 11 random characters: the same form and length) names no challenge: the confirmation
    answers CHALLENGE_NOT_FOUND (the user asks for a new code), never INTERNAL."""
    gateway = Gateway()
    flow = verifier(Interleaved(store), gateway, FixedClock(NOW), Limits())
    started = await start(flow, "k-1")
    old = CHALLENGE_PREFIX + idempotency_slot("k-1") + started.view.challenge_id[-11:]
    assert CHALLENGE_ID.fullmatch(old)
    assert old != started.view.challenge_id
    code = gateway.messages[-1].text

    with pytest.raises(ChallengeNotFound):
        await flow.confirm(platform=PLATFORM, challenge_id=old, account_id="acc-1", code=code)
    assert await flow.confirm(
        platform=PLATFORM, challenge_id=started.view.challenge_id, account_id="acc-1", code=code
    )
