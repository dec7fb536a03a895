"""Children under 16: registration through a verified guardian (Decree 147 R1; P6, P7, P9).

The guardian first verifies THEIR OWN platform account with the phone OTP or personal-ID flow
(nothing is forked: the guardian's ordinary attestation is the proof). LinkGuardian then
checks, in this order:

1. the request is well formed: both account ids, different from each other, and the
   relationship (parent or legal guardian) (FIELD_INVALID, not audited: no policy decided);
2. both dates of birth are real dates, not in the future (DATE_OF_BIRTH_INVALID, metadata
   `field`); the child is under 16 today in Vietnam (CHILD_NOT_UNDER_16) and the guardian 18
   or over by the declared date (GUARDIAN_UNDER_18); the guardian consents
   (GUARDIAN_CONSENT_REQUIRED), and so does a child of 7 or over (CHILD_CONSENT_REQUIRED,
   Law 91/2025). These refusals are audited here (`guardian_link_created`, refused);
3. the store, atomically: the guardian account has an active, unexpired attestation of its
   own, not guardian-managed and not one the registry proved 16-17 (GUARDIAN_NOT_VERIFIED,
   GUARDIAN_UNDER_18), the child is not registry-proven 16+ (CHILD_NOT_UNDER_16), the child
   has no active link of another guardian (CHILD_ALREADY_LINKED) and the guardian is below
   the cap of children (GUARDIAN_CHILD_LIMIT); then it writes the link, the consents and the
   child's guardian-managed attestation, which expires no later than the 16th birthday.

The same guardian linking the same child again renews the link (the child's tokens expire
with the token TTL like everyone's; renewing records the consents again and issues a fresh
token, revoking the one it replaces). Dates of birth are used here and never stored, logged
or audited (with an idempotency key they enter the keyed request digest below, which shows
none of them without the pseudonym key): the store keeps the 16th birthday instant of the child only, the token an age
band and a guardian reference `g_` + 16 hex of SHA-256(platform, guardian pseudonym), which
differs between platforms for the same guardian.

Retries. Without an idempotency key the link id of a call is random, so a retry (the reply
was lost) is a second call: it renews the link. With a key, the call's link id is derived
from (platform, key) under the pseudonym key every process shares (`Pseudonymizer.link_call`)
and the call carries the keyed digest of its fields (`link_request`, the dates of birth
among them, never in clear): the store, idempotent under the call's link id, answers a retry
with the same fields as the first call took effect (no second token, nothing revoked, no
record) and one with other fields IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from xacthuc.domain.age import (
    ADULT_AT,
    CHILD_CONSENT_FROM,
    CHILD_UNDER,
    age_on,
    local_date,
    turns_at,
)
from xacthuc.domain.b64 import b64url_decode, b64url_encode
from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import (
    ChildConsentRequired,
    ChildNotUnder16,
    DateOfBirthInvalid,
    FieldInvalid,
    GuardianConsentRequired,
    GuardianUnder18,
    XacthucError,
)
from xacthuc.domain.keyed import Pseudonymizer
from xacthuc.domain.records import AgingOut, GuardianLink, Limits, LinkResult, PendingAttestation
from xacthuc.ports.metrics import FlowMetrics, NoFlowMetrics
from xacthuc.ports.store import Store
from xacthuc.verifiers.phone_otp import IDEMPOTENCY_KEY, check_account_id, counting_refusals

LINK_ID = re.compile(r"gl_[A-Za-z0-9_-]{22}")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


class Relationship(StrEnum):
    PARENT = "parent"
    LEGAL_GUARDIAN = "legal_guardian"  # Civil Code 2015 Art. 49


def guardian_ref(platform: str, guardian_subject: str) -> str:
    """The pseudonymous guardian reference a child's token carries: platform-scoped, so the
    same guardian has unrelated references on two platforms; no name, number or ID."""
    digest = hashlib.sha256(f"{platform}\x1f{guardian_subject}".encode()).hexdigest()
    return "g_" + digest[:16]


@dataclass(frozen=True, slots=True)
class AgingOutPage:
    account_ids: list[str]
    next_page_token: str


class GuardianLinker:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        pseudonyms: Pseudonymizer,
        limits: Limits,
        token_ttl_seconds: int,
        metrics: FlowMetrics | None = None,
    ) -> None:
        self._store = store
        self._pseudonyms = pseudonyms
        self._clock = clock
        self._limits = limits
        self._token_ttl = token_ttl_seconds
        self._metrics = metrics or NoFlowMetrics()

    async def link(
        self,
        *,
        platform: str,
        child_account_id: str,
        child_date_of_birth: datetime.date | None,
        guardian_account_id: str,
        guardian_date_of_birth: datetime.date | None,
        relationship: Relationship | None,
        guardian_consent: bool,
        child_consent: bool,
        idempotency_key: str = "",
    ) -> LinkResult:
        check_account_id(child_account_id, "child_account_id")
        check_account_id(guardian_account_id, "guardian_account_id")
        if guardian_account_id == child_account_id:
            raise FieldInvalid("guardian_account_id", "must differ from child_account_id")
        if relationship is None:
            raise FieldInvalid("relationship", "must be PARENT or LEGAL_GUARDIAN")
        if idempotency_key and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise FieldInvalid("idempotency_key", "must be 1-128 printable ASCII characters")
        now = self._clock.now()
        today = local_date(now)
        try:
            child_age = _age("child_date_of_birth", child_date_of_birth, today)
            guardian_age = _age("guardian_date_of_birth", guardian_date_of_birth, today)
            if child_age >= CHILD_UNDER:
                raise ChildNotUnder16()
            if guardian_age < ADULT_AT:
                raise GuardianUnder18()
            if not guardian_consent:
                raise GuardianConsentRequired()
            if child_age >= CHILD_CONSENT_FROM and not child_consent:
                raise ChildConsentRequired()
        except XacthucError as e:
            await self._store.append_audit(
                platform,
                now,
                account=child_account_id,
                event="guardian_link_created",
                outcome="refused",
                reason=e.reason,
                guardian_account=guardian_account_id,
                relationship=relationship.value,
            )
            raise
        assert child_date_of_birth is not None  # checked by _age
        found = await self._store.attestation_subject(platform, guardian_account_id)
        guardian, subject = found if found else (None, "")
        aged_out_at = turns_at(child_date_of_birth, CHILD_UNDER)
        if idempotency_key:
            assert guardian_date_of_birth is not None  # checked by _age
            link_id = self._pseudonyms.link_call(platform, idempotency_key)
            digest = self._pseudonyms.link_request(
                child_account_id,
                child_date_of_birth.isoformat(),
                guardian_account_id,
                guardian_date_of_birth.isoformat(),
                relationship.value,
                str(guardian_consent),
                str(child_consent),
            )
        else:
            link_id, digest = "gl_" + secrets.token_urlsafe(16), ""
        link = GuardianLink(
            platform=platform,
            link_id=link_id,
            child_account_id=child_account_id,
            guardian_account_id=guardian_account_id,
            guardian_subject=subject,
            guardian_token_id=guardian.token_id if guardian else "",
            guardian_ref=guardian_ref(platform, subject),
            relationship=relationship.value,
            child_consent=child_consent,
            aged_out_at=aged_out_at,
            now=now,
            attestation=PendingAttestation(
                token_id="at_" + secrets.token_urlsafe(16),
                issued_at=now,
                expires_at=min(now + self._token_ttl, aged_out_at),
                method=guardian.method if guardian else "",
                age_band="under_16",
            ),
            request_digest=digest,
        )
        with counting_refusals(self._metrics, platform):  # GUARDIAN_CHILD_LIMIT
            return await self._store.link_guardian(link, self._limits)

    async def withdraw(self, *, platform: str, link_id: str) -> float:
        """End the link now; the child's attestation is revoked at once. Returns the time."""
        if not LINK_ID.fullmatch(link_id):
            raise FieldInvalid("link_id", "is not a link id")
        now = self._clock.now()
        await self._store.end_guardian_link(platform, link_id, now, "withdrawn")
        return now

    async def aging_out(
        self,
        *,
        platform: str,
        from_time: float | None,
        to_time: float | None,
        page_size: int,
        page_token: str,
    ) -> AgingOutPage:
        """Children with an active link whose 16th birthday is in [from_time, to_time)."""
        if from_time is None:
            raise FieldInvalid("from_time", "is required")
        if to_time is None:
            raise FieldInvalid("to_time", "is required")
        if to_time <= from_time:
            raise FieldInvalid("to_time", "must be after from_time")
        if page_size == 0:
            page_size = DEFAULT_PAGE
        if not 1 <= page_size <= MAX_PAGE:
            raise FieldInvalid("page_size", f"must be 0 (default {DEFAULT_PAGE}) or 1-{MAX_PAGE}")
        after = _read_token(page_token, from_time, to_time) if page_token else None
        entries = await self._store.list_aging_out(
            platform, from_time, to_time, page_size + 1, after
        )
        page, more = entries[:page_size], len(entries) > page_size
        token = _make_token(page[-1], from_time, to_time) if more else ""
        return AgingOutPage([e.account_id for e in page], token)


def _age(field: str, born: datetime.date | None, today: datetime.date) -> int:
    if born is None or born > today:
        raise DateOfBirthInvalid(
            f"{field} must be a real date, not in the future", metadata={"field": field}
        )
    return age_on(born, today)


# Page tokens: base64url JSON of the last entry and the window, so a token only continues the
# query it came from. Opaque to platforms; forging one only pages through their own list.
def _make_token(last: AgingOut, from_time: float, to_time: float) -> str:
    body = {"a": last.account_id, "s": last.aged_out_at, "f": from_time, "t": to_time}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return b64url_encode(raw)


def _read_token(token: str, from_time: float, to_time: float) -> AgingOut:
    try:
        body = json.loads(b64url_decode(token))
        account, birthday = body["a"], float(body["s"])
        # Only what a response writes: an account id and a finite instant.
        if not isinstance(account, str) or not math.isfinite(birthday):
            raise ValueError
        check_account_id(account)
        after = AgingOut(account, birthday)
        same_query = float(body["f"]) == from_time and float(body["t"]) == to_time
    except (ValueError, KeyError, TypeError, FieldInvalid):  # binascii, JSON, UTF-8: ValueError
        raise FieldInvalid("page_token", "is not a token from this query") from None
    if not same_query:
        raise FieldInvalid("page_token", "belongs to another window")
    return after
