"""The gRPC edge of VerificationService: protobuf in, domain calls, protobuf out.

Protobuf stops here: verifiers and stores below never import generated code. Every method
is wrapped by `rpc.rpc`, which authenticates, checks the role, refuses undecodable or
out-of-bounds requests (`request_bounds`) and maps errors.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from xacthuc.domain.clock import Clock
from xacthuc.domain.decisions import Action, AttestationState, Decision, decide
from xacthuc.domain.errors import AttestationNotFound, ErasureNeedsDatabase, FieldInvalid
from xacthuc.domain.locks import AccountLock, LockKind, check_lock
from xacthuc.domain.personal_id import IdType, Sex
from xacthuc.domain.records import (
    AttestationRecord,
    check_reason_code,
    check_request_reference,
)
from xacthuc.ports.store import Store
from xacthuc.server.auth import ApiKeys, Caller, Role
from xacthuc.server.request_bounds import timestamp_seconds
from xacthuc.server.rpc import EdgeServicer, rpc, timestamp
from xacthuc.server.signing import SigningKeys
from xacthuc.v1 import verification_pb2, verification_pb2_grpc
from xacthuc.verifiers.guardian_flow import GuardianLinker, Relationship
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier, Purpose
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier, check_account_id
from xacthuc.verifiers.status_publisher import StatusListPublisher

_SEXES = {verification_pb2.SEX_MALE: Sex.MALE, verification_pb2.SEX_FEMALE: Sex.FEMALE}
_PURPOSES = {
    verification_pb2.PERSONAL_ID_PURPOSE_NO_VIETNAMESE_MOBILE: Purpose.NO_VIETNAMESE_MOBILE,
    verification_pb2.PERSONAL_ID_PURPOSE_COMMERCIAL_LIVESTREAM: Purpose.COMMERCIAL_LIVESTREAM,
}
# R9: an unspecified type is a citizen's number, as before the field existed.
_ID_TYPES = {
    verification_pb2.PERSONAL_ID_TYPE_UNSPECIFIED: IdType.CITIZEN,
    verification_pb2.PERSONAL_ID_TYPE_CITIZEN: IdType.CITIZEN,
    verification_pb2.PERSONAL_ID_TYPE_FOREIGNER: IdType.FOREIGNER,
}
_ID_TYPES_OUT = {
    "citizen": verification_pb2.PERSONAL_ID_TYPE_CITIZEN,
    "foreigner": verification_pb2.PERSONAL_ID_TYPE_FOREIGNER,
}
_RELATIONSHIPS = {
    verification_pb2.GUARDIAN_RELATIONSHIP_PARENT: Relationship.PARENT,
    verification_pb2.GUARDIAN_RELATIONSHIP_LEGAL_GUARDIAN: Relationship.LEGAL_GUARDIAN,
}
_METHODS = {
    "phone_otp": verification_pb2.VERIFICATION_METHOD_PHONE_OTP,
    "personal_id": verification_pb2.VERIFICATION_METHOD_PERSONAL_ID,
}
_ACTIONS = {
    verification_pb2.ACTION_READ: Action.READ,
    verification_pb2.ACTION_POST: Action.POST,
    verification_pb2.ACTION_COMMENT: Action.COMMENT,
    verification_pb2.ACTION_SHARE: Action.SHARE,
    verification_pb2.ACTION_LIVESTREAM: Action.LIVESTREAM,
    verification_pb2.ACTION_COMMERCIAL_LIVESTREAM: Action.COMMERCIAL_LIVESTREAM,
}
_LOCK_KINDS = {
    verification_pb2.LOCK_KIND_TEMPORARY: LockKind.TEMPORARY,
    verification_pb2.LOCK_KIND_PERMANENT: LockKind.PERMANENT,
}
_LOCK_KINDS_OUT = {kind: value for value, kind in _LOCK_KINDS.items()}
# The decision table has a handful of outcomes: one immutable-in-practice response each.
_DECISIONS: dict[Decision, verification_pb2.AuthorizeResponse] = {}


class AccountEraser(Protocol):
    """Erases the audit records naming an account (pg_audit.PostgresAuditLog)."""

    async def erase_account(
        self, platform: str, account: str, now: float, *, request: str, **extra: str
    ) -> int: ...


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer, EdgeServicer):
    def __init__(
        self,
        *,
        api_keys: ApiKeys,
        phone: PhoneOtpVerifier,
        personal_id: PersonalIdVerifier,
        store: Store,
        signing: SigningKeys,
        clock: Clock,
        guardian: GuardianLinker,
        status_lists: StatusListPublisher,
        eraser: AccountEraser | None = None,
    ) -> None:
        self.api_keys = api_keys
        # The audit log in PostgreSQL, which erases records and keeps their leaf hashes;
        # None when the log is kept elsewhere (EraseAccountRecords: ERASURE_NEEDS_DATABASE).
        self._eraser = eraser
        self._phone = phone
        self._personal_id = personal_id
        self._guardian = guardian
        self._store = store
        self._signing = signing
        self._clock = clock
        self._status_lists = status_lists

    def _attestation(
        self, platform: str, record: AttestationRecord
    ) -> verification_pb2.Attestation:
        message = verification_pb2.Attestation(
            token=self._signing.sign(platform, record),
            token_id=record.token_id,
            account_id=record.account_id,
            method=_METHODS.get(record.method, verification_pb2.VERIFICATION_METHOD_UNSPECIFIED),
            guardian_managed=record.guardian_managed,
            commercial_livestream=record.commercial_livestream,
            age_band=record.age_band,
            guardian_ref=record.guardian_ref if record.guardian_managed else "",
            personal_id_type=_ID_TYPES_OUT.get(
                record.id_type, verification_pb2.PERSONAL_ID_TYPE_UNSPECIFIED
            ),
        )
        # Set in place, as `timestamp` would make them (no Timestamp built and copied in).
        message.verified_at.FromNanoseconds(int(record.verified_at * 1_000_000_000))
        message.expires_at.FromNanoseconds(int(record.expires_at * 1_000_000_000))
        return message

    async def _decide(self, platform: str, account_id: str, action: Action) -> Decision:
        """The decision table over the account's stored attestation and lock, now (at most one
        store round trip: none when the state cache holds the account)."""
        record, lock = await self._store.account_state(platform, account_id)
        now = self._clock.now()
        return decide(state_of(record, lock, now), action, now)

    def _revoked(self, platform: str) -> None:
        """A revocation went through: the cached status list of the platform is stale."""
        self._status_lists.invalidate(platform)

    @rpc(Role.PLATFORM)
    async def StartPhoneVerification(
        self, caller: Caller, request: verification_pb2.StartPhoneVerificationRequest
    ) -> verification_pb2.StartPhoneVerificationResponse:
        started = await self._phone.start(
            platform=caller.platform,
            account_id=request.account_id,
            phone_number=request.phone_number,
            client_ip=request.client_ip,
            idempotency_key=request.idempotency_key,
        )
        view = started.view
        response = verification_pb2.StartPhoneVerificationResponse(
            challenge_id=view.challenge_id,
            masked_phone_number=started.masked_phone,
            replayed=view.replayed,
        )
        # Set in place, as `timestamp` would make them (no Timestamp built and copied in).
        response.expires_at.FromNanoseconds(int(view.expires_at * 1_000_000_000))
        response.resend_not_before.FromNanoseconds(int(view.resend_not_before * 1_000_000_000))
        return response

    @rpc(Role.PLATFORM)
    async def ConfirmPhoneVerification(
        self, caller: Caller, request: verification_pb2.ConfirmPhoneVerificationRequest
    ) -> verification_pb2.ConfirmPhoneVerificationResponse:
        record = await self._phone.confirm(
            platform=caller.platform,
            challenge_id=request.challenge_id,
            account_id=request.account_id,
            code=request.code,
        )
        return verification_pb2.ConfirmPhoneVerificationResponse(
            attestation=self._attestation(caller.platform, record)
        )

    @rpc(Role.PLATFORM)
    async def GetAttestation(
        self, caller: Caller, request: verification_pb2.GetAttestationRequest
    ) -> verification_pb2.GetAttestationResponse:
        check_account_id(request.account_id)
        record = await self._store.get_attestation(caller.platform, request.account_id)
        if record is None or record.status != "active" or record.expires_at <= self._clock.now():
            raise AttestationNotFound()
        return verification_pb2.GetAttestationResponse(
            attestation=self._attestation(caller.platform, record)
        )

    @rpc(Role.PLATFORM)
    async def GetJwks(
        self, caller: Caller, request: verification_pb2.GetJwksRequest
    ) -> verification_pb2.GetJwksResponse:
        return verification_pb2.GetJwksResponse(jwks_json=self._signing.current().jwks_json())

    @rpc(Role.PLATFORM)
    async def VerifyPersonalId(
        self, caller: Caller, request: verification_pb2.VerifyPersonalIdRequest
    ) -> verification_pb2.VerifyPersonalIdResponse:
        record = await self._personal_id.verify(
            platform=caller.platform,
            account_id=request.account_id,
            number=request.personal_id_number,
            full_name=request.full_name,
            date_of_birth=_date(request.date_of_birth)
            if request.HasField("date_of_birth")
            else None,
            sex=_SEXES.get(request.sex),
            purpose=_PURPOSES.get(request.purpose),
            declared_no_vietnamese_mobile=request.declared_no_vietnamese_mobile,
            client_ip=request.client_ip,
            id_type=_ID_TYPES.get(request.personal_id_type),
        )
        return verification_pb2.VerifyPersonalIdResponse(
            attestation=self._attestation(caller.platform, record)
        )

    @rpc(Role.PLATFORM)
    async def GetCommercialLivestreamEligibility(
        self, caller: Caller, request: verification_pb2.GetCommercialLivestreamEligibilityRequest
    ) -> verification_pb2.GetCommercialLivestreamEligibilityResponse:
        check_account_id(request.account_id)
        decision = await self._decide(
            caller.platform, request.account_id, Action.COMMERCIAL_LIVESTREAM
        )
        return verification_pb2.GetCommercialLivestreamEligibilityResponse(
            eligible=decision.allowed, reason="" if decision.allowed else decision.reason
        )

    @rpc(Role.PLATFORM)
    async def LinkGuardian(
        self, caller: Caller, request: verification_pb2.LinkGuardianRequest
    ) -> verification_pb2.LinkGuardianResponse:
        result = await self._guardian.link(
            platform=caller.platform,
            child_account_id=request.child_account_id,
            child_date_of_birth=_date(request.child_date_of_birth)
            if request.HasField("child_date_of_birth")
            else None,
            guardian_account_id=request.guardian_account_id,
            guardian_date_of_birth=_date(request.guardian_date_of_birth)
            if request.HasField("guardian_date_of_birth")
            else None,
            relationship=_RELATIONSHIPS.get(request.relationship),
            guardian_consent=request.guardian_consent,
            child_consent=request.child_consent,
            idempotency_key=request.idempotency_key,
        )
        record = result.attestation
        self._revoked(caller.platform)  # a live token the child had was revoked (superseded)
        return verification_pb2.LinkGuardianResponse(
            attestation=self._attestation(caller.platform, record),
            link_id=result.link_id,
            ages_out_at=timestamp(record.aged_out_at or record.expires_at),
            renewed=result.renewed,
        )

    @rpc(Role.PLATFORM)
    async def WithdrawGuardianLink(
        self, caller: Caller, request: verification_pb2.WithdrawGuardianLinkRequest
    ) -> verification_pb2.WithdrawGuardianLinkResponse:
        ended_at = await self._guardian.withdraw(platform=caller.platform, link_id=request.link_id)
        self._revoked(caller.platform)
        return verification_pb2.WithdrawGuardianLinkResponse(ended_at=timestamp(ended_at))

    @rpc(Role.PLATFORM)
    async def ListAccountsAgingOut(
        self, caller: Caller, request: verification_pb2.ListAccountsAgingOutRequest
    ) -> verification_pb2.ListAccountsAgingOutResponse:
        page = await self._guardian.aging_out(
            platform=caller.platform,
            from_time=timestamp_seconds(request, "from_time"),
            to_time=timestamp_seconds(request, "to_time"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return verification_pb2.ListAccountsAgingOutResponse(
            account_ids=page.account_ids, next_page_token=page.next_page_token
        )

    @rpc(Role.PLATFORM)
    async def Authorize(
        self, caller: Caller, request: verification_pb2.AuthorizeRequest
    ) -> verification_pb2.AuthorizeResponse:
        """R4-R7, P6, P7: the decision table over the stored attestation and lock (at most one
        store round trip: none when the state cache holds the account)."""
        check_account_id(request.account_id)
        action = _ACTIONS.get(request.action)
        if action is None:
            raise FieldInvalid("action", f"must be one of {', '.join(a.value for a in Action)}")
        decision = await self._decide(caller.platform, request.account_id, action)
        response = _DECISIONS.get(decision)
        if response is None:
            response = _DECISIONS[decision] = verification_pb2.AuthorizeResponse(
                allowed=decision.allowed, reason=decision.reason, rule=decision.rule
            )
        return response

    @rpc(Role.PLATFORM)
    async def RevokeAttestation(
        self, caller: Caller, request: verification_pb2.RevokeAttestationRequest
    ) -> verification_pb2.RevokeAttestationResponse:
        check_account_id(request.account_id)
        check_reason_code(request.reason)
        now = self._clock.now()
        # One store call: revocation is idempotent and keeps the first revocation's time, so
        # an earlier time than this call's means it was revoked before.
        revoked = await self._store.revoke_attestation(
            caller.platform, request.account_id, now, request.reason
        )
        self._revoked(caller.platform)
        revoked_at = now if revoked.revoked_at is None else revoked.revoked_at
        return verification_pb2.RevokeAttestationResponse(
            revoked_at=timestamp(revoked_at), already_revoked=revoked_at < now
        )

    @rpc(Role.PLATFORM)
    async def IntrospectAttestation(
        self, caller: Caller, request: verification_pb2.IntrospectAttestationRequest
    ) -> verification_pb2.IntrospectAttestationResponse:
        check_account_id(request.account_id)
        record, lock = await self._store.account_state(caller.platform, request.account_id)
        now = self._clock.now()
        status = introspection_status(record, now)
        held = lock_message(lock) if lock is not None and lock.holds(now) else None
        if record is None:
            return verification_pb2.IntrospectAttestationResponse(status=status, lock=held)
        response = verification_pb2.IntrospectAttestationResponse(
            lock=held,
            active=status == "active",
            status=status,
            token_id=record.token_id,
            method=_METHODS.get(record.method, verification_pb2.VERIFICATION_METHOD_UNSPECIFIED),
            expires_at=timestamp(record.expires_at),
        )
        if record.status_idx >= 0:
            response.status_list_uri = self._status_lists.uri(caller.platform)
            response.status_list_index = record.status_idx
        return response

    # ---- account locks (R7) -------------------------------------------------------------

    @rpc(Role.PLATFORM)
    async def LockAccount(
        self, caller: Caller, request: verification_pb2.LockAccountRequest
    ) -> verification_pb2.LockAccountResponse:
        check_account_id(request.account_id)
        checked = check_lock(
            platform=caller.platform,
            account_id=request.account_id,
            kind=_LOCK_KINDS.get(request.kind),
            until=timestamp_seconds(request, "until"),
            reason=request.reason,
            request_reference=request.request_reference,
            now=self._clock.now(),
        )
        lock, changed = await self._store.lock_account(checked)
        self._revoked(caller.platform)  # the published list must mark the account's tokens
        return verification_pb2.LockAccountResponse(lock=lock_message(lock), unchanged=not changed)

    @rpc(Role.PLATFORM)
    async def UnlockAccount(
        self, caller: Caller, request: verification_pb2.UnlockAccountRequest
    ) -> verification_pb2.UnlockAccountResponse:
        check_account_id(request.account_id)
        check_reason_code(request.reason)
        ended = await self._store.unlock_account(
            caller.platform, request.account_id, self._clock.now(), request.reason
        )
        if ended is None or ended.ended_at is None:
            return verification_pb2.UnlockAccountResponse(was_locked=False)
        self._revoked(caller.platform)
        return verification_pb2.UnlockAccountResponse(
            was_locked=True, unlocked_at=timestamp(ended.ended_at)
        )

    # ---- erasure (P10, Law 91/2025) ----------------------------------------------------------

    @rpc(Role.PLATFORM)
    async def EraseAccountRecords(
        self, caller: Caller, request: verification_pb2.EraseAccountRecordsRequest
    ) -> verification_pb2.EraseAccountRecordsResponse:
        check_account_id(request.account_id)
        check_request_reference(request.request_reference)
        if self._eraser is None:
            raise ErasureNeedsDatabase()
        now = self._clock.now()
        erased = await self._eraser.erase_account(
            caller.platform,
            request.account_id,
            now,
            request=request.request_reference,
            by="platform",
            key_id=caller.key_id,
        )
        return verification_pb2.EraseAccountRecordsResponse(
            erased_records=erased, erased_at=timestamp(now)
        )

    @rpc(Role.PLATFORM)
    async def GetStatusList(
        self, caller: Caller, request: verification_pb2.GetStatusListRequest
    ) -> verification_pb2.GetStatusListResponse:
        lists = self._status_lists
        return verification_pb2.GetStatusListResponse(
            status_list_jwt=await lists.token(caller.platform), uri=lists.uri(caller.platform)
        )


def introspection_status(record: AttestationRecord | None, now: float) -> str:
    """`none`, `revoked`, `aged_out`, `expired` or `active`, in the decision table's order
    (revocation first, then aging out, then expiry)."""
    state = state_of(record)
    if state is None or record is None:
        return "none"
    if state.revoked:
        return "revoked"
    if record.status == "aged_out" or state.aged_out(now):
        return "aged_out"
    if state.expired(now):
        return "expired"
    return "active"


def lock_message(lock: AccountLock) -> verification_pb2.AccountLock:
    message = verification_pb2.AccountLock(
        account_id=lock.account_id,
        kind=_LOCK_KINDS_OUT.get(LockKind(lock.kind), verification_pb2.LOCK_KIND_UNSPECIFIED),
        locked_at=timestamp(lock.locked_at),
        reason=lock.reason,
        request_reference=lock.request_reference,
        temporary_locks=lock.temporary_locks,
    )
    if lock.until is not None:
        message.until.CopyFrom(timestamp(lock.until))
    return message


def state_of(
    record: AttestationRecord | None, lock: AccountLock | None = None, now: float = 0.0
) -> AttestationState | None:
    """The decision table's view of a stored attestation: exactly the facts its token states,
    so Authorize and the SDK's offline decision from the token agree on every case. Times are
    whole seconds, as the token's `exp`; a child's attestation ages out (P6) when its expiry
    is the 16th birthday, the case in which the token says `exp_reason: age_16` (a child's
    token that ran out earlier says only "expired", online and offline alike: the birthday
    itself is never in a token). `locked` (R7) when `lock` holds at `now`: offline, the
    status list says SUSPENDED for the token's index while it holds."""
    if record is None:
        return None
    expires_at = float(int(record.expires_at))
    ages_out = (
        record.guardian_managed
        and record.aged_out_at is not None
        and record.expires_at >= record.aged_out_at
    )
    return AttestationState(
        method=record.method,
        expires_at=expires_at,
        guardian_managed=record.guardian_managed,
        commercial_livestream=record.commercial_livestream,
        revoked=record.status == "revoked",
        aged_out_at=expires_at if ages_out else None,
        locked=lock is not None and lock.holds(now),
    )


# The Date message's documented range of years (verification.proto): a date of birth before
# it is no date of a living person, and is refused like any other impossible date.
MIN_YEAR = 1900


def _date(d: verification_pb2.Date) -> datetime.date | None:
    """The date, or None (DATE_OF_BIRTH_INVALID) when it is no real date of 1900-9999."""
    if d.year < MIN_YEAR:
        return None
    try:
        return datetime.date(d.year, d.month, d.day)
    except ValueError:
        return None
