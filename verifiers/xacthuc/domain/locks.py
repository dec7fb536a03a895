"""Account locks (Decree 147 Art. 35(7), rule R7): what a lock is and the limits it must keep.

A platform must lock an account temporarily, for 7 to 30 days, within 24 hours of a request
(accounts that posted unlawful content 5+ times in 30 days or 10+ times in 90 days), and
permanently for national-security content or after 3+ temporary locks. The platform decides
and asks the service to lock; the service makes every decision it gives (Authorize online, the
status list offline) say ACCOUNT_LOCKED while the lock holds.

A lock belongs to the account, not to an attestation: it survives re-verification, and a new
token issued while it holds is locked too. A temporary lock ends by itself at `until`; any lock
ends early by UnlockAccount. Neither the legal reason nor the request reference may carry
personal data: both are codes of a restricted alphabet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from xacthuc.domain.errors import FieldInvalid
from xacthuc.domain.records import check_reason_code, check_request_reference

DAY = 86_400
MIN_TEMPORARY_DAYS = 7  # R7: a temporary lock lasts 7 to 30 days
MAX_TEMPORARY_DAYS = 30
# `until` is measured from the service's clock when the call arrives: a platform that computed
# "now + 7 days" a moment earlier must not be refused, so the lower bound allows this much.
CLOCK_ALLOWANCE_SECONDS = 600


class LockKind(StrEnum):
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class AccountLock:
    """An account's latest lock. `until` is None for a permanent lock; `ended_at` is set once
    it was lifted (UnlockAccount). `temporary_locks` counts the temporary locks the account
    has had on this platform (R7: 3+ call for a permanent one), this one included."""

    account_id: str
    kind: str  # LockKind value
    locked_at: float
    until: float | None
    reason: str
    request_reference: str
    temporary_locks: int = 0
    ended_at: float | None = None
    unlock_reason: str = ""

    def holds(self, now: float) -> bool:
        """Locked now: not lifted, and permanent or before `until`."""
        if self.ended_at is not None:
            return False
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class LockRequest:
    """A checked LockAccount call (see `check_lock`)."""

    platform: str
    account_id: str
    kind: LockKind
    until: float | None
    reason: str
    request_reference: str
    now: float


def check_lock(
    *,
    platform: str,
    account_id: str,
    kind: LockKind | None,
    until: float | None,
    reason: str,
    request_reference: str,
    now: float,
) -> LockRequest:
    """The R7 limits, each a FIELD_INVALID naming its field: a kind; a temporary lock ends
    7-30 days from now (the lower bound less CLOCK_ALLOWANCE_SECONDS); a permanent lock has
    no end; a reason code; a request reference of 1-128 of `A-Z a-z 0-9 . _ : / -`."""
    if kind is None:
        raise FieldInvalid("kind", "must be TEMPORARY or PERMANENT")
    if kind is LockKind.TEMPORARY:
        if until is None:
            raise FieldInvalid("until", "a temporary lock needs its end (R7: 7-30 days)")
        earliest = now + MIN_TEMPORARY_DAYS * DAY - CLOCK_ALLOWANCE_SECONDS
        latest = now + MAX_TEMPORARY_DAYS * DAY
        if not earliest <= until <= latest:
            raise FieldInvalid(
                "until",
                f"a temporary lock lasts {MIN_TEMPORARY_DAYS} to {MAX_TEMPORARY_DAYS} days (R7)",
            )
    elif until is not None:
        raise FieldInvalid("until", "a permanent lock has no end: leave it unset")
    check_reason_code(reason)
    check_request_reference(request_reference)
    return LockRequest(platform, account_id, kind, until, reason, request_reference, now)
