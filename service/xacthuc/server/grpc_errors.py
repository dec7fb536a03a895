"""The one place where exceptions become gRPC statuses.

An `XacthucError` goes on the wire as its status code and message, with a `google.rpc.Status`
in the `grpc-status-details-bin` trailer holding `ErrorInfo` (stable reason, domain,
metadata) and, for rate limits, `RetryInfo`. Anything else is a bug: the client gets
INTERNAL with a fixed message and the request id, the traceback goes to the log, nothing leaks.
Every error's ErrorInfo metadata carries the call's `request_id` (see `request_ids`).
"""

from __future__ import annotations

import logging
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from xacthuc.domain.errors import ERROR_DOMAIN, InternalError, XacthucError

log = logging.getLogger("xacthuc.server.rpc")


def to_status(error: XacthucError, request_id: str) -> grpc.Status:
    metadata = {**error.metadata, "request_id": request_id}
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    details: list[Message] = [info]
    if error.retry_after is not None:
        seconds = max(0, math.ceil(error.retry_after))
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
        )
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    status = status_pb2.Status(
        code=grpc.StatusCode[error.code].value[0], message=error.message, details=packed
    )
    return rpc_status.to_status(status)


def internal(method: str, exc: BaseException, request_id: str) -> grpc.Status:
    log.error("unexpected error in %s (request id %s)", method, request_id, exc_info=exc)
    return to_status(InternalError(f"internal error (request id {request_id})"), request_id)


assert grpc.StatusCode.INTERNAL.value[0] == code_pb2.INTERNAL  # the two enums agree
