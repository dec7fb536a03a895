"""The request id of a call: from the caller's `x-request-id` when well formed, else made here.

It is bound to every log line written during the call (structlog contextvars), sent back in
the `x-request-id` trailing metadata on success and failure alike, and put in the ErrorInfo
metadata (`request_id`) of every error, so a platform's support engineer can quote it and
the operator find the call's log lines.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import grpc
import structlog

HEADER = "x-request-id"
# Bounded and log-safe: a UUID, a W3C trace id or traceparent, a ULID all fit.
WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def new_request_id() -> str:
    return secrets.token_hex(16)


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's id if well formed (first `x-request-id` only), otherwise a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == HEADER:
            if isinstance(value, str) and WELL_FORMED.fullmatch(value):
                return value
            break
    return new_request_id()


def begin_call(context: grpc.aio.ServicerContext[Any, Any], method: str) -> str:
    """The call's request id, bound to every log line written from now on in this call (grpc.aio
    runs each call in a task of its own, so the binding ends with it) and set as the trailing
    metadata of a success (an abort replaces it: see `trailer`)."""
    request_id = request_id_of(context)
    context.set_trailing_metadata(((HEADER, request_id),))
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    return request_id


def bind_platform(platform: str) -> None:
    """Once the caller is authenticated, its platform goes on the call's log lines too."""
    structlog.contextvars.bind_contextvars(platform=platform)


def bound_platform() -> str:
    """The platform bound to this call's log lines, "" before authentication."""
    return str(structlog.contextvars.get_contextvars().get("platform", ""))


def trailer(
    request_id: str, metadata: tuple[tuple[str, str | bytes], ...] | None
) -> tuple[tuple[str, str | bytes], ...]:
    """The trailing metadata of a failed call: the status details and the request id
    (`abort` replaces what `set_trailing_metadata` set)."""
    return (*(metadata or ()), (HEADER, request_id))
