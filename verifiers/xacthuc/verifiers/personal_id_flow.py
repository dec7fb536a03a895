"""Authentication by personal identification number through the e-ID registry (R3, R4; P5, P7).

The order of checks is the policy:

1. the request is well formed, and for ordinary authentication the user declared having no
   Vietnamese mobile number (R3; otherwise PHONE_ROUTE_REQUIRED);
2. the holder is 16 or over on today's date in Vietnam (R1: a child is registered by a
   guardian, GUARDIAN_REQUIRED; P7: no commercial livestream for a child);
3. the number's structure: a citizen's agrees with the declared date of birth and sex
   (DOMAIN C); a foreigner's identification number (R9) has only its form checked, as its
   structure is not published (see `xacthuc.domain.personal_id`);
4. the store reserves the attempt in the account's and the number's hourly budgets (and
   refuses during a lock after consecutive non-matches) before the registry is asked: no
   oracle, and attempts in flight count;
5. the registry answers match / no match / unavailable (an error, an open circuit, or no
   answer within `registry_deadline_seconds`), and the store records the answer atomically
   with what the attempt costs, the attestation (with the holder's age band, "adult" or
   "16_17") and the audit records: an attempt that got no answer is refunded in both budgets
   (retrying after an outage costs nothing), a match in the number's (so the number's budget
   holds non-matches only, alike for a real and an unknown number), and the P8 cap of accounts
   per number is checked only after a match (PERSONAL_ID_ACCOUNT_LIMIT, no retry-after).

Every attempt is audited. A refusal before step 4 (steps 1-3, a bad client IP, a missing
purpose or kind of number, an empty or odd full name included) is audited here
(`id_check_started`, outcome `refused`, its reason) with what of the request was valid: the
client's pseudonym, the purpose, the kind, and the number's pseudonym only if the number
passes its structural check, so a refused number that did not validate leaves no trace.
Two refusals leave no record, deliberately: a malformed account id (there is no account to
name, as in every flow) and a request the gRPC edge refused for its shape before this flow
ran (bytes that are no message, REQUEST_MALFORMED; a string over its bound, an out-of-range
date or an undefined enum number, FIELD_INVALID from `xacthuc.server.request_bounds`).
Nothing here keeps or logs the number, the name or the date of birth: only the number's
pseudonym (keyed per kind of number, so a foreigner's number and a citizen's with the same
digits are two subjects). Every record of the attempt and the token say the kind (`id_type`). Foreigners
follow the same ages, guardian rules, attempt limits and account caps as citizens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time
import unicodedata
from enum import StrEnum

from xacthuc.domain.age import CHILD_UNDER, age_band, age_on, local_date
from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import (
    DateOfBirthInvalid,
    FieldInvalid,
    GuardianManagedNoCommercialLivestream,
    GuardianRequired,
    PhoneRouteRequired,
    XacthucError,
)
from xacthuc.domain.keyed import Pseudonymizer
from xacthuc.domain.personal_id import IdType, Sex, parse_foreigner_id, parse_personal_id
from xacthuc.domain.records import AttestationRecord, IdAttempt, Limits, PendingAttestation
from xacthuc.ports.metrics import FlowMetrics, NoFlowMetrics
from xacthuc.ports.registry import (
    IdentityRegistry,
    RegistryAnswer,
    RegistryQuery,
    RegistryUnavailableError,
    clean_name,
)
from xacthuc.ports.store import Store
from xacthuc.verifiers.phone_otp import check_account_id, counting_refusals, parse_client_ip
from xacthuc.verifiers.shielded import shielded

METHOD = "personal_id"
MAX_NAME = 200
# Unicode categories no registered name holds: controls, format characters (bidirectional
# overrides, invisible marks) and private-use or surrogate code points. Whitespace controls
# (tab, newline) are collapsed to a space before. The zero-width non-joiner and joiner are
# kept: some scripts spell names with them.
_NOT_IN_NAMES = frozenset({"Cc", "Cf", "Co", "Cs"})
_JOINERS = frozenset({"\u200c", "\u200d"})


def _odd_character(name: str) -> bool:
    return any(unicodedata.category(ch) in _NOT_IN_NAMES and ch not in _JOINERS for ch in name)


def _check_name(full_name: str) -> str:
    name = clean_name(full_name) if isinstance(full_name, str) else ""
    if not 1 <= len(name) <= MAX_NAME:
        raise FieldInvalid("full_name", f"must be 1-{MAX_NAME} characters")
    if _odd_character(name):
        raise FieldInvalid(
            "full_name", "must not contain control, format or private-use characters"
        )
    return name


def _valid_number(
    number: str,
    id_type: IdType,
    date_of_birth: datetime.date | None,
    sex: Sex | None,
    today: datetime.date,
) -> str | None:
    """The number when it passes its structural check (a citizen's against the declared
    date of birth and sex, which must be valid), else None."""
    try:
        if id_type is IdType.FOREIGNER:
            return parse_foreigner_id(number)
        if date_of_birth is None:
            return None
        return parse_personal_id(number, date_of_birth=date_of_birth, sex=sex, today=today).number
    except XacthucError:
        return None


class Purpose(StrEnum):
    NO_VIETNAMESE_MOBILE = "no_vietnamese_mobile"  # R3
    COMMERCIAL_LIVESTREAM = "commercial_livestream"  # R4


class PersonalIdVerifier:
    def __init__(
        self,
        *,
        store: Store,
        registry: IdentityRegistry,
        clock: Clock,
        pseudonyms: Pseudonymizer,
        limits: Limits,
        token_ttl_seconds: int,
        registry_deadline_seconds: float = 10.0,
        metrics: FlowMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or NoFlowMetrics()
        self._registry = registry
        self._clock = clock
        self._pseudonyms = pseudonyms
        self._limits = limits
        self._token_ttl = token_ttl_seconds
        self._deadline = registry_deadline_seconds

    async def verify(
        self,
        *,
        platform: str,
        account_id: str,
        number: str,
        full_name: str,
        date_of_birth: datetime.date | None,
        sex: Sex | None,
        purpose: Purpose | None,
        declared_no_vietnamese_mobile: bool,
        client_ip: str,
        id_type: IdType | None = IdType.CITIZEN,
    ) -> AttestationRecord:
        check_account_id(account_id)  # unaudited, as in every flow: no account to name
        now = self._clock.now()
        attempt_id = "ia_" + secrets.token_urlsafe(12)
        try:
            client = self._pseudonyms.client_address(parse_client_ip(client_ip))
            if purpose is None:
                raise FieldInvalid(
                    "purpose", "must be NO_VIETNAMESE_MOBILE or COMMERCIAL_LIVESTREAM"
                )
            if id_type is None:
                raise FieldInvalid("personal_id_type", "must be CITIZEN or FOREIGNER")
            name = _check_name(full_name)
            parsed = self._precheck(
                number,
                id_type,
                date_of_birth,
                sex,
                purpose,
                declared_no_vietnamese_mobile,
                local_date(now),
            )
        except XacthucError as e:
            await self._refuse(
                platform,
                now,
                account_id,
                attempt_id,
                e,
                client_ip=client_ip,
                purpose=purpose,
                id_type=id_type,
                number=number,
                date_of_birth=date_of_birth,
                sex=sex,
            )
            raise
        attempt = IdAttempt(
            platform=platform,
            attempt_id=attempt_id,
            account_id=account_id,
            subject=self._pseudonyms.personal_id(parsed, id_type.value),
            client=client,
            purpose=purpose.value,
            now=now,
            id_type=id_type.value,
        )
        with counting_refusals(self._metrics, platform):
            await self._store.begin_id_check(attempt, self._limits)
        assert date_of_birth is not None  # checked by _precheck
        query = RegistryQuery(
            number=parsed, full_name=name, date_of_birth=date_of_birth, id_type=id_type.value
        )
        # The registry's answer and its record must land together even if the caller leaves.
        return await shielded(
            self._ask_and_record(attempt, query),
            what=f"registry check of attempt {attempt.attempt_id}",
        )

    async def _refuse(
        self,
        platform: str,
        now: float,
        account_id: str,
        attempt_id: str,
        error: XacthucError,
        *,
        client_ip: str,
        purpose: Purpose | None,
        id_type: IdType | None,
        number: str,
        date_of_birth: datetime.date | None,
        sex: Sex | None,
    ) -> None:
        """Audit an attempt refused before the store step (`id_check_started`, `refused`),
        as the store audits its own refusals: the account, the attempt id, the reason, and
        what of the request was valid: the client's pseudonym, the purpose, the kind of
        number, and the number's pseudonym only when the number passes its own structural
        check (for a citizen, with the declared date of birth and sex). A number that does
        not (a typo of someone's number is still personal data) or whose kind is unknown
        leaves no pseudonym, so no refused input of any shape puts a subject in the log."""
        extra: dict[str, str] = {"attempt": attempt_id}
        with contextlib.suppress(XacthucError):
            extra["client"] = self._pseudonyms.client_address(parse_client_ip(client_ip))
        if purpose is not None:
            extra["purpose"] = purpose.value
        if id_type is not None:
            extra["id_type"] = id_type.value
            valid = _valid_number(number, id_type, date_of_birth, sex, local_date(now))
            if valid is not None:
                extra["personal_id"] = self._pseudonyms.personal_id(valid, id_type.value)
        await self._store.append_audit(
            platform,
            now,
            account=account_id,
            event="id_check_started",
            outcome="refused",
            reason=error.reason,
            **extra,
        )

    def _precheck(
        self,
        number: str,
        id_type: IdType,
        date_of_birth: datetime.date | None,
        sex: Sex | None,
        purpose: Purpose,
        declared: bool,
        today: datetime.date,
    ) -> str:
        if purpose is Purpose.NO_VIETNAMESE_MOBILE and not declared:
            raise PhoneRouteRequired()
        if date_of_birth is None or date_of_birth > today:
            raise DateOfBirthInvalid()
        if age_on(date_of_birth, today) < CHILD_UNDER:
            if purpose is Purpose.COMMERCIAL_LIVESTREAM:
                raise GuardianManagedNoCommercialLivestream()
            raise GuardianRequired()
        if id_type is IdType.FOREIGNER:
            return parse_foreigner_id(number)
        return parse_personal_id(number, date_of_birth=date_of_birth, sex=sex, today=today).number

    async def _ask_and_record(self, attempt: IdAttempt, query: RegistryQuery) -> AttestationRecord:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline):
                answer = (await self._registry.match(query)).value
        except (RegistryUnavailableError, TimeoutError):
            answer = "unavailable"
        self._metrics.registry_call(attempt.platform, answer, time.perf_counter() - started)
        now = self._clock.now()
        pending = PendingAttestation(
            token_id="at_" + secrets.token_urlsafe(16),
            issued_at=now,
            expires_at=now + self._token_ttl,
            method=METHOD,
            # The registry matched this date of birth: the token may say the band (P6), never
            # the date. "16_17" keeps such a holder from acting as a guardian (GUARDIAN_UNDER_18).
            age_band=age_band(query.date_of_birth, local_date(now)),
            id_type=query.id_type,
        )
        assert answer in {RegistryAnswer.MATCH.value, RegistryAnswer.NO_MATCH.value, "unavailable"}
        with counting_refusals(self._metrics, attempt.platform):
            return await self._store.finish_id_check(attempt, answer, pending, self._limits)
