"""Every RPC of the generated stubs has a wrapper in both SDK clients (issue 5, SDK)."""

from __future__ import annotations

import inspect
import re

import pytest
from google.protobuf.descriptor import MethodDescriptor

from xacthuc.client import AsyncClient, Client
from xacthuc.client import _wire as w
from xacthuc.v1 import audit_pb2, verification_pb2

SERVICES = (
    verification_pb2.DESCRIPTOR.services_by_name["VerificationService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
)
RPCS = [(service.name, method) for service in SERVICES for method in service.methods]


def snake(name: str) -> str:
    """`GetCommercialLivestreamEligibility` -> `get_commercial_livestream_eligibility`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_the_stubs_are_what_this_test_expects() -> None:
    """A guard against an empty parametrisation: both services have their RPCs."""
    names = {method.name for _, method in RPCS}
    assert {"Authorize", "RevokeAttestation", "IntrospectAttestation", "GetStatusList"} <= names
    assert {"QueryAuditRecords", "ExportAuditRecords"} <= names


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[m.name for _, m in RPCS])
@pytest.mark.parametrize("client", [AsyncClient, Client], ids=["AsyncClient", "Client"])
def test_every_rpc_has_a_wrapper(
    client: type[AsyncClient] | type[Client], service: str, method: MethodDescriptor
) -> None:
    """RPC `FooBar` -> method `foo_bar`, keyword-only arguments and a `timeout` (the deadline);
    coroutine in AsyncClient (an async generator for a server stream), plain in Client."""
    wrapper = getattr(client, snake(method.name), None)
    assert wrapper is not None, f"{client.__name__} has no {snake(method.name)} for {method.name}"
    parameters = inspect.signature(wrapper).parameters
    assert "timeout" in parameters
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in parameters.items() if name != "self"
    )
    if client is AsyncClient:
        streaming = method.server_streaming
        assert (
            inspect.isasyncgenfunction(wrapper)
            if streaming
            else inspect.iscoroutinefunction(wrapper)
        )
    else:
        assert not inspect.iscoroutinefunction(wrapper)


def test_retried_calls_are_exactly_the_idempotent_ones() -> None:
    """Only calls safe to repeat are retried on UNAVAILABLE: reads, Authorize, and the
    revocation, a lock, an unlock and an erasure (a repeat changes nothing); never a start,
    confirm, verify or link."""
    rpcs = {value.name: value for value in vars(w).values() if isinstance(value, w.Rpc)}
    retried = {name for name, rpc in rpcs.items() if rpc.idempotent}
    assert {
        "GetAttestation",
        "GetJwks",
        "GetCommercialLivestreamEligibility",
        "ListAccountsAgingOut",
        "Authorize",
        "RevokeAttestation",
        "IntrospectAttestation",
        "GetStatusList",
        "QueryAuditRecords",
        "GetCheckpoint",
        "GetInclusionProof",
        "GetConsistencyProof",
        "GetReport",
        "LockAccount",
        "UnlockAccount",
        "EraseAccountRecords",
    } == retried
    assert {
        "StartPhoneVerification",
        "ConfirmPhoneVerification",
        "VerifyPersonalId",
        "LinkGuardian",
        "WithdrawGuardianLink",
    } == set(rpcs) - retried
