"""Phone verification end to end: real server, real Redis, the shipped client (R2, P1-P4)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from xacthuc.client import AsyncClient, AttestationVerifier, Challenge, Client, TokenInvalid
from xacthuc.domain import errors
from xacthuc.domain.errors import Code
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import LEGAL_BASIS, TokenSigner
from xacthuc.server.auth import Role

from .conftest import Harness

PHONE = "0912345678"
IP = "203.0.113.7"


async def start(
    h: Harness, account: str = "acc-1", phone: str = PHONE, key: str = "", platform: str = "alpha"
) -> Challenge:
    client = await h.client(platform)
    return await client.start_phone_verification(
        account_id=account, phone_number=phone, client_ip=IP, idempotency_key=key
    )


async def test_start_and_confirm_issue_a_verifiable_attestation(harness: Harness) -> None:
    """A correct code yields a token that verifies offline against the published JWKS."""
    client = await harness.client()
    challenge = await client.start_phone_verification(
        account_id="acc-1", phone_number=PHONE, client_ip=IP
    )
    assert "+84 91*****78" == challenge.masked_phone_number
    assert 1 == len(harness.sms.messages)
    assert "+84912345678" == harness.sms.messages[0].to
    code = harness.sms.code_for(challenge.challenge_id)

    att = await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id, account_id="acc-1", code=code
    )

    verifier = AttestationVerifier(
        await client.get_jwks(), issuer=harness.app.settings.issuer, audience="alpha"
    )
    verified = verifier.verify(att.token, now=harness.clock.now())
    assert ("acc-1", "phone_otp", att.token_id) == (
        verified.account_id,
        verified.method,
        verified.token_id,
    )
    assert LEGAL_BASIS == verified.claims["legal_basis"]
    assert "phone_otp" == att.method
    assert PHONE[1:] not in att.token
    assert "912345678" not in json.dumps(verified.claims)


async def test_token_fails_after_a_one_bit_change(harness: Harness) -> None:
    """Flipping one bit anywhere in the signed part or the signature breaks verification."""
    client = await harness.client()
    challenge = await start(harness)
    att = await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id="acc-1",
        code=harness.sms.code_for(challenge.challenge_id),
    )
    verifier = AttestationVerifier(
        await client.get_jwks(), issuer=harness.app.settings.issuer, audience="alpha"
    )
    head, payload, sig = att.token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[len(raw) // 2] ^= 0x01
    tampered_payload = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    sig_raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    sig_raw[0] ^= 0x01
    tampered_sig = base64.urlsafe_b64encode(bytes(sig_raw)).rstrip(b"=").decode()
    for token in (f"{head}.{tampered_payload}.{sig}", f"{head}.{payload}.{tampered_sig}"):
        with pytest.raises(TokenInvalid):
            verifier.verify(token, now=harness.clock.now())
    other = AttestationVerifier(
        await client.get_jwks(), issuer=harness.app.settings.issuer, audience="beta"
    )
    with pytest.raises(TokenInvalid) as wrong_aud:
        other.verify(att.token, now=harness.clock.now())
    assert "WRONG_AUDIENCE" == wrong_aud.value.reason


async def test_five_wrong_codes_kill_the_challenge(harness: Harness) -> None:
    """After 5 wrong codes even the right code is refused with OTP_ATTEMPTS_EXCEEDED (P1)."""
    client = await harness.client()
    challenge = await start(harness)
    code = harness.sms.code_for(challenge.challenge_id)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    remaining = []
    for _ in range(5):
        with pytest.raises(errors.OtpIncorrect) as e:
            await client.confirm_phone_verification(
                challenge_id=challenge.challenge_id, account_id="acc-1", code=wrong
            )
        remaining.append(e.value.metadata["attempts_remaining"])
    assert ["4", "3", "2", "1", "0"] == remaining
    with pytest.raises(errors.OtpAttemptsExceeded) as dead:
        await client.confirm_phone_verification(
            challenge_id=challenge.challenge_id, account_id="acc-1", code=code
        )
    assert Code.FAILED_PRECONDITION == dead.value.code


async def test_concurrent_correct_checks_issue_exactly_one_attestation(harness: Harness) -> None:
    """Check-and-consume is atomic: of four simultaneous correct confirms (one call and its
    retries), one issues the attestation and every one gets that same token (P1)."""
    first, second = await harness.client(), await harness.client()
    challenge = await start(harness)
    code = harness.sms.code_for(challenge.challenge_id)
    results = await asyncio.gather(
        *(
            c.confirm_phone_verification(
                challenge_id=challenge.challenge_id, account_id="acc-1", code=code
            )
            for c in (first, second, first, second)
        )
    )
    assert 1 == len({r.token for r in results})


async def test_resend_inside_cooldown_is_refused_with_retry_after(harness: Harness) -> None:
    """A second code to the same number within 60 s is RESEND_TOO_SOON with retry-after (P3)."""
    await start(harness)
    harness.clock.advance(20)
    with pytest.raises(errors.ResendTooSoon) as e:
        await start(harness)
    assert 40 == e.value.retry_after
    assert Code.RESOURCE_EXHAUSTED == e.value.code
    harness.clock.advance(40)
    await start(harness)
    assert 2 == len(harness.sms.messages)


async def test_expired_code_fails(harness: Harness) -> None:
    """A correct code after its 5 minutes is OTP_EXPIRED (P1)."""
    client = await harness.client()
    challenge = await start(harness)
    harness.clock.advance(300)
    with pytest.raises(errors.OtpExpired):
        await client.confirm_phone_verification(
            challenge_id=challenge.challenge_id,
            account_id="acc-1",
            code=harness.sms.code_for(challenge.challenge_id),
        )


@pytest.mark.parametrize(
    ("number", "error"),
    [
        ("+14155552671", errors.PhoneNotVietnamese),
        ("+44 20 7946 0958", errors.PhoneNotVietnamese),
        ("024 3825 3825", errors.PhoneNotVietnameseMobile),
        ("1900 1234", errors.PhoneNotVietnameseMobile),
        ("01234567890", errors.PhoneRetiredFormat),
        ("+84 1688 123 456", errors.PhoneRetiredFormat),
        ("0912", errors.PhoneMalformed),
        ("not a number", errors.PhoneMalformed),
        ("091234567x", errors.PhoneMalformed),
        ("", errors.PhoneMalformed),
    ],
)
async def test_bad_numbers_are_refused_with_their_reason(
    harness: Harness, number: str, error: type[errors.XacthucError]
) -> None:
    """Foreign, landline, retired 11-digit and malformed numbers get their own reason (P4)."""
    with pytest.raises(error) as e:
        await start(harness, phone=number)
    assert Code.INVALID_ARGUMENT == e.value.code
    assert number.strip() == "" or number not in e.value.message
    assert [] == harness.sms.messages


@pytest.mark.parametrize(
    ("number", "key", "reason"),
    [
        ("+14155552671", "", "PHONE_NOT_VIETNAMESE"),
        ("024 3825 3825", "", "PHONE_NOT_VIETNAMESE_MOBILE"),
        ("01234567890", "", "PHONE_RETIRED_FORMAT"),
        ("091234567x", "", "PHONE_MALFORMED"),
        ("0912345678", "bad key\n", "FIELD_INVALID"),
    ],
)
async def test_a_refused_start_is_audited_without_the_number(
    harness: Harness, number: str, key: str, reason: str
) -> None:
    """A start refused for its number or a field leaves exactly one `verification_started`
    record, outcome refused, with the reason, and no trace of the number (not even its
    pseudonym): nothing personal."""
    with pytest.raises(errors.XacthucError) as e:
        await start(harness, phone=number, key=key)
    assert reason == e.value.reason
    auditor = await harness.client("alpha", Role.AUDITOR)
    records = (await auditor.query_audit_records()).records
    assert [("verification_started", "refused", reason, "acc-1", "phone_otp")] == [
        (
            r.record["event"],
            r.record["outcome"],
            r.record.get("reason"),
            r.record["account"],
            r.record.get("method"),
        )
        for r in records
    ]
    assert "phone" not in records[0].record
    digits = "".join(c for c in number if c.isdigit())
    assert digits not in records[0].raw
    assert [] == [v for v in records[0].record.values() if str(v).startswith("ph_")]


@pytest.mark.parametrize(
    "number",
    [
        "0912345678",
        "84912345678",
        "+840912345678",
        "00840912345678",
        "+84 91 234 56 78",
        "(091) 234-5678",
    ],
)
async def test_common_forms_reach_the_same_e164_number(harness: Harness, number: str) -> None:
    """Every common way of writing a VN mobile number is normalised to +84 and 9 digits (P4)."""
    await start(harness, phone=number)
    assert "+84912345678" == harness.sms.messages[-1].to


async def test_another_platforms_challenge_is_not_found(harness: Harness) -> None:
    """Platform beta cannot confirm, or even see, platform alpha's challenge."""
    challenge = await start(harness, platform="alpha")
    beta = await harness.client("beta")
    with pytest.raises(errors.ChallengeNotFound) as e:
        await beta.confirm_phone_verification(
            challenge_id=challenge.challenge_id,
            account_id="acc-1",
            code=harness.sms.code_for(challenge.challenge_id),
        )
    assert Code.NOT_FOUND == e.value.code
    alpha = await harness.client("alpha")
    att = await alpha.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id="acc-1",
        code=harness.sms.code_for(challenge.challenge_id),
    )
    assert "acc-1" == att.account_id


async def test_idempotent_start_sends_one_sms(harness: Harness) -> None:
    """A retried start with the same key returns the same challenge and sends no second SMS."""
    a = await start(harness, key="req-42")
    harness.clock.advance(5)
    b = await start(harness, key="req-42")
    assert (a.challenge_id, False, True) == (b.challenge_id, a.replayed, b.replayed)
    assert 1 == len(harness.sms.messages)
    with pytest.raises(errors.IdempotencyKeyReused):
        await start(harness, key="req-42", account="someone-else")


async def test_a_retry_while_the_code_is_being_sent_is_start_in_progress(
    harness: Harness,
) -> None:
    """Issue 13 (6): a second start with the same key while the first is in the gateway gets
    UNAVAILABLE START_IN_PROGRESS with a 1 s retry hint, not a replay of a code not yet
    sent; once it is sent, the retry replays it. One SMS in all."""
    harness.sms.hold = asyncio.Event()
    first = asyncio.create_task(start(harness, key="req-9"))
    await harness.sms.entered.wait()

    with pytest.raises(errors.StartInProgress) as e:
        await start(harness, key="req-9")
    harness.sms.hold.set()
    a = await first
    b = await start(harness, key="req-9")

    assert (Code.UNAVAILABLE, "1") == (e.value.code, e.value.metadata["retry_after_seconds"])
    assert (a.challenge_id, True) == (b.challenge_id, b.replayed)
    assert [a.challenge_id] == [m.message_id for m in harness.sms.messages]


async def test_gateway_failure_is_unavailable_and_leaves_nothing(harness: Harness) -> None:
    """A refused SMS gives UNAVAILABLE; the same start then succeeds at once (no cooldown, no challenge)."""
    harness.sms.fail = True
    with pytest.raises(errors.SmsDeliveryFailed) as e:
        await start(harness, key="req-7")
    assert Code.UNAVAILABLE == e.value.code
    harness.sms.fail = False
    challenge = await start(harness, key="req-7")
    assert False is challenge.replayed
    assert 1 == len(harness.sms.messages)
    auditor = await harness.client("alpha", Role.AUDITOR)
    events = [r.record["event"] for r in (await auditor.query_audit_records()).records]
    assert [
        "verification_started",
        "code_send_failed",
        "verification_started",
        "code_sent",
    ] == events


async def test_credentials_and_roles_are_enforced(harness: Harness) -> None:
    """No key is CREDENTIAL_MISSING, a bad key CREDENTIAL_INVALID, a platform key on audit ROLE_NOT_ALLOWED."""

    async with await AsyncClient.connect(harness.target, api_key="") as anonymous:
        with pytest.raises(errors.CredentialMissing):
            await anonymous.get_jwks()
    async with await AsyncClient.connect(
        harness.target, api_key="xk_000000000000_" + "A" * 43
    ) as bad:
        with pytest.raises(errors.CredentialInvalid) as e:
            await bad.get_jwks()
        assert Code.UNAUTHENTICATED == e.value.code
    platform = await harness.client("alpha", Role.PLATFORM)
    with pytest.raises(errors.RoleNotAllowed):
        await platform.query_audit_records()
    auditor = await harness.client("alpha", Role.AUDITOR)
    with pytest.raises(errors.RoleNotAllowed):
        await auditor.get_jwks()


async def test_field_validation_names_the_field(harness: Harness) -> None:
    """Malformed account ids, client IPs and codes get FIELD_INVALID / OTP_MALFORMED, not a crash."""
    client = await harness.client()
    with pytest.raises(errors.FieldInvalid) as e:
        await client.start_phone_verification(
            account_id="bad id!", phone_number=PHONE, client_ip=IP
        )
    assert "account_id" == e.value.metadata["field"]
    with pytest.raises(errors.FieldInvalid) as e:
        await client.start_phone_verification(
            account_id="a", phone_number=PHONE, client_ip="999.1.1.1"
        )
    assert "client_ip" == e.value.metadata["field"]
    challenge = await start(harness)
    for code in ("12345", "1234567", "١٢٣٤٥٦", "12 456"):
        with pytest.raises(errors.OtpMalformed):
            await client.confirm_phone_verification(
                challenge_id=challenge.challenge_id, account_id="acc-1", code=code
            )


async def test_no_secret_reaches_logs_or_audit(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the code nor the raw number appears in any log record or audit record (P9)."""
    caplog.set_level(logging.DEBUG)
    client = await harness.client()
    challenge = await start(harness)
    code = harness.sms.code_for(challenge.challenge_id)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    with pytest.raises(errors.OtpIncorrect):
        await client.confirm_phone_verification(
            challenge_id=challenge.challenge_id, account_id="acc-1", code=wrong
        )
    await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id, account_id="acc-1", code=code
    )
    auditor = await harness.client("alpha", Role.AUDITOR)
    records = (await auditor.query_audit_records()).records
    assert [
        "verification_started",
        "code_sent",
        "check_failed",
        "check_ok",
        "attestation_issued",
    ] == [r.record["event"] for r in records]
    assert all(r.record["phone"].startswith("ph_") for r in records if "phone" in r.record)
    haystacks = [r.raw for r in records] + [rec.getMessage() for rec in caplog.records]
    for secret in (code, wrong, "912345678", IP):
        assert [] == [h for h in haystacks if secret in h]


async def test_get_attestation_returns_the_current_one(harness: Harness) -> None:
    """After a confirm, GetAttestation gives the same attestation; before it, ATTESTATION_NOT_FOUND."""
    client = await harness.client()
    with pytest.raises(errors.AttestationNotFound):
        await client.get_attestation(account_id="acc-1")
    challenge = await start(harness)
    att = await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id="acc-1",
        code=harness.sms.code_for(challenge.challenge_id),
    )
    again = await client.get_attestation(account_id="acc-1")
    assert (att.token_id, att.token) == (again.token_id, again.token)


async def test_get_attestation_repeated_signs_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token the confirm signed is kept: GetAttestation hands out the same bytes without
    signing again, however often it is called (a key rotation: tests/test_signing.py)."""
    client = await harness.client()
    challenge = await start(harness)
    att = await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id="acc-1",
        code=harness.sms.code_for(challenge.challenge_id),
    )
    signed: list[str] = []
    real = TokenSigner.sign

    def counting(signer: TokenSigner, platform: str, record: AttestationRecord) -> str:
        signed.append(record.token_id)
        return real(signer, platform, record)

    monkeypatch.setattr(TokenSigner, "sign", counting)
    tokens = {(await client.get_attestation(account_id="acc-1")).token for _ in range(5)}
    assert ({att.token}, []) == (tokens, signed)


async def test_blocking_client_speaks_the_same_api(harness: Harness) -> None:
    """The sync Client starts and confirms exactly like the async one."""

    def flow() -> str:
        with Client.connect(harness.target, api_key=harness.keys[("alpha", Role.PLATFORM)]) as c:
            ch = c.start_phone_verification(
                account_id="sync-1", phone_number="0987654321", client_ip=IP
            )
            code = harness.sms.code_for(ch.challenge_id)
            return c.confirm_phone_verification(
                challenge_id=ch.challenge_id, account_id="sync-1", code=code
            ).account_id

    assert "sync-1" == await asyncio.to_thread(flow)
