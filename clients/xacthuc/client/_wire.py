"""Shared by the sync and async clients: request building, response parsing, error decoding,
and the channel's service config (gRPC's own retry policy)."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from xacthuc.domain.decisions import Action, Decision, parse_action
from xacthuc.domain.errors import (
    Code,
    FieldInvalid,
    StartInProgress,
    XacthucError,
    error_for_reason,
)
from xacthuc.v1 import audit_pb2, verification_pb2

T = TypeVar("T")

_METHOD_NAMES = {
    verification_pb2.VERIFICATION_METHOD_PHONE_OTP: "phone_otp",
    verification_pb2.VERIFICATION_METHOD_PERSONAL_ID: "personal_id",
}


# R9: which kind of personal identification number (citizen's, or a foreigner's e-ID number).
_ID_TYPES = {
    "citizen": verification_pb2.PERSONAL_ID_TYPE_CITIZEN,
    "foreigner": verification_pb2.PERSONAL_ID_TYPE_FOREIGNER,
}
_ID_TYPE_NAMES = {value: name for name, value in _ID_TYPES.items()}


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    expires_at: datetime
    resend_not_before: datetime
    masked_phone_number: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class Attestation:
    token: str
    token_id: str
    account_id: str
    method: str  # "phone_otp" or "personal_id"
    verified_at: datetime
    expires_at: datetime
    guardian_managed: bool
    commercial_livestream: bool
    age_band: str = ""  # "adult", "16_17", "under_16" or "" (unknown)
    guardian_ref: str = ""  # guardian-managed accounts: the pseudonymous guardian reference
    personal_id_type: str = ""  # personal-ID attestations: "citizen" or "foreigner" (R9)


@dataclass(frozen=True, slots=True)
class Eligibility:
    eligible: bool
    reason: str  # empty when eligible


@dataclass(frozen=True, slots=True)
class AuditRecord:
    index: int
    record: dict[str, Any]
    raw: str  # exactly as stored and hashed


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[AuditRecord]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """A signed checkpoint of the platform's audit log (C2SP signed note)."""

    signed_note: str
    tree_size: int
    root_hash: bytes
    verifier_key: str  # as the server states it: compare with the operator's published one


SERVICES = {
    "verification": verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].full_name,
    "audit": audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
}


@dataclass(frozen=True, slots=True)
class Rpc(Generic[T]):
    """One RPC: its service, name, how to read its response, and whether a retry is safe
    (`idempotent`: then gRPC retries it on UNAVAILABLE, see `service_config`)."""

    service: str  # "verification" or "audit"
    name: str
    parse: Callable[[Any], T]
    idempotent: bool = False

    def __post_init__(self) -> None:
        RPCS.append(self)


# Every Rpc defined (they register themselves), for the service config.
RPCS: list[Rpc[Any]] = []


def challenge(r: verification_pb2.StartPhoneVerificationResponse) -> Challenge:
    return Challenge(
        r.challenge_id,
        _dt(r.expires_at),
        _dt(r.resend_not_before),
        r.masked_phone_number,
        r.replayed,
    )


def attestation(a: verification_pb2.Attestation) -> Attestation:
    return Attestation(
        token=a.token,
        token_id=a.token_id,
        account_id=a.account_id,
        method=_METHOD_NAMES.get(a.method, "unspecified"),
        verified_at=_dt(a.verified_at),
        expires_at=_dt(a.expires_at),
        guardian_managed=a.guardian_managed,
        commercial_livestream=a.commercial_livestream,
        age_band=a.age_band,
        guardian_ref=a.guardian_ref,
        personal_id_type=_ID_TYPE_NAMES.get(a.personal_id_type, ""),
    )


def audit_page(r: audit_pb2.QueryAuditRecordsResponse) -> AuditPage:
    return AuditPage(
        [AuditRecord(x.index, json.loads(x.record_json), x.record_json) for x in r.records],
        r.next_page_token,
    )


START = Rpc("verification", "StartPhoneVerification", challenge)
CONFIRM = Rpc("verification", "ConfirmPhoneVerification", lambda r: attestation(r.attestation))
GET_ATTESTATION = Rpc(
    "verification", "GetAttestation", lambda r: attestation(r.attestation), idempotent=True
)


def _jwks(r: verification_pb2.GetJwksResponse) -> str:
    return r.jwks_json


GET_JWKS = Rpc("verification", "GetJwks", _jwks, idempotent=True)
VERIFY_PERSONAL_ID = Rpc("verification", "VerifyPersonalId", lambda r: attestation(r.attestation))
LIVESTREAM_ELIGIBILITY = Rpc(
    "verification",
    "GetCommercialLivestreamEligibility",
    lambda r: Eligibility(r.eligible, r.reason),
    idempotent=True,
)
QUERY_AUDIT = Rpc("audit", "QueryAuditRecords", audit_page, idempotent=True)
GET_CHECKPOINT = Rpc(
    "audit",
    "GetCheckpoint",
    lambda r: LogCheckpoint(r.signed_note, r.tree_size, r.root_hash, r.verifier_key),
    idempotent=True,
)
GET_INCLUSION_PROOF = Rpc("audit", "GetInclusionProof", lambda r: list(r.hashes), idempotent=True)
GET_CONSISTENCY_PROOF = Rpc(
    "audit", "GetConsistencyProof", lambda r: list(r.hashes), idempotent=True
)
GET_REPORT = Rpc("audit", "GetReport", lambda r: dict(r.counts), idempotent=True)


def start_request(
    account_id: str, phone_number: str, client_ip: str, idempotency_key: str
) -> verification_pb2.StartPhoneVerificationRequest:
    return verification_pb2.StartPhoneVerificationRequest(
        account_id=account_id,
        phone_number=phone_number,
        client_ip=client_ip,
        idempotency_key=idempotency_key,
    )


def confirm_request(
    challenge_id: str, account_id: str, code: str
) -> verification_pb2.ConfirmPhoneVerificationRequest:
    return verification_pb2.ConfirmPhoneVerificationRequest(
        challenge_id=challenge_id, account_id=account_id, code=code
    )


def audit_request(
    account_id: str,
    event: str,
    from_time: datetime | None,
    to_time: datetime | None,
    page_size: int,
    page_token: str,
) -> audit_pb2.QueryAuditRecordsRequest:
    req = audit_pb2.QueryAuditRecordsRequest(
        account_id=account_id, event=event, page_size=page_size, page_token=page_token
    )
    if from_time is not None:
        req.from_time.FromDatetime(from_time)
    if to_time is not None:
        req.to_time.FromDatetime(to_time)
    return req


# gRPC caps maxAttempts (the first attempt and the retries) at 5.
MAX_RETRIES = 4


def service_config(retries: int) -> str:
    """The channel's service config (gRPC A6): the idempotent methods are retried on
    UNAVAILABLE only, at most `retries` times, with exponential back-off and jitter, all
    within the call's one deadline; `retryThrottling` stops retrying when most calls to the
    server fail, so an outage is not multiplied. Start, confirm, verify and link are never
    retried (an SMS or a registry query must not be repeated behind the caller's back)."""
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {MAX_RETRIES}")
    config: dict[str, Any] = {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    if retries:
        names = [{"service": SERVICES[r.service], "method": r.name} for r in RPCS if r.idempotent]
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


# START_IN_PROGRESS: the first start with this idempotency key is still sending its code.
# The SDK sends the start again, with the same key, after the server's retry-after, at most
# this many times and only while the call's one deadline leaves room for the wait and an
# attempt; a retry-after above `START_RETRY_AFTER_MAX` seconds is not waited for.
START_IN_PROGRESS_RETRIES = 5
START_RETRY_AFTER_MAX = 5.0
_MIN_ATTEMPT_SECONDS = 0.05  # an attempt needs at least this much of the deadline


def start_retry_delay(
    error: XacthucError, idempotency_key: str, retried: int, remaining: float
) -> float | None:
    """Seconds to wait before sending a refused start again, or None to raise `error`: only a
    START_IN_PROGRESS, only with the caller's idempotency key (without one a second start
    would be another challenge and another SMS), at most `START_IN_PROGRESS_RETRIES` times,
    and only when the wait and one more attempt fit in `remaining` (the call's deadline)."""
    if not idempotency_key or not isinstance(error, StartInProgress):
        return None
    if retried >= START_IN_PROGRESS_RETRIES:
        return None
    delay = 1.0 if error.retry_after is None else max(0.0, float(error.retry_after))
    if delay > START_RETRY_AFTER_MAX or delay + _MIN_ATTEMPT_SECONDS > remaining:
        return None
    return delay


def channel_options(retries: int) -> list[tuple[str, Any]]:
    return [("grpc.service_config", service_config(retries)), ("grpc.enable_retries", 1)]


def decode_error(err: grpc.RpcError, request_id: str | None = None) -> XacthucError:
    """The typed exception for a failed call, rebuilt from its status details: a subclass of
    the status's family (`errors.BY_STATUS`) for every status, the call's own deadline too.
    Its `request_id` is the server's (ErrorInfo, else the `x-request-id` trailer), else the
    one this client sent (a call that never reached the server, a deadline)."""
    code: grpc.StatusCode = err.code()
    message: str = err.details() or ""
    reason, metadata = None, None
    trailer_id = None
    key: str
    value: str | bytes
    # Ignored below: grpc-stubs declare the items of RpcError.trailing_metadata() a plain
    # class `_Metadatum` with .key and .value, but at run time it is a namedtuple (key, value)
    # (grpc._cython.cygrpc._Metadatum subclasses tuple), and an AioRpcError gives an
    # aio.Metadata that iterates (key, value) tuples: unpacking is right for both clients.
    for key, value in err.trailing_metadata() or ():  # type: ignore[misc]
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
        elif key == REQUEST_ID_HEADER and isinstance(value, str):
            trailer_id = value
    metadata = metadata or {}
    if "request_id" not in metadata and (trailer_id or request_id):
        metadata["request_id"] = trailer_id or request_id or ""
    error = error_for_reason(Code(code.name), reason, message, metadata)
    error.__cause__ = None
    return error


REQUEST_ID_HEADER = "x-request-id"


def with_request_id(
    metadata: tuple[tuple[str, str], ...],
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The call's metadata with a new `x-request-id` (the server adopts it; gRPC's retries
    send the same), and that id."""
    request_id = secrets.token_hex(16)
    return (*metadata, (REQUEST_ID_HEADER, request_id)), request_id


def call_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """The metadata of every call; ValueError (not naming the key) for a key that is no
    header value: whitespace, control or non-ASCII characters (a newline pasted from a file
    would make every call fail inside gRPC). An empty key is sent, and the server answers
    CREDENTIAL_MISSING."""
    if not all("!" <= ch <= "~" for ch in api_key):
        raise ValueError("api_key must be printable ASCII characters without spaces")
    return (("authorization", f"Bearer {api_key}"),)


def check_timeout(timeout: float) -> float:
    """The default deadline of a client's calls: a finite number of seconds above 0."""
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError("timeout must be a finite number of seconds above 0")
    return float(timeout)


def attestation_request(account_id: str) -> verification_pb2.GetAttestationRequest:
    return verification_pb2.GetAttestationRequest(account_id=account_id)


def jwks_request() -> verification_pb2.GetJwksRequest:
    return verification_pb2.GetJwksRequest()


_SEXES = {"male": verification_pb2.SEX_MALE, "female": verification_pb2.SEX_FEMALE}
_PURPOSES = {
    "no_vietnamese_mobile": verification_pb2.PERSONAL_ID_PURPOSE_NO_VIETNAMESE_MOBILE,
    "commercial_livestream": verification_pb2.PERSONAL_ID_PURPOSE_COMMERCIAL_LIVESTREAM,
}


def personal_id_request(
    account_id: str,
    personal_id_number: str,
    full_name: str,
    date_of_birth: date,
    purpose: str,
    declared_no_vietnamese_mobile: bool,
    client_ip: str,
    sex: str | None,
    personal_id_type: str = "citizen",
) -> verification_pb2.VerifyPersonalIdRequest:
    """`purpose` is "no_vietnamese_mobile" or "commercial_livestream"; `sex` "male"/"female";
    `personal_id_type` "citizen" or "foreigner" (R9). An unknown type is FieldInvalid, as
    the server would say, rather than silently a citizen's number."""
    id_type = _ID_TYPES.get(personal_id_type)
    if id_type is None:
        raise FieldInvalid("personal_id_type", "must be citizen or foreigner")
    return verification_pb2.VerifyPersonalIdRequest(
        account_id=account_id,
        personal_id_number=personal_id_number,
        full_name=full_name,
        date_of_birth=verification_pb2.Date(
            year=date_of_birth.year, month=date_of_birth.month, day=date_of_birth.day
        ),
        sex=_SEXES.get(sex or "", verification_pb2.SEX_UNSPECIFIED),
        purpose=_PURPOSES.get(purpose, verification_pb2.PERSONAL_ID_PURPOSE_UNSPECIFIED),
        declared_no_vietnamese_mobile=declared_no_vietnamese_mobile,
        client_ip=client_ip,
        personal_id_type=id_type,
    )


def eligibility_request(
    account_id: str,
) -> verification_pb2.GetCommercialLivestreamEligibilityRequest:
    return verification_pb2.GetCommercialLivestreamEligibilityRequest(account_id=account_id)


def export_request(from_index: int, to_index: int) -> audit_pb2.ExportAuditRecordsRequest:
    return audit_pb2.ExportAuditRecordsRequest(from_index=from_index, to_index=to_index)


def checkpoint_request() -> audit_pb2.GetCheckpointRequest:
    return audit_pb2.GetCheckpointRequest()


def inclusion_request(index: int, tree_size: int) -> audit_pb2.GetInclusionProofRequest:
    return audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size)


def consistency_request(from_size: int, to_size: int) -> audit_pb2.GetConsistencyProofRequest:
    return audit_pb2.GetConsistencyProofRequest(from_size=from_size, to_size=to_size)


def report_request(
    from_time: datetime | None, to_time: datetime | None
) -> audit_pb2.GetReportRequest:
    req = audit_pb2.GetReportRequest()
    if from_time is not None:
        req.from_time.FromDatetime(from_time)
    if to_time is not None:
        req.to_time.FromDatetime(to_time)
    return req


# --- children and guardians (issue 4) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardianLink:
    """A child's account linked to a verified guardian (R1, P6)."""

    link_id: str
    attestation: Attestation  # the child's guardian-managed attestation
    ages_out_at: datetime  # the 16th birthday: the link ends, the user verifies on their own
    renewed: bool  # the same guardian linked the same child again


@dataclass(frozen=True, slots=True)
class AgingOutPage:
    account_ids: list[str]
    next_page_token: str  # "" on the last page


_RELATIONSHIPS = {
    "parent": verification_pb2.GUARDIAN_RELATIONSHIP_PARENT,
    "legal_guardian": verification_pb2.GUARDIAN_RELATIONSHIP_LEGAL_GUARDIAN,
}


def _pb_date(d: date) -> verification_pb2.Date:
    return verification_pb2.Date(year=d.year, month=d.month, day=d.day)


def guardian_link(r: verification_pb2.LinkGuardianResponse) -> GuardianLink:
    return GuardianLink(r.link_id, attestation(r.attestation), _dt(r.ages_out_at), r.renewed)


LINK_GUARDIAN = Rpc("verification", "LinkGuardian", guardian_link)
WITHDRAW_GUARDIAN_LINK = Rpc("verification", "WithdrawGuardianLink", lambda r: _dt(r.ended_at))
LIST_AGING_OUT = Rpc(
    "verification",
    "ListAccountsAgingOut",
    lambda r: AgingOutPage(list(r.account_ids), r.next_page_token),
    idempotent=True,
)


def link_guardian_request(
    child_account_id: str,
    child_date_of_birth: date,
    guardian_account_id: str,
    guardian_date_of_birth: date,
    relationship: str,
    guardian_consent: bool,
    child_consent: bool,
    idempotency_key: str = "",
) -> verification_pb2.LinkGuardianRequest:
    """`relationship` is "parent" or "legal_guardian"."""
    return verification_pb2.LinkGuardianRequest(
        child_account_id=child_account_id,
        child_date_of_birth=_pb_date(child_date_of_birth),
        guardian_account_id=guardian_account_id,
        guardian_date_of_birth=_pb_date(guardian_date_of_birth),
        relationship=_RELATIONSHIPS.get(
            relationship, verification_pb2.GUARDIAN_RELATIONSHIP_UNSPECIFIED
        ),
        guardian_consent=guardian_consent,
        child_consent=child_consent,
        idempotency_key=idempotency_key,
    )


def withdraw_guardian_link_request(link_id: str) -> verification_pb2.WithdrawGuardianLinkRequest:
    return verification_pb2.WithdrawGuardianLinkRequest(link_id=link_id)


def aging_out_request(
    from_time: datetime, to_time: datetime, page_size: int, page_token: str
) -> verification_pb2.ListAccountsAgingOutRequest:
    req = verification_pb2.ListAccountsAgingOutRequest(page_size=page_size, page_token=page_token)
    req.from_time.FromDatetime(from_time)
    req.to_time.FromDatetime(to_time)
    return req


# --- authorization, revocation, status lists (issue 5) --------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """The outcome of RevokeAttestation."""

    revoked_at: datetime  # this call's time, or the FIRST revocation's when already_revoked
    already_revoked: bool  # it was revoked before (a repeat, or the guardian withdrew)


@dataclass(frozen=True, slots=True)
class Introspection:
    """The state of an account's attestation as the server sees it now."""

    active: bool
    status: str  # "active", "revoked", "aged_out", "expired" or "none"
    token_id: str = ""
    method: str = ""  # "phone_otp" or "personal_id"; "" when status is "none"
    expires_at: datetime | None = None
    status_list_uri: str = ""
    status_list_index: int | None = None  # None when the token names no status list
    lock: AccountLock | None = None  # the account's lock while it holds (R7)


@dataclass(frozen=True, slots=True)
class SignedStatusList:
    """The platform's status list token (`statuslist+jwt`) and the URI tokens name it by."""

    token: str
    uri: str


_ACTIONS = {
    Action.READ: verification_pb2.ACTION_READ,
    Action.POST: verification_pb2.ACTION_POST,
    Action.COMMENT: verification_pb2.ACTION_COMMENT,
    Action.SHARE: verification_pb2.ACTION_SHARE,
    Action.LIVESTREAM: verification_pb2.ACTION_LIVESTREAM,
    Action.COMMERCIAL_LIVESTREAM: verification_pb2.ACTION_COMMERCIAL_LIVESTREAM,
}


def authorize_request(account_id: str, action: str | Action) -> verification_pb2.AuthorizeRequest:
    """FieldInvalid (as the server would say) for an action that is not one of `Action`."""
    try:
        act = parse_action(action)
    except ValueError as e:
        raise FieldInvalid("action", str(e)) from None
    return verification_pb2.AuthorizeRequest(account_id=account_id, action=_ACTIONS[act])


def revoke_request(account_id: str, reason: str) -> verification_pb2.RevokeAttestationRequest:
    return verification_pb2.RevokeAttestationRequest(account_id=account_id, reason=reason)


def introspect_request(account_id: str) -> verification_pb2.IntrospectAttestationRequest:
    return verification_pb2.IntrospectAttestationRequest(account_id=account_id)


def status_list_request() -> verification_pb2.GetStatusListRequest:
    return verification_pb2.GetStatusListRequest()


def introspection(r: verification_pb2.IntrospectAttestationResponse) -> Introspection:
    lock = account_lock(r.lock) if r.HasField("lock") else None
    if r.status == "none":
        return Introspection(active=False, status="none", lock=lock)
    return Introspection(
        lock=lock,
        active=r.active,
        status=r.status,
        token_id=r.token_id,
        method=_METHOD_NAMES.get(r.method, "unspecified"),
        expires_at=_dt(r.expires_at),
        status_list_uri=r.status_list_uri,
        status_list_index=r.status_list_index if r.status_list_uri else None,
    )


AUTHORIZE = Rpc(
    "verification",
    "Authorize",
    lambda r: Decision(r.allowed, r.reason, r.rule),
    idempotent=True,
)
# Idempotent on the server: a repeat changes nothing (it answers already_revoked).
REVOKE = Rpc(
    "verification",
    "RevokeAttestation",
    lambda r: Revocation(_dt(r.revoked_at), r.already_revoked),
    idempotent=True,
)
INTROSPECT = Rpc("verification", "IntrospectAttestation", introspection, idempotent=True)
GET_STATUS_LIST = Rpc(
    "verification",
    "GetStatusList",
    lambda r: SignedStatusList(r.status_list_jwt, r.uri),
    idempotent=True,
)


# --- account locks (R7) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountLock:
    """An account's lock (R7)."""

    account_id: str
    kind: str  # "temporary" or "permanent"
    locked_at: datetime
    until: datetime | None  # when a temporary lock ends by itself; None when permanent
    reason: str
    request_reference: str
    temporary_locks: int  # temporary locks of the account on this platform, this one included


@dataclass(frozen=True, slots=True)
class LockResult:
    """The outcome of LockAccount."""

    lock: AccountLock
    unchanged: bool  # the same lock already held: nothing changed


@dataclass(frozen=True, slots=True)
class Unlock:
    """The outcome of UnlockAccount."""

    was_locked: bool
    unlocked_at: datetime | None  # None when no lock held


_LOCK_KINDS = {
    "temporary": verification_pb2.LOCK_KIND_TEMPORARY,
    "permanent": verification_pb2.LOCK_KIND_PERMANENT,
}
_LOCK_KIND_NAMES = {value: name for name, value in _LOCK_KINDS.items()}


def account_lock(m: verification_pb2.AccountLock) -> AccountLock:
    return AccountLock(
        account_id=m.account_id,
        kind=_LOCK_KIND_NAMES.get(m.kind, "unspecified"),
        locked_at=_dt(m.locked_at),
        until=_dt(m.until) if m.HasField("until") else None,
        reason=m.reason,
        request_reference=m.request_reference,
        temporary_locks=m.temporary_locks,
    )


def lock_request(
    account_id: str, kind: str, until: datetime | None, reason: str, request_reference: str
) -> verification_pb2.LockAccountRequest:
    """`kind` is "temporary" (with `until`, 7-30 days ahead) or "permanent" (no `until`)."""
    req = verification_pb2.LockAccountRequest(
        account_id=account_id,
        kind=_LOCK_KINDS.get(kind, verification_pb2.LOCK_KIND_UNSPECIFIED),
        reason=reason,
        request_reference=request_reference,
    )
    if until is not None:
        req.until.FromDatetime(until)
    return req


def unlock_request(account_id: str, reason: str) -> verification_pb2.UnlockAccountRequest:
    return verification_pb2.UnlockAccountRequest(account_id=account_id, reason=reason)


# Both are safe to repeat: the same lock again is `unchanged`, an unlock of an account no
# longer locked is `was_locked` false; neither writes a second audit record.
LOCK = Rpc(
    "verification",
    "LockAccount",
    lambda r: LockResult(account_lock(r.lock), r.unchanged),
    idempotent=True,
)
UNLOCK = Rpc(
    "verification",
    "UnlockAccount",
    lambda r: Unlock(r.was_locked, _dt(r.unlocked_at) if r.HasField("unlocked_at") else None),
    idempotent=True,
)


# --- erasure (P10, Law 91/2025) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Erasure:
    """The outcome of EraseAccountRecords."""

    erased_records: int  # records this call erased (0: none named the account any more)
    erased_at: datetime


def erase_request(
    account_id: str, request_reference: str
) -> verification_pb2.EraseAccountRecordsRequest:
    return verification_pb2.EraseAccountRecordsRequest(
        account_id=account_id, request_reference=request_reference
    )


# Safe to repeat: a second erasure finds nothing left and writes no record.
ERASE = Rpc(
    "verification",
    "EraseAccountRecords",
    lambda r: Erasure(r.erased_records, _dt(r.erased_at)),
    idempotent=True,
)
