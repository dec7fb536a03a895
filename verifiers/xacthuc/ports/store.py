"""The storage contract: a few atomic, domain-level operations, not a key-value API.

Each operation is one atomic step that checks, updates and appends its audit records
together: in Redis one server-side script touching keys of one hash slot (`{platform}`),
in memory one synchronous block. Both backends pass `tests/test_store_contract.py`.

Times are passed in (`now`, seconds since the epoch) so the injected clock decides expiry,
on Redis as well. Values are already pseudonymised: no store ever sees a raw phone number,
IP address or code.
"""

from __future__ import annotations

from typing import Protocol

from xacthuc.domain.locks import AccountLock, LockRequest
from xacthuc.domain.records import (
    AgingOut,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    GuardianLink,
    IdAttempt,
    Limits,
    LinkResult,
    NewChallenge,
    PendingAttestation,
)


class Store(Protocol):
    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        """Check P2/P3/P8 and the idempotency key; create the challenge; audit the start.

        Raises GuardianRequired (the account has an active guardian link and the child has
        not turned 16: R1), ResendTooSoon, SendLimitExceeded, PhoneLocked, PhoneAccountLimit
        or IdempotencyKeyReused (each audited as a refused start). A replay returns the
        existing challenge with `replayed=True` and changes nothing, but only once its code
        was sent (`confirm_sent`): a live key naming a challenge still "sending" raises
        StartInProgress (retry after 1 s, audited) until `limits.send_lease_seconds` after
        its creation; after that the challenge is undone as by `abort_challenge` (audited
        `code_send_abandoned`) and the start goes on as a new one, in the same step.
        """
        ...

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        """The gateway accepted the SMS: the challenge, still "sending", becomes "pending";
        audit `code_sent` (for `account_id`). Nothing to confirm (no such challenge, one no
        longer "sending", or one started for another account) changes nothing. The account
        is the caller's: a store need not keep a challenge's account id in full."""
        ...

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        """The gateway refused the SMS: remove the challenge, its idempotency key, its budget
        entries and cooldown, as if it had never been started; audit `code_send_failed` (for
        `account_id`). Nothing to abort (as for `confirm_sent`) changes nothing."""
        ...

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        """Count the attempt, compare in constant time; the right code consumes the
        challenge (single use) and resets the number's failures, then the account is checked
        (GuardianRequired: a linked child; PhoneAccountLimit: P8) and the attestation
        recorded and audited. It gets the platform's next status-list index (a keyed
        permutation of the platform's token counter, never reused:
        `xacthuc.domain.status_index`).

        Idempotent on the challenge (a retry after a lost reply): the right code again, by
        the same account, counts no attempt and returns the attestation the challenge
        issued while it is still the account's active one (also once the challenge itself
        is forgotten), with nothing issued or recorded again; a challenge whose
        attestation was replaced or revoked, or a consumed challenge with another code, is
        ChallengeAlreadyUsed. A right code refused by the account checks may be retried.
        Raises ChallengeNotFound, ChallengeAccountMismatch, ChallengeAlreadyUsed,
        OtpExpired, OtpAttemptsExceeded, PhoneLocked, OtpIncorrect, GuardianRequired or
        PhoneAccountLimit."""
        ...

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        """Before asking the registry: refuse a locked or over-budget account or number
        (IdAttemptsExceeded), a commercial-livestream upgrade of an account without an active
        attestation (AccountNotAuthenticated) or of a guardian-managed one, an ordinary
        verification of a linked child (GuardianRequired); otherwise reserve a place for
        the attempt in both hourly windows (so attempts in flight count: the budget bounds
        parallel attempts) and audit `id_check_started` (with the purpose: the R3
        declaration is recorded there). `finish_id_check` may give places back."""
        ...

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        """Record the registry's answer ("match", "no_match" or "unavailable"), in one step
        with what the attempt costs.

        A match gives the number's window its place back (it stays charged to the account),
        resets both failure counts, checks P8 for the number (PersonalIdAccountLimit, no
        retry-after), writes the personal-ID attestation (commercial livestream allowed,
        `pending.age_band`, the next status-list index) and audits it; a non-match keeps
        both places, counts a failure for the account and the number (locking both after
        `id_max_failures`) and raises PersonalIdNotMatched or IdAttemptsExceeded;
        unavailable gives both places back (an attempt that got no answer costs nothing)
        and raises RegistryUnavailable. Everything is audited; `id_check` records name the
        windows given back in `refunded` ("account,personal_id" or "personal_id")."""
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
        `guardian_link_renewed`, `consent_recorded` per party, `attestation_issued`.

        Idempotent under `link.link_id` (a call retried after a lost reply): once a call with
        that id took effect, a call with that id and another `request_digest` is refused
        IdempotencyKeyReused (audited like the refusals above), and the same call writes and
        audits nothing and returns the link it
        created or renewed and the child's attestation as they are now, or raises
        LinkAlreadyEnded when that link has ended (or the child's attestation is no longer
        the link's). A refused call retried is decided again."""
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
        status bitmap, audited `attestation_revoked` with `reason` (check_reason_code).
        Raises AttestationNotFound when there is none; an already revoked one is returned
        unchanged, with no new audit record (idempotent)."""
        ...

    async def status_bits(self, platform: str) -> bytes:
        """The platform's status bitmap: bit `status_idx` is 1 for a revoked token. Bit order
        is Redis SETBIT's: index 0 is the MOST significant bit of byte 0 (index i is bit
        7 - i % 8 of byte i // 8). The IETF Token Status List packs LEAST significant bit
        first, so a publisher must reverse the bits of each byte. The bitmap covers every
        index handed out so far: it is a whole number of index blocks long (opening a block
        writes its zero bits), so a list built from it holds every issued token's index and
        its length tells only how many blocks are open."""
        ...

    # ---- account locks (R7) -----------------------------------------------------------------

    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        """Lock the account (R7): the lock replaces the account's latest one (a holding lock
        too: a platform extends or makes permanent by locking again), counts a temporary lock
        in `temporary_locks`, and is audited `account_locked` (reason, `kind`, `lock_until`,
        `request`). A lock that holds with the same kind, end, reason and reference is
        returned unchanged with False and no audit record (a retry); otherwise True."""
        ...

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        """Lift the account's lock that holds at `now`: audited `account_unlocked` with
        `reason`; returns the lifted lock. None, with nothing changed or audited, when no
        lock holds (never locked, lifted before, or a temporary lock that ran out)."""
        ...

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        """The account's attestation and its latest lock (which may no longer hold), read
        together (one round trip): what Authorize decides from."""
        ...

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        """The status-list indexes of every token ever issued to an account whose lock holds
        at `now` (a lock survives re-verification: the new token's index is among them)."""
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
