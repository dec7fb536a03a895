"""The one exception hierarchy of xacthuc, shared by the server and the Python client.

Every expected failure is an `XacthucError` subclass that knows its gRPC status code and
its stable reason (the `ErrorReason` names of `errors.proto` without their prefix). Every
gRPC status has its class here (as python-api-core does), so whatever a call ends with,
its own deadline included (DeadlineExceeded), is caught by `except XacthucError` and by its
status family; the SDK's local failures (TokenInvalid, StatusListInvalid, KeysUnavailable,
StatusListUnavailable) derive from the family that fits them too: one root. The
server maps them to the wire in exactly one place (`xacthuc.server.grpc_errors`); the client maps
the wire back to the same classes with `error_for_reason`. This module imports nothing
but the standard library: a status is a `Code`, the canonical gRPC status name
(`Code[error.code]` at the edge), so the domain needs no transport library.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Code(StrEnum):
    """The canonical gRPC status codes (google.rpc.Code) by name."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


ERROR_DOMAIN = "xacthuc.vn"


class XacthucError(Exception):
    """An expected failure with a gRPC status and a stable machine-readable reason."""

    code: ClassVar[Code] = Code.UNKNOWN
    # Per class for the server's reasons; the SDK's local failures set one per instance.
    reason: str = "UNSPECIFIED"
    default_message: ClassVar[str] = "request failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        if retry_after is not None:
            self.metadata.setdefault("retry_after_seconds", str(max(0, round(retry_after))))
        super().__init__(self.message)

    @property
    def request_id(self) -> str | None:
        """The id of the failed call (ErrorInfo metadata `request_id`), as the server logged
        it: quote it to the operator's support to find the call."""
        return self.metadata.get("request_id")

    def __repr__(self) -> str:
        request = f", request_id={self.request_id!r}" if self.request_id else ""
        return f"{type(self).__name__}({self.reason}: {self.message!r}{request})"


# Status-level bases: catch these to handle a whole family.
class InvalidArgument(XacthucError):
    code = Code.INVALID_ARGUMENT


class NotFound(XacthucError):
    code = Code.NOT_FOUND


class FailedPrecondition(XacthucError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(XacthucError):
    code = Code.RESOURCE_EXHAUSTED


class Unauthenticated(XacthucError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(XacthucError):
    code = Code.PERMISSION_DENIED


class Unavailable(XacthucError):
    code = Code.UNAVAILABLE


class Internal(XacthucError):
    code = Code.INTERNAL


class Unimplemented(XacthucError):
    code = Code.UNIMPLEMENTED


class Cancelled(XacthucError):
    code = Code.CANCELLED


class Unknown(XacthucError):
    code = Code.UNKNOWN


class DeadlineExceeded(XacthucError):
    """The call's deadline passed (all its attempts included): its outcome is unknown."""

    code = Code.DEADLINE_EXCEEDED


class AlreadyExists(XacthucError):
    code = Code.ALREADY_EXISTS


class Aborted(XacthucError):
    code = Code.ABORTED


class OutOfRange(XacthucError):
    code = Code.OUT_OF_RANGE


class DataLoss(XacthucError):
    code = Code.DATA_LOSS


# One class per reason, named after it.
class CredentialMissing(Unauthenticated):
    reason = "CREDENTIAL_MISSING"
    default_message = "missing 'authorization: Bearer <api key>' metadata"


class CredentialInvalid(Unauthenticated):
    reason = "CREDENTIAL_INVALID"
    default_message = "the API key is not valid"


class RoleNotAllowed(PermissionDenied):
    reason = "ROLE_NOT_ALLOWED"
    default_message = "this API key's role may not call this method"


class FieldInvalid(InvalidArgument):
    reason = "FIELD_INVALID"
    default_message = "a request field is invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", metadata={"field": field})


class RequestMalformed(InvalidArgument):
    reason = "REQUEST_MALFORMED"
    default_message = "the request bytes are not a valid encoding of the method's request message"


class PhoneMalformed(InvalidArgument):
    reason = "PHONE_MALFORMED"
    default_message = "phone_number is not a phone number"


class PhoneNotVietnamese(InvalidArgument):
    reason = "PHONE_NOT_VIETNAMESE"
    default_message = "phone_number is not a Vietnamese number (+84)"


class PhoneNotVietnameseMobile(InvalidArgument):
    reason = "PHONE_NOT_VIETNAMESE_MOBILE"
    default_message = "phone_number is a Vietnamese number but not a mobile number"


class PhoneRetiredFormat(InvalidArgument):
    reason = "PHONE_RETIRED_FORMAT"
    default_message = (
        "phone_number is an 11-digit mobile number retired in 2018; use the 10-digit one"
    )


class OtpMalformed(InvalidArgument):
    reason = "OTP_MALFORMED"
    default_message = "code must be exactly 6 digits"


class IdempotencyKeyReused(InvalidArgument):
    reason = "IDEMPOTENCY_KEY_REUSED"
    default_message = "idempotency_key was already used with different request fields"


class ChallengeNotFound(NotFound):
    reason = "CHALLENGE_NOT_FOUND"
    default_message = "no such challenge"


class AttestationNotFound(NotFound):
    reason = "ATTESTATION_NOT_FOUND"
    default_message = "the account has no attestation"


class OtpIncorrect(InvalidArgument):
    reason = "OTP_INCORRECT"
    default_message = "the code is not correct"


class OtpExpired(FailedPrecondition):
    reason = "OTP_EXPIRED"
    default_message = "the code has expired; start a new verification"


class OtpAttemptsExceeded(FailedPrecondition):
    reason = "OTP_ATTEMPTS_EXCEEDED"
    default_message = "too many wrong codes for this challenge; start a new verification"


class ChallengeAlreadyUsed(FailedPrecondition):
    reason = "CHALLENGE_ALREADY_USED"
    default_message = "the challenge was already confirmed"


class ChallengeAccountMismatch(FailedPrecondition):
    reason = "CHALLENGE_ACCOUNT_MISMATCH"
    default_message = "the challenge was started for another account"


class ResendTooSoon(ResourceExhausted):
    reason = "RESEND_TOO_SOON"
    default_message = "a code was sent to this number moments ago; wait before resending"


class SendLimitExceeded(ResourceExhausted):
    reason = "SEND_LIMIT_EXCEEDED"
    default_message = "the send budget is spent"


class PhoneLocked(ResourceExhausted):
    reason = "PHONE_LOCKED"
    default_message = "too many failed checks for this number; try again later"


class PhoneAccountLimit(ResourceExhausted):
    reason = "PHONE_ACCOUNT_LIMIT"
    default_message = "this number already verifies the maximum number of accounts"


class SmsDeliveryFailed(Unavailable):
    reason = "SMS_DELIVERY_FAILED"
    default_message = "the SMS gateway did not accept the message; retry later"


class StartInProgress(Unavailable):
    reason = "START_IN_PROGRESS"
    default_message = (
        "the start with this idempotency key is still sending its code; retry shortly with "
        "the same key"
    )


class StoreUnavailable(Unavailable):
    reason = "STORE_UNAVAILABLE"
    default_message = "the store is unavailable; retry later"


class RegistryUnavailable(Unavailable):
    reason = "REGISTRY_UNAVAILABLE"
    default_message = "the identity registry is unavailable; retry later"


class InternalError(Internal):
    reason = "INTERNAL"
    default_message = "internal error"


class NotImplementedYet(Unimplemented):
    reason = "NOT_IMPLEMENTED"
    default_message = "this method is not served by this version of xacthuc"


# Personal identification number (DOMAIN C, P5). Messages never echo the number or the date.
class PersonalIdMalformed(InvalidArgument):
    reason = "PERSONAL_ID_MALFORMED"
    default_message = "personal_id_number must be exactly twelve ASCII digits"


class PersonalIdPlaceCodeUnknown(InvalidArgument):
    reason = "PERSONAL_ID_PLACE_CODE_UNKNOWN"
    default_message = (
        "personal_id_number does not start with a known province code or a country code"
    )


class PersonalIdBirthYearInFuture(InvalidArgument):
    reason = "PERSONAL_ID_BIRTH_YEAR_IN_FUTURE"
    default_message = "personal_id_number encodes a birth year in the future"


class PersonalIdBirthYearMismatch(InvalidArgument):
    reason = "PERSONAL_ID_BIRTH_YEAR_MISMATCH"
    default_message = "the birth year in personal_id_number differs from date_of_birth"


class PersonalIdSexMismatch(InvalidArgument):
    reason = "PERSONAL_ID_SEX_MISMATCH"
    default_message = "the sex encoded in personal_id_number differs from the declared sex"


class DateOfBirthInvalid(InvalidArgument):
    reason = "DATE_OF_BIRTH_INVALID"
    default_message = "date_of_birth must be a real date, not in the future"


class PersonalIdNotMatched(InvalidArgument):
    reason = "PERSONAL_ID_NOT_MATCHED"
    default_message = (
        "the identity registry has no citizen with this personal_id_number, full_name "
        "and date_of_birth"
    )


class IdAttemptsExceeded(ResourceExhausted):
    reason = "ID_ATTEMPTS_EXCEEDED"
    default_message = "too many personal-ID attempts; try again later"


class PersonalIdAccountLimit(ResourceExhausted):
    reason = "PERSONAL_ID_ACCOUNT_LIMIT"
    default_message = (
        "this personal identification number already verifies the maximum number of accounts"
    )


class PhoneRouteRequired(FailedPrecondition):
    reason = "PHONE_ROUTE_REQUIRED"
    default_message = (
        "the personal-ID route needs the user's declaration of having no Vietnamese mobile "
        "number; use phone verification"
    )


class GuardianRequired(FailedPrecondition):
    reason = "GUARDIAN_REQUIRED"
    default_message = (
        "the account holder is under 16: a parent or guardian must register the account"
    )


class AccountNotAuthenticated(FailedPrecondition):
    reason = "ACCOUNT_NOT_AUTHENTICATED"
    default_message = "the account must be authenticated first"


class GuardianManagedNoCommercialLivestream(FailedPrecondition):
    reason = "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM"
    default_message = "a guardian-managed account may not livestream commercially"


# Children and guardians (R1, P6; Law 91/2025 consent). Messages never echo a date of birth.
class ChildNotUnder16(FailedPrecondition):
    reason = "CHILD_NOT_UNDER_16"
    default_message = "the child is 16 or over: the account must be verified in the user's own name"


class GuardianUnder18(FailedPrecondition):
    reason = "GUARDIAN_UNDER_18"
    default_message = "a guardian must be 18 or over"


class GuardianConsentRequired(FailedPrecondition):
    reason = "GUARDIAN_CONSENT_REQUIRED"
    default_message = "the guardian's consent is required"


class ChildConsentRequired(FailedPrecondition):
    reason = "CHILD_CONSENT_REQUIRED"
    default_message = "a child of 7 or over must consent too"


class GuardianNotVerified(FailedPrecondition):
    reason = "GUARDIAN_NOT_VERIFIED"
    default_message = (
        "the guardian's account needs an active attestation of its own (phone or personal ID), "
        "not a guardian-managed one"
    )


class GuardianChildLimit(ResourceExhausted):
    reason = "GUARDIAN_CHILD_LIMIT"
    default_message = "the guardian already supervises the maximum number of children"


class ChildAlreadyLinked(FailedPrecondition):
    reason = "CHILD_ALREADY_LINKED"
    default_message = "the child is linked to another guardian; that link must be withdrawn first"


class LinkNotFound(NotFound):
    reason = "LINK_NOT_FOUND"
    default_message = "no such guardian link"


class LinkAlreadyEnded(FailedPrecondition):
    reason = "LINK_ALREADY_ENDED"
    default_message = "the guardian link has already ended"


# Erasure of an account's audit records (P10, Law 91/2025).
class ErasureNeedsDatabase(FailedPrecondition):
    reason = "ERASURE_NEEDS_DATABASE"
    default_message = (
        "records can be erased only from an audit log kept in PostgreSQL "
        "(XACTHUC_DATABASE_URL), which keeps each erased record's leaf hash"
    )


def _reason_classes() -> dict[str, type[XacthucError]]:
    found: dict[str, type[XacthucError]] = {}
    pending: list[type[XacthucError]] = [XacthucError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.reason != XacthucError.reason:
            found[cls.reason] = cls
    return found


REASONS: dict[str, type[XacthucError]] = _reason_classes()
# Every status but OK: a failure is never a bare XacthucError.
BY_STATUS: dict[Code, type[XacthucError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for_reason(
    code: Code,
    reason: str | None,
    message: str,
    metadata: dict[str, str] | None = None,
) -> XacthucError:
    """Rebuild the typed exception from what came over the wire (used by the client)."""
    cls = REASONS.get(reason or "")
    retry = None
    if metadata and "retry_after_seconds" in metadata:
        try:
            retry = float(metadata["retry_after_seconds"])
        except ValueError:
            retry = None
    if cls is not None and cls.code == code:
        err = XacthucError.__new__(cls)
        XacthucError.__init__(err, message, metadata=metadata, retry_after=retry)
        return err
    base = BY_STATUS.get(code, Unknown)
    return base(message, metadata=metadata, retry_after=retry)
