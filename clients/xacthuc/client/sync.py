"""The blocking client: the same calls as AsyncClient, for code without an event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import grpc

from xacthuc.client import _wire as w
from xacthuc.client._wire import (
    AgingOutPage,
    Attestation,
    AuditPage,
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
from xacthuc.domain.decisions import Action, Decision
from xacthuc.domain.errors import StartInProgress
from xacthuc.v1 import audit_pb2_grpc, verification_pb2_grpc

T = TypeVar("T")
_sleep = time.sleep  # the wait before a START_IN_PROGRESS is sent again (tests replace it)
# What `grpc.intercept_channel` takes.
ClientInterceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)


class Client:
    """Talks to xacthuc over a blocking gRPC channel. Use `Client.connect(...)`, ideally in `with`."""

    def __init__(self, channel: grpc.Channel, *, api_key: str, timeout: float) -> None:
        self._channel = channel
        self._metadata = w.call_metadata(api_key)
        self._timeout = w.check_timeout(timeout)
        self._stubs: dict[str, Any] = {
            "verification": verification_pb2_grpc.VerificationServiceStub(channel),
            "audit": audit_pb2_grpc.AuditServiceStub(channel),
        }

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        api_key: str,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float = 5.0,
        retries: int = 2,
        interceptors: Sequence[ClientInterceptor] | None = None,
    ) -> Client:
        """See AsyncClient.connect. `interceptors` are blocking-gRPC client interceptors
        (`grpc.intercept_channel`; e.g. OpenTelemetry's `client_interceptor()`)."""
        w.call_metadata(api_key)
        w.check_timeout(timeout)
        options = w.channel_options(retries)
        if tls is True:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        elif isinstance(tls, grpc.ChannelCredentials):
            channel = grpc.secure_channel(target, tls, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        return cls(channel, api_key=api_key, timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, rpc: w.Rpc[T], request: Any, timeout: float | None) -> T:
        # Retries (idempotent calls, UNAVAILABLE only) are gRPC's, from the channel's service
        # config: every attempt runs within this one deadline.
        method = getattr(self._stubs[rpc.service], rpc.name)
        metadata, request_id = w.with_request_id(self._metadata)
        try:
            response = method(
                request,
                metadata=metadata,
                timeout=timeout if timeout is not None else self._timeout,
            )
        except grpc.RpcError as e:
            raise w.decode_error(e, request_id) from None
        return rpc.parse(response)

    def start_phone_verification(
        self,
        *,
        account_id: str,
        phone_number: str,
        client_ip: str,
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> Challenge:
        """See AsyncClient.start_phone_verification (START_IN_PROGRESS retried with a key)."""
        request = w.start_request(account_id, phone_number, client_ip, idempotency_key)
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        retried = 0
        while True:
            try:
                return self._call(w.START, request, deadline - time.monotonic())
            except StartInProgress as e:
                remaining = deadline - time.monotonic()
                delay = w.start_retry_delay(e, idempotency_key, retried, remaining)
                if delay is None:
                    raise
            retried += 1
            _sleep(delay)

    def confirm_phone_verification(
        self, *, challenge_id: str, account_id: str, code: str, timeout: float | None = None
    ) -> Attestation:
        return self._call(w.CONFIRM, w.confirm_request(challenge_id, account_id, code), timeout)

    def verify_personal_id(
        self,
        *,
        account_id: str,
        personal_id_number: str,
        full_name: str,
        date_of_birth: date,
        purpose: str,
        client_ip: str,
        declared_no_vietnamese_mobile: bool = False,
        sex: str | None = None,
        personal_id_type: str = "citizen",
        timeout: float | None = None,
    ) -> Attestation:
        """Authenticate by personal ID through the e-ID registry. `purpose` is
        "no_vietnamese_mobile" (needs the user's declaration) or "commercial_livestream";
        `personal_id_type` "citizen" (12 digits) or "foreigner" (the e-ID system's
        identification number for a foreigner, R9)."""
        request = w.personal_id_request(
            account_id,
            personal_id_number,
            full_name,
            date_of_birth,
            purpose,
            declared_no_vietnamese_mobile,
            client_ip,
            sex,
            personal_id_type,
        )
        return self._call(w.VERIFY_PERSONAL_ID, request, timeout)

    def get_commercial_livestream_eligibility(
        self, *, account_id: str, timeout: float | None = None
    ) -> Eligibility:
        """Whether the account may livestream commercially now, and why not (R4, P7)."""
        return self._call(w.LIVESTREAM_ELIGIBILITY, w.eligibility_request(account_id), timeout)

    def get_attestation(self, *, account_id: str, timeout: float | None = None) -> Attestation:
        return self._call(w.GET_ATTESTATION, w.attestation_request(account_id), timeout)

    def get_jwks(self, *, timeout: float | None = None) -> str:
        return self._call(w.GET_JWKS, w.jwks_request(), timeout)

    def authorize(
        self, *, account_id: str, action: str | Action, timeout: float | None = None
    ) -> Decision:
        """May the account do `action` now ("read", "post", "comment", "share", "livestream",
        "commercial_livestream")? The same `Decision` (allowed, reason, rule) the offline
        `authorize_token` computes from a token. A refusal is an answer, not an exception."""
        return self._call(w.AUTHORIZE, w.authorize_request(account_id, action), timeout)

    def revoke_attestation(
        self, *, account_id: str, reason: str, timeout: float | None = None
    ) -> Revocation:
        """Revoke the account's attestation (`reason`: 1-64 of a-z 0-9 _, e.g.
        "account_deleted"). Idempotent, so retried on UNAVAILABLE like the reads."""
        return self._call(w.REVOKE, w.revoke_request(account_id, reason), timeout)

    def introspect_attestation(
        self, *, account_id: str, timeout: float | None = None
    ) -> Introspection:
        """The attestation's state now: active, revoked, aged_out, expired or none."""
        return self._call(w.INTROSPECT, w.introspect_request(account_id), timeout)

    def lock_account(
        self,
        *,
        account_id: str,
        kind: str,
        reason: str,
        request_reference: str,
        until: datetime | None = None,
        timeout: float | None = None,
    ) -> LockResult:
        """Lock the account (R7): `kind` "temporary" with `until` 7-30 days ahead, or
        "permanent" without. `reason` a legal reason code (a-z 0-9 _), `request_reference`
        the request answered. Every action but reading is then refused ACCOUNT_LOCKED,
        online and offline. Safe to retry (the same lock again is `unchanged`)."""
        request = w.lock_request(account_id, kind, until, reason, request_reference)
        return self._call(w.LOCK, request, timeout)

    def unlock_account(
        self, *, account_id: str, reason: str, timeout: float | None = None
    ) -> Unlock:
        """Lift the account's lock now (R7); `was_locked` false when none held."""
        return self._call(w.UNLOCK, w.unlock_request(account_id, reason), timeout)

    def erase_account_records(
        self, *, account_id: str, request_reference: str, timeout: float | None = None
    ) -> Erasure:
        """Erase the contents of every audit record of this platform naming the account
        (P10; Law 91/2025: deletion on request), at once; `request_reference` (1-128 of
        A-Z a-z 0-9 . _ : / -) names the request, in the audited `records_erased`. Leaf
        hashes stay, so checkpoints still verify. Safe to retry (a repeat erases 0)."""
        request = w.erase_request(account_id, request_reference)
        return self._call(w.ERASE, request, timeout)

    def get_status_list(self, *, timeout: float | None = None) -> SignedStatusList:
        """The platform's signed status list (`statuslist+jwt`) and its URI, for offline
        revocation checks without HTTP access (see StatusListCache.over_grpc)."""
        return self._call(w.GET_STATUS_LIST, w.status_list_request(), timeout)

    def link_guardian(
        self,
        *,
        child_account_id: str,
        child_date_of_birth: date,
        guardian_account_id: str,
        guardian_date_of_birth: date,
        relationship: str,
        guardian_consent: bool,
        child_consent: bool = False,
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> GuardianLink:
        """Register a child under 16 through a guardian whose own account on this platform is
        already verified (phone or personal ID). `relationship` is "parent" or
        "legal_guardian"; the child's consent is required from 7 years old (Law 91/2025).
        Not retried by the SDK: it records consents. Pass `idempotency_key` (1-128 printable
        ASCII characters) to make your own retry safe: the same key and fields answer as the
        call that took effect (same link id and token, nothing renewed or revoked), other
        fields IDEMPOTENCY_KEY_REUSED. Without a key a second call renews the link (a fresh
        token, the first revoked)."""
        request = w.link_guardian_request(
            child_account_id,
            child_date_of_birth,
            guardian_account_id,
            guardian_date_of_birth,
            relationship,
            guardian_consent,
            child_consent,
            idempotency_key,
        )
        return self._call(w.LINK_GUARDIAN, request, timeout)

    def withdraw_guardian_link(self, *, link_id: str, timeout: float | None = None) -> datetime:
        """End a guardian link; the child's attestation is revoked at once. Returns when.
        A link that already ended raises LinkAlreadyEnded: a withdrawal you retry after it
        took effect (its reply lost) gets that, and may treat it as done."""
        return self._call(
            w.WITHDRAW_GUARDIAN_LINK, w.withdraw_guardian_link_request(link_id), timeout
        )

    def list_accounts_aging_out(
        self,
        *,
        from_time: datetime,
        to_time: datetime,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AgingOutPage:
        """One page of the guardian-managed accounts whose 16th birthday is in
        [from_time, to_time); pass `next_page_token` back for the next page."""
        request = w.aging_out_request(from_time, to_time, page_size, page_token)
        return self._call(w.LIST_AGING_OUT, request, timeout)

    def query_audit_records(
        self,
        *,
        account_id: str = "",
        event: str = "",
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AuditPage:
        request = w.audit_request(account_id, event, from_time, to_time, page_size, page_token)
        return self._call(w.QUERY_AUDIT, request, timeout)

    def get_checkpoint(self, *, timeout: float | None = None) -> LogCheckpoint:
        return self._call(w.GET_CHECKPOINT, w.checkpoint_request(), timeout)

    def get_inclusion_proof(
        self, *, index: int, tree_size: int, timeout: float | None = None
    ) -> list[bytes]:
        return self._call(w.GET_INCLUSION_PROOF, w.inclusion_request(index, tree_size), timeout)

    def get_consistency_proof(
        self, *, from_size: int, to_size: int, timeout: float | None = None
    ) -> list[bytes]:
        return self._call(
            w.GET_CONSISTENCY_PROOF, w.consistency_request(from_size, to_size), timeout
        )

    def get_report(
        self,
        *,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        timeout: float | None = None,
    ) -> dict[str, int]:
        return self._call(w.GET_REPORT, w.report_request(from_time, to_time), timeout)

    def export_audit_records(
        self, *, from_index: int = 0, to_index: int = 0, timeout: float | None = None
    ) -> Iterator[bytes]:
        """See AsyncClient.export_audit_records."""
        metadata, request_id = w.with_request_id(self._metadata)
        call = self._stubs["audit"].ExportAuditRecords(
            w.export_request(from_index, to_index),
            metadata=metadata,
            timeout=timeout if timeout is not None else self._timeout,
        )
        try:
            for response in call:
                yield response.jsonl
        except grpc.RpcError as e:
            raise w.decode_error(e, request_id) from None
        finally:
            call.cancel()  # the caller stopped early: end the stream on the server too
