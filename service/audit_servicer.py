"""The gRPC edge of the audit log (AuditService): auditor keys only, own platform only."""

from __future__ import annotations

import base64
import json

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from xacthuc.auth import ApiKeys, Caller, Role
from xacthuc.errors import FieldInvalid
from xacthuc.rpc import not_implemented, rpc
from xacthuc.store.base import Store
from xacthuc.v1 import audit_pb2, audit_pb2_grpc


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    _BATCH = 1000

    def __init__(self, *, api_keys: ApiKeys, store: Store) -> None:
        self.api_keys = api_keys
        self._store = store

    @rpc(Role.AUDITOR)
    async def QueryAuditRecords(
        self, caller: Caller, request: audit_pb2.QueryAuditRecordsRequest
    ) -> audit_pb2.QueryAuditRecordsResponse:
        page_size = request.page_size or 100
        if not 1 <= page_size <= 1000:
            raise FieldInvalid("page_size", "must be 1-1000")
        start = _decode_page_token(request.page_token)
        since = request.from_time.ToNanoseconds() / 1e9 if request.HasField("from_time") else None
        until = request.to_time.ToNanoseconds() / 1e9 if request.HasField("to_time") else None
        found: list[audit_pb2.AuditRecord] = []
        index = start
        while len(found) < page_size:
            batch = await self._store.audit_records(caller.platform, index, index + self._BATCH)
            if not batch:
                break
            for offset, raw in enumerate(batch):
                rec = json.loads(raw)
                ts = Timestamp()
                ts.FromJsonString(rec["time"])
                t = ts.ToNanoseconds() / 1e9
                if (
                    (not request.account_id or rec["account"] == request.account_id)
                    and (not request.event or rec["event"] == request.event)
                    and (since is None or t >= since)
                    and (until is None or t < until)
                ):
                    found.append(
                        audit_pb2.AuditRecord(
                            index=index + offset,
                            record_json=raw,
                            event=rec["event"],
                            account_id=rec["account"],
                            time=ts,
                        )
                    )
                    if len(found) == page_size:
                        index += offset + 1
                        break
            else:
                index += len(batch)
                continue
            break
        more = bool(await self._store.audit_records(caller.platform, index, index + 1))
        return audit_pb2.QueryAuditRecordsResponse(
            records=found, next_page_token=_encode_page_token(index) if more else ""
        )

    _not_yet = rpc(Role.AUDITOR)(not_implemented)

    GetCheckpoint = GetInclusionProof = GetConsistencyProof = GetReport = _not_yet

    async def ExportAuditRecords(
        self, request: audit_pb2.ExportAuditRecordsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._not_yet(request, context)


def _encode_page_token(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        index = int(value)
        if kind != "i" or index < 0:
            raise ValueError
    except ValueError:
        raise FieldInvalid("page_token", "is not a token from a previous response") from None
    return index
