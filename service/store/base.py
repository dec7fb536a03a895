"""The storage contract: a few atomic, domain-level operations, not a key-value API.

Each operation is one atomic step that checks, updates and appends its audit records
together: in Redis one server-side script touching keys of one hash slot (`{platform}`),
in memory one synchronous block. Both backends pass `tests/test_store_contract.py`.

Times are passed in (`now`, seconds since the epoch) so the injected clock decides expiry,
on Redis as well. Values are already pseudonymised: no store ever sees a raw phone number,
IP address or code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Protocol

from xacthuc.clock import rfc3339
from xacthuc.errors import FieldInvalid

AUDIT_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Limits:
    """P1-P3 and P8 as numbers (from Settings)."""

    otp_max_attempts: int = 5
    phone_max_failures: int = 10
    phone_lock_base_seconds: int = 900
    phone_lock_max_seconds: int = 86_400
    resend_cooldown_seconds: int = 60
    sends_per_phone_15m: int = 5
    sends_per_phone_day: int = 10
    sends_per_platform_hour: int = 10_000
    sends_per_client_ip_hour: int = 20
    max_accounts_per_phone: int = 10
    # Personal-ID attempts (issue 3 "no oracle"): sliding-hour windows per account and per
    # number, and consecutive non-matches before a lock with the same doubling back-off.
    id_attempts_per_account_hour: int = 10
    id_attempts_per_number_hour: int = 10
    id_max_failures: int = 5
    id_lock_base_seconds: int = 900
    id_lock_max_seconds: int = 86_400
    max_accounts_per_personal_id: int = 10
    # P6: children with an active guardian link per guardian (per guardian pseudonym).
    max_children_per_guardian: int = 5
    # How long a challenge is remembered after it expires (replays, clear NOT_FOUND vs EXPIRED).
    challenge_retention_seconds: int = 3600

    def lock_seconds(self, level: int) -> int:
        """Growing back-off (P2): base, 2x base, 4x base ... capped."""
        return int(
            min(self.phone_lock_base_seconds * 2 ** max(0, level - 1), self.phone_lock_max_seconds)
        )

    def id_lock_seconds(self, level: int) -> int:
        """The same growing back-off for personal-ID non-matches."""
        return int(
            min(self.id_lock_base_seconds * 2 ** max(0, level - 1), self.id_lock_max_seconds)
        )


@dataclass(frozen=True, slots=True)
class NewChallenge:
    platform: str
    challenge_id: str
    account_id: str
    phone: str  # pseudonym
    client: str  # pseudonym of the client-IP bucket
    code_mac: str  # hex HMAC of the code under the current key
    idempotency_key: str  # "" when the platform sent none
    now: float
    expires_at: float

    @property
    def fingerprint(self) -> str:
        """What a retry with the same idempotency key must repeat."""
        return hashlib.sha256(f"{self.account_id}\x1f{self.phone}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ChallengeView:
    challenge_id: str
    expires_at: float
    resend_not_before: float
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class PendingAttestation:
    """Claims fixed before the check, so the record and the token agree exactly."""

    token_id: str
    issued_at: float
    expires_at: float
    method: str
    # "" unknown (phone route), "adult" (18+), "16_17", "under_16" (guardian-managed).
    age_band: str = ""


@dataclass(frozen=True, slots=True)
class CodeCheck:
    platform: str
    challenge_id: str
    account_id: str
    candidates: tuple[str, ...]  # MACs of the submitted code under every configured key
    now: float
    attestation: PendingAttestation


@dataclass(frozen=True, slots=True)
class AttestationRecord:
    account_id: str
    method: str
    token_id: str
    verified_at: float
    issued_at: float
    expires_at: float
    status: str = "active"  # "active", "revoked" or "aged_out" (a guardian link aged out)
    guardian_managed: bool = False
    commercial_livestream: bool = False
    age_band: str = ""  # "", "adult", "16_17" or "under_16" (see PendingAttestation)
    guardian_ref: str = ""  # guardian-managed: the platform-scoped guardian reference
    aged_out_at: float | None = None  # guardian-managed: the child's 16th birthday (P6)
    link_id: str = ""  # guardian-managed: the link the attestation was issued under
    status_idx: int = -1  # the token's index in the platform's status list; -1 none
    revoked_at: float | None = None  # when status became "revoked"


@dataclass(frozen=True, slots=True)
class IdAttempt:
    """One personal-ID verification attempt, already validated and pseudonymised."""

    platform: str
    attempt_id: str
    account_id: str
    subject: str  # pseudonym of the personal identification number
    client: str  # pseudonym of the client-IP bucket
    purpose: str  # "no_vietnamese_mobile" or "commercial_livestream"
    now: float


@dataclass(frozen=True, slots=True)
class GuardianLink:
    """A child's registration through a guardian (R1, P6), checked in Python so far (ages,
    consents, relationship); the store checks the guardian's attestation and the links.

    `guardian_subject` and `guardian_token_id` are what the guardian's attestation said when
    the service read it (`attestation_subject`): the store refuses (GUARDIAN_NOT_VERIFIED)
    when it no longer says so, so the child's claims always come from the attestation the
    store checked. `attestation.method` is the guardian's method; `attestation.expires_at` is
    at most `aged_out_at`.
    """

    platform: str
    link_id: str
    child_account_id: str
    guardian_account_id: str
    guardian_subject: str  # the pseudonym (ph_/id_) the guardian's attestation verified
    guardian_token_id: str
    guardian_ref: str  # "g_" + 16 hex, platform-scoped (goes into the child's token)
    relationship: str  # "parent" or "legal_guardian"
    child_consent: bool  # the guardian's consent is required, so always given here
    aged_out_at: float  # the child's 16th birthday, local midnight in Vietnam
    now: float
    attestation: PendingAttestation


@dataclass(frozen=True, slots=True)
class LinkResult:
    link_id: str
    attestation: AttestationRecord
    renewed: bool  # the same guardian linked the same child again: the link was renewed


@dataclass(frozen=True, slots=True)
class AgingOut:
    """One entry of a platform's aging-out index: a child with an active link."""

    account_id: str
    aged_out_at: float


REVOCATION_REASON = re.compile(r"[a-z0-9_]{1,64}")


def check_revocation_reason(reason: str) -> str:
    """A platform-given revocation code: 1-64 of a-z 0-9 _ (no personal data fits in that)."""
    if not isinstance(reason, str) or not REVOCATION_REASON.fullmatch(reason):
        raise FieldInvalid("reason", "must be 1-64 characters of a-z 0-9 _")
    return reason


class Store(Protocol):
    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        """Check P2/P3/P8 and the idempotency key; create the challenge; audit the start.

        Raises GuardianRequired (the account has an active guardian link and the child has
        not turned 16: R1), ResendTooSoon, SendLimitExceeded, PhoneLocked, PhoneAccountLimit
        or IdempotencyKeyReused (each audited as a refused start). A replay returns the
        existing challenge with `replayed=True` and changes nothing.
        """
        ...

    async def confirm_sent(self, platform: str, challenge_id: str, now: float) -> None:
        """The gateway accepted the SMS: audit `code_sent`."""
        ...

    async def abort_challenge(self, platform: str, challenge_id: str, now: float) -> None:
        """The gateway refused the SMS: remove the challenge, its idempotency key, its budget
        entries and cooldown, as if it had never been started; audit `code_send_failed`."""
        ...

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        """Count the attempt, compare in constant time, consume atomically (single use: a
        consumed challenge refuses even the right code), record the attestation and audit it
        all. The attestation gets the platform's next status-list index. Raises
        ChallengeNotFound, ChallengeAccountMismatch, ChallengeAlreadyUsed, OtpExpired,
        OtpAttemptsExceeded, PhoneLocked, GuardianRequired (a linked child, before any attempt
        is counted), PhoneAccountLimit or OtpIncorrect."""
        ...

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        """Before asking the registry: refuse a locked or over-budget account or number
        (IdAttemptsExceeded), a commercial-livestream upgrade of an account without an active
        attestation (AccountNotAuthenticated) or of a guardian-managed one, an ordinary
        verification of a linked child (GuardianRequired); otherwise count
        the attempt in both windows and audit `id_check_started` (with the purpose: the R3
        declaration is recorded there)."""
        ...

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        """Record the registry's answer ("match", "no_match" or "unavailable"). A match
        checks P8 for the number, resets both failure counts, writes the personal-ID
        attestation (commercial livestream allowed, `pending.age_band`, the next status-list
        index) and audits it; a non-match counts a
        failure for the account and the number (locking both after `id_max_failures`) and
        raises PersonalIdNotMatched or IdAttemptsExceeded; unavailable raises
        RegistryUnavailable. Everything is audited."""
        ...

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        """The account's attestation and the pseudonym it was verified with ("" for a
        guardian-managed one), or None. Read before `link_guardian`."""
        ...

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        """Register the child under the guardian (P6), atomically: refuse when the guardian's
        attestation is missing, not active, expired, guardian-managed or no longer the one
        read (GuardianNotVerified), says 16-17 (GuardianUnder18); when the child's active
        registry-proven attestation says 16+ (ChildNotUnder16); when the child has an active
        link of another guardian (ChildAlreadyLinked); when the guardian already has
        `max_children_per_guardian` active links (GuardianChildLimit). Each refusal is
        audited (`guardian_link_created`, refused).

        Otherwise write the link, index it (child -> link, guardian -> children, the aging-out
        index) and the child's guardian-managed attestation with a new status-list index;
        revoke the token it replaces when that one is still active (reason `superseded`: a
        child has at most one live token). The same guardian linking the same child again
        renews the link (same id, consents recorded again). Audits `guardian_link_created` or
        `guardian_link_renewed`, `consent_recorded` per party, `attestation_issued`."""
        ...

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        """End an active link: remove it from the indexes and revoke the child's attestation
        issued under it at once (status "revoked", its status bit set). Audits
        `guardian_link_ended` (with `reason`) and `attestation_revoked`. Raises LinkNotFound
        (unknown here: other platforms' links are unknown too) or LinkAlreadyEnded, both
        audited. Returns the revoked attestation (None when it had been replaced)."""
        ...

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        """End up to `limit` active links whose child turned 16 at or before `now` (oldest
        first): reason `aged_out`, the attestation issued under the link gets status
        "aged_out" (its token expired at the birthday; no status bit). Returns how many."""
        ...

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        """Children with an active link whose 16th birthday is in [from_time, to_time),
        ordered by (aged_out_at, account id bytes), strictly after `after`; at most `limit`."""
        ...

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        """Revoke the account's attestation: status "revoked", its bit set in the platform's
        status bitmap, audited `attestation_revoked` with `reason` (check_revocation_reason).
        Raises AttestationNotFound when there is none; an already revoked one is returned
        unchanged, with no new audit record (idempotent)."""
        ...

    async def status_bits(self, platform: str) -> bytes:
        """The platform's status bitmap: bit `status_idx` is 1 for a revoked token. Bit order
        is Redis SETBIT's: index 0 is the MOST significant bit of byte 0 (index i is bit
        7 - i % 8 of byte i // 8). The IETF Token Status List packs LEAST significant bit
        first, so a publisher must reverse the bits of each byte. The bitmap covers every
        index handed out so far (allocating an index writes its zero bit), so a list built
        from it holds every issued token's index."""
        ...

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        """Append one audit record that goes with no state change (for example an auditor's
        own call); returns its index. Same record format as every other operation."""
        ...

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None: ...

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        """Stored audit records [start, stop) of a platform's log, exactly as stored."""
        ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


def split_audit_record(record: str) -> tuple[str, str]:
    """The record text before and after its `"seq":N` member, for stores that number records
    atomically where they append them (the keys are sorted, so the split is stable)."""
    head, sep, rest = record.partition(',"seq":')
    if not sep:
        raise ValueError("record has no seq")
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return head + ',"seq":', rest[digits:]


def audit_record(
    *,
    seq: int,
    now: float,
    platform: str,
    account: str,
    event: str,
    outcome: str,
    reason: str = "",
    **extra: str | int,
) -> str:
    """The canonical audit record of the in-memory store (sorted keys, compact, ASCII)."""
    record: dict[str, str | int] = {
        "v": AUDIT_FORMAT_VERSION,
        "seq": seq,
        "time": rfc3339(now),
        "platform": platform,
        "account": account,
        "event": event,
        "outcome": outcome,
        "reason": reason,
    }
    record.update({k: v for k, v in extra.items() if v != ""})
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
