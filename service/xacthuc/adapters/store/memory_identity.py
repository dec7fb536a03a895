"""Personal-ID attempts in the embedded store: R3, R4, P5, P8 (see memory_state.py)."""

from __future__ import annotations

from xacthuc.adapters.store.memory_state import (
    MemoryBase,
    _Guard,
    _issued,
    _linked_child,
    _Platform,
    _recent,
)
from xacthuc.domain.errors import (
    AccountNotAuthenticated,
    ChallengeAlreadyUsed,
    GuardianManagedNoCommercialLivestream,
    GuardianRequired,
    IdAttemptsExceeded,
    PersonalIdAccountLimit,
    PersonalIdNotMatched,
    RegistryUnavailable,
    XacthucError,
)
from xacthuc.domain.records import AttestationRecord, IdAttempt, Limits, PendingAttestation

# The hourly windows an attempt is taken back from (audit field `refunded`): an attempt that
# got no registry answer costs nothing; a match costs the account, not the number.
REFUNDED_UNAVAILABLE = "account,personal_id"
REFUNDED_MATCH = "personal_id"


def _refund(guard: _Guard, attempt_id: str) -> None:
    guard.attempts = [e for e in guard.attempts if e[1] != attempt_id]


class IdentityOps(MemoryBase):
    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        p = self._platforms[attempt.platform]
        now = attempt.now
        guards = (
            ("account", p.account_guards[attempt.account_id], limits.id_attempts_per_account_hour),
            ("personal_id", p.number_guards[attempt.subject], limits.id_attempts_per_number_hour),
        )
        try:
            for scope, guard, _ in guards:
                if guard.locked_until > now:
                    raise IdAttemptsExceeded(
                        metadata={"scope": scope}, retry_after=guard.locked_until - now
                    )
            for scope, guard, limit in guards:
                recent = sorted(_recent(guard.attempts, now, 3600))
                if len(recent) >= limit:
                    raise IdAttemptsExceeded(
                        metadata={"scope": scope}, retry_after=recent[-limit][0] + 3600 - now
                    )
            if attempt.purpose == "commercial_livestream":
                current = p.attestations.get(attempt.account_id)
                record = current[0] if current else None
                if record is None or record.status != "active" or record.expires_at <= now:
                    raise AccountNotAuthenticated()
                if record.guardian_managed:
                    raise GuardianManagedNoCommercialLivestream()
            elif _linked_child(p, attempt.account_id, now):
                raise GuardianRequired()
        except XacthucError as e:
            self._id_audit(p, attempt, "id_check_started", "refused", e.reason)
            raise
        for _, guard, _ in guards:
            guard.attempts = [*_recent(guard.attempts, now, 3600), (now, attempt.attempt_id)]
        self._id_audit(p, attempt, "id_check_started", "ok", "")

    def _id_audit(
        self,
        p: _Platform,
        attempt: IdAttempt,
        event: str,
        outcome: str,
        reason: str,
        **extra: str | int,
    ) -> None:
        self._audit(
            p,
            attempt.platform,
            attempt.now,
            account=attempt.account_id,
            event=event,
            outcome=outcome,
            reason=reason,
            attempt=attempt.attempt_id,
            personal_id=attempt.subject,
            client=attempt.client,
            purpose=attempt.purpose,
            id_type=attempt.id_type,
            **extra,
        )

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        p = self._platforms[attempt.platform]
        now = attempt.now
        guards = (
            ("account", p.account_guards[attempt.account_id]),
            ("personal_id", p.number_guards[attempt.subject]),
        )
        if answer == "unavailable":  # no answer, no cost: both windows give the place back
            for _, guard in guards:
                _refund(guard, attempt.attempt_id)
            self._id_audit(
                p,
                attempt,
                "id_check",
                "failed",
                RegistryUnavailable.reason,
                refunded=REFUNDED_UNAVAILABLE,
            )
            raise RegistryUnavailable()
        if answer != "match":
            locked: list[tuple[str, int]] = []
            for scope, guard in guards:
                guard.fails += 1
                if guard.fails >= limits.id_max_failures:
                    guard.fails = 0
                    guard.lock_level += 1
                    seconds = limits.id_lock_seconds(guard.lock_level)
                    guard.locked_until = now + seconds
                    locked.append((scope, seconds))
            self._id_audit(p, attempt, "id_check", "failed", PersonalIdNotMatched.reason)
            for scope, seconds in locked:
                self._id_audit(
                    p,
                    attempt,
                    "id_locked",
                    "locked",
                    IdAttemptsExceeded.reason,
                    scope=scope,
                    lock_seconds=seconds,
                )
            if locked:
                scope, seconds = locked[0]
                raise IdAttemptsExceeded(metadata={"scope": scope}, retry_after=seconds)
            raise PersonalIdNotMatched()
        # A match gives the number's place back: its window holds only attempts that did not
        # match (or still wait), the same for a real number as for an unknown one (no oracle).
        _refund(p.number_guards[attempt.subject], attempt.attempt_id)
        for _, guard in guards:  # a match: the failure counters start afresh (before P8)
            guard.fails = 0
            guard.lock_level = 0
        if attempt.attempt_id in p.issued:  # the issuing step retried
            replay = _issued(p, attempt.attempt_id, attempt.account_id)
            if replay is None:
                raise ChallengeAlreadyUsed()
            return replay
        accounts = p.subject_accounts[attempt.subject]
        if (
            attempt.account_id not in accounts
            and len(accounts) >= limits.max_accounts_per_personal_id
        ):
            self._id_audit(
                p,
                attempt,
                "id_check",
                "refused",
                PersonalIdAccountLimit.reason,
                refunded=REFUNDED_MATCH,
            )
            raise PersonalIdAccountLimit()
        record = AttestationRecord(
            account_id=attempt.account_id,
            method=pending.method,
            token_id=pending.token_id,
            verified_at=now,
            issued_at=pending.issued_at,
            expires_at=pending.expires_at,
            commercial_livestream=True,
            age_band=pending.age_band,
            status_idx=self._next_status_idx(p),
            id_type=pending.id_type,
        )
        self._attest(p, record, attempt.subject, attempt.attempt_id)
        self._id_audit(p, attempt, "id_check", "ok", "", refunded=REFUNDED_MATCH)
        self._audit(
            p,
            attempt.platform,
            now,
            account=attempt.account_id,
            event="attestation_issued",
            outcome="ok",
            token_id=pending.token_id,
            method=pending.method,
            expires=int(pending.expires_at),
            commercial_livestream=1,
            age_band=pending.age_band,
            id_type=pending.id_type,
        )
        return record
