"""Offline authorization: the server's decision, computed from a verified token.

`authorize_offline` feeds what a verified attestation says (method, guardian-managed,
commercial livestream, expiry) plus its status in the status list (revoked; or suspended,
which our lists use for a locked account, rule R7) into `xacthuc.domain.decisions.decide`,
the very function behind the Authorize RPC, so both give the same allow/deny, reason and
rule for the same facts.

    cache = JwksCache.from_url("https://xacthuc.example/.well-known/jwks.json",
                               issuer="xacthuc", audience="my-platform")
    lists = StatusListCache(cache)
    verified = verify_for_decision(cache, token)
    revoked, locked = from_status(lists.token_status(verified))
    decision = authorize_offline(verified, "post", now=time.time(),
                                 revoked=revoked, locked=locked)
    if not decision.allowed: refuse(decision.reason, decision.rule)

or, the same in one call: `OfflineAuthorizer(cache, lists).authorize(token, "post")`
(`AsyncOfflineAuthorizer` with the asyncio caches).

An expired token still proves who the account was, and the decision needs that to say
ATTESTATION_EXPIRED or AGED_OUT rather than NOT_AUTHENTICATED: `verify_for_decision`
accepts an expired token whose signature, issuer, audience and type are valid.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol

import jwt

from xacthuc.client.jwks import AsyncJwksCache, JwksCache
from xacthuc.client.status_lists import AsyncStatusListCache, StatusListCache
from xacthuc.client.verify import TokenInvalid, VerifiedAttestation
from xacthuc.domain.decisions import Action, AttestationState, Decision, decide, parse_action
from xacthuc.domain.statuslist import SUSPENDED, VALID

# Set by the issuer when a guardian-managed token's `exp` is the child's 16th birthday (P6),
# so an offline verifier can tell "aged out" from "expired".
EXP_REASON_CLAIM = "exp_reason"
EXP_REASON_AGE_16 = "age_16"


class _Verifies(Protocol):
    def verify(self, token: str, *, now: float | None = None) -> VerifiedAttestation: ...


def attestation_state(
    verified: VerifiedAttestation | None, *, revoked: bool, locked: bool = False
) -> AttestationState | None:
    """The facts the decision table reads, taken from a verified token."""
    if verified is None:
        return None
    expires_at = verified.expires_at.timestamp()
    ages_out = verified.guardian_managed and (
        verified.claims.get(EXP_REASON_CLAIM) == EXP_REASON_AGE_16
    )
    return AttestationState(
        method=verified.method,
        expires_at=expires_at,
        guardian_managed=verified.guardian_managed,
        commercial_livestream=verified.commercial_livestream,
        revoked=revoked,
        aged_out_at=expires_at if ages_out else None,
        locked=locked,
    )


def authorize_offline(
    verified: VerifiedAttestation | None,
    action: str | Action,
    *,
    now: float | datetime,
    revoked: bool,
    locked: bool = False,
) -> Decision:
    """Allow or deny `action` for the account `verified` attests (None: no attestation);
    `locked`: the token's status is SUSPENDED (the account is locked, R7)."""
    at = now.timestamp() if isinstance(now, datetime) else float(now)
    return decide(attestation_state(verified, revoked=revoked, locked=locked), action, at)


def from_status(status: int) -> tuple[bool, bool]:
    """(revoked, locked) for a status-list value: SUSPENDED is a lock (R7); any other value
    but VALID reads as revoked (fail closed on values this SDK does not know)."""
    return status not in (VALID, SUSPENDED), status == SUSPENDED


def verify_for_decision(
    verifier: _Verifies, token: str, *, now: float | None = None
) -> VerifiedAttestation:
    """Verify `token` (an AttestationVerifier or a JwksCache), keeping it when it has only
    expired: everything but the time is checked, so the decision can say EXPIRED or AGED_OUT.
    Any other failure raises TokenInvalid."""
    now = time.time() if now is None else now
    try:
        return verifier.verify(token, now=now)
    except TokenInvalid as e:
        if e.reason != "EXPIRED":
            raise
    # Verify again as of the token's own issue time: signature, kid, typ, iss and aud are
    # checked exactly as before; only the clock differs. `expires_at` stays the real one.
    return verifier.verify(token, now=_issued_at(token))


def authorize_token(
    verifier: _Verifies,
    token: str | None,
    action: str | Action,
    *,
    now: float | None = None,
    revoked: bool = False,
    locked: bool = False,
) -> Decision:
    """`authorize_offline` for a raw token (None or "": the account has no attestation).
    A token that does not verify raises TokenInvalid: a forged token is an incident to log,
    not a user who merely has not verified."""
    now = time.time() if now is None else now
    verified = verify_for_decision(verifier, token, now=now) if token else None
    return authorize_offline(verified, action, now=now, revoked=revoked, locked=locked)


async def verify_for_decision_async(
    keys: AsyncJwksCache, token: str, *, now: float | None = None
) -> VerifiedAttestation:
    """`verify_for_decision` over an `AsyncJwksCache` (which may fetch keys)."""
    now = time.time() if now is None else now
    try:
        return await keys.verify(token, now=now)
    except TokenInvalid as e:
        if e.reason != "EXPIRED":
            raise
    return await keys.verify(token, now=_issued_at(token))


def _issued_at(token: str) -> float:
    try:
        iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    except (jwt.PyJWTError, KeyError):
        raise TokenInvalid("MALFORMED", "no iat") from None
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise TokenInvalid("MALFORMED", "iat must be a number")
    return float(iat)


class OfflineAuthorizer:
    """The whole offline decision in one call: verify the token with cached keys, read its
    status from the cached status list (revoked, or suspended: locked, R7), then the
    server's decision table.

        keys = JwksCache.from_url(f"{BASE}/.well-known/jwks.json", issuer=ISS, audience=ME)
        authorizer = OfflineAuthorizer(keys, StatusListCache(keys))
        decision = authorizer.authorize(token, "post")

    `read` never needs the list (always allowed, R5). A token that does not verify raises
    TokenInvalid; a status list that cannot be had raises StatusListUnavailable (the caller
    decides: failing closed is the safe default). `status_lists=None` skips revocation
    checks, for a platform that accepts the token's lifetime as its revocation latency."""

    def __init__(self, keys: JwksCache, status_lists: StatusListCache | None) -> None:
        self.keys = keys
        self.status_lists = status_lists

    def authorize(
        self, token: str | None, action: str | Action, *, now: float | None = None
    ) -> Decision:
        now = time.time() if now is None else now
        act = parse_action(action)
        if not token:
            return authorize_offline(None, act, now=now, revoked=False)
        verified = verify_for_decision(self.keys, token, now=now)
        status = VALID
        if act is not Action.READ and self.status_lists is not None:
            status = self.status_lists.token_status(verified)
        revoked, locked = from_status(status)
        return authorize_offline(verified, act, now=now, revoked=revoked, locked=locked)


class AsyncOfflineAuthorizer:
    """The asyncio form of `OfflineAuthorizer` (AsyncJwksCache, AsyncStatusListCache)."""

    def __init__(self, keys: AsyncJwksCache, status_lists: AsyncStatusListCache | None) -> None:
        self.keys = keys
        self.status_lists = status_lists

    async def authorize(
        self, token: str | None, action: str | Action, *, now: float | None = None
    ) -> Decision:
        now = time.time() if now is None else now
        act = parse_action(action)
        if not token:
            return authorize_offline(None, act, now=now, revoked=False)
        verified = await verify_for_decision_async(self.keys, token, now=now)
        status = VALID
        if act is not Action.READ and self.status_lists is not None:
            status = await self.status_lists.token_status(verified)
        revoked, locked = from_status(status)
        return authorize_offline(verified, act, now=now, revoked=revoked, locked=locked)
