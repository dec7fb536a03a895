"""The edge's table of request bounds agrees with the contract, and enforces it exactly."""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from xacthuc.domain.errors import FieldInvalid
from xacthuc.server.request_bounds import MAX_LENGTHS, check_request, plan, timestamp_seconds
from xacthuc.v1 import audit_pb2, verification_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
SERVICES = (
    verification_pb2.DESCRIPTOR.services_by_name["VerificationService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
)
# "1-128 characters", "1-128 printable ASCII characters", "at most 45 characters".
STATED_MAX = re.compile(r"(?:\b[Aa]t most |\b\d+-)(\d+)(?: [A-Za-z]+)*? characters")


def _request_types() -> list[Descriptor]:
    return [m.input_type for s in SERVICES for m in s.methods]


def _string_fields(descriptor: Descriptor) -> Iterator[FieldDescriptor]:
    for f in descriptor.fields:
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            yield f
        elif f.message_type is not None and not f.message_type.full_name.startswith(
            "google.protobuf."
        ):
            yield from _string_fields(f.message_type)


def _field_comments(tmp_path: Path) -> dict[str, str]:
    """The leading comment of every field of our protos, by full field name (from protoc's
    source info: the comments as written, not a parse of our own)."""
    protoc = importlib.import_module("grpc_tools.protoc")  # untyped; only tests and gen_protos

    out = tmp_path / "set.binpb"
    include = Path(str(protoc.__file__)).parent / "_proto"
    files = sorted(
        p.relative_to(PROTOS).as_posix() for p in (PROTOS / "xacthuc/v1").glob("*.proto")
    )
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info"]
    assert 0 == protoc.main([*args, f"--descriptor_set_out={out}", *files])
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    comments: dict[str, str] = {}

    def walk(
        messages: list[descriptor_pb2.DescriptorProto],
        prefix: str,
        path: tuple[int, ...],
        by_path: dict[tuple[int, ...], str],
    ) -> None:
        for i, m in enumerate(messages):
            here = (*path, i)
            for j, f in enumerate(m.field):
                text = by_path.get((*here, 2, j), "")
                comments[f"{prefix}{m.name}.{f.name}"] = " ".join(text.split())
            walk(list(m.nested_type), f"{prefix}{m.name}.", (*here, 3), by_path)

    for file in fds.file:
        locations = file.source_code_info.location
        by_path = {tuple(loc.path): loc.leading_comments for loc in locations}
        walk(list(file.message_type), f"{file.package}.", (4,), by_path)
    return comments


def test_every_request_string_field_documents_the_maximum_the_edge_enforces(
    tmp_path: Path,
) -> None:
    """Each string field of each request states its maximum length in its proto comment, and
    that is the edge's table entry; the table names no other field."""
    comments = _field_comments(tmp_path)
    fields = {f.full_name for d in _request_types() for f in _string_fields(d)}
    stated = {
        name: max((int(n) for n in STATED_MAX.findall(comments[name])), default=None)
        for name in fields
    }
    assert {name: MAX_LENGTHS.get(name) for name in fields} == stated
    assert sorted(fields) == sorted(MAX_LENGTHS)


@pytest.mark.parametrize("name", sorted(MAX_LENGTHS))
def test_a_string_at_its_maximum_passes_and_one_more_is_field_invalid(name: str) -> None:
    """The bound is inclusive: `max` characters pass, `max + 1` are FIELD_INVALID naming the
    field, with a message that does not echo the value."""
    message_name, field_name = name.rsplit(".", 1)
    descriptor = next(d for d in _request_types() if d.full_name == message_name)
    cls = message_factory.GetMessageClass(descriptor)
    limit = MAX_LENGTHS[name]
    check_request(cls(**{field_name: "é" * limit}))  # characters, not UTF-8 bytes
    with pytest.raises(FieldInvalid) as e:
        check_request(cls(**{field_name: "é" * (limit + 1)}))
    assert field_name == e.value.metadata["field"]
    assert "é" not in e.value.message


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (-62135596800, 0, -62135596800.0),
        (253402300799, 999_999_999, 253402300799.999999999),
        (0, 0, 0.0),
        (1_800_000_000, 500_000_000, 1_800_000_000.5),
    ],
)
def test_timestamps_at_the_ends_of_the_valid_range_convert(
    seconds: int, nanos: int, expected: float
) -> None:
    """0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z are valid request times."""
    request = audit_pb2.GetReportRequest(from_time=Timestamp(seconds=seconds, nanos=nanos))
    check_request(request)
    assert expected == timestamp_seconds(request, "from_time")
    assert timestamp_seconds(request, "to_time") is None


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(0, -1), (0, 1_000_000_000), (253402300800, 0), (-62135596801, 0), (-(2**63), 0)],
)
def test_timestamps_out_of_range_are_field_invalid_in_the_walk_and_the_helper(
    seconds: int, nanos: int
) -> None:
    """Both the request walk and the conversion helper refuse an invalid Timestamp."""
    request = audit_pb2.GetReportRequest(to_time=Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(FieldInvalid) as walked:
        check_request(request)
    with pytest.raises(FieldInvalid) as converted:
        timestamp_seconds(request, "to_time")
    assert ["to_time", "to_time"] == [
        walked.value.metadata["field"],
        converted.value.metadata["field"],
    ]


@functools.cache
def _probe_types() -> dict[str, type[Message]]:
    """Messages made at run time to stand in for requests to come: `Timed` has a Duration, a
    repeated Timestamp and a nested message holding a Timestamp; `Unbounded` a string field
    that MAX_LENGTHS does not know."""
    pool = descriptor_pool.DescriptorPool()
    for dep in (duration_pb2.DESCRIPTOR, timestamp_pb2.DESCRIPTOR):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(dep.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(
        name="probe.proto",
        package="probe",
        syntax="proto3",
        dependency=["google/protobuf/duration.proto", "google/protobuf/timestamp.proto"],
    )
    F = descriptor_pb2.FieldDescriptorProto
    inner = file.message_type.add(name="Inner")
    inner.field.add(
        name="at", number=1, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"
    )
    timed = file.message_type.add(name="Timed")
    timed.field.add(
        name="wait", number=1, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"
    )
    timed.field.add(
        name="times",
        number=2,
        type=F.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=F.LABEL_REPEATED,
    )
    timed.field.add(name="inner", number=3, type=F.TYPE_MESSAGE, type_name=".probe.Inner")
    file.message_type.add(name="Unbounded").field.add(name="note", number=1, type=F.TYPE_STRING)
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"probe.{name}"))
        for name in ("Timed", "Unbounded")
    }


def test_a_string_field_without_a_bound_stops_the_plan() -> None:
    """A request string field missing from MAX_LENGTHS fails when the server registers its
    methods (at start), not on a request."""
    with pytest.raises(KeyError, match=r"probe\.Unbounded\.note"):
        plan(cast(Descriptor, _probe_types()["Unbounded"].DESCRIPTOR))


def _timed(
    wait: tuple[int, int] | None = None, times: tuple[int, ...] = (), at: int = 0
) -> Message:
    """A `Timed` probe: `wait` (seconds, nanos), Timestamps of `times` nanos, `inner.at` nanos."""
    message = _probe_types()["Timed"]()
    if wait is not None:
        message.wait.seconds, message.wait.nanos = wait  # type: ignore[attr-defined]
    for nanos in times:
        message.times.add(nanos=nanos)  # type: ignore[attr-defined]
    if at:
        message.inner.at.nanos = at  # type: ignore[attr-defined]
    return message


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(315576000001, 0), (-315576000001, 0), (0, 1_000_000_000), (1, -1), (-1, 1), (-(2**63), 0)],
)
def test_durations_out_of_range_are_field_invalid(seconds: int, nanos: int) -> None:
    """A Duration beyond +-10000 years, with nanos out of range or of the other sign, is
    FIELD_INVALID (no request has one yet: a message made at run time stands in)."""
    check_request(_timed(wait=(315576000000, 999_999_999)))
    check_request(_timed(wait=(-1, -5)))
    with pytest.raises(FieldInvalid) as e:
        check_request(_timed(wait=(seconds, nanos)))
    assert "wait" == e.value.metadata["field"]


def test_repeated_and_nested_timestamps_are_checked_with_a_dotted_name() -> None:
    """Every element of a repeated Timestamp and a Timestamp inside a nested message are
    checked; the field is named by its dotted path."""
    fields = []
    for request in (_timed(times=(1, -1)), _timed(at=-1)):
        with pytest.raises(FieldInvalid) as e:
            check_request(request)
        fields.append(e.value.metadata["field"])
    assert ["times", "inner.at"] == fields
    check_request(_timed(times=(1, 2), at=3))


def test_a_method_not_wrapped_by_rpc_stops_the_registration() -> None:
    """Every method served goes through `rpc` (decoding, authentication, bounds): a servicer
    method without it fails when the handlers are built, at start."""
    from typing import Any

    from xacthuc.server.rpc import method_handlers
    from xacthuc.server.verification import VerificationServicer

    class Unwrapped(VerificationServicer):
        async def GetJwks(self, request: Any, context: Any) -> Any:  # no @rpc
            return None

    with pytest.raises(TypeError, match="GetJwks"):
        method_handlers(Unwrapped.__new__(Unwrapped), SERVICES[0])
