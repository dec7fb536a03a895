"""What the gRPC edge refuses before any handler runs: undecodable bytes, out-of-range
Timestamps and Durations, over-long strings. Every request message of both services is walked
through its descriptor, so a field or a method added later is covered without editing here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from xacthuc.client._wire import decode_error
from xacthuc.domain import errors
from xacthuc.server.auth import Role
from xacthuc.server.request_bounds import MAX_LENGTHS
from xacthuc.v1 import audit_pb2, verification_pb2

from .conftest import Harness

SERVICES = (
    (verification_pb2.DESCRIPTOR.services_by_name["VerificationService"], Role.PLATFORM),
    (audit_pb2.DESCRIPTOR.services_by_name["AuditService"], Role.AUDITOR),
)
METHODS = [(m, role) for service, role in SERVICES for m in service.methods]
TIME_TYPES = ("google.protobuf.Timestamp", "google.protobuf.Duration")
# Timestamps outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z or with bad nanos.
BAD_TIMESTAMPS = [
    {"nanos": -1},
    {"nanos": 1_000_000_000},
    {"seconds": 253402300800},
    {"seconds": -62135596801},
    {"seconds": -(2**63)},
    {"seconds": 2**63 - 1},
]
# Durations beyond +-10000 years, with bad nanos or with signs that disagree.
BAD_DURATIONS = [
    {"nanos": 1_000_000_000},
    {"seconds": 315576000001},
    {"seconds": -(2**63)},
    {"seconds": 1, "nanos": -1},
]
GARBAGE = [
    b"\xff\xff\xff\xff",  # a tag whose varint never ends
    b"\x0a\x7fshort",  # a length-delimited field longer than the message
]


def _raw(data: bytes) -> bytes:
    """The bytes as they are: no serializer between the test and the wire."""
    return data


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _fields(descriptor: Descriptor, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor]]:
    """Every field of a message, nested messages included, with its dotted path; the
    contents of Timestamps and Durations are not descended into."""
    for f in descriptor.fields:
        yield prefix + f.name, f
        if f.message_type is not None and f.message_type.full_name not in TIME_TYPES:
            yield from _fields(f.message_type, f"{prefix}{f.name}.")


def _request(method: MethodDescriptor) -> Message:
    return message_factory.GetMessageClass(method.input_type)()


def _leaf(message: Message, path: str) -> tuple[Message, str]:
    """The message holding the field at dotted `path`, and the field's name in it."""
    *parents, name = path.split(".")
    for p in parents:
        message = getattr(message, p)
    return message, name


async def _call_raw(
    h: Harness, method: MethodDescriptor, role: Role, payload: bytes
) -> errors.XacthucError | None:
    """Send `payload` as the request bytes of `method` and return the error it gives, if any."""
    metadata = (("authorization", f"Bearer {h.keys[('alpha', role)]}"),)
    async with grpc.aio.insecure_channel(h.target) as channel:
        try:
            if method.server_streaming:
                stream = channel.unary_stream(_path(method), _raw, _raw)
                async for _ in stream(payload, metadata=metadata, timeout=10):
                    pass
            else:
                await channel.unary_unary(_path(method), _raw, _raw)(
                    payload, metadata=metadata, timeout=10
                )
        except grpc.aio.AioRpcError as e:
            return decode_error(e)
    return None


def _request_string_fields() -> list[tuple[MethodDescriptor, Role, str, FieldDescriptor]]:
    return [
        (m, role, path, f)
        for m, role in METHODS
        for path, f in _fields(m.input_type)
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
    ]


def _request_time_fields() -> list[tuple[MethodDescriptor, Role, str, FieldDescriptor]]:
    return [
        (m, role, path, f)
        for m, role in METHODS
        for path, f in _fields(m.input_type)
        if f.message_type is not None and f.message_type.full_name in TIME_TYPES
    ]


async def test_undecodable_request_bytes_are_request_malformed_on_every_method(
    harness: Harness,
) -> None:
    """Bytes that are no protobuf message answer INVALID_ARGUMENT REQUEST_MALFORMED on every
    method of both services, unary and streaming, never UNKNOWN."""
    assert 22 == len(METHODS)  # a new method is still covered; this only shows the walk ran
    outcomes = {}
    for method, role in METHODS:
        for payload in GARBAGE:
            error = await _call_raw(harness, method, role, payload)
            outcomes[(method.name, payload)] = None if error is None else type(error)
    assert {k: errors.RequestMalformed for k in outcomes} == outcomes


async def test_undecodable_bytes_without_a_key_are_unauthenticated(harness: Harness) -> None:
    """Authentication comes first: garbage from a caller without a key says nothing more."""
    method = METHODS[0][0]
    async with grpc.aio.insecure_channel(harness.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(_path(method), _raw, _raw)(GARBAGE[0], timeout=10)
    assert isinstance(decode_error(e.value), errors.CredentialMissing)


def test_requests_have_the_timestamp_fields_the_walk_must_find() -> None:
    """The descriptor walk sees the six request Timestamps (it is the walk the tests trust)."""
    assert {
        ("ListAccountsAgingOut", "from_time"),
        ("ListAccountsAgingOut", "to_time"),
        ("QueryAuditRecords", "from_time"),
        ("QueryAuditRecords", "to_time"),
        ("GetReport", "from_time"),
        ("GetReport", "to_time"),
    } <= {(m.name, path) for m, _, path, _ in _request_time_fields()}


async def test_out_of_range_timestamps_and_durations_are_field_invalid_naming_the_field(
    harness: Harness,
) -> None:
    """Every Timestamp and Duration field of every request, set out of its valid range,
    answers FIELD_INVALID with metadata `field` naming it (not INTERNAL)."""
    outcomes = {}
    expected = {}
    for method, role, path, field in _request_time_fields():
        is_timestamp = field.message_type is not None and field.message_type.name == "Timestamp"
        bad = BAD_TIMESTAMPS if is_timestamp else BAD_DURATIONS
        for values in bad:
            request = _request(method)
            holder, name = _leaf(request, path)
            getattr(holder, name).SetInParent()
            for attr, value in values.items():
                setattr(getattr(holder, name), attr, value)
            error = await _call_raw(harness, method, role, request.SerializeToString())
            key = (method.name, path, tuple(values.items()))
            outcomes[key] = (
                None if error is None else (type(error).__name__, error.metadata.get("field"))
            )
            expected[key] = ("FieldInvalid", path)
    assert expected == outcomes
    assert [] == harness.sms.messages


async def test_every_over_long_request_string_is_field_invalid_naming_the_field(
    harness: Harness,
) -> None:
    """One character over its documented maximum, each string field of each request answers
    FIELD_INVALID naming the field."""
    outcomes = {}
    expected = {}
    for method, role, path, field in _request_string_fields():
        request = _request(method)
        holder, name = _leaf(request, path)
        limit = MAX_LENGTHS[field.full_name]
        setattr(
            holder,
            name,
            "x" * (limit + 1) if field.type == field.TYPE_STRING else b"x" * (limit + 1),
        )
        error = await _call_raw(harness, method, role, request.SerializeToString())
        outcomes[(method.name, path)] = (
            None if error is None else (type(error).__name__, error.metadata.get("field"))
        )
        expected[(method.name, path)] = ("FieldInvalid", path)
    assert expected == outcomes


VALID_START = {
    "account_id": "acc-1",
    "phone_number": "0912345678",
    "client_ip": "203.0.113.7",
    "idempotency_key": "key-1",
}
# Over-long values that would otherwise pass each field's own check: surrounding whitespace is
# trimmed from the number and the address.
LONG_START = {
    "account_id": "a" * 129,
    "phone_number": "0912345678" + " " * 100_000,
    "client_ip": "203.0.113.7" + " " * 100_000,
    "idempotency_key": "k" * 129,
}


async def test_an_over_long_start_field_sends_no_sms(harness: Harness) -> None:
    """Each StartPhoneVerification string made over-long in an otherwise valid request is
    refused FIELD_INVALID naming it, and no SMS goes out."""
    method = verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].methods_by_name[
        "StartPhoneVerification"
    ]
    fields = [f.name for f in method.input_type.fields if f.type == f.TYPE_STRING]
    assert sorted(fields) == sorted(LONG_START)
    outcomes = {}
    for name in fields:
        request = verification_pb2.StartPhoneVerificationRequest(
            **{**VALID_START, name: LONG_START[name]}
        )
        error = await _call_raw(harness, method, Role.PLATFORM, request.SerializeToString())
        outcomes[name] = (
            None if error is None else (type(error).__name__, error.metadata.get("field"))
        )
    assert {name: ("FieldInvalid", name) for name in fields} == outcomes
    assert [] == harness.sms.messages


@pytest.mark.parametrize(
    "client_ip",
    [
        "2001:db8::1%" + "x" * 100_000,
        "2001:db8::1%\x00",
        "fe80::1%eth0",
        "fe80::1%1",
    ],
    ids=["long-zone", "nul-zone", "named-zone", "numeric-zone"],
)
async def test_client_ip_with_a_zone_id_is_refused_and_sends_no_sms(
    harness: Harness, client_ip: str
) -> None:
    """A scoped IPv6 address (any zone id) is FIELD_INVALID `client_ip`, the message does
    not echo it, and no SMS goes out."""
    client = await harness.client()
    with pytest.raises(errors.FieldInvalid) as e:
        await client.start_phone_verification(
            account_id="acc-1", phone_number="0912345678", client_ip=client_ip
        )
    assert "client_ip" == e.value.metadata["field"]
    assert "%" not in e.value.message
    assert [] == harness.sms.messages


async def test_a_bad_timestamp_on_an_auditor_call_is_audited_without_its_values(
    harness: Harness,
) -> None:
    """An auditor's call refused at the edge is still audited, as `refused` with the reason
    and the field, without the request's values."""
    auditor = await harness.client("alpha", Role.AUDITOR)
    method = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].methods_by_name[
        "QueryAuditRecords"
    ]
    request = audit_pb2.QueryAuditRecordsRequest(account_id="acc-1")
    request.from_time.nanos = -1
    error = await _call_raw(harness, method, Role.AUDITOR, request.SerializeToString())
    assert isinstance(error, errors.FieldInvalid)
    page = await auditor.query_audit_records(event="auditor_query_audit_records")
    first = page.records[0].record
    assert ("refused", "FIELD_INVALID", "from_time") == (
        first["outcome"],
        first["reason"],
        first["field"],
    )
    assert "query_account" not in first


def _request_enum_fields() -> list[tuple[MethodDescriptor, Role, str, FieldDescriptor]]:
    return [
        (m, role, path, f)
        for m, role in METHODS
        for path, f in _fields(m.input_type)
        if f.enum_type is not None
    ]


def test_requests_have_the_enum_fields_the_walk_must_find() -> None:
    """The descriptor walk sees the request enums (it is the walk the tests trust)."""
    assert {
        ("VerifyPersonalId", "sex"),
        ("VerifyPersonalId", "purpose"),
        ("VerifyPersonalId", "personal_id_type"),
        ("LinkGuardian", "relationship"),
        ("Authorize", "action"),
        ("LockAccount", "kind"),
    } <= {(m.name, path) for m, _, path, _ in _request_enum_fields()}


async def test_an_enum_value_the_contract_does_not_define_is_field_invalid_naming_the_field(
    harness: Harness,
) -> None:
    """Proto3 enums are open: a client can put any int32 on the wire. Every enum field of
    every request holding a number its enum does not define answers FIELD_INVALID naming the
    field, before any handler runs (an undeclared `sex` was once taken as "not declared" and
    verified the account)."""
    outcomes = {}
    expected = {}
    for method, role, path, field in _request_enum_fields():
        assert field.enum_type is not None
        undefined = max(v.number for v in field.enum_type.values) + 1
        for value in (undefined, -1, 2**31 - 1):
            request = _request(method)
            holder, name = _leaf(request, path)
            setattr(holder, name, value)
            error = await _call_raw(harness, method, role, request.SerializeToString())
            outcomes[(method.name, path, value)] = (
                None if error is None else (type(error).__name__, error.metadata.get("field"))
            )
            expected[(method.name, path, value)] = ("FieldInvalid", path)
    assert expected == outcomes


async def test_an_undefined_sex_does_not_verify(harness: Harness) -> None:
    """A match with every other field right is refused when `sex` is no Sex value, and the
    registry is not asked (nothing is charged)."""
    client = await harness.client()
    request = verification_pb2.VerifyPersonalIdRequest(
        account_id="acc-sex",
        personal_id_number="001085336181",
        full_name="Nguyễn Văn An",
        date_of_birth=verification_pb2.Date(year=1985, month=3, day=14),
        purpose=verification_pb2.PERSONAL_ID_PURPOSE_NO_VIETNAMESE_MOBILE,
        declared_no_vietnamese_mobile=True,
        client_ip="203.0.113.7",
        sex=7,  # type: ignore[arg-type]
    )
    method = verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].methods_by_name[
        "VerifyPersonalId"
    ]
    error = await _call_raw(harness, method, Role.PLATFORM, request.SerializeToString())
    assert isinstance(error, errors.FieldInvalid)
    assert "sex" == error.metadata["field"]
    assert (await client.introspect_attestation(account_id="acc-sex")).status == "none"


@pytest.mark.parametrize(
    "path",
    [
        "/xacthuc.v1.VerificationService/NoSuchMethod",
        "/xacthuc.v1.AuditService/NoSuchMethod",
        "/xacthuc.v2.VerificationService/Authorize",
        "/nope",
    ],
)
async def test_a_method_not_served_is_unimplemented_with_its_reason(
    harness: Harness, path: str
) -> None:
    """A method the server does not serve (a newer contract's, a typo) answers UNIMPLEMENTED
    with ErrorInfo NOT_IMPLEMENTED and the request id, like every other error, not gRPC's
    bare 'Method not found!'."""
    metadata = (
        ("authorization", f"Bearer {harness.keys[('alpha', Role.PLATFORM)]}"),
        ("x-request-id", "req-not-served-1"),
    )
    async with grpc.aio.insecure_channel(harness.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(path, _raw, _raw)(b"", metadata=metadata, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in channel.unary_stream(path, _raw, _raw)(
                b"", metadata=metadata, timeout=10
            ):
                pass
    for raised in (e.value, streamed.value):
        error = decode_error(raised)
        assert isinstance(error, errors.NotImplementedYet)
        assert grpc.StatusCode.UNIMPLEMENTED == raised.code()
        assert "req-not-served-1" == error.metadata["request_id"]


async def test_the_served_services_still_answer_beside_the_catch_all(harness: Harness) -> None:
    """The health service is served as before (the catch-all comes last)."""
    async with grpc.aio.insecure_channel(harness.target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health_pb2.HealthCheckResponse.SERVING == reply.status


async def test_two_authorization_values_are_credential_invalid(harness: Harness) -> None:
    """A call with two `authorization` metadata values is refused CREDENTIAL_INVALID: which
    one a proxy in front checked and which one the server would use could differ."""
    good = f"Bearer {harness.keys[('alpha', Role.PLATFORM)]}"
    method = verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].methods_by_name[
        "Authorize"
    ]
    request = verification_pb2.AuthorizeRequest(
        account_id="acc-1", action=verification_pb2.ACTION_READ
    ).SerializeToString()
    async with grpc.aio.insecure_channel(harness.target) as channel:
        call = channel.unary_unary(_path(method), _raw, _raw)
        for second in (good, "Bearer xk_someone_else"):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(
                    request,
                    metadata=(("authorization", good), ("authorization", second)),
                    timeout=10,
                )
            assert isinstance(decode_error(e.value), errors.CredentialInvalid)
        assert await call(request, metadata=(("authorization", good),), timeout=10)
