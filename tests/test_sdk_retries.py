"""The SDK on gRPC's own machinery (issue 12): the channel's retry policy retries only
UNAVAILABLE, only calls safe to repeat, bounded and throttled, all within one deadline; every
gRPC status arrives as a typed exception under one root."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator

import grpc
import pytest

import xacthuc.client
from xacthuc.client import AsyncClient, Client
from xacthuc.client import _wire as w
from xacthuc.domain import errors
from xacthuc.v1 import verification_pb2

SERVICE = "xacthuc.v1.VerificationService"


class Flaky:
    """GetJwks fails `failures` times with `status` (each answer after `delay` seconds), then
    answers; StartPhoneVerification always fails UNAVAILABLE. Counts the calls received."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"GetJwks": 0, "StartPhoneVerification": 0}
        self.failures = 2
        self.status = grpc.StatusCode.UNAVAILABLE
        self.delay = 0.0

    async def get_jwks(
        self,
        request: verification_pb2.GetJwksRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.GetJwksRequest, verification_pb2.GetJwksResponse
        ],
    ) -> verification_pb2.GetJwksResponse:
        self.calls["GetJwks"] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls["GetJwks"] <= self.failures:
            await context.abort(self.status, "try later")
        return verification_pb2.GetJwksResponse(jwks_json='{"keys":[]}')

    async def start(
        self,
        request: verification_pb2.StartPhoneVerificationRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.StartPhoneVerificationRequest,
            verification_pb2.StartPhoneVerificationResponse,
        ],
    ) -> verification_pb2.StartPhoneVerificationResponse:
        self.calls["StartPhoneVerification"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try later")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetJwks": grpc.unary_unary_rpc_method_handler(
                    self.get_jwks,
                    request_deserializer=verification_pb2.GetJwksRequest.FromString,
                    response_serializer=verification_pb2.GetJwksResponse.SerializeToString,
                ),
                "StartPhoneVerification": grpc.unary_unary_rpc_method_handler(
                    self.start,
                    request_deserializer=verification_pb2.StartPhoneVerificationRequest.FromString,
                    response_serializer=verification_pb2.StartPhoneVerificationResponse.SerializeToString,
                ),
            },
        )


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    servicer = Flaky()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_idempotent_call_is_retried_through_unavailable(flaky: tuple[Flaky, str]) -> None:
    """GetJwks succeeds after two UNAVAILABLE answers when two retries are allowed."""
    servicer, target = flaky
    async with await AsyncClient.connect(target, api_key="k", retries=2) as client:
        assert '{"keys":[]}' == await client.get_jwks()
    assert 3 == servicer.calls["GetJwks"]


async def test_retries_are_bounded(flaky: tuple[Flaky, str]) -> None:
    """With one retry allowed, two UNAVAILABLE answers reach the caller as Unavailable."""
    servicer, target = flaky
    async with await AsyncClient.connect(target, api_key="k", retries=1) as client:
        with pytest.raises(errors.Unavailable):
            await client.get_jwks()
    assert 2 == servicer.calls["GetJwks"]


async def test_other_statuses_are_never_retried(flaky: tuple[Flaky, str]) -> None:
    """A non-UNAVAILABLE failure is raised at once, even on an idempotent call."""
    servicer, target = flaky
    servicer.status = grpc.StatusCode.INTERNAL
    async with await AsyncClient.connect(target, api_key="k", retries=3) as client:
        with pytest.raises(errors.Internal):
            await client.get_jwks()
    assert 1 == servicer.calls["GetJwks"]


async def test_a_start_is_never_repeated_by_the_sdk(flaky: tuple[Flaky, str]) -> None:
    """StartPhoneVerification may send an SMS: the SDK leaves its retry to the caller's key."""
    servicer, target = flaky
    async with await AsyncClient.connect(target, api_key="k", retries=3) as client:
        with pytest.raises(errors.Unavailable):
            await client.start_phone_verification(
                account_id="a", phone_number="0912345678", client_ip="203.0.113.1"
            )
    assert 1 == servicer.calls["StartPhoneVerification"]


async def test_blocking_client_retries_the_same_way(flaky: tuple[Flaky, str]) -> None:
    """The sync Client follows the same policy as the async one."""
    servicer, target = flaky

    def call() -> str:
        with Client.connect(target, api_key="k", retries=2) as client:
            return client.get_jwks()

    assert '{"keys":[]}' == await asyncio.to_thread(call)
    assert 3 == servicer.calls["GetJwks"]


async def test_one_deadline_covers_every_attempt(flaky: tuple[Flaky, str]) -> None:
    """Each answer (UNAVAILABLE) takes 1 s; a call with a 1.5 s timeout and four retries ends
    as DeadlineExceeded at about 1.5 s (within the second attempt), not after 5 attempts."""
    servicer, target = flaky
    servicer.failures = 100
    servicer.delay = 1.0
    async with await AsyncClient.connect(target, api_key="k", retries=4) as client:
        began = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded) as raised:
            await client.get_jwks(timeout=1.5)
        elapsed = time.monotonic() - began
    assert servicer.calls["GetJwks"] <= 2  # the second attempt, if any, is cut by the deadline
    assert elapsed < 3.0  # about the timeout; five attempts would take more than 5 s
    assert isinstance(raised.value, errors.XacthucError)
    assert errors.Code.DEADLINE_EXCEEDED == raised.value.code


async def test_the_blocking_client_has_one_deadline_too(flaky: tuple[Flaky, str]) -> None:
    """The same in the sync Client: DeadlineExceeded, within the second attempt at most."""
    servicer, target = flaky
    servicer.failures = 100
    servicer.delay = 1.0

    def call() -> None:
        with Client.connect(target, api_key="k", retries=4) as client:
            client.get_jwks(timeout=1.5)

    with pytest.raises(errors.DeadlineExceeded):
        await asyncio.to_thread(call)
    assert servicer.calls["GetJwks"] <= 2


async def test_retries_are_throttled_while_the_server_keeps_failing(
    flaky: tuple[Flaky, str],
) -> None:
    """retryThrottling: once most attempts fail, later calls are not retried at all."""
    servicer, target = flaky
    servicer.failures = 100
    async with await AsyncClient.connect(target, api_key="k", retries=4) as client:
        for _ in range(3):
            with pytest.raises(errors.Unavailable):
                await client.get_jwks()
    assert servicer.calls["GetJwks"] < 3 * 5


def test_the_retry_policy_names_exactly_the_idempotent_methods() -> None:
    """Reads, Authorize and Revoke are retried; Start, Confirm, VerifyPersonalId,
    LinkGuardian and WithdrawGuardianLink are not; every name is a real method."""
    config = json.loads(w.service_config(2))
    names = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    expected = {(w.SERVICES[r.service], r.name) for r in w.RPCS if r.idempotent}
    assert expected == names
    from xacthuc.v1 import audit_pb2

    real = {
        (s.full_name, m.name)
        for f in (verification_pb2, audit_pb2)
        for s in f.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert names <= real
    never = {
        "StartPhoneVerification",
        "ConfirmPhoneVerification",
        "VerifyPersonalId",
        "LinkGuardian",
        "WithdrawGuardianLink",
    }
    assert set() == {m for _, m in names} & never
    policy = config["methodConfig"][0]["retryPolicy"]
    assert (["UNAVAILABLE"], 3) == (policy["retryableStatusCodes"], policy["maxAttempts"])
    assert "retryThrottling" in config
    assert "methodConfig" not in json.loads(w.service_config(0))


def test_retries_beyond_what_grpc_allows_are_refused() -> None:
    """gRPC caps attempts at 5: asking for more retries is a ValueError, not silently less."""
    with pytest.raises(ValueError, match="retries"):
        Client.connect("127.0.0.1:1", api_key="k", retries=5)


async def test_every_grpc_status_arrives_as_its_typed_exception() -> None:
    """Each non-OK status, without details, is raised as errors.BY_STATUS[status]: one root."""
    status: list[grpc.StatusCode] = []

    async def get_jwks(
        request: verification_pb2.GetJwksRequest,
        context: grpc.aio.ServicerContext[
            verification_pb2.GetJwksRequest, verification_pb2.GetJwksResponse
        ],
    ) -> verification_pb2.GetJwksResponse:
        await context.abort(status[0], "failed")

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "GetJwks": grpc.unary_unary_rpc_method_handler(
                        get_jwks,
                        request_deserializer=verification_pb2.GetJwksRequest.FromString,
                        response_serializer=verification_pb2.GetJwksResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await AsyncClient.connect(f"127.0.0.1:{port}", api_key="k", retries=0) as client:
            for code in grpc.StatusCode:
                if code is grpc.StatusCode.OK:
                    continue
                status[:] = [code]
                with pytest.raises(errors.XacthucError) as raised:
                    await client.get_jwks(timeout=5)
                expected = errors.BY_STATUS[errors.Code(code.name)]
                assert (expected, code.name) == (type(raised.value), raised.value.code)
    finally:
        await server.stop(0)


def test_every_exception_the_sdk_exports_has_one_root() -> None:
    """TokenInvalid, StatusListInvalid, KeysUnavailable, StatusListUnavailable and every class
    of errors are XacthucError subclasses; the unavailable ones are Unavailable."""
    exported = [getattr(xacthuc.client, name) for name in xacthuc.client.__all__]
    exported += list(vars(errors).values())
    exceptions = [x for x in exported if isinstance(x, type) and issubclass(x, BaseException)]
    assert [] == [x.__name__ for x in exceptions if not issubclass(x, errors.XacthucError)]
    assert issubclass(xacthuc.client.KeysUnavailable, errors.Unavailable)
    assert issubclass(xacthuc.client.StatusListUnavailable, errors.Unavailable)
    assert issubclass(xacthuc.client.TokenInvalid, ValueError)  # as before
    bad = xacthuc.client.TokenInvalid("EXPIRED", "token has expired")
    assert ("EXPIRED", "EXPIRED: token has expired") == (bad.reason, str(bad))
    assert set(errors.Code) - {errors.Code.OK} == set(errors.BY_STATUS)


def _unused_target() -> str:
    """An address nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_a_call_that_never_reached_the_server_still_has_its_request_id() -> None:
    """README, Logs and request ids: the exception holds the id the SDK sent "even when the
    call never reached the server", for both clients, a fresh one each call."""
    target, hex32 = _unused_target(), re.compile(r"[0-9a-f]{32}")
    seen: list[str | None] = []
    async with await AsyncClient.connect(target, api_key="k", retries=0, timeout=2) as client:
        for _ in range(2):
            with pytest.raises(errors.Unavailable) as caught:
                await client.get_jwks()
            seen.append(caught.value.request_id)

    def blocking() -> str | None:
        with Client.connect(target, api_key="k", retries=0, timeout=2) as client:
            with pytest.raises(errors.Unavailable) as caught:
                client.get_jwks()
            return caught.value.request_id

    seen.append(await asyncio.to_thread(blocking))
    assert all(r is not None and hex32.fullmatch(r) for r in seen)
    assert 3 == len(set(seen))
