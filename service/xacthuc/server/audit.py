"""The gRPC edge of the audit log (AuditService): auditor keys only, own platform only.

Every call is itself audited: after it succeeds, or when it is refused, a record
`auditor_<method>` (account "", the caller's `key_id`, the call's non-personal parameters,
outcome `ok` or `refused` with its reason) is appended to the caller's platform log. A call
refused at the edge before its handler runs (undecodable bytes, a field out of its bounds), or
by its handler for a malformed field (FIELD_INVALID), is audited as `refused` with the reason
and the `field` only: its values broke their rules and stay out of the log. If that record cannot be written the call fails: no unaudited access to
the log.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from xacthuc.domain.clock import Clock, rfc3339
from xacthuc.domain.errors import FieldInvalid, StoreUnavailable, XacthucError
from xacthuc.ports.audit_log import LogFilter
from xacthuc.ports.store import Store
from xacthuc.server.auth import ApiKeys, Caller, Role
from xacthuc.server.request_bounds import timestamp_seconds
from xacthuc.server.rpc import EdgeServicer, rpc, rpc_stream
from xacthuc.v1 import audit_pb2, audit_pb2_grpc
from xacthuc.verifiers.auditlog import AuditLog
from xacthuc.verifiers.phone_otp import check_account_id

# An event name, as the log writes them (`check_ok`, `auditor_get_report`).
_EVENT = re.compile(r"[a-z0-9_]{1,64}")


class AuditedCalls:
    """Appends the `auditor_<method>` record of every auditor call, for the gRPC edge and the
    console's HTTP API alike (`extra` parameters, such as the console's `channel`, go into
    every record)."""

    def __init__(self, store: Store, clock: Clock, **extra: str) -> None:
        self._store = store
        self._clock = clock
        self._extra = extra

    @contextlib.asynccontextmanager
    async def audited(
        self, caller: Caller, method: str, params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Audit the call in the block: `ok` when it ends normally, `refused` with the reason
        when it raises; the block may add results to `params`."""
        try:
            yield params
        except XacthucError as e:
            if isinstance(e, FieldInvalid):
                # A text that broke its rule (a filter holding a name or a phone number, say)
                # stays out of the append-only log: the refusal keeps the numbers and names
                # the field.
                params = {k: v for k, v in params.items() if not isinstance(v, str)}
                if "field" in e.metadata:
                    params["field"] = e.metadata["field"]
            if not isinstance(e, StoreUnavailable):
                await self.append(caller, method, "refused", e.reason, params)
            raise
        await self.append(caller, method, "ok", "", params)

    async def append(
        self, caller: Caller, method: str, outcome: str, reason: str, params: dict[str, Any]
    ) -> None:
        await self._store.append_audit(
            caller.platform,
            self._clock.now(),
            account="",
            event=f"auditor_{method}",
            outcome=outcome,
            reason=reason,
            key_id=caller.key_id,
            **self._extra,
            **params,
        )


@dataclass(frozen=True, slots=True)
class FoundRecord:
    """A record of a query: its index and its text exactly as stored, with its fields."""

    index: int
    raw: str
    fields: dict[str, Any]


async def find_records(
    audit_log: AuditLog,
    platform: str,
    *,
    account: str = "",
    event: str = "",
    since: float | None = None,
    until: float | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> tuple[list[FoundRecord], str]:
    """A page of the records matching the filter, oldest first, and the next page's token
    ("" at the end): QueryAuditRecords and the console's account history (`AuditLog.query`:
    through the indexes with a database; erased records never match). The filters are an
    account id and an event name (FIELD_INVALID `account_id`, `event` otherwise): they go
    into the call's own audit record."""
    if account:
        check_account_id(account)
    if event and not _EVENT.fullmatch(event):
        raise FieldInvalid("event", "must be 1-64 characters of a-z 0-9 _")
    if since is not None and until is not None and until <= since:
        raise FieldInvalid("to_time", "must be after from_time")
    page_size = page_size or 100
    if not 1 <= page_size <= 1000:
        raise FieldInvalid("page_size", "must be 1-1000")
    entries, token = await audit_log.query(
        platform,
        LogFilter(account, event, since, until),
        page_size=page_size,
        page_token=page_token,
    )
    found = [
        FoundRecord(e.index, e.record, json.loads(e.record))
        for e in entries
        if e.record is not None
    ]
    return found, token


class AuditServicer(audit_pb2_grpc.AuditServiceServicer, EdgeServicer):
    def __init__(
        self,
        *,
        api_keys: ApiKeys,
        store: Store,
        audit_log: AuditLog,
        clock: Clock,
    ) -> None:
        self.api_keys = api_keys
        self._store = store
        self._log = audit_log
        self._clock = clock
        self._calls = AuditedCalls(store, clock)
        self._audited = self._calls.audited

    async def refused_at_edge(self, caller: Caller, method: str, error: XacthucError) -> None:
        params = {"field": error.metadata["field"]} if "field" in error.metadata else {}
        await self._calls.append(caller, _snake_case(method), "refused", error.reason, params)

    @rpc(Role.AUDITOR)
    async def QueryAuditRecords(
        self, caller: Caller, request: audit_pb2.QueryAuditRecordsRequest
    ) -> audit_pb2.QueryAuditRecordsResponse:
        params: dict[str, Any] = {
            "query_account": request.account_id,
            "query_event": request.event,
            "from_time": _time_text(request, "from_time"),
            "to_time": _time_text(request, "to_time"),
            "page_size": request.page_size,
        }
        async with self._audited(caller, "query_audit_records", params):
            response = await self._query(caller, request)
            params["returned"] = len(response.records)
        return response

    async def _query(
        self, caller: Caller, request: audit_pb2.QueryAuditRecordsRequest
    ) -> audit_pb2.QueryAuditRecordsResponse:
        found, token = await find_records(
            self._log,
            caller.platform,
            account=request.account_id,
            event=request.event,
            since=timestamp_seconds(request, "from_time"),
            until=timestamp_seconds(request, "to_time"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        records = []
        for r in found:
            ts = Timestamp()
            ts.FromJsonString(r.fields["time"])
            records.append(
                audit_pb2.AuditRecord(
                    index=r.index,
                    record_json=r.raw,
                    event=r.fields["event"],
                    account_id=r.fields["account"],
                    time=ts,
                )
            )
        return audit_pb2.QueryAuditRecordsResponse(records=records, next_page_token=token)

    @rpc(Role.AUDITOR)
    async def GetCheckpoint(
        self, caller: Caller, request: audit_pb2.GetCheckpointRequest
    ) -> audit_pb2.GetCheckpointResponse:
        async with self._audited(caller, "get_checkpoint", {}) as params:
            checkpoint = await self._log.current_checkpoint(caller.platform)
            params["tree_size"] = checkpoint.tree_size
        return audit_pb2.GetCheckpointResponse(
            signed_note=checkpoint.note,
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash,
            verifier_key=self._log.verifier_key(caller.platform),
        )

    @rpc(Role.AUDITOR)
    async def GetInclusionProof(
        self, caller: Caller, request: audit_pb2.GetInclusionProofRequest
    ) -> audit_pb2.GetInclusionProofResponse:
        params = {"index": request.index, "tree_size": request.tree_size}
        async with self._audited(caller, "get_inclusion_proof", params):
            # A signed tree size is hashed already: the proof reads O(log n) stored hashes.
            size = await self._log.tree_size(caller.platform, request.tree_size)
            _check_tree_size("tree_size", request.tree_size, size)
            if request.index >= request.tree_size:
                raise FieldInvalid("index", f"must be below tree_size ({request.tree_size})")
            hashes = await self._log.inclusion_proof(
                caller.platform, request.index, request.tree_size
            )
        return audit_pb2.GetInclusionProofResponse(hashes=hashes)

    @rpc(Role.AUDITOR)
    async def GetConsistencyProof(
        self, caller: Caller, request: audit_pb2.GetConsistencyProofRequest
    ) -> audit_pb2.GetConsistencyProofResponse:
        params = {"from_size": request.from_size, "to_size": request.to_size}
        async with self._audited(caller, "get_consistency_proof", params):
            if request.from_size == 0:
                raise FieldInvalid(
                    "from_size", "must be at least 1 (the empty tree proves nothing)"
                )
            if request.to_size < request.from_size:
                raise FieldInvalid("to_size", f"must not be below from_size ({request.from_size})")
            size = await self._log.tree_size(caller.platform, request.to_size)
            _check_tree_size("to_size", request.to_size, size)
            hashes = await self._log.consistency_proof(
                caller.platform, request.from_size, request.to_size
            )
        return audit_pb2.GetConsistencyProofResponse(hashes=hashes)

    @rpc_stream(Role.AUDITOR)
    async def ExportAuditRecords(
        self, caller: Caller, request: audit_pb2.ExportAuditRecordsRequest
    ) -> AsyncIterator[audit_pb2.ExportAuditRecordsResponse]:
        params = {"from_index": request.from_index, "to_index": request.to_index}
        async with self._audited(caller, "export_audit_records", params):
            size = await self._log.size(caller.platform)
            stop = request.to_index or size
            if stop > size:
                raise FieldInvalid("to_index", f"is beyond the end of the log ({size} records)")
            if request.from_index > stop:
                raise FieldInvalid("from_index", f"must not be above to_index ({stop})")
            params["to_index"] = stop
        async for chunk in self._log.export(caller.platform, request.from_index, stop):
            yield audit_pb2.ExportAuditRecordsResponse(jsonl=chunk)

    @rpc(Role.AUDITOR)
    async def GetReport(
        self, caller: Caller, request: audit_pb2.GetReportRequest
    ) -> audit_pb2.GetReportResponse:
        params = {
            "from_time": _time_text(request, "from_time"),
            "to_time": _time_text(request, "to_time"),
        }
        async with self._audited(caller, "get_report", params):
            since = timestamp_seconds(request, "from_time")
            until = timestamp_seconds(request, "to_time")
            if since is not None and until is not None and until <= since:
                raise FieldInvalid("to_time", "must be after from_time")
            counts = await self._log.report(caller.platform, since, until)
        return audit_pb2.GetReportResponse(counts=counts)


def _check_tree_size(field: str, value: int, size: int) -> None:
    if value == 0:
        raise FieldInvalid(field, "must be at least 1")
    if value > size:
        raise FieldInvalid(field, f"is beyond the end of the log ({size} records)")


def _time_text(request: Any, name: str) -> str:
    seconds = timestamp_seconds(request, name)
    return "" if seconds is None else rfc3339(seconds)


def _snake_case(method: str) -> str:
    """`QueryAuditRecords` -> `query_audit_records`, as the audited event names it."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()
