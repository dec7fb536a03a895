"""OpenTelemetry traces: a server span per RPC, with child spans for Redis and outbound HTTP.

Off by default. Tracing turns on when an OTLP endpoint is configured: XACTHUC_OTLP_ENDPOINT,
or the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT (then the
OTel SDK also reads the other OTEL_EXPORTER_OTLP_* variables: headers, certificates), unless
OTEL_SDK_DISABLED=true. Off means off: no interceptor on the server, no instrumented client, nothing done per call.

What is traced, all under one `TracerProvider` (`Telemetry`):

* every xacthuc RPC: a SERVER span named `<service>/<method>`, whose parent is the caller's
  W3C trace context (`traceparent`/`tracestate` metadata; baggage is not taken). Our own
  interceptor (`_ServerSpans`), not opentelemetry-instrumentation-grpc's aio one: that one
  records the caller's IP (`net.peer.ip`) with no way to turn it off, and records every
  `context.abort` (how each refusal such as OTP_INCORRECT ends) as an exception event with a
  stack trace. Health and reflection calls get no span.
  `xacthuc.server.rpc` adds `xacthuc.platform`, `xacthuc.reason` and `rpc.grpc.status_code`;
* Redis commands (opentelemetry-instrumentation-redis, per client): `db.statement` is the
  command name with every argument replaced by `?` (the package's sanitized form), so no key,
  pseudonym or Lua argument is recorded;
* outbound HTTP of the SMS gateway and e-ID registry adapters
  (opentelemetry-instrumentation-aiohttp-client, an `aiohttp.TraceConfig` per session): the
  URL without credentials, query or fragment, and no body (the instrumentation records none).

No span attribute carries personal data: no phone number, code, client IP, ID number, name or
date of birth (tests/integration/test_telemetry.py searches every attribute of every span
for them).

One more instrumented client (PostgreSQL, say) is one more method here beside `redis`, e.g.
`PsycopgInstrumentor().instrument_connection(conn, tracer_provider=self.provider)`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import aiohttp
import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from xacthuc.server.config import Settings

__all__ = ["Telemetry", "telemetry_from", "untraced"]

TRACER_NAME = "xacthuc.server"
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context only: no caller baggage
_ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The gRPC services that get no span: health probes and reflection are noise, not requests.
_UNTRACED_PREFIX = "/grpc."


class Telemetry:
    """Instruments the server and its clients with one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _ServerSpans(self._tracer)

    def redis(self, client: Any) -> None:
        """Trace the commands of one redis-py client (sanitized `db.statement`)."""
        RedisInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def http(self) -> list[aiohttp.TraceConfig]:
        """`trace_configs` for an outbound `aiohttp.ClientSession`."""
        return [create_trace_config(url_filter=_bare_url, tracer_provider=self.provider)]

    def shutdown(self) -> None:
        """Flush and stop the exporter."""
        self.provider.shutdown()


def telemetry_from(settings: Settings) -> Telemetry | None:
    """Tracing with an OTLP/gRPC exporter when an endpoint is configured, else None (off)."""
    endpoint = settings.otlp_endpoint or None
    if endpoint is None and not any(os.environ.get(name) for name in _ENV_ENDPOINTS):
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":  # the SDK's switch
        return None
    # Loaded only when tracing is on: the exporter pulls in its own gRPC stubs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "xacthuc"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Telemetry(provider)


def untraced(probe: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`probe` without spans: the health monitor pings the store twice a second, and a trace
    of each ping would drown the requests'."""

    async def quiet() -> None:
        with suppress_instrumentation():
            await probe()

    return quiet


def _bare_url(url: URL) -> str:
    """The URL a span may record: no credentials, query or fragment."""
    return str(url.with_user(None).with_query(None).with_fragment(None))


# Generic only in the type stubs.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _carrier(context: Context) -> dict[str, str]:
    return {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in ("traceparent", "tracestate") and isinstance(value, str)
    }


class _ServerSpans(grpc.aio.ServerInterceptor):
    """A SERVER span around each unary and server-streaming xacthuc RPC (see the module doc)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or not full or full.startswith(_UNTRACED_PREFIX):
            return handler
        service, _, method = full.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        name = f"{service}/{method}"
        tracer = self._tracer
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary  # typed as a sync behaviour; here a coroutine

            async def traced_unary(request: Any, context: Context) -> Any:
                with _span(tracer, name, context, attributes) as span:
                    try:
                        return await unary(request, context)
                    except BaseException as e:
                        _unexpected(span, e)
                        raise

            return grpc.unary_unary_rpc_method_handler(
                traced_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream: Any = handler.unary_stream  # typed as a sync behaviour; an async generator

            async def traced_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                with _span(tracer, name, context, attributes) as span:
                    try:
                        async for response in stream(request, context):
                            yield response
                    except BaseException as e:
                        _unexpected(span, e)
                        raise

            return grpc.unary_stream_rpc_method_handler(
                traced_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming RPC in the contract


def _span(
    tracer: trace.Tracer,
    name: str,
    context: Context,
    attributes: dict[str, str],
) -> Any:
    return tracer.start_as_current_span(
        name,
        context=_PROPAGATOR.extract(_carrier(context)),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,  # exceptions may quote what they were given
        set_status_on_exception=False,
    )


def _unexpected(span: trace.Span, error: BaseException) -> None:
    """A call that ended other than by `context.abort` (whose status `rpc` already set)."""
    if isinstance(error, grpc.aio.AbortError):
        return
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the caller left
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
        return
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
