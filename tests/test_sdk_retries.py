"""The SDK retries only UNAVAILABLE, only on calls that are safe to repeat (issue 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from xacthuc.client import AsyncClient, Client
from xacthuc.domain import errors
from xacthuc.v1 import verification_pb2, verification_pb2_grpc


class Flaky(verification_pb2_grpc.VerificationServiceServicer):
    """GetJwks fails `failures` times with a status, then answers; Start always fails."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"GetJwks": 0, "StartPhoneVerification": 0}
        self.failures = 2
        self.status = grpc.StatusCode.UNAVAILABLE

    async def GetJwks(self, request, context):  # type: ignore[no-untyped-def]
        self.calls["GetJwks"] += 1
        if self.calls["GetJwks"] <= self.failures:
            await context.abort(self.status, "try later")
        return verification_pb2.GetJwksResponse(jwks_json='{"keys":[]}')

    async def StartPhoneVerification(self, request, context):  # type: ignore[no-untyped-def]
        self.calls["StartPhoneVerification"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try later")


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    servicer = Flaky()
    server = grpc.aio.server()
    verification_pb2_grpc.add_VerificationServiceServicer_to_server(servicer, server)
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
    import asyncio

    servicer, target = flaky

    def call() -> str:
        with Client.connect(target, api_key="k", retries=2) as client:
            return client.get_jwks()

    assert '{"keys":[]}' == await asyncio.to_thread(call)
    assert 3 == servicer.calls["GetJwks"]
