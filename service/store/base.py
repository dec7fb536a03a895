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
from dataclasses import dataclass
from typing import Protocol

from xacthuc.clock import rfc3339

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
    status: str = "active"
    guardian_managed: bool = False
    commercial_livestream: bool = False


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


class Store(Protocol):
    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        """Check P2/P3/P8 and the idempotency key; create the challenge; audit the start.

        Raises ResendTooSoon, SendLimitExceeded, PhoneLocked, PhoneAccountLimit or
        IdempotencyKeyReused (each audited as a refused start). A replay returns the
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
        all. Raises ChallengeNotFound, ChallengeAccountMismatch,
        ChallengeAlreadyUsed, OtpExpired, OtpAttemptsExceeded, PhoneLocked, PhoneAccountLimit
        or OtpIncorrect."""
        ...

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        """Before asking the registry: refuse a locked or over-budget account or number
        (IdAttemptsExceeded), a commercial-livestream upgrade of an account without an active
        attestation (AccountNotAuthenticated) or of a guardian-managed one; otherwise count
        the attempt in both windows and audit `id_check_started` (with the purpose: the R3
        declaration is recorded there)."""
        ...

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        """Record the registry's answer ("match", "no_match" or "unavailable"). A match
        checks P8 for the number, resets both failure counts, writes the personal-ID
        attestation (commercial livestream allowed) and audits it; a non-match counts a
        failure for the account and the number (locking both after `id_max_failures`) and
        raises PersonalIdNotMatched or IdAttemptsExceeded; unavailable raises
        RegistryUnavailable. Everything is audited."""
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
