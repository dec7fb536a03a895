"""The gRPC edge: protobuf in, domain calls, protobuf out. Nothing below this imports protobuf.

Every RPC goes through `_rpc`, which authenticates the caller, checks its role, maps
errors to statuses (via `grpc_errors`, the one place) and records metrics.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Histogram

from xacthuc.auth import ApiKeys, Caller, Role
from xacthuc.errors import (
    AttestationNotFound,
    FieldInvalid,
    NotImplementedYet,
    RoleNotAllowed,
    XacthucError,
)
from xacthuc.grpc_errors import internal, to_status
from xacthuc.store.base import AttestationRecord, Store
from xacthuc.tokens import TokenSigner
from xacthuc.v1 import audit_pb2, audit_pb2_grpc, verification_pb2, verification_pb2_grpc
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier, check_account_id

RPC_TOTAL = Counter("xacthuc_rpc_total", "RPCs by method and outcome reason", ["method", "reason"])
RPC_SECONDS = Histogram("xacthuc_rpc_seconds", "RPC latency", ["method"])

_METHODS = {
    "phone_otp": verification_pb2.VERIFICATION_METHOD_PHONE_OTP,
    "personal_id": verification_pb2.VERIFICATION_METHOD_PERSONAL_ID,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Caller, Req], Awaitable[Resp]]


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1_000_000_000))
    return ts


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _rpc(role: Role) -> Callable[[Handler[Req, Resp]], Callable[..., Awaitable[Resp]]]:
    def wrap(fn: Handler[Req, Resp]) -> Callable[..., Awaitable[Resp]]:
        method = fn.__name__
        seconds = RPC_SECONDS.labels(method)

        @functools.wraps(fn)
        async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            try:
                caller = self.api_keys.authenticate(_authorization(context))
                if caller.role is not role:
                    raise RoleNotAllowed()
                response = await fn(self, caller, request)
            except XacthucError as e:
                status, reason = to_status(e), e.reason
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status, reason = internal(method, e), "INTERNAL"
            else:
                RPC_TOTAL.labels(method, "OK").inc()
                seconds.observe(time.perf_counter() - started)
                return response
            RPC_TOTAL.labels(method, reason).inc()
            seconds.observe(time.perf_counter() - started)
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("unreachable: abort raises")

        return handler

    return wrap


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(
        self,
        *,
        api_keys: ApiKeys,
        phone: PhoneOtpVerifier,
        store: Store,
        signer: TokenSigner,
        clock: Callable[[], float],
    ) -> None:
        self.api_keys = api_keys
        self._phone = phone
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

    @_rpc(Role.PLATFORM)
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

    @_rpc(Role.PLATFORM)
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

    @_rpc(Role.PLATFORM)
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

    @_rpc(Role.PLATFORM)
    async def GetJwks(
        self, caller: Caller, request: verification_pb2.GetJwksRequest
    ) -> verification_pb2.GetJwksResponse:
        return verification_pb2.GetJwksResponse(jwks_json=self._signer.jwks_json())

    @_rpc(Role.PLATFORM)
    async def _not_yet(self, caller: Caller, request: object) -> None:
        raise NotImplementedYet()

    VerifyPersonalId = LinkGuardian = WithdrawGuardianLink = ListAccountsAgingOut = _not_yet
    GetCommercialLivestreamEligibility = Authorize = RevokeAttestation = _not_yet


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    _BATCH = 1000

    def __init__(self, *, api_keys: ApiKeys, store: Store) -> None:
        self.api_keys = api_keys
        self._store = store

    @_rpc(Role.AUDITOR)
    async def QueryAuditRecords(
        self, caller: Caller, request: audit_pb2.QueryAuditRecordsRequest
    ) -> audit_pb2.QueryAuditRecordsResponse:
        page_size = request.page_size or 100
        if not 1 <= page_size <= 1000:
            raise FieldInvalid("page_size", "must be 1-1000")
        start = _decode_page_token(request.page_token)
        since = request.from_time.ToNanoseconds() / 1e9 if request.HasField("from_time") else None
        until = request.to_time.ToNanoseconds() / 1e9 if request.HasField("to_time") else None
        found: list[audit_pb2.AuditRecord] = []
        index = start
        while len(found) < page_size:
            batch = await self._store.audit_records(caller.platform, index, index + self._BATCH)
            if not batch:
                break
            for offset, raw in enumerate(batch):
                rec = json.loads(raw)
                ts = Timestamp()
                ts.FromJsonString(rec["time"])
                t = ts.ToNanoseconds() / 1e9
                if (
                    (not request.account_id or rec["account"] == request.account_id)
                    and (not request.event or rec["event"] == request.event)
                    and (since is None or t >= since)
                    and (until is None or t < until)
                ):
                    found.append(
                        audit_pb2.AuditRecord(
                            index=index + offset,
                            record_json=raw,
                            event=rec["event"],
                            account_id=rec["account"],
                            time=ts,
                        )
                    )
                    if len(found) == page_size:
                        index += offset + 1
                        break
            else:
                index += len(batch)
                continue
            break
        more = bool(await self._store.audit_records(caller.platform, index, index + 1))
        return audit_pb2.QueryAuditRecordsResponse(
            records=found, next_page_token=_encode_page_token(index) if more else ""
        )

    @_rpc(Role.AUDITOR)
    async def _not_yet(self, caller: Caller, request: object) -> None:
        raise NotImplementedYet()

    GetCheckpoint = GetInclusionProof = GetConsistencyProof = GetReport = _not_yet

    async def ExportAuditRecords(
        self, request: audit_pb2.ExportAuditRecordsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._not_yet(request, context)


def _encode_page_token(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        index = int(value)
        if kind != "i" or index < 0:
            raise ValueError
    except ValueError:
        raise FieldInvalid("page_token", "is not a token from a previous response") from None
    return index
