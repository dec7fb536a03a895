"""Phone verification by SMS one-time code (Decree 147 R2; policies P1-P4, P8).

The flow: validate and pseudonymise the input (a refusal there is audited, `verification_started`
refused, without the number: only a malformed account id is not, having no account to name),
let the store reserve a challenge in one
atomic step (idempotency, lockout, cooldown and send budgets checked together), send the
SMS, then record the outcome. A gateway failure rolls the reservation back completely, so
the platform can simply retry. Confirmation is a single atomic store step.

Idempotent retries. From the store step to the recorded outcome the start runs shielded from
its caller, so a caller that gives up does not stop it halfway. A retry with the same key is
answered `replayed` only once the code was sent (the challenge is "pending"); while the first
start is still sending it is START_IN_PROGRESS (no second code, no second charge); and if that
start died before recording its outcome (the process stopped), the challenge is taken for
abandoned once its send lease (`Limits.send_lease_seconds`) has passed: the store undoes it and
starts afresh in the same atomic step, so the retry sends a new code, charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import (
    FieldInvalid,
    OtpMalformed,
    ResourceExhausted,
    SmsDeliveryFailed,
    XacthucError,
)
from xacthuc.domain.fictional import TestNumbers
from xacthuc.domain.keyed import OtpMac, Pseudonymizer
from xacthuc.domain.phone import mask, normalize_vn_mobile
from xacthuc.domain.records import (
    CHALLENGE_CHARS,
    CHALLENGE_ID,
    CHALLENGE_PREFIX,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    Limits,
    NewChallenge,
    PendingAttestation,
    challenge_head,
)
from xacthuc.ports.metrics import FlowMetrics, NoFlowMetrics
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage, SmsSender
from xacthuc.ports.store import Store
from xacthuc.verifiers.shielded import shielded

METHOD = "phone_otp"
ACCOUNT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
CODE = re.compile(r"[0-9]{6}")  # ASCII only: str.isdigit() would accept other scripts' digits
# The longest IPv6 literal: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
CLIENT_IP_MAX = 45


def check_account_id(value: str, field: str = "account_id") -> str:
    if not ACCOUNT_ID.fullmatch(value):
        raise FieldInvalid(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return value


def check_client_ip(value: str) -> str:
    """The canonical text of one IPv4 or IPv6 address, surrounding whitespace trimmed
    (`parse_client_ip`'s address as text)."""
    return str(parse_client_ip(value))


def parse_client_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """One IPv4 or IPv6 address, surrounding whitespace trimmed.

    Refused (FIELD_INVALID, the value never echoed): anything longer than the longest IPv6
    literal, checked before parsing so no size of input costs more than that; a zone id
    (`fe80::1%eth0`), which `ipaddress` accepts but which names an interface of the
    platform's host, not an end user, and could carry any bytes into the pseudonym."""
    if len(value) > CLIENT_IP_MAX or "%" in value:
        raise FieldInvalid(
            "client_ip",
            f"must be an IPv4 or IPv6 address of at most {CLIENT_IP_MAX} characters"
            " without a zone id",
        )
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise FieldInvalid("client_ip", "must be an IPv4 or IPv6 address") from None


def _new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


@contextlib.contextmanager
def counting_refusals(metrics: FlowMetrics, platform: str) -> Iterator[None]:
    """Reports a budget or lock refusal (any RESOURCE_EXHAUSTED reason) raised inside."""
    try:
        yield
    except ResourceExhausted as e:
        metrics.refused(platform, e.reason)
        raise


@dataclass(frozen=True, slots=True)
class StartedChallenge:
    view: ChallengeView
    masked_phone: str


class PhoneOtpVerifier:
    def __init__(
        self,
        *,
        store: Store,
        sms: SmsSender,
        clock: Clock,
        pseudonyms: Pseudonymizer,
        otp_mac: OtpMac,
        limits: Limits,
        otp_ttl_seconds: int,
        token_ttl_seconds: int,
        sms_template: str,
        test_numbers: TestNumbers | None = None,
        metrics: FlowMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or NoFlowMetrics()
        self._sms = sms
        self._clock = clock
        self._pseudonyms = pseudonyms
        self._mac = otp_mac
        self._limits = limits
        self._otp_ttl = otp_ttl_seconds
        self._token_ttl = token_ttl_seconds
        self._template = sms_template
        self._test_numbers = test_numbers  # dev mode only (XACTHUC_TEST_NUMBERS)

    async def start(
        self,
        *,
        platform: str,
        account_id: str,
        phone_number: str,
        client_ip: str,
        idempotency_key: str,
    ) -> StartedChallenge:
        check_account_id(account_id)  # unaudited, as in every flow: no account to name
        try:
            e164 = normalize_vn_mobile(phone_number)
            client = self._pseudonyms.client_address(parse_client_ip(client_ip))
            if idempotency_key and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise FieldInvalid("idempotency_key", "must be 1-128 printable ASCII characters")
        except XacthucError as e:
            await self._refuse_start(platform, account_id, client_ip, e)
            raise
        now = self._clock.now()
        # The id begins with the number's tag and, with a key, the key's slot (records.py):
        # the store finds the number's shard from the id, and keeps the challenge and its key
        # as one record. Random characters make up the rest (54 bits with a key, else 120).
        phone = self._pseudonyms.phone(e164)
        head = challenge_head(phone, idempotency_key)
        rest = len(CHALLENGE_PREFIX) + CHALLENGE_CHARS - len(head)
        challenge_id = head + secrets.token_urlsafe(16)[:rest]
        fixed = self._test_numbers
        test_code = fixed.code if fixed is not None and e164 in fixed else None
        code = test_code or _new_code()
        new = NewChallenge(
            platform=platform,
            challenge_id=challenge_id,
            account_id=account_id,
            phone=phone,
            client=client,
            code_mac=self._mac.mac(challenge_id, code),
            idempotency_key=idempotency_key,
            now=now,
            expires_at=now + self._otp_ttl,
        )
        text = self._template.format(code=code, minutes=self._otp_ttl // 60)
        # Shielded from the store step on: a caller that gives up (its deadline, a dropped
        # connection) must not leave a challenge whose code was never sent. The store step and
        # the send run to the end without it; the caller's retry then replays the sent code.
        view = await shielded(
            self._start(new, SmsMessage(e164, text, challenge_id), texted=test_code is None),
            what=f"start of challenge {challenge_id}",
        )
        return StartedChallenge(view, mask(e164))

    async def _refuse_start(
        self, platform: str, account_id: str, client_ip: str, error: XacthucError
    ) -> None:
        """Audit a start refused before the store step, as the store audits its own refusals,
        but without the number or its pseudonym: it did not pass validation, and a typo of
        someone's number is still personal data. The client's pseudonym when its IP is valid."""
        extra: dict[str, str] = {"method": "phone_otp"}
        with contextlib.suppress(XacthucError):
            extra["client"] = self._pseudonyms.client_address(parse_client_ip(client_ip))
        await self._store.append_audit(
            platform,
            self._clock.now(),
            account=account_id,
            event="verification_started",
            outcome="refused",
            reason=error.reason,
            **extra,
        )

    async def _start(
        self, new: NewChallenge, message: SmsMessage, *, texted: bool
    ) -> ChallengeView:
        with counting_refusals(self._metrics, new.platform):
            view = await self._store.start_challenge(new, self._limits)
        if view.replayed:
            return view
        if texted:
            await self._deliver(new, message)
        else:  # a test number is never texted: the challenge counts as sent, with the fixed code
            await self._store.confirm_sent(
                new.platform, new.challenge_id, new.account_id, self._clock.now()
            )
        return view

    async def _deliver(self, new: NewChallenge, message: SmsMessage) -> None:
        """Hand the code to the gateway within half the send lease (the other half is margin
        for replicas' clocks), so a retry takes the challenge for abandoned only once this send
        has ended. A send cut off at that bound counts as refused (SMS_DELIVERY_FAILED, the
        challenge undone): should the gateway still deliver it, its code is already dead."""
        platform, challenge_id, account_id = new.platform, new.challenge_id, new.account_id
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._limits.send_lease_seconds / 2):
                await self._sms.send(message)
        except (SmsDeliveryError, TimeoutError):
            self._metrics.sms_send(platform, "failed", time.perf_counter() - started)
            await self._store.abort_challenge(platform, challenge_id, account_id, self._clock.now())
            raise SmsDeliveryFailed() from None
        except BaseException:
            self._metrics.sms_send(platform, "error", time.perf_counter() - started)
            await self._store.abort_challenge(platform, challenge_id, account_id, self._clock.now())
            raise
        self._metrics.sms_send(platform, "sent", time.perf_counter() - started)
        await self._store.confirm_sent(platform, challenge_id, account_id, self._clock.now())

    async def confirm(
        self, *, platform: str, challenge_id: str, account_id: str, code: str
    ) -> AttestationRecord:
        check_account_id(account_id)
        if not CHALLENGE_ID.fullmatch(challenge_id):
            raise FieldInvalid("challenge_id", "is not a challenge id")
        if not CODE.fullmatch(code):
            raise OtpMalformed()
        now = self._clock.now()
        check = CodeCheck(
            platform=platform,
            challenge_id=challenge_id,
            account_id=account_id,
            candidates=tuple(self._mac.candidates(challenge_id, code)),
            now=now,
            attestation=PendingAttestation(
                token_id="at_" + secrets.token_urlsafe(16),
                issued_at=now,
                expires_at=now + self._token_ttl,
                method=METHOD,
            ),
        )
        with counting_refusals(self._metrics, platform):
            return await self._store.check_code(check, self._limits)
