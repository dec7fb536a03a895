"""What every RPC handler shares: authentication, the role check, error mapping, metrics.

`rpc(role)` wraps a servicer method `(self, caller, request) -> response`; the wrapped
method authenticates the caller from its `authorization` metadata, refuses other roles,
turns exceptions into statuses through `grpc_errors` (the one place) and counts the call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Histogram

from xacthuc.domain.errors import NotImplementedYet, RoleNotAllowed, XacthucError
from xacthuc.server.auth import Caller, Role
from xacthuc.server.grpc_errors import internal, to_status

RPC_TOTAL = Counter("xacthuc_rpc_total", "RPCs by method and outcome reason", ["method", "reason"])
RPC_SECONDS = Histogram("xacthuc_rpc_seconds", "RPC latency", ["method"])

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Caller, Req], Awaitable[Resp]]


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1_000_000_000))
    return ts


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def rpc(role: Role) -> Callable[[Handler[Req, Resp]], Callable[..., Awaitable[Resp]]]:
    def wrap(fn: Handler[Req, Resp]) -> Callable[..., Awaitable[Resp]]:
        method = fn.__name__
        seconds = RPC_SECONDS.labels(method)
        ok = RPC_TOTAL.labels(method, "OK")  # bound once: labels() takes a lock per call

        @functools.wraps(fn)
        async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            try:
                caller = self.api_keys.authenticate(_authorization(context))
                if caller.role is not role:
                    raise RoleNotAllowed()
                response = await fn(self, caller, request)
            except XacthucError as e:
                status, reason = to_status(e), e.reason
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status, reason = internal(method, e), "INTERNAL"
            else:
                ok.inc()
                seconds.observe(time.perf_counter() - started)
                return response
            RPC_TOTAL.labels(method, reason).inc()
            seconds.observe(time.perf_counter() - started)
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("unreachable: abort raises")

        return handler

    return wrap


async def not_implemented(self: Any, caller: Caller, request: object) -> None:
    """The body of RPCs that are in the contract but not served yet."""
    raise NotImplementedYet()


def rpc_stream(role: Role) -> Callable[[Callable[..., AsyncIterator[Resp]]], Callable[..., Any]]:
    """`rpc` for server-streaming methods: wraps an async generator
    `(self, caller, request) -> AsyncIterator[response]` the same way (authentication, role,
    one error mapping, metrics); an error after some responses ends the stream with it."""

    def wrap(fn: Callable[..., AsyncIterator[Resp]]) -> Callable[..., Any]:
        method = fn.__name__
        seconds = RPC_SECONDS.labels(method)
        ok = RPC_TOTAL.labels(method, "OK")  # bound once: labels() takes a lock per call

        @functools.wraps(fn)
        async def handler(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Resp]:
            started = time.perf_counter()
            try:
                caller = self.api_keys.authenticate(_authorization(context))
                if caller.role is not role:
                    raise RoleNotAllowed()
                async for response in fn(self, caller, request):
                    yield response
            except XacthucError as e:
                status, reason = to_status(e), e.reason
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status, reason = internal(method, e), "INTERNAL"
            else:
                ok.inc()
                seconds.observe(time.perf_counter() - started)
                return
            RPC_TOTAL.labels(method, reason).inc()
            seconds.observe(time.perf_counter() - started)
            await context.abort(status.code, status.details, status.trailing_metadata)

        return handler

    return wrap
