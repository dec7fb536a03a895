"""What every RPC handler shares: decoding, authentication, the role check, the request
bounds, error mapping, metrics.

`rpc(role)` wraps a servicer method `(self, caller, request) -> response`; the wrapped
method authenticates the caller from its `authorization` metadata, refuses other roles,
refuses a request whose bytes did not decode (REQUEST_MALFORMED) or whose fields break
their bounds (`request_bounds`, FIELD_INVALID), turns exceptions into statuses through
`grpc_errors` (the one place), counts the call and writes its access line (one per call,
`xacthuc.server.logs.access`, unless the servicer's `access_log` is off). `add_service` registers a servicer's
methods from the service descriptor with a decoder that never raises: gRPC itself would
answer a decode error UNKNOWN ("Unexpected DecodeError") and log a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from xacthuc.domain.errors import (
    CredentialInvalid,
    NotImplementedYet,
    RequestMalformed,
    RoleNotAllowed,
    XacthucError,
)
from xacthuc.server.auth import ApiKeys, Caller, Role
from xacthuc.server.grpc_errors import internal, to_status
from xacthuc.server.logs import access, access_enabled
from xacthuc.server.request_bounds import check_request, plan
from xacthuc.server.request_ids import begin_call, bind_platform, bound_platform, trailer

RPC_TOTAL = Counter("xacthuc_rpc_total", "RPCs by method and outcome reason", ["method", "reason"])
RPC_SECONDS = Histogram("xacthuc_rpc_seconds", "RPC latency", ["method"])

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")
Handler = Callable[[Any, Caller, Req], Awaitable[Resp]]


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1_000_000_000))
    return ts


class EdgeServicer:
    """What `rpc` needs of a servicer: its API keys, and what to do when a call of an
    authenticated caller is refused before its handler runs (by default nothing)."""

    api_keys: ApiKeys
    access_log: bool = True  # one access line per call (XACTHUC_ACCESS_LOG)

    async def refused_at_edge(self, caller: Caller, method: str, error: XacthucError) -> None:
        return None


class Undecodable:
    """What request bytes that are no valid message decode to; the handler refuses it."""

    __slots__ = ()


UNDECODABLE: Final = Undecodable()
# Set on the wrapped handlers: "unary" or "stream"; `add_service` registers no other.
_KIND = "__xacthuc_rpc__"


def _decoder(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    parse = message.FromString

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except DecodeError:
            return UNDECODABLE

    return decode


def method_handlers(
    servicer: EdgeServicer, service: ServiceDescriptor
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The gRPC method handlers of every method of `service`, each a method of `servicer`
    wrapped by `rpc` or `rpc_stream`. Fails (at start) for a method that is not so wrapped
    or a request string field without a bound."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in service.methods:
        behaviour = getattr(servicer, m.name)
        kind = "stream" if m.server_streaming else "unary"
        if m.client_streaming or getattr(behaviour, _KIND, None) != kind:
            raise TypeError(f"{service.full_name}.{m.name} is not a {kind} @rpc method")
        plan(m.input_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if m.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[m.name] = make(
            behaviour,
            request_deserializer=_decoder(message_factory.GetMessageClass(m.input_type)),
            response_serializer=message_factory.GetMessageClass(m.output_type).SerializeToString,
        )
    return handlers


def add_service(
    server: grpc.aio.Server,
    servicer: EdgeServicer,
    service: ServiceDescriptor,
    *,
    access_log: bool = True,
) -> None:
    """Serve `service` by `servicer` (in place of the generated `add_*_to_server`), with an
    access line per call or none."""
    servicer.access_log = access_log
    handlers = method_handlers(servicer, service)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


class _NotServed(grpc.GenericRpcHandler):
    """The last handler: any method no other handler serves answers UNIMPLEMENTED with
    ErrorInfo NOT_IMPLEMENTED and the request id, like every other error (gRPC's own answer
    is a bare 'Method not found!'). A stream-stream handler takes a call of any kind."""

    def __init__(self, access_log: bool) -> None:
        self._handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(
            _not_served if access_log else _not_served_quietly
        )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return self._handler


async def _not_served(
    requests: object, context: grpc.aio.ServicerContext[Any, Any], *, logged: bool = True
) -> None:
    started = time.perf_counter()
    request_id = begin_call(context, "not_served")
    status = to_status(NotImplementedYet(), request_id)
    RPC_TOTAL.labels("not_served", NotImplementedYet.reason).inc()
    if logged:
        elapsed = time.perf_counter() - started
        _log_access("not_served", status.code, NotImplementedYet.reason, elapsed, request_id)
    await context.abort(status.code, status.details, trailer(request_id, status.trailing_metadata))


async def _not_served_quietly(
    requests: object, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    await _not_served(requests, context, logged=False)


def add_not_served(server: grpc.aio.Server, *, access_log: bool = True) -> None:
    """Register the catch-all for methods not served; after every service."""
    server.add_generic_rpc_handlers((_NotServed(access_log),))


def _log_access(
    method: str, code: grpc.StatusCode, reason: str, seconds: float, request_id: str
) -> None:
    if access_enabled():  # no platform look-up for a line that is not written
        access(
            method=method,
            platform=bound_platform(),
            grpc_status=code.name,
            reason=reason,
            seconds=seconds,
            request_id=request_id,
        )


async def _admit(
    self: EdgeServicer,
    role: Role,
    method: str,
    request: Req | Undecodable,
    context: grpc.aio.ServicerContext[Any, Any],
) -> tuple[Caller, Req]:
    """The caller and request of a call that may reach its handler: authenticated, of
    `role`, with a request that decoded and keeps its bounds."""
    caller = self.api_keys.authenticate(_authorization(context))
    bind_platform(caller.platform)
    if caller.role is not role:
        raise RoleNotAllowed()
    try:
        if isinstance(request, Undecodable):
            raise RequestMalformed()
        check_request(request)
    except XacthucError as e:
        await self.refused_at_edge(caller, method, e)
        raise
    return caller, request


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if len(values) > 1:
        # Ambiguous: a proxy in front may have checked another value than the one used here.
        raise CredentialInvalid("more than one 'authorization' metadata value")
    return values[0] if values and isinstance(values[0], str) else None


# gRPC statuses that mark a server span as failed (OTel semantic conventions for RPC servers).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _recording_span() -> trace.Span | None:
    """The RPC's span (`xacthuc.server.telemetry`) if one records, looked up once per call:
    None when tracing is off."""
    span = trace.get_current_span()
    return span if span.is_recording() else None


def _trace_caller(span: trace.Span | None, caller: Caller) -> None:
    """Names the platform on the RPC's span, if one records."""
    if span is not None:
        span.set_attribute("xacthuc.platform", caller.platform)


def _trace_outcome(span: trace.Span | None, reason: str, code: grpc.StatusCode) -> None:
    """The outcome on the RPC's span: the stable reason and the gRPC status, nothing else."""
    if span is not None:
        span.set_attribute("xacthuc.reason", reason)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_FAULTS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, reason))


class _Outcomes:
    """How one wrapped method ends, the same for unary and streaming calls: its metrics
    (label children bound once: `labels()` takes a lock per call), the span's outcome, the
    access line, and for an error the abort with the status and request id."""

    __slots__ = ("method", "ok", "seconds")

    def __init__(self, method: str) -> None:
        self.method = method
        self.seconds = RPC_SECONDS.labels(method)
        self.ok = RPC_TOTAL.labels(method, "OK")

    def _log(
        self,
        servicer: EdgeServicer,
        code: grpc.StatusCode,
        reason: str,
        elapsed: float,
        request_id: str,
    ) -> None:
        if servicer.access_log:
            _log_access(self.method, code, reason, elapsed, request_id)

    def succeeded(
        self, servicer: EdgeServicer, span: trace.Span | None, started: float, request_id: str
    ) -> None:
        elapsed = time.perf_counter() - started
        self.ok.inc()
        self.seconds.observe(elapsed)
        _trace_outcome(span, "OK", grpc.StatusCode.OK)
        self._log(servicer, grpc.StatusCode.OK, "OK", elapsed, request_id)

    def cancelled(self, servicer: EdgeServicer, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        self._log(servicer, grpc.StatusCode.CANCELLED, "CANCELLED", elapsed, request_id)

    def status_of(self, error: Exception, request_id: str) -> tuple[grpc.Status, str]:
        if isinstance(error, XacthucError):
            return to_status(error, request_id), error.reason
        return internal(self.method, error, request_id), "INTERNAL"

    async def refuse(
        self,
        servicer: EdgeServicer,
        context: grpc.aio.ServicerContext[Any, Any],
        span: trace.Span | None,
        status: grpc.Status,
        reason: str,
        started: float,
        request_id: str,
    ) -> NoReturn:
        elapsed = time.perf_counter() - started
        RPC_TOTAL.labels(self.method, reason).inc()
        self.seconds.observe(elapsed)
        _trace_outcome(span, reason, status.code)
        self._log(servicer, status.code, reason, elapsed, request_id)
        await context.abort(
            status.code, status.details, trailer(request_id, status.trailing_metadata)
        )
        raise AssertionError("unreachable: abort raises")


def rpc(role: Role) -> Callable[[Handler[Req, Resp]], Callable[..., Awaitable[Resp]]]:
    def wrap(fn: Handler[Req, Resp]) -> Callable[..., Awaitable[Resp]]:
        method = fn.__name__
        outcomes = _Outcomes(method)

        @functools.wraps(fn)
        async def handler(
            self: EdgeServicer,
            request: Req | Undecodable,
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> Resp:
            started = time.perf_counter()
            request_id = begin_call(context, method)
            span = _recording_span()
            try:
                caller, admitted = await _admit(self, role, method, request, context)
                _trace_caller(span, caller)
                response = await fn(self, caller, admitted)
            except asyncio.CancelledError:
                outcomes.cancelled(self, started, request_id)
                raise
            except Exception as e:
                status, reason = outcomes.status_of(e, request_id)
            else:
                outcomes.succeeded(self, span, started, request_id)
                return response
            await outcomes.refuse(self, context, span, status, reason, started, request_id)

        setattr(handler, _KIND, "unary")
        return handler

    return wrap


def rpc_stream(role: Role) -> Callable[[Callable[..., AsyncIterator[Resp]]], Callable[..., Any]]:
    """`rpc` for server-streaming methods: wraps an async generator
    `(self, caller, request) -> AsyncIterator[response]` the same way (authentication, role,
    one error mapping, metrics); an error after some responses ends the stream with it."""

    def wrap(fn: Callable[..., AsyncIterator[Resp]]) -> Callable[..., Any]:
        method = fn.__name__
        outcomes = _Outcomes(method)

        @functools.wraps(fn)
        async def handler(
            self: EdgeServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Resp]:
            started = time.perf_counter()
            request_id = begin_call(context, method)
            span = _recording_span()
            try:
                caller, admitted = await _admit(self, role, method, request, context)
                _trace_caller(span, caller)
                async for response in fn(self, caller, admitted):
                    yield response
            except asyncio.CancelledError:
                outcomes.cancelled(self, started, request_id)
                raise
            except Exception as e:
                status, reason = outcomes.status_of(e, request_id)
            else:
                outcomes.succeeded(self, span, started, request_id)
                return
            await outcomes.refuse(self, context, span, status, reason, started, request_id)

        setattr(handler, _KIND, "stream")
        return handler

    return wrap
