"""The gRPC edge of VerificationService: protobuf in, domain calls, protobuf out.

Protobuf stops here: verifiers and stores below never import generated code. Every method
is wrapped by `rpc.rpc`, which authenticates, checks the role and maps errors.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from xacthuc.auth import ApiKeys, Caller, Role
from xacthuc.decisions import Action, AttestationState, decide
from xacthuc.errors import AttestationNotFound, NotImplementedYet
from xacthuc.rpc import not_implemented, rpc, timestamp
from xacthuc.store.base import AttestationRecord, Store
from xacthuc.tokens import TokenSigner
from xacthuc.v1 import verification_pb2, verification_pb2_grpc
from xacthuc.verifiers.guardian_flow import GuardianLinker, Relationship
from xacthuc.verifiers.personal_id import Sex
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier, Purpose
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier, check_account_id

_SEXES = {verification_pb2.SEX_MALE: Sex.MALE, verification_pb2.SEX_FEMALE: Sex.FEMALE}
_PURPOSES = {
    verification_pb2.PERSONAL_ID_PURPOSE_NO_VIETNAMESE_MOBILE: Purpose.NO_VIETNAMESE_MOBILE,
    verification_pb2.PERSONAL_ID_PURPOSE_COMMERCIAL_LIVESTREAM: Purpose.COMMERCIAL_LIVESTREAM,
}
_RELATIONSHIPS = {
    verification_pb2.GUARDIAN_RELATIONSHIP_PARENT: Relationship.PARENT,
    verification_pb2.GUARDIAN_RELATIONSHIP_LEGAL_GUARDIAN: Relationship.LEGAL_GUARDIAN,
}
_METHODS = {
    "phone_otp": verification_pb2.VERIFICATION_METHOD_PHONE_OTP,
    "personal_id": verification_pb2.VERIFICATION_METHOD_PERSONAL_ID,
}


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(
        self,
        *,
        api_keys: ApiKeys,
        phone: PhoneOtpVerifier,
        personal_id: PersonalIdVerifier,
        store: Store,
        signer: TokenSigner,
        clock: Callable[[], float],
        guardian: GuardianLinker | None = None,
    ) -> None:
        self.api_keys = api_keys
        self._phone = phone
        self._personal_id = personal_id
        self._guardian_linker = guardian
        self._store = store
        self._signer = signer
        self._now = clock

    def _attestation(
        self, platform: str, record: AttestationRecord
    ) -> verification_pb2.Attestation:
        return verification_pb2.Attestation(
            token=self._signer.sign(platform, record),
            token_id=record.token_id,
            account_id=record.account_id,
            method=_METHODS.get(record.method, verification_pb2.VERIFICATION_METHOD_UNSPECIFIED),
            verified_at=timestamp(record.verified_at),
            expires_at=timestamp(record.expires_at),
            guardian_managed=record.guardian_managed,
            commercial_livestream=record.commercial_livestream,
            age_band=record.age_band,
            guardian_ref=record.guardian_ref if record.guardian_managed else "",
        )

    @property
    def _guardian(self) -> GuardianLinker:
        if self._guardian_linker is None:
            raise NotImplementedYet()
        return self._guardian_linker

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
        return verification_pb2.StartPhoneVerificationResponse(
            challenge_id=started.view.challenge_id,
            expires_at=timestamp(started.view.expires_at),
            resend_not_before=timestamp(started.view.resend_not_before),
            masked_phone_number=started.masked_phone,
            replayed=started.view.replayed,
        )

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
        if record is None or record.status != "active" or record.expires_at <= self._now():
            raise AttestationNotFound()
        return verification_pb2.GetAttestationResponse(
            attestation=self._attestation(caller.platform, record)
        )

    @rpc(Role.PLATFORM)
    async def GetJwks(
        self, caller: Caller, request: verification_pb2.GetJwksRequest
    ) -> verification_pb2.GetJwksResponse:
        return verification_pb2.GetJwksResponse(jwks_json=self._signer.jwks_json())

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
        )
        return verification_pb2.VerifyPersonalIdResponse(
            attestation=self._attestation(caller.platform, record)
        )

    @rpc(Role.PLATFORM)
    async def GetCommercialLivestreamEligibility(
        self, caller: Caller, request: verification_pb2.GetCommercialLivestreamEligibilityRequest
    ) -> verification_pb2.GetCommercialLivestreamEligibilityResponse:
        check_account_id(request.account_id)
        record = await self._store.get_attestation(caller.platform, request.account_id)
        decision = decide(state_of(record), Action.COMMERCIAL_LIVESTREAM, self._now())
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
        )
        record = result.attestation
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
        return verification_pb2.WithdrawGuardianLinkResponse(ended_at=timestamp(ended_at))

    @rpc(Role.PLATFORM)
    async def ListAccountsAgingOut(
        self, caller: Caller, request: verification_pb2.ListAccountsAgingOutRequest
    ) -> verification_pb2.ListAccountsAgingOutResponse:
        page = await self._guardian.aging_out(
            platform=caller.platform,
            from_time=_seconds(request.from_time) if request.HasField("from_time") else None,
            to_time=_seconds(request.to_time) if request.HasField("to_time") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return verification_pb2.ListAccountsAgingOutResponse(
            account_ids=page.account_ids, next_page_token=page.next_page_token
        )

    _not_yet = rpc(Role.PLATFORM)(not_implemented)

    Authorize = RevokeAttestation = _not_yet


def state_of(record: AttestationRecord | None) -> AttestationState | None:
    """The decision table's view of a stored attestation."""
    if record is None:
        return None
    return AttestationState(
        method=record.method,
        expires_at=record.expires_at,
        guardian_managed=record.guardian_managed,
        commercial_livestream=record.commercial_livestream,
        revoked=record.status == "revoked",
        aged_out_at=record.aged_out_at if record.guardian_managed else None,
    )


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _date(d: verification_pb2.Date) -> datetime.date | None:
    try:
        return datetime.date(d.year, d.month, d.day)
    except ValueError:
        return None
