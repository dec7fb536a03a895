"""The gRPC edge of VerificationService: protobuf in, domain calls, protobuf out.

Protobuf stops here: verifiers and stores below never import generated code. Every method
is wrapped by `rpc.rpc`, which authenticates, checks the role and maps errors.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from xacthuc.auth import ApiKeys, Caller, Role
from xacthuc.decisions import Action, AttestationState, decide
from xacthuc.errors import AttestationNotFound
from xacthuc.rpc import not_implemented, rpc, timestamp
from xacthuc.store.base import AttestationRecord, Store
from xacthuc.tokens import TokenSigner
from xacthuc.v1 import verification_pb2, verification_pb2_grpc
from xacthuc.verifiers.personal_id import Sex
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier, Purpose
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier, check_account_id

_SEXES = {verification_pb2.SEX_MALE: Sex.MALE, verification_pb2.SEX_FEMALE: Sex.FEMALE}
_PURPOSES = {
    verification_pb2.PERSONAL_ID_PURPOSE_NO_VIETNAMESE_MOBILE: Purpose.NO_VIETNAMESE_MOBILE,
    verification_pb2.PERSONAL_ID_PURPOSE_COMMERCIAL_LIVESTREAM: Purpose.COMMERCIAL_LIVESTREAM,
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
    ) -> None:
        self.api_keys = api_keys
        self._phone = phone
        self._personal_id = personal_id
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
        )

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

    _not_yet = rpc(Role.PLATFORM)(not_implemented)

    LinkGuardian = WithdrawGuardianLink = ListAccountsAgingOut = _not_yet
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
    )


def _date(d: verification_pb2.Date) -> datetime.date | None:
    try:
        return datetime.date(d.year, d.month, d.day)
    except ValueError:
        return None
