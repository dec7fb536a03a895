"""The request id of a call: adopted or made by the server, returned on success and failure,
in every error's ErrorInfo, on the call's log lines, and on the SDK's exceptions."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2

from xacthuc.adapters.sms.none import DiscardingSmsSender
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.client import AsyncClient
from xacthuc.domain import errors
from xacthuc.domain.records import AttestationRecord
from xacthuc.server.auth import Role
from xacthuc.server.request_ids import begin_call
from xacthuc.server.runtime import Server, start_server
from xacthuc.v1 import verification_pb2, verification_pb2_grpc

from ..logcapture import capture_logs
from .conftest import Harness, make_keys, make_settings

GENERATED = re.compile(r"[0-9a-f]{32}")


def _metadata(key: str, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {key}"),)
    return auth if request_id is None else (*auth, ("x-request-id", request_id))


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError("no ErrorInfo")


def _trailer_id(metadata: object) -> str:
    found = [v for k, v in metadata or () if k == "x-request-id"]  # type: ignore[attr-defined]
    assert 1 == len(found), found
    return str(found[0])


async def test_the_callers_request_id_comes_back_on_success(harness: Harness) -> None:
    """A well-formed `x-request-id` is adopted and returned in the trailing metadata."""
    key = harness.keys[("alpha", Role.PLATFORM)]
    async with grpc.aio.insecure_channel(harness.target) as channel:
        stub = verification_pb2_grpc.VerificationServiceStub(channel)
        call = stub.GetJwks(
            verification_pb2.GetJwksRequest(), metadata=_metadata(key, "support-4f2a:1")
        )
        await call
        assert "support-4f2a:1" == _trailer_id(await call.trailing_metadata())


@pytest.mark.parametrize(
    "sent", [None, "", "has space", "x" * 65, "-leading-dash", "a/b", "a;b=c", '{"json": 1}']
)
async def test_a_missing_or_malformed_request_id_is_replaced(
    harness: Harness, sent: str | None
) -> None:
    """Without a usable id (absent, empty, unsafe characters, over 64) the server makes one."""
    key = harness.keys[("alpha", Role.PLATFORM)]
    metadata = _metadata(key)
    if sent is not None:
        metadata = (*metadata, ("x-request-id", sent))
    async with grpc.aio.insecure_channel(harness.target) as channel:
        call = verification_pb2_grpc.VerificationServiceStub(channel).GetJwks(
            verification_pb2.GetJwksRequest(), metadata=metadata
        )
        await call
        assert GENERATED.fullmatch(_trailer_id(await call.trailing_metadata()))


async def test_an_error_carries_the_request_id_in_error_info_and_trailer(harness: Harness) -> None:
    """A failed call returns the id in the `x-request-id` trailer and ErrorInfo `request_id`."""
    key = harness.keys[("alpha", Role.PLATFORM)]
    async with grpc.aio.insecure_channel(harness.target) as channel:
        stub = verification_pb2_grpc.VerificationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAttestation(
                verification_pb2.GetAttestationRequest(account_id="nobody"),
                metadata=_metadata(key, "ticket-77"),
            )
        info = _error_info(caught.value)
        assert "ATTESTATION_NOT_FOUND" == info.reason
        assert "ticket-77" == info.metadata["request_id"]
        assert "ticket-77" == _trailer_id(caught.value.trailing_metadata())
        # Refused before authentication too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetJwks(
                verification_pb2.GetJwksRequest(), metadata=(("x-request-id", "ticket-78"),)
            )
        assert "ticket-78" == _error_info(caught.value).metadata["request_id"]


async def test_the_sdk_exception_exposes_the_request_id(harness: Harness) -> None:
    """`XacthucError.request_id` is set on errors through the shipped client, one per call
    (the blocking client: tests/test_testing_kit.py)."""
    client = await harness.client()
    seen = set()
    for _ in range(2):
        with pytest.raises(errors.AttestationNotFound) as caught:
            await client.get_attestation(account_id="nobody")
        assert caught.value.request_id is not None
        assert GENERATED.fullmatch(caught.value.request_id)
        assert caught.value.request_id == caught.value.metadata["request_id"]
        assert caught.value.request_id in repr(caught.value)
        seen.add(caught.value.request_id)
    assert 2 == len(seen)


class BrokenStore(MemoryStore):
    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        raise RuntimeError("disk on fire")


@pytest.fixture
async def memory_server() -> AsyncIterator[tuple[Server, dict[tuple[str, Role], str]]]:
    """A server on the memory store whose attestation reads fail, with the dropping SMS sender
    (which logs each message it drops)."""
    from xacthuc.server.app import build_app

    keys, raw = make_keys()
    app = build_app(make_settings(), store=BrokenStore(), sms=DiscardingSmsSender(), api_keys=keys)
    server = await start_server(app, "127.0.0.1:0")
    yield server, raw
    await server.stop(grace=0)


async def test_an_internal_error_and_its_log_line_share_the_request_id(
    memory_server: tuple[Server, dict[tuple[str, Role], str]],
) -> None:
    """The support engineer's id (from the SDK exception) finds the server's log line of the
    failure, with its method and platform."""
    server, keys = memory_server
    with capture_logs() as logs:
        async with await AsyncClient.connect(
            f"127.0.0.1:{server.port}", api_key=keys[("alpha", Role.PLATFORM)]
        ) as client:
            with pytest.raises(errors.Internal) as caught:
                await client.get_attestation(account_id="u1")
    request_id = caught.value.request_id
    assert request_id is not None
    assert request_id in caught.value.message
    (line,) = [
        line
        for line in logs.lines()
        if line.get("request_id") == request_id and line["logger"] != "xacthuc.access"
    ]
    assert "error" == line["level"]
    assert ("GetAttestation", "alpha") == (line["method"], line["platform"])
    assert "RuntimeError: disk on fire" in line["exception"]


async def test_every_log_line_of_a_call_carries_its_request_id(
    memory_server: tuple[Server, dict[tuple[str, Role], str]],
) -> None:
    """A line written deep in the call (the SMS adapter) carries the call's id; one written
    outside any call carries none."""
    server, keys = memory_server
    with capture_logs() as logs:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await verification_pb2_grpc.VerificationServiceStub(channel).StartPhoneVerification(
                verification_pb2.StartPhoneVerificationRequest(
                    account_id="u1", phone_number="0912345678", client_ip="203.0.113.7"
                ),
                metadata=_metadata(keys[("alpha", Role.PLATFORM)], "trace-abc"),
            )
    (line,) = [line for line in logs.lines() if "not sent" in line["event"]]
    assert ("trace-abc", "StartPhoneVerification", "alpha") == (
        line["request_id"],
        line["method"],
        line["platform"],
    )
    assert "912345678" not in logs.text


async def test_a_call_starts_with_no_context_of_an_earlier_call(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call's log context starts empty: no request id or platform carries over from the
    call before it on the same connection (grpc.aio runs each call in a fresh context)."""
    from xacthuc.server import rpc

    inherited: list[dict[str, object]] = []

    def spy(context: grpc.aio.ServicerContext[object, object], method: str) -> str:
        inherited.append(dict(structlog.contextvars.get_contextvars()))
        return begin_call(context, method)

    monkeypatch.setattr(rpc, "begin_call", spy)
    client = await harness.client()
    for _ in range(3):
        await client.get_jwks()
    assert [{}, {}, {}] == inherited


def _access_lines(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line["logger"] == "xacthuc.access"]


async def _serve_and_call(
    request_id: str, access_log: bool, **fields: str
) -> list[dict[str, object]]:
    from xacthuc.server.app import build_app

    keys, raw = make_keys()
    app = build_app(
        make_settings(access_log=access_log),
        store=MemoryStore(),
        sms=DiscardingSmsSender(),
        api_keys=keys,
    )
    server = await start_server(app, "127.0.0.1:0")
    try:
        with capture_logs(level="INFO") as logs:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = verification_pb2_grpc.VerificationServiceStub(channel)
                request = verification_pb2.StartPhoneVerificationRequest(
                    account_id="u1", phone_number="0912345678", client_ip="203.0.113.7"
                )
                for key, value in fields.items():
                    setattr(request, key, value)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.StartPhoneVerification(
                        request, metadata=_metadata(raw[("alpha", Role.PLATFORM)], request_id)
                    )
                assert grpc.StatusCode.INVALID_ARGUMENT == e.value.code()
            return logs.lines()
    finally:
        await server.stop(grace=0)


async def test_one_access_line_per_call_with_its_request_id_status_and_reason() -> None:
    """A call with x-request-id abc: exactly one access line (INFO, `xacthuc.access`) naming
    the method, the platform, the gRPC status, the reason, the duration and abc, and nothing
    from the request body."""
    lines = await _serve_and_call("abc", True, phone_number="+14155552671")
    (line,) = _access_lines(lines)
    assert (
        "info",
        "StartPhoneVerification",
        "alpha",
        "INVALID_ARGUMENT",
        "PHONE_NOT_VIETNAMESE",
        "abc",
    ) == (
        line["level"],
        line["method"],
        line["platform"],
        line["grpc_status"],
        line["reason"],
        line["request_id"],
    )
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    text = json.dumps(line)
    assert [] == [secret for secret in ("4155552671", "203.0.113.7") if secret in text]
    assert "u1" not in line.values()


async def test_the_access_line_is_redacted_like_any_other() -> None:
    """A request id shaped like a phone number is well formed, but redacted in the access line."""
    lines = await _serve_and_call("0912345678", True, phone_number="+14155552671")
    (line,) = _access_lines(lines)
    assert "[PHONE]" == line["request_id"]
    assert "0912345678" not in json.dumps(line)


async def test_the_access_log_can_be_turned_off() -> None:
    lines = await _serve_and_call("abc", False, phone_number="+14155552671")
    assert [] == _access_lines(lines)
