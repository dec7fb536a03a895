"""The xacthuc Python SDK: async and blocking clients, typed errors, offline token verification.

from xacthuc.client import AsyncClient
async with await AsyncClient.connect("localhost:50051", api_key=KEY) as xt:
    challenge = await xt.start_phone_verification(account_id="u1", phone_number="0912345678",
                                                 client_ip="203.0.113.7", idempotency_key="req-1")
    decision = await xt.authorize(account_id="u1", action="post")

Offline, with no call per decision: `JwksCache` (keys, refetched on an unknown `kid`, rate
limited), `StatusListCache` (revocation, cached for the list's `ttl`), `authorize_token`
(the server's decision table over a verified token), or all three in one call with
`OfflineAuthorizer`. See README.md, "The SDK".
"""

from xacthuc.client._wire import (
    AccountLock,
    AgingOutPage,
    Attestation,
    AuditPage,
    AuditRecord,
    Challenge,
    Eligibility,
    Erasure,
    GuardianLink,
    Introspection,
    LockResult,
    LogCheckpoint,
    Revocation,
    SignedStatusList,
    Unlock,
)
from xacthuc.client.aio import AsyncClient
from xacthuc.client.jwks import AsyncJwksCache, JwksCache, KeysUnavailable
from xacthuc.client.offline import (
    AsyncOfflineAuthorizer,
    OfflineAuthorizer,
    attestation_state,
    authorize_offline,
    authorize_token,
    from_status,
    verify_for_decision,
)
from xacthuc.client.status_lists import (
    AsyncStatusListCache,
    StatusListCache,
    StatusListUnavailable,
)
from xacthuc.client.sync import Client
from xacthuc.client.verify import AttestationVerifier, TokenInvalid, VerifiedAttestation
from xacthuc.domain import errors
from xacthuc.domain.decisions import ACTIONS, Action, Decision
from xacthuc.domain.statuslist import StatusListInvalid

__all__ = [
    "ACTIONS",
    "AccountLock",
    "Action",
    "AgingOutPage",
    "AsyncClient",
    "AsyncJwksCache",
    "AsyncOfflineAuthorizer",
    "AsyncStatusListCache",
    "Attestation",
    "AttestationVerifier",
    "AuditPage",
    "AuditRecord",
    "Challenge",
    "Client",
    "Decision",
    "Eligibility",
    "Erasure",
    "GuardianLink",
    "Introspection",
    "JwksCache",
    "KeysUnavailable",
    "LockResult",
    "LogCheckpoint",
    "OfflineAuthorizer",
    "Revocation",
    "SignedStatusList",
    "StatusListCache",
    "StatusListInvalid",
    "StatusListUnavailable",
    "TokenInvalid",
    "Unlock",
    "VerifiedAttestation",
    "attestation_state",
    "authorize_offline",
    "authorize_token",
    "errors",
    "from_status",
    "verify_for_decision",
]
