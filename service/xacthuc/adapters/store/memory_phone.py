"""Phone challenges in the embedded store: P1-P3, P8 (see memory_state.py)."""

from __future__ import annotations

import hmac

from xacthuc.adapters.store.memory_state import (
    _WINDOWS,
    MemoryBase,
    _add_in_window,
    _Challenge,
    _in_window,
    _issued,
    _linked_child,
    _Phone,
    _Platform,
)
from xacthuc.domain.errors import (
    ChallengeAccountMismatch,
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    GuardianRequired,
    IdempotencyKeyReused,
    OtpAttemptsExceeded,
    OtpExpired,
    OtpIncorrect,
    PhoneAccountLimit,
    PhoneLocked,
    ResendTooSoon,
    SendLimitExceeded,
    StartInProgress,
    XacthucError,
)
from xacthuc.domain.records import AttestationRecord, ChallengeView, CodeCheck, Limits, NewChallenge


class PhoneOps(MemoryBase):
    # Every this many starts, forget challenges past their retention, as Redis expiry does.
    _PURGE_EVERY = 1024

    def _purge(self, p: _Platform, now: float, limits: Limits) -> None:
        gone = [
            cid
            for cid, ch in p.challenges.items()
            if now >= ch.expires_at + limits.challenge_retention_seconds
        ]
        for cid in gone:
            ch = p.challenges.pop(cid)
            if ch.idempotency_key and p.idempotency.get(ch.idempotency_key) == cid:
                del p.idempotency[ch.idempotency_key]

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        p = self._platforms[new.platform]
        now = new.now
        self._starts += 1
        if self._starts % self._PURGE_EVERY == 0:
            self._purge(p, now, limits)
        if new.idempotency_key and new.idempotency_key in p.idempotency:
            existing_id = p.idempotency[new.idempotency_key]
            existing = p.challenges.get(existing_id)
            if existing is not None and existing.expires_at > now:
                # The same request repeats the account and the number.
                if (existing.account_id, existing.phone) != (new.account_id, new.phone):
                    self._refuse_start(p, new, IdempotencyKeyReused())
                if existing.state != "sending":  # only a code that was sent is replayed
                    return ChallengeView(
                        existing_id, existing.expires_at, existing.resend_not_before, True
                    )
                if now < existing.created + limits.send_lease_seconds:
                    self._refuse_start(p, new, StartInProgress(retry_after=1.0))
                # Its start died before confirming the send: forget it, start afresh.
                self._unsend(p, new.platform, existing_id, now, "code_send_abandoned")
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
            created=now,
            expires_at=new.expires_at,
            resend_not_before=resend_not_before,
        )
        if new.idempotency_key:
            # The key's earlier challenge (expired, or undone) is replaced: Redis keeps the two
            # as one record (records.py, idempotency_slot).
            earlier = p.idempotency.get(new.idempotency_key)
            if earlier is not None and earlier != new.challenge_id:
                p.challenges.pop(earlier, None)
            p.idempotency[new.idempotency_key] = new.challenge_id
        phone.last_send = now
        entry = (now, new.challenge_id)
        _add_in_window(phone.sends, entry, now, _WINDOWS["phone_day"])
        _add_in_window(p.platform_sends, entry, now, _WINDOWS["platform_hour"])
        _add_in_window(p.client_sends[new.client], entry, now, _WINDOWS["client_ip_hour"])
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
        if _linked_child(p, new.account_id, now):
            raise GuardianRequired()
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
            if _in_window(entries, now, window) >= limit:
                # The budget frees up when the limit-th latest send leaves the window (the
                # lists are kept in time order: `_add_in_window`).
                oldest = entries[-limit][0]
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

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        p = self._platforms[platform]
        ch = p.challenges.get(challenge_id)
        if ch is None or ch.state != "sending" or ch.account_id != account_id:
            return
        ch.state = "pending"
        self._audit(
            p,
            platform,
            now,
            account=account_id,
            event="code_sent",
            outcome="ok",
            challenge=challenge_id,
            phone=ch.phone,
        )

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        p = self._platforms[platform]
        ch = p.challenges.get(challenge_id)
        if ch is None or ch.state != "sending" or ch.account_id != account_id:
            return
        self._unsend(p, platform, challenge_id, now, "code_send_failed")

    def _unsend(
        self, p: _Platform, platform: str, challenge_id: str, now: float, event: str
    ) -> None:
        """Undo a "sending" challenge's start as if it never happened: the challenge, its
        idempotency key, its budget entries and the cooldown; audit `event`."""
        ch = p.challenges.pop(challenge_id)
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
            event=event,
            outcome="failed",
            reason="SMS_DELIVERY_FAILED" if event == "code_send_failed" else "",
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
            # What the challenge issued may outlive it (a retry after a lost reply).
            replay = _issued(p, check.challenge_id, check.account_id)
            if replay is not None:
                return replay
            if p.issued.get(check.challenge_id) == check.account_id:
                return self._fail(p, check, ChallengeAlreadyUsed())
            return self._fail(p, check, ChallengeNotFound())
        if ch.account_id != check.account_id:
            return self._fail(p, check, ChallengeAccountMismatch(), ch)
        if ch.state == "consumed":
            # Single use: the right code again is the same call retried (no attempt counted):
            # it gets what the challenge issued; any other code is refused.
            if self._matches(ch.mac, check.candidates):
                return self._issue(p, check, ch, limits)
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
        # The right code uses the challenge up and starts P2 afresh; then the durable step
        # (PostgreSQL's in the pair): R1, P8, the attestation.
        ch.state = "consumed"
        phone.fails = 0
        phone.lock_level = 0
        return self._issue(p, check, ch, limits)

    def _issue(
        self, p: _Platform, check: CodeCheck, ch: _Challenge, limits: Limits
    ) -> AttestationRecord:
        """The issuing step of a right code, idempotent on the challenge id: once it issued,
        the attestation while it is still the account's active one, else
        CHALLENGE_ALREADY_USED; R1 (GUARDIAN_REQUIRED), P8 (PHONE_ACCOUNT_LIMIT)."""
        if check.challenge_id in p.issued:
            replay = _issued(p, check.challenge_id, check.account_id)
            if replay is None:
                return self._fail(p, check, ChallengeAlreadyUsed(), ch)
            return replay
        if _linked_child(p, check.account_id, check.now):  # R1: a child verifies via the guardian
            return self._fail(p, check, GuardianRequired(), ch)
        accounts = p.subject_accounts[ch.phone]
        if check.account_id not in accounts and len(accounts) >= limits.max_accounts_per_phone:
            return self._fail(p, check, PhoneAccountLimit(), ch)
        return self._succeed(p, check, ch)

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
                event="phone_locked",
                outcome="locked",
                reason="PHONE_LOCKED",
                phone=ch.phone,
                lock_seconds=seconds,
                lock_level=phone.lock_level,
            )
            raise PhoneLocked(retry_after=seconds)
        raise OtpIncorrect(metadata={"attempts_remaining": str(remaining)})

    def _succeed(self, p: _Platform, check: CodeCheck, ch: _Challenge) -> AttestationRecord:
        now = check.now
        a = check.attestation
        record = AttestationRecord(
            account_id=check.account_id,
            method=a.method,
            token_id=a.token_id,
            verified_at=now,
            issued_at=a.issued_at,
            expires_at=a.expires_at,
            age_band=a.age_band,
            status_idx=self._next_status_idx(p),
        )
        self._attest(p, record, ch.phone, check.challenge_id)
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
