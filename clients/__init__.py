"""The xacthuc Python SDK: async and blocking clients, typed errors, offline token verification.

from xacthuc.client import AsyncClient
async with await AsyncClient.connect("localhost:50051", api_key=KEY) as xt:
    challenge = await xt.start_phone_verification(account_id="u1", phone_number="0912345678",
                                                 client_ip="203.0.113.7", idempotency_key="req-1")
"""

from xacthuc import errors
from xacthuc.client._wire import (
    AgingOutPage,
    Attestation,
    AuditPage,
    AuditRecord,
    Challenge,
    Eligibility,
    GuardianLink,
    LogCheckpoint,
)
from xacthuc.client.aio import AsyncClient
from xacthuc.client.sync import Client
from xacthuc.client.verify import AttestationVerifier, TokenInvalid, VerifiedAttestation

__all__ = [
    "AgingOutPage",
    "AsyncClient",
    "Attestation",
    "AttestationVerifier",
    "AuditPage",
    "AuditRecord",
    "Challenge",
    "Client",
    "Eligibility",
    "GuardianLink",
    "LogCheckpoint",
    "TokenInvalid",
    "VerifiedAttestation",
    "errors",
]
