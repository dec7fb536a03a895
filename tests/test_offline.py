"""Offline authorization: a verified token gives the same decision as the server's facts."""

from __future__ import annotations

import itertools
from dataclasses import replace

import jwt
import pytest

from xacthuc.client.offline import (
    EXP_REASON_AGE_16,
    EXP_REASON_CLAIM,
    attestation_state,
    authorize_offline,
    authorize_token,
    from_status,
    verify_for_decision,
)
from xacthuc.client.verify import AttestationVerifier, TokenInvalid
from xacthuc.domain.decisions import ACTIONS, AttestationState, Decision, decide
from xacthuc.domain.locks import AccountLock
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import TOKEN_TYPE, SigningKey, TokenSigner

NOW = 1_800_000_000.0
DAY = 86_400.0
ISSUER = "xacthuc-test"
KEY = SigningKey.generate()
SIGNER = TokenSigner(KEY, issuer=ISSUER)
VERIFIER = AttestationVerifier(SIGNER.jwks_json(), issuer=ISSUER, audience="alpha")


def sign(record: AttestationRecord, *, ages_out: bool = False, platform: str = "alpha") -> str:
    """What the server will sign: TokenSigner's claims, plus exp_reason when exp is the
    16th birthday (the claim the lead adds to TokenSigner for P6)."""
    claims = SIGNER.claims(platform, record)
    if ages_out:
        claims[EXP_REASON_CLAIM] = EXP_REASON_AGE_16
    return jwt.encode(
        claims, KEY.private_key, algorithm="EdDSA", headers={"kid": KEY.kid, "typ": TOKEN_TYPE}
    )


def record(
    *,
    method: str = "phone_otp",
    verified_at: float = NOW - DAY,
    issued_at: float = NOW - DAY,
    expires_at: float = NOW + 30 * DAY,
    status: str = "active",
    guardian_managed: bool = False,
    commercial_livestream: bool = False,
    aged_out_at: float | None = None,
) -> AttestationRecord:
    return AttestationRecord(
        account_id="acct-1",
        method=method,
        token_id="tok-1",
        verified_at=verified_at,
        issued_at=issued_at,
        expires_at=expires_at,
        status=status,
        guardian_managed=guardian_managed,
        commercial_livestream=commercial_livestream,
        aged_out_at=aged_out_at,
    )


def server_state(rec: AttestationRecord, birthday16: float | None) -> AttestationState:
    """The facts the server has: the stored record and (for a child) the 16th birthday."""
    return AttestationState(
        method=rec.method,
        expires_at=rec.expires_at,
        guardian_managed=rec.guardian_managed,
        commercial_livestream=rec.commercial_livestream,
        revoked=rec.status == "revoked",
        aged_out_at=birthday16 if rec.guardian_managed else None,
    )


CASES = {
    "phone": (record(), None),
    "id-commercial": (record(method="personal_id", commercial_livestream=True), None),
    "id-no-flag": (record(method="personal_id"), None),
    "revoked": (record(status="revoked"), None),
    "expired": (record(expires_at=NOW - 1), None),
    "child": (record(guardian_managed=True), NOW + 90 * DAY),
    "child-capped": (record(guardian_managed=True, expires_at=NOW + 5 * DAY), NOW + 5 * DAY),
    "child-aged-out": (record(guardian_managed=True, expires_at=NOW - 10), NOW - 10),
    "child-expired-before-16": (record(guardian_managed=True, expires_at=NOW - 10), NOW + DAY),
    "child-id-commercial": (
        record(guardian_managed=True, method="personal_id", commercial_livestream=True),
        NOW + 90 * DAY,
    ),
    "revoked-and-aged-out": (
        record(guardian_managed=True, status="revoked", expires_at=NOW - 10),
        NOW - 10,
    ),
}


@pytest.mark.parametrize(("case", "action"), list(itertools.product(CASES, ACTIONS)))
def test_offline_decision_agrees_with_the_server(case: str, action: str) -> None:
    """For every case and action: decide(server facts) == authorize_offline(verified token)."""
    rec, birthday16 = CASES[case]
    ages_out = birthday16 is not None and birthday16 == rec.expires_at
    token = sign(rec, ages_out=ages_out)
    verified = verify_for_decision(VERIFIER, token, now=NOW)
    offline = authorize_offline(verified, action, now=NOW, revoked=rec.status == "revoked")
    assert decide(server_state(rec, birthday16), action, NOW) == offline


def test_no_attestation_agrees_with_the_server() -> None:
    """No token offline is no record on the server: the same decision for every action."""
    for action in ACTIONS:
        assert decide(None, action, NOW) == authorize_offline(None, action, now=NOW, revoked=False)


def test_expired_token_still_says_expired_not_unauthenticated() -> None:
    """An expired but genuine token yields ATTESTATION_EXPIRED, not NOT_AUTHENTICATED."""
    token = sign(record(expires_at=NOW - 3600))
    expected = Decision(False, "ATTESTATION_EXPIRED", "R5")
    assert expected == authorize_token(VERIFIER, token, "post", now=NOW)


def test_aged_out_child_token_says_aged_out() -> None:
    """A child's token whose exp is the 16th birthday says AGED_OUT once it has passed (P6)."""
    token = sign(record(guardian_managed=True, expires_at=NOW - 5), ages_out=True)
    assert Decision(False, "AGED_OUT", "P6") == authorize_token(VERIFIER, token, "comment", now=NOW)


def test_tampered_expired_token_is_not_accepted() -> None:
    """Accepting expired tokens for the decision never skips the signature check."""
    token = sign(record(expires_at=NOW - 3600))
    head, body, sig = token.split(".")
    with pytest.raises(TokenInvalid) as e:
        verify_for_decision(VERIFIER, f"{head}.{body}.{sig[:-4]}AAAA", now=NOW)
    assert "BAD_SIGNATURE" == e.value.reason


def test_expired_token_for_another_platform_is_not_accepted() -> None:
    """An expired token of another audience is still WRONG_AUDIENCE."""
    token = sign(record(expires_at=NOW - 3600), platform="beta")
    with pytest.raises(TokenInvalid) as e:
        verify_for_decision(VERIFIER, token, now=NOW)
    assert "WRONG_AUDIENCE" == e.value.reason


def test_missing_token_is_not_authenticated_but_may_read() -> None:
    """No token: read is allowed, post is NOT_AUTHENTICATED (R6)."""
    assert (
        Decision(True, "READ_UNRESTRICTED", "R5"),
        Decision(False, "NOT_AUTHENTICATED", "R6"),
    ) == (
        authorize_token(VERIFIER, None, "read", now=NOW),
        authorize_token(VERIFIER, "", "post", now=NOW),
    )


def test_revoked_flag_comes_from_the_caller() -> None:
    """`revoked=True` (from the status list) denies a valid token: ATTESTATION_REVOKED."""
    token = sign(record())
    assert (
        "ATTESTATION_REVOKED"
        == authorize_token(VERIFIER, token, "share", now=NOW, revoked=True).reason
    )


def test_adult_token_with_exp_reason_never_ages_out() -> None:
    """exp_reason on a token that is not guardian-managed is ignored (EXPIRED, not AGED_OUT)."""
    verified = verify_for_decision(
        VERIFIER, sign(record(expires_at=NOW - 1), ages_out=True), now=NOW
    )
    state = attestation_state(verified, revoked=False)
    assert state is not None
    assert (None, "ATTESTATION_EXPIRED") == (
        state.aged_out_at,
        authorize_offline(verified, "post", now=NOW, revoked=False).reason,
    )


SERVER_CASES = {
    **{name: replace(rec, aged_out_at=bday) for name, (rec, bday) in CASES.items()},
    # A child's token that ran out (TTL) before the birthday, asked about after it: the token
    # says only "expired", and so does the server (it decides from the token's facts).
    "child-expired-then-turned-16": record(
        guardian_managed=True,
        issued_at=NOW - 11 * DAY,
        verified_at=NOW - 11 * DAY,
        expires_at=NOW - 10 * DAY,
        aged_out_at=NOW - DAY,
    ),
    "fractional-expiry": record(expires_at=NOW + 0.5),  # the token's exp is whole seconds
}


@pytest.mark.parametrize(("case", "action"), list(itertools.product(SERVER_CASES, ACTIONS)))
def test_the_servers_own_view_agrees_with_the_real_token(case: str, action: str) -> None:
    """The servicer's `state_of(record)` (what Authorize decides on) against the token the
    real TokenSigner makes of the same record (exp_reason set by the signer itself)."""
    from xacthuc.server.verification import state_of

    rec = SERVER_CASES[case]
    verified = verify_for_decision(VERIFIER, SIGNER.sign("alpha", rec), now=NOW)
    offline = authorize_offline(verified, action, now=NOW, revoked=rec.status == "revoked")
    assert decide(state_of(rec), action, NOW) == offline


LOCKS = {
    "unlocked": None,
    "temporary": AccountLock("acct-1", "temporary", NOW - DAY, NOW + 6 * DAY, "r", "ref", 1),
    "ran-out": AccountLock("acct-1", "temporary", NOW - 8 * DAY, NOW, "r", "ref", 1),
    "lifted": AccountLock("acct-1", "permanent", NOW - DAY, None, "r", "ref", 0, NOW - 1, "x"),
    "permanent": AccountLock("acct-1", "permanent", NOW - DAY, None, "r", "ref", 0),
}


@pytest.mark.parametrize(
    ("case", "lock", "action"), list(itertools.product(SERVER_CASES, LOCKS, ACTIONS))
)
def test_locks_agree_online_and_offline(case: str, lock: str, action: str) -> None:
    """R7: the server's state_of(record, lock) against the token plus the status value the
    publisher puts in the list for it (revoked wins; a holding lock is SUSPENDED)."""
    from xacthuc.server.verification import state_of
    from xacthuc.verifiers.status_publisher import build_list

    rec = replace(SERVER_CASES[case], status_idx=9)
    held = LOCKS[lock]
    redis_bits = bytes([0, 0x40]) if rec.status == "revoked" else bytes(2)  # index 9
    listed = build_list(redis_bits, [9] if held is not None and held.holds(NOW) else [])
    revoked, locked = from_status(listed.get(9))
    verified = verify_for_decision(VERIFIER, SIGNER.sign("alpha", rec), now=NOW)
    offline = authorize_offline(verified, action, now=NOW, revoked=revoked, locked=locked)
    assert decide(state_of(rec, held, NOW), action, NOW) == offline


def test_unknown_status_values_fail_closed() -> None:
    """A status this SDK does not know (3) reads as revoked; SUSPENDED as locked."""
    assert [(False, False), (True, False), (False, True), (True, False)] == [
        from_status(v) for v in (0, 1, 2, 3)
    ]
