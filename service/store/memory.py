"""The embedded store: everything in one process, nothing on disk.

Each method runs to completion without awaiting, so on one event loop it is atomic. This
is the reference implementation of the contract; `redis.py` mirrors it in Lua.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from dataclasses import dataclass, field

from xacthuc.errors import (
    AccountNotAuthenticated,
    ChallengeAccountMismatch,
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    GuardianManagedNoCommercialLivestream,
    IdAttemptsExceeded,
    IdempotencyKeyReused,
    OtpAttemptsExceeded,
    OtpExpired,
    OtpIncorrect,
    PersonalIdAccountLimit,
    PersonalIdNotMatched,
    PhoneAccountLimit,
    PhoneLocked,
    RegistryUnavailable,
    ResendTooSoon,
    SendLimitExceeded,
    XacthucError,
)
from xacthuc.store.base import (
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    IdAttempt,
    Limits,
    NewChallenge,
    PendingAttestation,
    audit_record,
)

_WINDOWS = {"phone_15m": 900, "phone_day": 86_400, "platform_hour": 3600, "client_ip_hour": 3600}


@dataclass
class _Challenge:
    account_id: str
    phone: str
    client: str
    mac: str
    idempotency_key: str
    fingerprint: str
    created: float
    expires_at: float
    resend_not_before: float
    attempts: int = 0
    state: str = "sending"  # sending -> pending -> consumed


@dataclass
class _Phone:
    fails: int = 0
    lock_level: int = 0
    locked_until: float = 0.0
    last_send: float = float("-inf")
    sends: list[tuple[float, str]] = field(default_factory=list)  # (time, challenge id)


@dataclass
class _Guard:
    """Consecutive failures and lock of one account or personal-ID number (ID attempts)."""

    fails: int = 0
    lock_level: int = 0
    locked_until: float = 0.0
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (time, attempt id)


@dataclass
class _Platform:
    challenges: dict[str, _Challenge] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    phones: dict[str, _Phone] = field(default_factory=lambda: defaultdict(_Phone))
    platform_sends: list[tuple[float, str]] = field(default_factory=list)
    client_sends: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    subject_accounts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # P8
    account_guards: dict[str, _Guard] = field(default_factory=lambda: defaultdict(_Guard))
    number_guards: dict[str, _Guard] = field(default_factory=lambda: defaultdict(_Guard))
    attestations: dict[str, tuple[AttestationRecord, str]] = field(
        default_factory=dict
    )  # -> (record, phone)
    audit: list[str] = field(default_factory=list)


def _recent(entries: list[tuple[float, str]], now: float, window: float) -> list[tuple[float, str]]:
    return [e for e in entries if e[0] > now - window]


class MemoryStore:
    def __init__(self) -> None:
        self._platforms: dict[str, _Platform] = defaultdict(_Platform)

    def _audit(self, p: _Platform, platform: str, now: float, **fields: str | int) -> None:
        p.audit.append(audit_record(seq=len(p.audit), now=now, platform=platform, **fields))  # type: ignore[arg-type]

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        p = self._platforms[new.platform]
        now = new.now
        if new.idempotency_key and new.idempotency_key in p.idempotency:
            existing = p.challenges.get(p.idempotency[new.idempotency_key])
            if existing is not None and existing.expires_at > now:
                if existing.fingerprint != new.fingerprint:
                    self._refuse_start(p, new, IdempotencyKeyReused())
                return ChallengeView(
                    p.idempotency[new.idempotency_key],
                    existing.expires_at,
                    existing.resend_not_before,
                    True,
                )
        try:
            self._check_send_allowed(p, new, limits)
        except XacthucError as e:
            self._refuse_start(p, new, e)
        phone = p.phones[new.phone]
        resend_not_before = now + limits.resend_cooldown_seconds
        p.challenges[new.challenge_id] = _Challenge(
            account_id=new.account_id,
            phone=new.phone,
            client=new.client,
            mac=new.code_mac,
            idempotency_key=new.idempotency_key,
            fingerprint=new.fingerprint,
            created=now,
            expires_at=new.expires_at,
            resend_not_before=resend_not_before,
        )
        if new.idempotency_key:
            p.idempotency[new.idempotency_key] = new.challenge_id
        phone.last_send = now
        entry = (now, new.challenge_id)
        phone.sends = [*_recent(phone.sends, now, _WINDOWS["phone_day"]), entry]
        p.platform_sends = [*_recent(p.platform_sends, now, _WINDOWS["platform_hour"]), entry]
        p.client_sends[new.client] = [*_recent(p.client_sends[new.client], now, 3600), entry]
        self._audit(
            p,
            new.platform,
            now,
            account=new.account_id,
            event="verification_started",
            outcome="ok",
            challenge=new.challenge_id,
            phone=new.phone,
            client=new.client,
            method="phone_otp",
        )
        return ChallengeView(new.challenge_id, new.expires_at, resend_not_before, False)

    def _check_send_allowed(self, p: _Platform, new: NewChallenge, limits: Limits) -> None:
        now = new.now
        phone = p.phones[new.phone]
        if phone.locked_until > now:
            raise PhoneLocked(retry_after=phone.locked_until - now)
        accounts = p.subject_accounts[new.phone]
        if new.account_id not in accounts and len(accounts) >= limits.max_accounts_per_phone:
            raise PhoneAccountLimit()
        if phone.last_send + limits.resend_cooldown_seconds > now:
            raise ResendTooSoon(retry_after=phone.last_send + limits.resend_cooldown_seconds - now)
        budgets = (
            ("phone_15m", phone.sends, limits.sends_per_phone_15m),
            ("phone_day", phone.sends, limits.sends_per_phone_day),
            ("platform_hour", p.platform_sends, limits.sends_per_platform_hour),
            ("client_ip_hour", p.client_sends[new.client], limits.sends_per_client_ip_hour),
        )
        for scope, entries, limit in budgets:
            window = _WINDOWS[scope]
            recent = _recent(entries, now, window)
            if len(recent) >= limit:
                # The budget frees up when the limit-th latest send leaves the window. Sorted by
                # time: the wall clock can step back, so append order is not time order.
                oldest = sorted(t for t, _ in recent)[-limit]
                raise SendLimitExceeded(
                    f"send limit reached ({scope})",
                    metadata={"scope": scope},
                    retry_after=oldest + window - now,
                )

    def _refuse_start(self, p: _Platform, new: NewChallenge, error: XacthucError) -> None:
        self._audit(
            p,
            new.platform,
            new.now,
            account=new.account_id,
            event="verification_started",
            outcome="refused",
            reason=error.reason,
            phone=new.phone,
            client=new.client,
            method="phone_otp",
        )
        raise error

    async def confirm_sent(self, platform: str, challenge_id: str, now: float) -> None:
        p = self._platforms[platform]
        ch = p.challenges.get(challenge_id)
        if ch is None or ch.state != "sending":
            return
        ch.state = "pending"
        self._audit(
            p,
            platform,
            now,
            account=ch.account_id,
            event="code_sent",
            outcome="ok",
            challenge=challenge_id,
            phone=ch.phone,
        )

    async def abort_challenge(self, platform: str, challenge_id: str, now: float) -> None:
        p = self._platforms[platform]
        ch = p.challenges.get(challenge_id)
        if ch is None or ch.state != "sending":
            return
        del p.challenges[challenge_id]
        if ch.idempotency_key and p.idempotency.get(ch.idempotency_key) == challenge_id:
            del p.idempotency[ch.idempotency_key]
        phone = p.phones[ch.phone]
        phone.sends = [e for e in phone.sends if e[1] != challenge_id]
        phone.last_send = max((t for t, _ in phone.sends), default=float("-inf"))
        p.platform_sends = [e for e in p.platform_sends if e[1] != challenge_id]
        p.client_sends[ch.client] = [e for e in p.client_sends[ch.client] if e[1] != challenge_id]
        self._audit(
            p,
            platform,
            now,
            account=ch.account_id,
            event="code_send_failed",
            outcome="failed",
            reason="SMS_DELIVERY_FAILED",
            challenge=challenge_id,
            phone=ch.phone,
        )

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        p = self._platforms[check.platform]
        now = check.now
        ch = p.challenges.get(check.challenge_id)
        if ch is not None and now >= ch.expires_at + limits.challenge_retention_seconds:
            ch = None
        if ch is None:
            return self._fail(p, check, ChallengeNotFound())
        if ch.account_id != check.account_id:
            return self._fail(p, check, ChallengeAccountMismatch(), ch)
        if ch.state == "consumed":  # single use: a second correct code is refused too
            return self._fail(p, check, ChallengeAlreadyUsed(), ch)
        if now >= ch.expires_at:
            return self._fail(p, check, OtpExpired(), ch)
        if ch.attempts >= limits.otp_max_attempts:
            return self._fail(p, check, OtpAttemptsExceeded(), ch)
        phone = p.phones[ch.phone]
        if phone.locked_until > now:
            return self._fail(p, check, PhoneLocked(retry_after=phone.locked_until - now), ch)
        ch.attempts += 1  # counted before comparing
        if not self._matches(ch.mac, check.candidates):
            return self._wrong_code(p, check, ch, phone, limits)
        accounts = p.subject_accounts[ch.phone]
        if check.account_id not in accounts and len(accounts) >= limits.max_accounts_per_phone:
            return self._fail(p, check, PhoneAccountLimit(), ch)
        return self._succeed(p, check, ch, phone)

    @staticmethod
    def _matches(stored: str, candidates: tuple[str, ...]) -> bool:
        ok = False
        for c in candidates:  # every candidate is compared: no early exit
            ok |= hmac.compare_digest(stored.encode(), c.encode())
        return ok

    def _wrong_code(
        self, p: _Platform, check: CodeCheck, ch: _Challenge, phone: _Phone, limits: Limits
    ) -> AttestationRecord:
        now = check.now
        phone.fails += 1
        remaining = limits.otp_max_attempts - ch.attempts
        if phone.fails >= limits.phone_max_failures:
            phone.lock_level += 1
            phone.fails = 0
            seconds = limits.lock_seconds(phone.lock_level)
            phone.locked_until = now + seconds
            self._audit(
                p,
                check.platform,
                now,
                account=ch.account_id,
                event="check_failed",
                outcome="failed",
                reason="OTP_INCORRECT",
                challenge=check.challenge_id,
                phone=ch.phone,
                attempts_remaining=remaining,
            )
            self._audit(
                p,
                check.platform,
                now,
                account=ch.account_id,
                event="phone_locked",
                outcome="locked",
                reason="PHONE_LOCKED",
                phone=ch.phone,
                lock_seconds=seconds,
                lock_level=phone.lock_level,
            )
            raise PhoneLocked(retry_after=seconds)
        self._audit(
            p,
            check.platform,
            now,
            account=ch.account_id,
            event="check_failed",
            outcome="failed",
            reason="OTP_INCORRECT",
            challenge=check.challenge_id,
            phone=ch.phone,
            attempts_remaining=remaining,
        )
        raise OtpIncorrect(metadata={"attempts_remaining": str(remaining)})

    def _succeed(
        self, p: _Platform, check: CodeCheck, ch: _Challenge, phone: _Phone
    ) -> AttestationRecord:
        now = check.now
        a = check.attestation
        record = AttestationRecord(
            account_id=check.account_id,
            method=a.method,
            token_id=a.token_id,
            verified_at=now,
            issued_at=a.issued_at,
            expires_at=a.expires_at,
        )
        ch.state = "consumed"
        phone.fails = 0
        phone.lock_level = 0
        self._attest(p, record, ch.phone)
        self._audit(
            p,
            check.platform,
            now,
            account=ch.account_id,
            event="check_ok",
            outcome="ok",
            challenge=check.challenge_id,
            phone=ch.phone,
        )
        self._audit(
            p,
            check.platform,
            now,
            account=ch.account_id,
            event="attestation_issued",
            outcome="ok",
            token_id=a.token_id,
            method=a.method,
            expires=int(a.expires_at),
        )
        return record

    def _fail(
        self, p: _Platform, check: CodeCheck, error: XacthucError, ch: _Challenge | None = None
    ) -> AttestationRecord:
        self._audit(
            p,
            check.platform,
            check.now,
            account=check.account_id,
            event="check_failed",
            outcome="refused",
            reason=error.reason,
            challenge=check.challenge_id,
            phone=ch.phone if ch else "",
        )
        raise error

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
        if answer == "unavailable":
            self._id_audit(p, attempt, "id_check", "failed", RegistryUnavailable.reason)
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
        accounts = p.subject_accounts[attempt.subject]
        if (
            attempt.account_id not in accounts
            and len(accounts) >= limits.max_accounts_per_personal_id
        ):
            self._id_audit(p, attempt, "id_check", "refused", PersonalIdAccountLimit.reason)
            raise PersonalIdAccountLimit()
        for _, guard in guards:
            guard.fails = 0
            guard.lock_level = 0
        record = AttestationRecord(
            account_id=attempt.account_id,
            method=pending.method,
            token_id=pending.token_id,
            verified_at=now,
            issued_at=pending.issued_at,
            expires_at=pending.expires_at,
            commercial_livestream=True,
        )
        self._attest(p, record, attempt.subject)
        self._id_audit(p, attempt, "id_check", "ok", "")
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
        )
        return record

    def _attest(self, p: _Platform, record: AttestationRecord, subject: str) -> None:
        """Make `record` the account's attestation, moving its P8 slot to `subject`."""
        previous = p.attestations.get(record.account_id)
        if previous is not None and previous[1] != subject:
            p.subject_accounts[previous[1]].discard(record.account_id)
        p.subject_accounts[subject].add(record.account_id)
        p.attestations[record.account_id] = (record, subject)

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
        p = self._platforms[platform]
        self._audit(
            p, platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
        )
        return len(p.audit) - 1

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        found = self._platforms[platform].attestations.get(account_id)
        return found[0] if found else None

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return self._platforms[platform].audit[start:stop]

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
