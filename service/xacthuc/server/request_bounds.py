"""The bounds every request field keeps, checked at the edge before a handler runs.

One table gives the maximum length of every string field of every request, as its proto
comment documents it; Timestamps and Durations must lie in the range their well-known types
define (RFC 3339 years 0001-9999; +-10000 years); an enum field must hold one of the values
its enum defines (proto3 enums are open: the wire carries any int32). `check_request` walks
a decoded request by its descriptor, so a field added to the contract is checked without
code here, and a string field the table lacks stops the server at start (`plan`), not a
request at run time. Each violation is FIELD_INVALID naming the field; a value is never
echoed.

The bounds are outer limits that make every later check cheap and keep unbounded input out
of logs, stores and the audit log; each field's own rules (formats, ranges) stay with the
code that owns them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from xacthuc.domain.errors import FieldInvalid

_V1 = "xacthuc.v1."
ACCOUNT_ID = 128  # verifiers.phone_otp.ACCOUNT_ID
# Characters, as the proto comments state them (code points of the decoded string).
MAX_LENGTHS: Final[dict[str, int]] = {
    _V1 + name: limit
    for message, fields in {
        "StartPhoneVerificationRequest": {
            "account_id": ACCOUNT_ID,
            "phone_number": 32,
            "client_ip": 45,  # the longest IPv6 literal
            "idempotency_key": 128,
        },
        "ConfirmPhoneVerificationRequest": {
            "challenge_id": 25,  # "ch_" + 22
            "account_id": ACCOUNT_ID,
            "code": 16,  # longer than 6 but short: OTP_MALFORMED, not counted
        },
        "VerifyPersonalIdRequest": {
            "account_id": ACCOUNT_ID,
            "personal_id_number": 32,  # 12 digits and surrounding whitespace
            "full_name": 1024,  # as sent (NFD takes up to 3 code points a letter); 200 in NFC
            "client_ip": 45,
        },
        "LinkGuardianRequest": {
            "child_account_id": ACCOUNT_ID,
            "guardian_account_id": ACCOUNT_ID,
            "idempotency_key": 128,
        },
        "WithdrawGuardianLinkRequest": {"link_id": 25},  # "gl_" + 22
        "ListAccountsAgingOutRequest": {"page_token": 512},
        "GetCommercialLivestreamEligibilityRequest": {"account_id": ACCOUNT_ID},
        "AuthorizeRequest": {"account_id": ACCOUNT_ID},
        "GetAttestationRequest": {"account_id": ACCOUNT_ID},
        "RevokeAttestationRequest": {"account_id": ACCOUNT_ID, "reason": 64},
        "IntrospectAttestationRequest": {"account_id": ACCOUNT_ID},
        "QueryAuditRecordsRequest": {"account_id": ACCOUNT_ID, "event": 64, "page_token": 128},
        # R7 account locks
        "LockAccountRequest": {"account_id": ACCOUNT_ID, "reason": 64, "request_reference": 128},
        "UnlockAccountRequest": {"account_id": ACCOUNT_ID, "reason": 64},
        # P10 erasure
        "EraseAccountRecordsRequest": {"account_id": ACCOUNT_ID, "request_reference": 128},
    }.items()
    for field, limit in fields.items()
    for name in (f"{message}.{field}",)
}

# google/protobuf/timestamp.proto and duration.proto.
TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
DURATION_MAX_SECONDS = 315_576_000_000  # 10000 years
_NANOS = 1_000_000_000
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_TIMESTAMP_RULE = (
    "must be a Timestamp from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z "
    "with nanos 0-999999999"
)
_DURATION_RULE = (
    "must be a Duration of at most 315576000000 seconds either way, with nanos of the "
    "same sign below 1000000000"
)


@dataclass(frozen=True, slots=True)
class _Check:
    field: FieldDescriptor
    path: str  # the name in FIELD_INVALID's `field`: dotted for nested messages
    kind: str  # "string", "enum", "timestamp", "duration" or "message"
    limit: int = 0
    nested: tuple[_Check, ...] = ()
    # For an enum: the numbers the contract defines (proto3 enums are open, so the wire
    # carries any int32; one the contract does not define means nothing to any handler).
    numbers: frozenset[int] = frozenset()
    rule: str = ""
    # The descriptor's name and cardinality, read once here, not on every request.
    name: str = dataclasses.field(init=False)
    repeated: bool = dataclasses.field(init=False)
    scalar: bool = dataclasses.field(init=False)  # a string or enum: always present

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.field.name)
        object.__setattr__(self, "repeated", bool(self.field.is_repeated))
        object.__setattr__(self, "scalar", self.kind in ("string", "enum"))


_plans: dict[str, tuple[_Check, ...]] = {}


def plan(descriptor: Descriptor) -> tuple[_Check, ...]:
    """The checks of one message type, built once. KeyError for a string field without a
    bound in MAX_LENGTHS: the server registers every request type at start, so it fails
    there."""
    found = _plans.get(descriptor.full_name)
    if found is None:
        found = _plans[descriptor.full_name] = _build(descriptor, "")
    return found


def _build(descriptor: Descriptor, prefix: str) -> tuple[_Check, ...]:
    checks = []
    for f in descriptor.fields:
        path = prefix + f.name
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if f.full_name not in MAX_LENGTHS:
                raise KeyError(f"request field {f.full_name} has no maximum length in MAX_LENGTHS")
            checks.append(_Check(f, path, "string", MAX_LENGTHS[f.full_name]))
        elif f.enum_type is not None:
            names = [v.name for v in f.enum_type.values]
            checks.append(
                _Check(
                    f,
                    path,
                    "enum",
                    numbers=frozenset(v.number for v in f.enum_type.values),
                    rule=f"must be one of {', '.join(names)}",
                )
            )
        elif f.message_type is None:
            continue
        elif f.message_type.full_name == _TIMESTAMP:
            checks.append(_Check(f, path, "timestamp"))
        elif f.message_type.full_name == _DURATION:
            checks.append(_Check(f, path, "duration"))
        else:
            nested = _build(f.message_type, path + ".")
            if nested:
                checks.append(_Check(f, path, "message", nested=nested))
    return tuple(checks)


def check_request(request: Message) -> None:
    """FIELD_INVALID for the first field of `request` out of its bounds."""
    _check(request, plan(cast(Descriptor, request.DESCRIPTOR)))


def _check(message: Message, checks: tuple[_Check, ...]) -> None:
    for c in checks:
        if c.repeated:
            values = list(getattr(message, c.name))
        elif c.scalar or message.HasField(c.name):
            values = [getattr(message, c.name)]
        else:
            continue
        for value in values:
            if c.kind == "string":
                if len(value) > c.limit:
                    raise FieldInvalid(c.path, f"must be at most {c.limit} characters")
            elif c.kind == "enum":
                if value not in c.numbers:
                    raise FieldInvalid(c.path, c.rule)
            elif c.kind == "timestamp":
                _check_timestamp(c.path, value)
            elif c.kind == "duration":
                if not _valid_duration(value.seconds, value.nanos):
                    raise FieldInvalid(c.path, _DURATION_RULE)
            else:
                _check(value, c.nested)


def _check_timestamp(field: str, ts: Timestamp) -> None:
    if not (
        TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS and 0 <= ts.nanos < _NANOS
    ):
        raise FieldInvalid(field, _TIMESTAMP_RULE)


def _valid_duration(seconds: int, nanos: int) -> bool:
    return (
        -DURATION_MAX_SECONDS <= seconds <= DURATION_MAX_SECONDS
        and -_NANOS < nanos < _NANOS
        and not (seconds > 0 > nanos or seconds < 0 < nanos)
    )


def timestamp_seconds(request: Message, field: str) -> float | None:
    """The one conversion of a request Timestamp: seconds since the epoch, None when the
    field is unset, FIELD_INVALID naming it when out of range."""
    if not request.HasField(field):
        return None
    ts: Timestamp = getattr(request, field)
    _check_timestamp(field, ts)
    return (ts.seconds * _NANOS + ts.nanos) / _NANOS  # correctly rounded, as ToNanoseconds()
