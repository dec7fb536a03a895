"""The storage contract (P1-P3, P8 and the audit trail), run against every backend.

MemoryStore is the reference; the pair store must behave identically, down to the bytes of the
audit records. Times are fixed; every value a store sees is already a pseudonym or a MAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import (
    ChallengeAccountMismatch,
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    IdempotencyKeyReused,
    OtpAttemptsExceeded,
    OtpExpired,
    OtpIncorrect,
    PhoneAccountLimit,
    PhoneLocked,
    ResendTooSoon,
    SendLimitExceeded,
    StartInProgress,
    StoreUnavailable,
    XacthucError,
)
from xacthuc.domain.records import (
    CHALLENGE_CHARS,
    CHALLENGE_PREFIX,
    SLOT_CHARS,
    TAG_CHARS,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    IdAttempt,
    Limits,
    NewChallenge,
    PendingAttestation,
    audit_record,
    challenge_head,
    challenge_record,
    idempotency_slot,
    number_tag,
)
from xacthuc.ports.store import Store

from .conftest import emptied_database, memory_store, nth_index, pair_store

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOW = 1_800_000_000.0
TTL = 300.0
YEAR = 365 * 86_400.0
LIMITS = Limits()
PLATFORM = "alpha"
OTHER_PLATFORM = "beta"

CODE = "483915"
WRONG = "271828"
CODE_KEY = b"code-key-2"
OLD_CODE_KEY = b"code-key-1"
PSEUDONYM_KEY = b"pseudonym-key"
RAW_PHONE = "+84912345678"
RAW_IP = "203.0.113.7"
TOKEN = "tok-1"


def pseudonym(raw: str) -> str:
    return hmac.new(PSEUDONYM_KEY, raw.encode(), hashlib.sha256).hexdigest()[:32]


def mac(code: str, key: bytes = CODE_KEY) -> str:
    return hmac.new(key, code.encode(), hashlib.sha256).hexdigest()


PHONE = pseudonym(RAW_PHONE)
PHONE_2 = pseudonym("+84987654321")
CLIENT = pseudonym(RAW_IP)


def phone_n(n: int) -> str:
    return pseudonym(f"+849000{n:05d}")


def client_n(n: int) -> str:
    return pseudonym(f"198.51.100.{n}")


def cid(name: str, key: str, phone: str = PHONE) -> str:
    """The id of the challenge `name` started for `phone` with idempotency key `key`: the
    service's form, beginning with the number's tag and the key's slot (records.py)."""
    return challenge_head(phone, key) + name.ljust(CHALLENGE_CHARS - TAG_CHARS - SLOT_CHARS, "_")


def new(
    challenge_id: str = "ch-1",
    *,
    now: float = NOW,
    account: str = "acc-1",
    phone: str = PHONE,
    client: str = CLIENT,
    key: str = "",
    platform: str = PLATFORM,
    code_mac: str | None = None,
) -> NewChallenge:
    return NewChallenge(
        platform=platform,
        challenge_id=cid(challenge_id, key, phone) if key else challenge_id,
        account_id=account,
        phone=phone,
        client=client,
        code_mac=mac(CODE) if code_mac is None else code_mac,
        idempotency_key=key,
        now=now,
        expires_at=now + TTL,
    )


def check(
    challenge_id: str = "ch-1",
    *,
    now: float,
    code: str = CODE,
    account: str = "acc-1",
    platform: str = PLATFORM,
    token_id: str = TOKEN,
    candidates: tuple[str, ...] | None = None,
) -> CodeCheck:
    return CodeCheck(
        platform=platform,
        challenge_id=challenge_id,
        account_id=account,
        candidates=(mac(code),) if candidates is None else candidates,
        now=now,
        attestation=PendingAttestation(
            token_id=token_id, issued_at=now, expires_at=now + YEAR, method="phone_otp"
        ),
    )


def attestation(
    account: str = "acc-1", *, now: float, token_id: str = TOKEN, token_no: int = 0
) -> AttestationRecord:
    """The record of a phone attestation, the platform's `token_no`-th token (from 0)."""
    return AttestationRecord(
        account_id=account,
        method="phone_otp",
        token_id=token_id,
        verified_at=now,
        issued_at=now,
        expires_at=now + YEAR,
        status_idx=nth_index(token_no),
    )


def rec(
    seq: int,
    now: float,
    event: str,
    outcome: str,
    reason: str = "",
    *,
    account: str = "acc-1",
    platform: str = PLATFORM,
    **extra: str | int,
) -> str:
    return audit_record(
        seq=seq,
        now=now,
        platform=platform,
        account=account,
        event=event,
        outcome=outcome,
        reason=reason,
        **extra,
    )


def started(seq: int, now: float, challenge_id: str = "ch-1", **kw: str) -> str:
    return rec(
        seq,
        now,
        "verification_started",
        "ok",
        challenge=challenge_id,
        **{"phone": PHONE, "client": CLIENT, "method": "phone_otp", **kw},
    )


async def sent(store: Store, nc: NewChallenge, limits: Limits = LIMITS) -> ChallengeView:
    """Start a challenge and confirm its SMS, as the service does on the happy path."""
    view = await store.start_challenge(nc, limits)
    await store.confirm_sent(nc.platform, nc.challenge_id, nc.account_id, nc.now)
    return view


async def fail_checks(store: Store, challenge_id: str, times: list[float]) -> None:
    """Submit a wrong code at each of `times`; all but a lockout say OTP_INCORRECT."""
    for t in times:
        with pytest.raises(OtpIncorrect):
            await store.check_code(check(challenge_id, now=t, code=WRONG), LIMITS)


# --- start: idempotency, P3 sends --------------------------------------------------------


async def test_start_creates_a_challenge_and_audits_it(store: Store) -> None:
    """A start returns the challenge and appends one verification_started record."""
    view = await store.start_challenge(new(), LIMITS)

    assert ChallengeView("ch-1", NOW + TTL, NOW + 60, False) == view
    assert [started(0, NOW)] == await store.audit_records(PLATFORM)


async def test_replay_with_the_same_idempotency_key_changes_nothing(store: Store) -> None:
    """A retry with the same key returns the first (sent) challenge, replayed, audits nothing."""
    await sent(store, new("ch-1", key="k-1"))

    again = await store.start_challenge(new("ch-2", now=NOW + 5, key="k-1"), LIMITS)

    first = cid("ch-1", "k-1")
    assert ChallengeView(first, NOW + TTL, NOW + 60, True) == again
    assert [started(0, NOW, first), code_sent(1, NOW, first)] == await store.audit_records(PLATFORM)


def code_sent(seq: int, now: float, challenge_id: str = "ch-1") -> str:
    return rec(seq, now, "code_sent", "ok", challenge=challenge_id, phone=PHONE)


def start_refused(seq: int, now: float, reason: str, account: str = "acc-1") -> str:
    return rec(
        seq,
        now,
        "verification_started",
        "refused",
        reason,
        account=account,
        phone=PHONE,
        client=CLIENT,
        method="phone_otp",
    )


async def test_a_start_still_sending_is_never_replayed(store: Store) -> None:
    """Issue 13 (6): while the first start with a key has not recorded its send, a retry is
    START_IN_PROGRESS (audited, nothing charged), not a replay of a code that may never
    have been sent; once the send is confirmed the retry replays it."""
    limits = Limits(resend_cooldown_seconds=0, sends_per_phone_15m=1)
    await store.start_challenge(new("ch-1", key="k-1"), limits)

    with pytest.raises(StartInProgress) as refused:
        await store.start_challenge(new("ch-2", now=NOW + 59, key="k-1"), limits)
    assert (1.0, "UNAVAILABLE") == (refused.value.retry_after, refused.value.code)
    with pytest.raises(IdempotencyKeyReused):  # other fields: the key's usual answer
        await store.start_challenge(new("ch-2", now=NOW + 59, account="acc-2", key="k-1"), limits)
    first = cid("ch-1", "k-1")
    await store.confirm_sent(PLATFORM, first, "acc-1", NOW + 59)
    again = await store.start_challenge(new("ch-3", now=NOW + 59, key="k-1"), limits)

    assert ChallengeView(first, NOW + TTL, NOW, True) == again
    assert [
        started(0, NOW, first),
        start_refused(1, NOW + 59, "START_IN_PROGRESS"),
        start_refused(2, NOW + 59, "IDEMPOTENCY_KEY_REUSED", account="acc-2"),
        code_sent(3, NOW + 59, first),
    ] == await store.audit_records(PLATFORM)


async def test_an_abandoned_start_is_undone_and_started_afresh_charged_once(
    store: Store,
) -> None:
    """Issue 13 (6): a challenge still "sending" when its send lease has passed belongs to a
    start that died between the store step and its send; the retry undoes it (audited
    `code_send_abandoned`) and starts a new challenge in the same step: one budget entry,
    the cooldown from the new start, the key naming the new challenge."""
    limits = Limits(sends_per_phone_15m=1, send_lease_seconds=60)
    await store.start_challenge(new("ch-1", key="k-1"), limits)

    view = await store.start_challenge(new("ch-2", now=NOW + 60, key="k-1"), limits)

    first, second = cid("ch-1", "k-1"), cid("ch-2", "k-1")
    assert ChallengeView(second, NOW + 60 + TTL, NOW + 120, False) == view
    with pytest.raises(ResendTooSoon):  # the cooldown runs from the new start
        await store.start_challenge(new("ch-3", now=NOW + 119, key="k-2"), limits)
    with pytest.raises(SendLimitExceeded):  # one send charged in the 15 minutes, not two
        await store.start_challenge(new("ch-3", now=NOW + 120, key="k-2"), limits)
    await store.confirm_sent(PLATFORM, first, "acc-1", NOW + 121)  # the dead start, late: no effect
    await store.abort_challenge(PLATFORM, first, "acc-1", NOW + 121)
    with pytest.raises(ChallengeNotFound):
        await store.check_code(check(first, now=NOW + 122), limits)
    await store.confirm_sent(PLATFORM, second, "acc-1", NOW + 123)
    replay = await store.start_challenge(new("ch-4", now=NOW + 124, key="k-1"), limits)
    assert ChallengeView(second, NOW + 60 + TTL, NOW + 120, True) == replay
    assert [
        started(0, NOW, first),
        rec(1, NOW + 60, "code_send_abandoned", "failed", challenge=first, phone=PHONE),
        started(2, NOW + 60, second),
        start_refused(3, NOW + 119, "RESEND_TOO_SOON"),
        start_refused(4, NOW + 120, "SEND_LIMIT_EXCEEDED"),
        rec(5, NOW + 122, "check_failed", "refused", "CHALLENGE_NOT_FOUND", challenge=first),
        code_sent(6, NOW + 123, second),
    ] == await store.audit_records(PLATFORM)


async def test_same_idempotency_key_for_another_account_is_refused(store: Store) -> None:
    """A key reused with other fields raises IdempotencyKeyReused and audits the refusal."""
    await store.start_challenge(new("ch-1", key="k-1"), LIMITS)

    with pytest.raises(IdempotencyKeyReused):
        await store.start_challenge(new("ch-2", now=NOW + 5, account="acc-2", key="k-1"), LIMITS)

    expected = rec(
        1,
        NOW + 5,
        "verification_started",
        "refused",
        "IDEMPOTENCY_KEY_REUSED",
        account="acc-2",
        phone=PHONE,
        client=CLIENT,
        method="phone_otp",
    )
    assert [started(0, NOW, cid("ch-1", "k-1")), expected] == await store.audit_records(PLATFORM)


async def test_idempotency_key_of_an_expired_challenge_starts_a_new_one(store: Store) -> None:
    """Once its challenge has expired, the key starts a fresh challenge, which replaces the
    expired one: a check of the expired id finds no challenge (issue 11: one record)."""
    await sent(store, new("ch-1", key="k-1"))

    view = await store.start_challenge(new("ch-2", now=NOW + TTL, key="k-1"), LIMITS)

    assert ChallengeView(cid("ch-2", "k-1"), NOW + 2 * TTL, NOW + TTL + 60, False) == view
    with pytest.raises(ChallengeNotFound):
        await store.check_code(check(cid("ch-1", "k-1"), now=NOW + TTL + 1), LIMITS)


async def test_resend_inside_the_cooldown_is_refused_with_the_time_left(store: Store) -> None:
    """A second send to a number within 60 s raises ResendTooSoon with the seconds left."""
    await store.start_challenge(new("ch-1"), LIMITS)

    with pytest.raises(ResendTooSoon) as refused:
        await store.start_challenge(new("ch-2", now=NOW + 20.25, account="acc-2"), LIMITS)

    assert pytest.approx(39.75) == refused.value.retry_after
    assert "40" == refused.value.metadata["retry_after_seconds"]


async def test_five_sends_per_number_in_15_minutes(store: Store) -> None:
    """The 6th send within 15 min is refused (scope phone_15m) until the oldest leaves."""
    for i in range(5):
        await store.start_challenge(new(f"ch-{i}", now=NOW + 60 * i), LIMITS)

    with pytest.raises(SendLimitExceeded) as refused:
        await store.start_challenge(new("ch-5", now=NOW + 300), LIMITS)

    assert "phone_15m" == refused.value.metadata["scope"]
    assert pytest.approx(600) == refused.value.retry_after
    assert "ch-6" == (await store.start_challenge(new("ch-6", now=NOW + 900), LIMITS)).challenge_id


async def test_ten_sends_per_number_a_day(store: Store) -> None:
    """The 11th send within a day is refused (scope phone_day) with the time until one frees."""
    for i in range(10):
        await store.start_challenge(new(f"ch-{i}", now=NOW + 200 * i), LIMITS)

    with pytest.raises(SendLimitExceeded) as refused:
        await store.start_challenge(new("ch-10", now=NOW + 2000), LIMITS)

    assert "phone_day" == refused.value.metadata["scope"]
    assert pytest.approx(86_400 - 2000) == refused.value.retry_after


async def test_client_ip_budget(store: Store) -> None:
    """Sends from one client-IP bucket are capped per hour (scope client_ip_hour)."""
    limits = Limits(sends_per_client_ip_hour=3)
    for i in range(3):
        await store.start_challenge(new(f"ch-{i}", now=NOW + i, phone=phone_n(i)), limits)

    with pytest.raises(SendLimitExceeded) as refused:
        await store.start_challenge(new("ch-3", now=NOW + 3, phone=phone_n(3)), limits)

    assert "client_ip_hour" == refused.value.metadata["scope"]
    assert pytest.approx(3597) == refused.value.retry_after
    other = new("ch-4", now=NOW + 4, phone=phone_n(4), client=client_n(1))
    assert "ch-4" == (await store.start_challenge(other, limits)).challenge_id


async def test_platform_budget(store: Store) -> None:
    """A platform's sends are capped per hour (scope platform_hour); other platforms are not."""
    limits = Limits(sends_per_platform_hour=2)
    for i in range(2):
        await store.start_challenge(
            new(f"ch-{i}", now=NOW + i, phone=phone_n(i), client=client_n(i)), limits
        )

    with pytest.raises(SendLimitExceeded) as refused:
        await store.start_challenge(
            new("ch-2", now=NOW + 2, phone=phone_n(2), client=client_n(2)), limits
        )

    assert "platform_hour" == refused.value.metadata["scope"]
    assert pytest.approx(3598) == refused.value.retry_after
    elsewhere = new(
        "ch-2", now=NOW + 2, phone=phone_n(2), client=client_n(2), platform=OTHER_PLATFORM
    )
    assert "ch-2" == (await store.start_challenge(elsewhere, limits)).challenge_id


async def test_budget_retry_after_follows_send_times_not_arrival(store: Store) -> None:
    """With a clock that stepped back, retry_after counts from the sends' times, sorted."""
    limits = Limits(sends_per_platform_hour=2)
    for i, t in enumerate((NOW + 100, NOW)):
        await store.start_challenge(
            new(f"ch-{i}", now=t, phone=phone_n(i), client=client_n(i)), limits
        )

    with pytest.raises(SendLimitExceeded) as refused:
        await store.start_challenge(
            new("ch-2", now=NOW + 101, phone=phone_n(2), client=client_n(2)), limits
        )

    assert pytest.approx(3600 - 101) == refused.value.retry_after


# --- confirm_sent / abort_challenge -----------------------------------------------------------


async def test_confirm_sent_audits_code_sent_once(store: Store) -> None:
    """confirm_sent audits code_sent once; repeats and unknown ids change nothing."""
    await store.start_challenge(new(), LIMITS)

    await store.confirm_sent(PLATFORM, "ch-1", "acc-1", NOW + 1)
    await store.confirm_sent(PLATFORM, "ch-1", "acc-1", NOW + 2)
    await store.confirm_sent(PLATFORM, "ch-unknown", "acc-1", NOW + 3)

    expected = [started(0, NOW), rec(1, NOW + 1, "code_sent", "ok", challenge="ch-1", phone=PHONE)]
    assert expected == await store.audit_records(PLATFORM)


async def test_abort_removes_the_challenge_and_refunds_everything(store: Store) -> None:
    """abort_challenge forgets the challenge, its key, its budget and cooldown; audits it."""
    limits = Limits(sends_per_phone_15m=1)
    first, second = cid("ch-1", "k-1"), cid("ch-2", "k-1")
    await store.start_challenge(new("ch-1", key="k-1"), limits)

    await store.abort_challenge(PLATFORM, first, "acc-1", NOW + 1)

    with pytest.raises(ChallengeNotFound):
        await store.check_code(check(first, now=NOW + 2), limits)
    view = await store.start_challenge(new("ch-2", now=NOW + 3, key="k-1"), limits)
    assert ChallengeView(second, NOW + 3 + TTL, NOW + 63, False) == view
    expected = [
        started(0, NOW, first),
        rec(
            1,
            NOW + 1,
            "code_send_failed",
            "failed",
            "SMS_DELIVERY_FAILED",
            challenge=first,
            phone=PHONE,
        ),
        rec(2, NOW + 2, "check_failed", "refused", "CHALLENGE_NOT_FOUND", challenge=first),
        started(3, NOW + 3, second),
    ]
    assert expected == await store.audit_records(PLATFORM)


async def test_abort_keeps_the_cooldown_of_an_earlier_send(store: Store) -> None:
    """After an abort the cooldown runs from the number's latest remaining send."""
    limits = Limits(resend_cooldown_seconds=100)
    await sent(store, new("ch-1"), limits)
    await store.start_challenge(new("ch-2", now=NOW + 150), limits)
    await store.abort_challenge(PLATFORM, "ch-2", "acc-1", NOW + 151)

    with pytest.raises(ResendTooSoon):
        await store.start_challenge(new("ch-3", now=NOW + 99), limits)  # within ch-1's cooldown
    view = await store.start_challenge(new("ch-3", now=NOW + 152), limits)

    assert ChallengeView("ch-3", NOW + 152 + TTL, NOW + 252, False) == view


async def test_abort_after_confirm_changes_nothing(store: Store) -> None:
    """A sent challenge cannot be aborted: it stays checkable and nothing is audited."""
    await sent(store, new())

    await store.abort_challenge(PLATFORM, "ch-1", "acc-1", NOW + 1)

    assert attestation(now=NOW + 2) == await store.check_code(check(now=NOW + 2), LIMITS)
    assert ["code_sent"] == [
        json.loads(r)["event"] for r in await store.audit_records(PLATFORM, 1, 2)
    ]


async def test_confirm_and_abort_name_the_challenges_account(store: Store) -> None:
    """confirm_sent and abort_challenge for another account than the challenge's change and
    audit nothing (a store need not keep the account id: the caller passes it); for its own
    account they go on as usual."""
    await store.start_challenge(new("ch-1"), LIMITS)
    await store.start_challenge(new("ch-2", phone=PHONE_2, client=client_n(1)), LIMITS)

    await store.confirm_sent(PLATFORM, "ch-1", "acc-2", NOW + 1)
    await store.abort_challenge(PLATFORM, "ch-1", "acc-2", NOW + 1)
    await store.abort_challenge(PLATFORM, "ch-2", "acc-1x", NOW + 1)
    await store.confirm_sent(PLATFORM, "ch-2", "acc-1", NOW + 2)
    await store.abort_challenge(PLATFORM, "ch-1", "acc-1", NOW + 3)

    with pytest.raises(ChallengeNotFound):
        await store.check_code(check("ch-1", now=NOW + 4), LIMITS)
    expected = [
        started(0, NOW),
        started(1, NOW, "ch-2", phone=PHONE_2, client=client_n(1)),
        rec(2, NOW + 2, "code_sent", "ok", challenge="ch-2", phone=PHONE_2),
        rec(
            3,
            NOW + 3,
            "code_send_failed",
            "failed",
            "SMS_DELIVERY_FAILED",
            challenge="ch-1",
            phone=PHONE,
        ),
        rec(4, NOW + 4, "check_failed", "refused", "CHALLENGE_NOT_FOUND", challenge="ch-1"),
    ]
    assert expected == await store.audit_records(PLATFORM)


async def test_the_longest_account_ids_are_told_apart(store: Store) -> None:
    """Two 128-character account ids (the most request_bounds lets through) that differ in the
    last character only: each is its own account to the challenge, whatever a store keeps of
    it (the Redis store: a digest), for the idempotency key, confirm_sent and check_code."""
    mine, other = "a" * 127 + "1", "a" * 127 + "2"
    first = cid("ch-1", "k-1")
    await store.start_challenge(new("ch-1", account=mine, key="k-1"), LIMITS)

    with pytest.raises(IdempotencyKeyReused):
        await store.start_challenge(new("ch-2", now=NOW + 1, account=other, key="k-1"), LIMITS)
    await store.confirm_sent(PLATFORM, first, other, NOW + 2)  # not its challenge: nothing
    with pytest.raises(StartInProgress):  # still "sending"
        await store.start_challenge(new("ch-2", now=NOW + 2, account=mine, key="k-1"), LIMITS)
    await store.confirm_sent(PLATFORM, first, mine, NOW + 3)
    with pytest.raises(ChallengeAccountMismatch):
        await store.check_code(check(first, now=NOW + 4, account=other), LIMITS)

    assert attestation(mine, now=NOW + 5) == await store.check_code(
        check(first, now=NOW + 5, account=mine), LIMITS
    )
    events = [json.loads(r) for r in await store.audit_records(PLATFORM)]
    assert [
        ("verification_started", "ok", mine),
        ("verification_started", "refused", other),
        ("verification_started", "refused", mine),
        ("code_sent", "ok", mine),
        ("check_failed", "refused", other),
        ("check_ok", "ok", mine),
        ("attestation_issued", "ok", mine),
    ] == [(r["event"], r["outcome"], r["account"]) for r in events]


# --- check_code: P1 ---------------------------------------------------------------------------


async def test_correct_code_issues_an_attestation(store: Store) -> None:
    """The right code returns the attestation, stores it, and audits check_ok + issuance."""
    await sent(store, new())

    result = await store.check_code(check(now=NOW + 30), LIMITS)

    assert attestation(now=NOW + 30) == result
    assert attestation(now=NOW + 30) == await store.get_attestation(PLATFORM, "acc-1")
    expected = [
        rec(2, NOW + 30, "check_ok", "ok", challenge="ch-1", phone=PHONE),
        rec(
            3,
            NOW + 30,
            "attestation_issued",
            "ok",
            token_id="tok-1",
            method="phone_otp",
            expires=int(NOW + 30 + YEAR),
        ),
    ]
    assert expected == await store.audit_records(PLATFORM, 2)


async def test_get_attestation_of_an_unknown_account_is_none(store: Store) -> None:
    """An account never verified has no attestation."""
    assert None is await store.get_attestation(PLATFORM, "nobody")


async def test_wrong_codes_count_down_the_attempts(store: Store) -> None:
    """Each wrong code raises OtpIncorrect with attempts_remaining 4, 3, 2, 1, 0."""
    await sent(store, new())
    remaining = []

    for i in range(5):
        with pytest.raises(OtpIncorrect) as wrong:
            await store.check_code(check(now=NOW + 1 + i, code=WRONG), LIMITS)
        remaining.append(wrong.value.metadata["attempts_remaining"])

    assert ["4", "3", "2", "1", "0"] == remaining
    expected = rec(
        2,
        NOW + 1,
        "check_failed",
        "failed",
        "OTP_INCORRECT",
        challenge="ch-1",
        phone=PHONE,
        attempts_remaining=4,
    )
    assert [expected] == await store.audit_records(PLATFORM, 2, 3)


async def test_correct_code_after_five_wrong_ones_is_refused(store: Store) -> None:
    """After 5 wrong codes even the right one raises OtpAttemptsExceeded."""
    await sent(store, new())
    await fail_checks(store, "ch-1", [NOW + 1 + i for i in range(5)])

    with pytest.raises(OtpAttemptsExceeded):
        await store.check_code(check(now=NOW + 10), LIMITS)


async def test_expired_code_is_refused(store: Store) -> None:
    """At expires_at the right code raises OtpExpired."""
    await sent(store, new())

    with pytest.raises(OtpExpired):
        await store.check_code(check(now=NOW + TTL), LIMITS)


async def test_challenge_is_forgotten_after_retention(store: Store) -> None:
    """Within retention an expired challenge says OTP_EXPIRED, after it CHALLENGE_NOT_FOUND."""
    await sent(store, new())
    retention = LIMITS.challenge_retention_seconds

    with pytest.raises(OtpExpired):
        await store.check_code(check(now=NOW + TTL + retention - 1), LIMITS)
    with pytest.raises(ChallengeNotFound):
        await store.check_code(check(now=NOW + TTL + retention), LIMITS)


async def test_another_platforms_challenge_is_not_found(store: Store) -> None:
    """A challenge id is only known to the platform that started it."""
    await sent(store, new())

    with pytest.raises(ChallengeNotFound):
        await store.check_code(check(now=NOW + 1, platform=OTHER_PLATFORM), LIMITS)


async def test_another_account_is_refused(store: Store) -> None:
    """Checking a challenge for another account raises ChallengeAccountMismatch."""
    await sent(store, new())

    with pytest.raises(ChallengeAccountMismatch):
        await store.check_code(check(now=NOW + 1, account="acc-2"), LIMITS)

    expected = rec(
        2,
        NOW + 1,
        "check_failed",
        "refused",
        "CHALLENGE_ACCOUNT_MISMATCH",
        account="acc-2",
        challenge="ch-1",
        phone=PHONE,
    )
    assert [expected] == await store.audit_records(PLATFORM, 2)


async def test_the_right_code_again_returns_the_same_attestation(store: Store) -> None:
    """Single use, idempotent: the right code again (a retry after a lost reply) gets the
    attestation the challenge issued, counts no attempt, issues nothing and records nothing;
    once that attestation is revoked the challenge is CHALLENGE_ALREADY_USED."""
    await sent(store, new())
    first = await store.check_code(check(now=NOW + 30), LIMITS)

    again = await store.check_code(check(now=NOW + 40, token_id="tok-2"), LIMITS)

    assert attestation(now=NOW + 30) == first == again
    assert 4 == len(await store.audit_records(PLATFORM))
    await store.revoke_attestation(PLATFORM, "acc-1", NOW + 50, "user_request")
    with pytest.raises(ChallengeAlreadyUsed):
        await store.check_code(check(now=NOW + 60, token_id="tok-3"), LIMITS)
    expected = rec(
        5,
        NOW + 60,
        "check_failed",
        "refused",
        "CHALLENGE_ALREADY_USED",
        challenge="ch-1",
        phone=PHONE,
    )
    assert [expected] == await store.audit_records(PLATFORM, 5)


async def test_consumed_challenge_with_another_code_is_already_used(store: Store) -> None:
    """After consumption a wrong code raises ChallengeAlreadyUsed and counts no failure."""
    await sent(store, new())
    await store.check_code(check(now=NOW + 30), LIMITS)

    with pytest.raises(ChallengeAlreadyUsed):
        await store.check_code(check(now=NOW + 31, code=WRONG), LIMITS)


async def test_code_under_a_rotated_key_still_matches(store: Store) -> None:
    """A code MAC'd under the previous key matches through the second candidate."""
    await sent(store, new(code_mac=mac(CODE, OLD_CODE_KEY)))

    with pytest.raises(OtpIncorrect):
        await store.check_code(check(now=NOW + 1), LIMITS)
    result = await store.check_code(
        check(now=NOW + 2, candidates=(mac(CODE), mac(CODE, OLD_CODE_KEY))), LIMITS
    )

    assert attestation(now=NOW + 2) == result


async def test_concurrent_correct_checks_issue_one_attestation(store: Store) -> None:
    """20 concurrent right codes (one call and its retries): one attestation is issued,
    with one status index, and every call gets it."""
    await sent(store, new())

    results = await asyncio.gather(
        *(store.check_code(check(now=NOW + 30, token_id=f"tok-{i}"), LIMITS) for i in range(20)),
        return_exceptions=True,
    )

    issued = await store.get_attestation(PLATFORM, "acc-1")
    assert issued is not None
    assert [issued] * 20 == results
    assert nth_index(0) == issued.status_idx
    events = [json.loads(r)["event"] for r in await store.audit_records(PLATFORM)]
    assert (1, 1, 0) == (
        events.count("check_ok"),
        events.count("attestation_issued"),
        events.count("check_failed"),
    )


# --- P2: failures per number ------------------------------------------------------------------


async def test_ten_failures_across_challenges_lock_the_number(store: Store) -> None:
    """10 wrong codes over two challenges lock the number for 900 s, then 1800 s next time."""
    await sent(store, new("ch-1"))
    await fail_checks(store, "ch-1", [NOW + 1 + i for i in range(5)])
    await sent(store, new("ch-2", now=NOW + 60))
    await fail_checks(store, "ch-2", [NOW + 61 + i for i in range(4)])

    with pytest.raises(PhoneLocked) as locked:
        await store.check_code(check("ch-2", now=NOW + 70, code=WRONG), LIMITS)

    assert pytest.approx(900) == locked.value.retry_after
    expected = rec(
        14,
        NOW + 70,
        "phone_locked",
        "locked",
        "PHONE_LOCKED",
        phone=PHONE,
        lock_seconds=900,
        lock_level=1,
    )
    assert [expected] == await store.audit_records(PLATFORM, 14)
    with pytest.raises(PhoneLocked) as refused:
        await store.start_challenge(new("ch-3", now=NOW + 100), LIMITS)
    assert pytest.approx(870) == refused.value.retry_after

    await sent(store, new("ch-4", now=NOW + 970))
    await fail_checks(store, "ch-4", [NOW + 971 + i for i in range(5)])
    await sent(store, new("ch-5", now=NOW + 1030))
    await fail_checks(store, "ch-5", [NOW + 1031 + i for i in range(4)])
    with pytest.raises(PhoneLocked) as again:
        await store.check_code(check("ch-5", now=NOW + 1040, code=WRONG), LIMITS)
    assert pytest.approx(1800) == again.value.retry_after


async def test_a_locked_number_refuses_even_the_right_code(store: Store) -> None:
    """While locked, a pending challenge of the number refuses checks with the time left."""
    await sent(store, new("ch-1"))
    await fail_checks(store, "ch-1", [NOW + 1 + i for i in range(5)])
    await sent(store, new("ch-2", now=NOW + 60))
    await sent(store, new("ch-3", now=NOW + 120, account="acc-2"))
    await fail_checks(store, "ch-2", [NOW + 121 + i for i in range(4)])
    with pytest.raises(PhoneLocked):
        await store.check_code(check("ch-2", now=NOW + 130, code=WRONG), LIMITS)

    with pytest.raises(PhoneLocked) as refused:
        await store.check_code(check("ch-3", now=NOW + 140, account="acc-2"), LIMITS)

    assert pytest.approx(890) == refused.value.retry_after


async def test_success_resets_the_failure_count(store: Store) -> None:
    """After a success the number again takes 10 consecutive failures to lock."""
    await sent(store, new("ch-1"))
    await fail_checks(store, "ch-1", [NOW + 1 + i for i in range(5)])
    await sent(store, new("ch-2", now=NOW + 60))
    await fail_checks(store, "ch-2", [NOW + 61 + i for i in range(4)])
    await store.check_code(check("ch-2", now=NOW + 70), LIMITS)

    await sent(store, new("ch-3", now=NOW + 120))
    await fail_checks(store, "ch-3", [NOW + 121 + i for i in range(5)])
    await sent(store, new("ch-4", now=NOW + 180))
    await fail_checks(store, "ch-4", [NOW + 181 + i for i in range(4)])

    with pytest.raises(PhoneLocked):
        await store.check_code(check("ch-4", now=NOW + 190, code=WRONG), LIMITS)


# --- P8: accounts per number ------------------------------------------------------------------


async def test_start_for_one_account_too_many_is_refused(store: Store) -> None:
    """With N accounts attested on a number, a start for another account is refused."""
    limits = Limits(max_accounts_per_phone=2)
    for i, account in enumerate(("acc-1", "acc-2")):
        await sent(store, new(f"ch-{i}", now=NOW + 60 * i, account=account), limits)
        await store.check_code(check(f"ch-{i}", now=NOW + 60 * i + 1, account=account), limits)

    with pytest.raises(PhoneAccountLimit):
        await store.start_challenge(new("ch-2", now=NOW + 120, account="acc-3"), limits)
    view = await store.start_challenge(new("ch-3", now=NOW + 121, account="acc-1"), limits)

    assert "ch-3" == view.challenge_id
    expected = rec(
        8,
        NOW + 120,
        "verification_started",
        "refused",
        "PHONE_ACCOUNT_LIMIT",
        account="acc-3",
        phone=PHONE,
        client=CLIENT,
        method="phone_otp",
    )
    assert [expected] == await store.audit_records(PLATFORM, 8, 9)


async def test_check_for_one_account_too_many_is_refused(store: Store) -> None:
    """Two accounts racing for the last slot: the second right code raises PhoneAccountLimit."""
    limits = Limits(max_accounts_per_phone=1)
    await sent(store, new("ch-1"), limits)
    await sent(store, new("ch-2", now=NOW + 60, account="acc-2"), limits)
    await store.check_code(check("ch-1", now=NOW + 61), limits)

    with pytest.raises(PhoneAccountLimit):
        await store.check_code(check("ch-2", now=NOW + 62, account="acc-2"), limits)

    assert None is await store.get_attestation(PLATFORM, "acc-2")


async def test_an_account_moving_to_another_number_frees_its_slot(store: Store) -> None:
    """Re-verifying an account with a new number releases it from the old number's count."""
    limits = Limits(max_accounts_per_phone=1)
    await sent(store, new("ch-1"), limits)
    await store.check_code(check("ch-1", now=NOW + 1), limits)
    await sent(store, new("ch-2", now=NOW + 2, phone=PHONE_2), limits)
    await store.check_code(check("ch-2", now=NOW + 3, token_id="tok-2"), limits)

    view = await store.start_challenge(new("ch-3", now=NOW + 60, account="acc-2"), limits)

    assert "ch-3" == view.challenge_id
    moved = attestation(now=NOW + 3, token_id="tok-2", token_no=1)
    assert moved == await store.get_attestation(PLATFORM, "acc-1")


# --- the audit trail --------------------------------------------------------------------------


async def test_audit_never_holds_a_raw_number_address_or_code(store: Store) -> None:
    """Records carry pseudonyms only: no raw phone number, IP address or code digits."""
    await sent(store, new("ch-1"))
    await fail_checks(store, "ch-1", [NOW + 1])
    await store.check_code(check("ch-1", now=NOW + 2), LIMITS)
    await store.start_challenge(new("ch-2", now=NOW + 60, account="acc-2"), LIMITS)
    await store.abort_challenge(PLATFORM, "ch-2", "acc-2", NOW + 61)

    text = "\n".join(await store.audit_records(PLATFORM))

    leaks = [
        raw
        for raw in (
            RAW_PHONE,
            RAW_PHONE[1:],
            "0912345678",
            "912345678",
            RAW_IP,
            CODE,
            WRONG,
            mac(CODE),
            mac(WRONG),
        )
        if raw in text
    ]
    assert [] == leaks


async def test_audit_records_are_canonical_json_for_any_text(store: Store) -> None:
    """Quotes, slashes, control and non-ASCII characters are escaped as audit_record does."""
    platform, account, challenge = "nền/tảng", 'tài khoản "1"/\n\x01', "ch/é\u2028"
    await sent(store, new(challenge, account=account, platform=platform))
    await store.check_code(
        check(challenge, now=NOW + 1, account=account, platform=platform, token_id="tok/ű"), LIMITS
    )

    kw = {"account": account, "platform": platform}
    expected = [
        rec(
            0,
            NOW,
            "verification_started",
            "ok",
            challenge=challenge,
            phone=PHONE,
            client=CLIENT,
            method="phone_otp",
            **kw,
        ),
        rec(1, NOW, "code_sent", "ok", challenge=challenge, phone=PHONE, **kw),
        rec(2, NOW + 1, "check_ok", "ok", challenge=challenge, phone=PHONE, **kw),
        rec(
            3,
            NOW + 1,
            "attestation_issued",
            "ok",
            token_id="tok/ű",
            method="phone_otp",
            expires=int(NOW + 1 + YEAR),
            **kw,
        ),
    ]
    assert expected == await store.audit_records(platform)


async def test_audit_times_keep_milliseconds(store: Store) -> None:
    """Fractional times are written with the same milliseconds as in memory."""
    now = NOW + 0.0125
    await store.start_challenge(new(now=now), LIMITS)

    assert [started(0, now)] == await store.audit_records(PLATFORM)


async def test_record_times_never_go_backwards(store: Store) -> None:
    """A step whose clock reading is older than the last record's time (another replica, a
    request that waited for its turn) is recorded at that time: log times never go backwards."""
    await store.start_challenge(new(now=NOW + 5), LIMITS)
    await store.append_audit(PLATFORM, NOW + 1, account="", event="auditor_query", outcome="ok")
    await store.start_challenge(new("ch-2", now=NOW + 2, account="acc-2", phone=PHONE_2), LIMITS)
    await store.append_audit(PLATFORM, NOW + 6, account="", event="auditor_query", outcome="ok")

    assert [
        started(0, NOW + 5),
        rec(1, NOW + 5, "auditor_query", "ok", account=""),
        started(2, NOW + 5, "ch-2", account="acc-2", phone=PHONE_2),
        rec(3, NOW + 6, "auditor_query", "ok", account=""),
    ] == await store.audit_records(PLATFORM)


async def test_append_audit_numbers_records_in_order_with_the_shared_format(store: Store) -> None:
    """append_audit adds a record after the others, numbered by position, in the canonical form."""
    await store.start_challenge(new(), LIMITS)
    index = await store.append_audit(
        PLATFORM,
        NOW + 2,
        account="",
        event="auditor_query",
        outcome="ok",
        key_id="k1",
        detail='quote " and / é',
    )

    expected = audit_record(
        seq=1,
        now=NOW + 2,
        platform=PLATFORM,
        account="",
        event="auditor_query",
        outcome="ok",
        key_id="k1",
        detail='quote " and / é',
    )
    assert 1 == index
    assert expected == (await store.audit_records(PLATFORM))[1]


@pytest.mark.parametrize(
    ("start", "stop"), [(0, None), (1, 3), (2, 2), (3, 1), (-2, None), (0, -1), (-3, -1), (9, None)]
)
async def test_audit_records_slice_like_a_list(store: Store, start: int, stop: int | None) -> None:
    """audit_records(start, stop) returns the same records as list slicing [start:stop]."""
    await sent(store, new())
    await store.check_code(check(now=NOW + 1), LIMITS)
    everything = await store.audit_records(PLATFORM)

    assert everything[start:stop] == await store.audit_records(PLATFORM, start, stop)


# --- the pair's Redis half --------------------------------------------------------------------


async def test_each_redis_step_is_one_round_trip(
    redis_url: str, redis_namespace: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every operation with a Redis step sends exactly one command to Redis, EVALSHA; the
    reads are PostgreSQL's (no Redis command). Counted where every command goes out, on the
    connection (the scripts go through a second client over the same connections: see
    `without_retries`)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = pair_store(redis_url, redis_namespace, database, client=client)
    commands: list[str] = []
    connection_class = client.connection_pool.connection_class
    send: Callable[..., Awaitable[None]] = connection_class.send_command

    async def counted(self: object, *args: object, **options: object) -> None:
        if str(args[0]).upper() not in ("HELLO", "CLIENT", "SELECT"):  # connection set-up
            commands.append(str(args[0]))
        await send(self, *args, **options)

    monkeypatch.setattr(connection_class, "send_command", counted)

    async def one_of_each(offset: float) -> list[list[str]]:
        t = NOW + offset
        seen = []
        for operation in (
            lambda: store.start_challenge(new(f"a{offset}", now=t, phone=phone_n(1)), LIMITS),
            lambda: store.abort_challenge(PLATFORM, f"a{offset}", "acc-1", t),
            lambda: store.start_challenge(new(f"b{offset}", now=t, phone=phone_n(2)), LIMITS),
            lambda: store.confirm_sent(PLATFORM, f"b{offset}", "acc-1", t),
            lambda: store.check_code(check(f"b{offset}", now=t, code=WRONG), LIMITS),
            lambda: store.check_code(check(f"b{offset}", now=t), LIMITS),
            lambda: store.get_attestation(PLATFORM, "acc-1"),
            lambda: store.audit_records(PLATFORM, 0, 2),
            lambda: store.ping(),
        ):
            commands.clear()
            with contextlib.suppress(OtpIncorrect):
                await operation()
            seen.append(list(commands))
        return seen

    try:
        await one_of_each(0)  # the first pass may have to load the scripts
        seen = await one_of_each(1000)
    finally:
        await client.aclose()

    expected = [["EVALSHA"]] * 6 + [[], [], ["PING"]]
    assert expected == seen


async def test_each_id_check_step_is_one_round_trip_on_one_server(
    redis_url: str, redis_namespace: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one Redis server the personal-ID steps, each of several subjects (the account's and
    the number's windows), are one script each: one EVALSHA (on a cluster, a script per
    subject: test_redis_cluster.py)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = pair_store(redis_url, redis_namespace, database, client=client)
    commands: list[str] = []
    connection_class = client.connection_pool.connection_class
    send: Callable[..., Awaitable[None]] = connection_class.send_command

    async def counted(self: object, *args: object, **options: object) -> None:
        if str(args[0]).upper() not in ("HELLO", "CLIENT", "SELECT"):
            commands.append(str(args[0]))
        await send(self, *args, **options)

    monkeypatch.setattr(connection_class, "send_command", counted)
    pending = PendingAttestation(
        token_id="tok-id", issued_at=NOW, expires_at=NOW + YEAR, method="personal_id"
    )
    seen: list[list[str]] = []
    try:
        for n in range(2):  # the first pass may have to load the scripts
            attempt = IdAttempt(
                platform=PLATFORM, attempt_id=f"at-{n}", account_id="acc-1",
                subject="id_" + "d" * 32, client=CLIENT, purpose="no_vietnamese_mobile",
                now=NOW + n,
            )  # fmt: skip
            seen.clear()
            for operation in (
                lambda a=attempt: store.begin_id_check(a, LIMITS),
                lambda a=attempt: store.finish_id_check(a, "no_match", pending, LIMITS),
            ):
                commands.clear()
                with contextlib.suppress(XacthucError):
                    await operation()
                seen.append(list(commands))
    finally:
        await client.aclose()
    assert [["EVALSHA"], ["EVALSHA"]] == seen


async def test_redis_keys_are_tagged_by_subject_and_all_expire(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    """Every key is `<ns>:<platform>:{<tag>}:<kind>`, tagged by the subject it protects (the
    number; the key's claim and the address's sends in buckets of 256, by 8 bits of the slot
    and of SHA-1 of the pseudonym; the platform's budget), and all expire: nothing durable
    is in Redis (docs/design/redis-cluster.md)."""
    store = pair_store(redis_url, redis_namespace, database)
    first = cid("ch-1", "k-1")
    await sent(store, new(key="k-1"))
    await store.check_code(check(first, now=NOW + 1), LIMITS)
    await store.aclose()
    pre = f"{redis_namespace}:{PLATFORM}:"
    retention_ms = (TTL + LIMITS.challenge_retention_seconds) * 1000
    # One record for the challenge and its idempotency key, named by the key's slot, under
    # the number's tag; the key's claim under the slot's.
    record, _ = challenge_record(first)
    assert CHALLENGE_PREFIX + idempotency_slot("k-1") == record
    number = f"{pre}{{n:{number_tag(PHONE)}}}:"
    slot = idempotency_slot("k-1")
    claim = f"{pre}{{k:{slot[0]}{B64URL.index(slot[1]) >> 4}}}:k"
    sends = f"{pre}{{i:{hashlib.sha1(CLIENT.encode()).hexdigest()[:2]}}}:i"  # noqa: S324

    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
        keys = [key async for key in client.scan_iter(f"{redis_namespace}:*")]
        ttl = {key: await client.pttl(key) for key in keys}
        fields = (
            await client.hlen(claim),
            await client.hlen(sends),
            await client.hexists(claim, slot),
        )

    assert {
        f"{number}c:{record}",
        f"{number}p:{PHONE}",
        f"{pre}{{pl:{PLATFORM}}}:pl",
        sends,
        claim,
    } == set(ttl)
    assert (1, 1, True) == fields
    assert retention_ms - 60_000 < ttl[f"{number}c:{record}"] <= retention_ms
    assert retention_ms - 60_000 < ttl[claim] <= retention_ms
    assert 0 < ttl[f"{number}p:{PHONE}"] <= 86_400_000
    assert 0 < ttl[f"{pre}{{pl:{PLATFORM}}}:pl"] <= 3_600_000
    assert 0 < ttl[sends] <= 3_600_000


async def test_unreachable_redis_is_store_unavailable(database: Database) -> None:
    """A refused connection raises StoreUnavailable from every operation with a Redis step."""
    store = pair_store("redis://127.0.0.1:1/0", "unreachable", database)
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.start_challenge(new(), LIMITS)
        with pytest.raises(StoreUnavailable):
            await store.check_code(check(now=NOW + 1), LIMITS)
    finally:
        await store.aclose()


async def outcome(operation: Awaitable[object]) -> object:
    """What an operation did, comparable across backends: its result or its refusal."""
    try:
        return await operation
    except XacthucError as e:
        return (type(e), e.retry_after, e.metadata)


@pytest.mark.parametrize("seed", range(25))
async def test_random_histories_agree_with_memory(
    redis_url: str, redis_namespace: str, database_url: str, seed: int
) -> None:
    """Random operation sequences give the pair (Redis + PostgreSQL) the results and audit
    bytes of MemoryStore."""
    rnd = random.Random(seed)
    limits = Limits(
        otp_max_attempts=rnd.randint(2, 4),
        phone_max_failures=rnd.randint(3, 6),
        phone_lock_base_seconds=60,
        phone_lock_max_seconds=rnd.choice([100, 500]),
        resend_cooldown_seconds=rnd.choice([0, 5, 60]),
        sends_per_phone_15m=rnd.randint(2, 5),
        sends_per_phone_day=rnd.randint(4, 10),
        sends_per_platform_hour=rnd.randint(4, 20),
        sends_per_client_ip_hour=rnd.randint(2, 8),
        max_accounts_per_phone=rnd.randint(1, 3),
        challenge_retention_seconds=rnd.choice([10, 100]),
        send_lease_seconds=rnd.choice([1, 60]),
    )
    db = await emptied_database(database_url)
    memory, redis_backend = memory_store(), pair_store(redis_url, redis_namespace, db)
    backends = (memory, redis_backend)
    now = NOW + rnd.random()
    challenges: list[NewChallenge] = []
    calls: list[Awaitable[object]]
    try:
        for step in range(150):
            # Mostly small steps forward, rarely a jump back (a stepped wall clock).
            now += rnd.choice([0, 0.001, 0.1, 1, 1, 7.3, 30, 61, 61, 400]) * rnd.choice(
                [1] * 30 + [-1]
            )
            kind = rnd.random()
            if kind < 0.3 or not challenges:
                key = rnd.choice(["", "", "k1"])
                phone = rnd.choice([PHONE, PHONE_2])
                nc = NewChallenge(
                    platform=rnd.choice([PLATFORM, PLATFORM, OTHER_PLATFORM]),
                    challenge_id=cid(f"ch-{step}", key, phone) if key else f"ch-{step}",
                    account_id=rnd.choice("abcd"),
                    phone=phone,
                    client=rnd.choice([CLIENT, client_n(1)]),
                    code_mac=rnd.choice(["m1", "m2"]),
                    idempotency_key=key,
                    now=now,
                    expires_at=now + rnd.choice([50, 300]),
                )
                challenges.append(nc)
                calls = [s.start_challenge(nc, limits) for s in backends]
            else:
                nc = rnd.choice(challenges[-3:])
                if kind < 0.45:
                    action = rnd.choice(["confirm_sent", "confirm_sent", "abort_challenge"])
                    # Now and then another account: nothing to confirm or abort.
                    account = nc.account_id if rnd.random() < 0.9 else rnd.choice("abcd")
                    calls = [
                        getattr(s, action)(nc.platform, nc.challenge_id, account, now)
                        for s in backends
                    ]
                else:
                    cc = CodeCheck(
                        platform=nc.platform if rnd.random() < 0.95 else OTHER_PLATFORM,
                        challenge_id=nc.challenge_id,
                        account_id=nc.account_id if rnd.random() < 0.9 else rnd.choice("abcd"),
                        candidates=tuple(rnd.sample(["m1", "m2", "m1x", ""], rnd.randint(0, 2))),
                        now=now,
                        attestation=PendingAttestation(f"tok-{step}", now, now + YEAR + 0.5, "otp"),
                    )
                    calls = [s.check_code(cc, limits) for s in backends]
            expected, actual = [await outcome(call) for call in calls]
            assert expected == actual, f"step {step}"
        for platform in (PLATFORM, OTHER_PLATFORM):
            assert await memory.audit_records(platform) == await redis_backend.audit_records(
                platform
            )
            for account in "abcd":
                assert await memory.get_attestation(platform, account) == (
                    await redis_backend.get_attestation(platform, account)
                )
    finally:
        await redis_backend.aclose()
        await db.aclose()


async def test_memory_store_forgets_challenges_after_retention() -> None:
    """The embedded store does not grow without bound: old challenges and their keys go."""
    store = MemoryStore()
    await store.start_challenge(new("old", key="k-old"), LIMITS)
    later = NOW + TTL + LIMITS.challenge_retention_seconds + 1
    for n in range(MemoryStore._PURGE_EVERY):
        await store.start_challenge(
            new(f"c{n}", now=later + n * 61, phone=phone_n(n), client=client_n(n % 200)),
            Limits(sends_per_client_ip_hour=10_000),
        )
    platform = store._platforms[PLATFORM]
    old = cid("old", "k-old")
    assert (False, False) == (old in platform.challenges, "k-old" in platform.idempotency)
