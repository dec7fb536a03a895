"""The embedded store: everything in one process, nothing on disk.

Each method runs to completion without awaiting, so on one event loop it is atomic. This
is the reference implementation of the contract; `redis.py` mirrors it in Lua.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from dataclasses import dataclass, field, replace

from xacthuc.errors import (
    AccountNotAuthenticated,
    AttestationNotFound,
    ChallengeAccountMismatch,
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    ChildAlreadyLinked,
    ChildNotUnder16,
    GuardianChildLimit,
    GuardianManagedNoCommercialLivestream,
    GuardianNotVerified,
    GuardianRequired,
    GuardianUnder18,
    IdAttemptsExceeded,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    LinkNotFound,
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
    audit_record,
    check_revocation_reason,
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
class _Link:
    """A guardian link (P6); kept after it ends, with `ended` and `end_reason` set."""

    link_id: str
    child: str
    guardian_account: str
    guardian: str  # the guardian's pseudonym (ph_/id_)
    relationship: str
    method: str
    child_consent: bool
    created: float
    renewed: float
    aged_out_at: float
    ended: float | None = None
    end_reason: str = ""


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
    # Guardian links (P6): every link, the active one of each child, the children of each
    # guardian pseudonym with an active link, and the aging-out index (child -> 16th birthday).
    links: dict[str, _Link] = field(default_factory=dict)
    child_links: dict[str, str] = field(default_factory=dict)
    guardian_children: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    aging: dict[str, float] = field(default_factory=dict)
    # The status list (issue 5): the next index, and the bitmap in Redis SETBIT bit order.
    status_next: int = 0
    status_bits: bytearray = field(default_factory=bytearray)


_OVER_16 = frozenset({"adult", "16_17"})  # age bands the registry proved


def _active(record: AttestationRecord, now: float) -> bool:
    return record.status == "active" and record.expires_at > now


def _linked_child(p: _Platform, account_id: str, now: float) -> bool:
    """The account has an active guardian link and the child has not turned 16 (R1)."""
    aged_out_at = p.aging.get(account_id)
    return aged_out_at is not None and aged_out_at > now


def _recent(entries: list[tuple[float, str]], now: float, window: float) -> list[tuple[float, str]]:
    return [e for e in entries if e[0] > now - window]


class MemoryStore:
    # Every this many starts, forget challenges past their retention, as Redis expiry does.
    _PURGE_EVERY = 1024

    def __init__(self) -> None:
        self._platforms: dict[str, _Platform] = defaultdict(_Platform)
        self._starts = 0

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

    def _audit(self, p: _Platform, platform: str, now: float, **fields: str | int) -> None:
        p.audit.append(audit_record(seq=len(p.audit), now=now, platform=platform, **fields))  # type: ignore[arg-type]

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        p = self._platforms[new.platform]
        now = new.now
        self._starts += 1
        if self._starts % self._PURGE_EVERY == 0:
            self._purge(p, now, limits)
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
        if _linked_child(p, check.account_id, now):  # R1: a linked child verifies via the guardian
            return self._fail(p, check, GuardianRequired(), ch)
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
            age_band=a.age_band,
            status_idx=self._next_status_idx(p),
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
            age_band=pending.age_band,
            status_idx=self._next_status_idx(p),
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
            age_band=pending.age_band,
        )
        return record

    def _attest(self, p: _Platform, record: AttestationRecord, subject: str) -> None:
        """Make `record` the account's attestation, moving its P8 slot to `subject` (none
        when `subject` is "": a guardian-managed child takes no slot of the guardian's)."""
        previous = p.attestations.get(record.account_id)
        if previous is not None and previous[1] != subject:
            p.subject_accounts[previous[1]].discard(record.account_id)
        if subject:
            p.subject_accounts[subject].add(record.account_id)
        p.attestations[record.account_id] = (record, subject)

    @staticmethod
    def _next_status_idx(p: _Platform) -> int:
        """The next index; the bitmap grows to cover it (a zero bit), as SETBIT does."""
        idx = p.status_next
        p.status_next += 1
        if len(p.status_bits) <= idx // 8:
            p.status_bits.extend(bytes(idx // 8 + 1 - len(p.status_bits)))
        return idx

    @staticmethod
    def _set_status_bit(p: _Platform, idx: int) -> None:
        """Redis SETBIT order: index 0 is the most significant bit of byte 0."""
        if idx < 0:
            return
        byte = idx // 8
        if len(p.status_bits) <= byte:
            p.status_bits.extend(bytes(byte + 1 - len(p.status_bits)))
        p.status_bits[byte] |= 0x80 >> (idx % 8)

    def _revoke(
        self, p: _Platform, platform: str, now: float, record: AttestationRecord, reason: str
    ) -> AttestationRecord:
        """Set the status of `record` (the account's current one) to revoked, its bit, audit."""
        revoked = replace(record, status="revoked")
        p.attestations[record.account_id] = (revoked, p.attestations[record.account_id][1])
        self._set_status_bit(p, record.status_idx)
        self._audit(
            p,
            platform,
            now,
            account=record.account_id,
            event="attestation_revoked",
            outcome="ok",
            reason=reason,
            token_id=record.token_id,
            status_idx=record.status_idx if record.status_idx >= 0 else "",
        )
        return revoked

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        return self._platforms[platform].attestations.get(account_id)

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        p = self._platforms[link.platform]
        now = link.now
        child = link.child_account_id
        guardian = p.attestations.get(link.guardian_account_id)
        current = p.child_links.get(child)
        renewing = current is not None and p.links[current].guardian == link.guardian_subject
        g, subject = guardian if guardian else (None, "")
        try:
            if (
                g is None
                or not _active(g, now)
                or g.guardian_managed
                or g.token_id != link.guardian_token_id
                or subject != link.guardian_subject
            ):
                raise GuardianNotVerified()
            if g.age_band == "16_17":
                raise GuardianUnder18()
            mine = p.attestations.get(child)
            if mine is not None and _active(mine[0], now) and mine[0].age_band in _OVER_16:
                raise ChildNotUnder16()
            if current is not None and not renewing:
                raise ChildAlreadyLinked()
            children = p.guardian_children[link.guardian_subject]
            if not renewing and len(children) >= limits.max_children_per_guardian:
                raise GuardianChildLimit()
        except XacthucError as e:
            self._link_audit(p, link, "guardian_link_created", "refused", e.reason)
            raise
        a = link.attestation
        if renewing:
            assert current is not None
            row = p.links[current]
            row.relationship, row.method = link.relationship, a.method
            row.child_consent, row.renewed, row.aged_out_at = (
                link.child_consent,
                now,
                link.aged_out_at,
            )
            link_id = current
        else:
            link_id = link.link_id
            p.links[link_id] = _Link(
                link_id=link_id,
                child=child,
                guardian_account=link.guardian_account_id,
                guardian=link.guardian_subject,
                relationship=link.relationship,
                method=a.method,
                child_consent=link.child_consent,
                created=now,
                renewed=now,
                aged_out_at=link.aged_out_at,
            )
            p.child_links[child] = link_id
            p.guardian_children[link.guardian_subject].add(child)
        p.aging[child] = link.aged_out_at
        event = "guardian_link_renewed" if renewing else "guardian_link_created"
        self._link_audit(p, link, event, "ok", "", link=link_id, method=a.method)
        for party, given in (("guardian", True), ("child", link.child_consent)):
            if given:
                self._audit(
                    p,
                    link.platform,
                    now,
                    account=child,
                    event="consent_recorded",
                    outcome="ok",
                    link=link_id,
                    party=party,
                )
        previous = p.attestations.get(child)
        if previous is not None and _active(previous[0], now):
            self._revoke(p, link.platform, now, previous[0], "superseded")
        record = AttestationRecord(
            account_id=child,
            method=a.method,
            token_id=a.token_id,
            verified_at=now,
            issued_at=a.issued_at,
            expires_at=a.expires_at,
            guardian_managed=True,
            age_band="under_16",
            guardian_ref=link.guardian_ref,
            aged_out_at=link.aged_out_at,
            link_id=link_id,
            status_idx=self._next_status_idx(p),
        )
        self._attest(p, record, "")
        self._audit(
            p,
            link.platform,
            now,
            account=child,
            event="attestation_issued",
            outcome="ok",
            token_id=a.token_id,
            method=a.method,
            expires=int(a.expires_at),
            guardian_managed=1,
            age_band="under_16",
        )
        return LinkResult(link_id, record, renewing)

    def _link_audit(
        self,
        p: _Platform,
        g: GuardianLink,
        event: str,
        outcome: str,
        reason: str,
        **extra: str | int,
    ) -> None:
        self._audit(
            p,
            g.platform,
            g.now,
            account=g.child_account_id,
            event=event,
            outcome=outcome,
            reason=reason,
            guardian=g.guardian_subject,
            guardian_account=g.guardian_account_id,
            relationship=g.relationship,
            **extra,
        )

    def _end_link(self, p: _Platform, platform: str, row: _Link, now: float, reason: str) -> None:
        row.ended, row.end_reason = now, reason
        del p.child_links[row.child]
        p.guardian_children[row.guardian].discard(row.child)
        del p.aging[row.child]
        self._audit(
            p,
            platform,
            now,
            account=row.child,
            event="guardian_link_ended",
            outcome="ok",
            reason=reason,
            link=row.link_id,
            guardian=row.guardian,
        )

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        p = self._platforms[platform]
        row = p.links.get(link_id)
        if row is None or row.ended is not None:
            error = LinkNotFound() if row is None else LinkAlreadyEnded()
            self._audit(
                p,
                platform,
                now,
                account=row.child if row else "",
                event="guardian_link_ended",
                outcome="refused",
                reason=error.reason,
                link=link_id,
            )
            raise error
        self._end_link(p, platform, row, now, reason)
        found = p.attestations.get(row.child)
        if found is None or found[0].link_id != link_id or found[0].status != "active":
            return None
        return self._revoke(p, platform, now, found[0], f"guardian_link_{reason}")

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        p = self._platforms[platform]
        due = sorted((t, child) for child, t in p.aging.items() if t <= now)[: max(0, limit)]
        for _, child in due:
            row = p.links[p.child_links[child]]
            self._end_link(p, platform, row, now, "aged_out")
            found = p.attestations.get(child)
            if (
                found is not None
                and found[0].link_id == row.link_id
                and found[0].status == "active"
            ):
                p.attestations[child] = (replace(found[0], status="aged_out"), found[1])
        return len(due)

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        p = self._platforms[platform]
        # Ordered as Redis orders a sorted set: by score, then by the member's bytes (UTF-8
        # preserves code-point order, so Python's string order is the same).
        entries = sorted(
            (t, child)
            for child, t in p.aging.items()
            if from_time <= t < to_time
            and (after is None or (t, child) > (after.aged_out_at, after.account_id))
        )
        return [AgingOut(child, t) for t, child in entries[: max(0, limit)]]

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        check_revocation_reason(reason)
        p = self._platforms[platform]
        found = p.attestations.get(account_id)
        if found is None:
            raise AttestationNotFound()
        if found[0].status == "revoked":
            return found[0]
        return self._revoke(p, platform, now, found[0], reason)

    async def status_bits(self, platform: str) -> bytes:
        return bytes(self._platforms[platform].status_bits)

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
