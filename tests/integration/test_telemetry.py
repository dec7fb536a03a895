"""Traces of a real server over real Redis, with the HTTP SMS gateway and e-ID registry on
loopback, driven through the shipped client: the spans' shape, and no personal data in them."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from xacthuc.adapters.registry.http import HttpRegistry
from xacthuc.adapters.registry.sandbox import SandboxRegistry
from xacthuc.adapters.sms.http import HttpSmsSender
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import AsyncClient, Client
from xacthuc.domain import errors
from xacthuc.domain.clock import FixedClock
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.config import Settings
from xacthuc.server.runtime import Server, start_server
from xacthuc.server.telemetry import Telemetry, telemetry_from

from ..conftest import pair_store
from ..test_http_registry import Pki, pki  # noqa: F401  (the self-made CA fixture)
from ..test_sms_http import Gateway, gateway  # noqa: F401  (the loopback SMS gateway)
from .conftest import START, make_keys, make_settings
from .test_personal_id import AN, Provider

# The sandbox citizen AN, whom the loopback registry matches.
ID_NUMBER = "001085336181"
NAME = "Nguyễn Văn An"
BORN = datetime.date(1985, 3, 14)
assert {"personal_id_number": ID_NUMBER, "full_name": NAME, "date_of_birth": BORN} == AN

# Distinctive values: whatever of them shows up in a span is a leak.
PHONE_LOCAL = "0983 571 246"
PHONE_E164 = "+84983571246"
CLIENT_IP = "198.51.100.147"
ACCOUNT = "acct-trace-7q"
GATEWAY_QUERY_SECRET = "q-s3cr3t-91"
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
CALLER_SPAN_ID = 0xEEE19B7EC3C1B174


def with_traceparent(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("traceparent", f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, True
    )


class Traceparent(grpc.aio.UnaryUnaryClientInterceptor):
    """What a platform's own tracing adds to each call: a W3C traceparent header."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(with_traceparent(details), request)


class StreamTraceparent(grpc.aio.UnaryStreamClientInterceptor):
    """The same for server-streaming calls (grpc.aio files an interceptor under one kind)."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(with_traceparent(details), request)


class _Details(
    NamedTuple(
        "_Details",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", bool | None),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails is abstract: the blocking interceptors build their own."""


class SyncTraceparent(grpc.UnaryUnaryClientInterceptor):
    """The blocking client's form of `Traceparent` (grpc.intercept_channel)."""

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        d = client_call_details
        metadata = [
            *(d.metadata or ()),
            ("traceparent", f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"),
        ]
        details = _Details(
            d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression
        )
        return continuation(details, request)


@dataclass
class Traced:
    server: Server
    gateway: Gateway
    spans: InMemorySpanExporter
    client: AsyncClient
    api_key: str
    auditor: AsyncClient


@pytest.fixture
async def traced(
    redis_url: str,
    redis_namespace: str,
    database: Database,
    gateway: Gateway,  # noqa: F811
    pki: Pki,  # noqa: F811
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider)
    provider_app = web.Application()
    provider_app.router.add_post("/v1/match", Provider(SandboxRegistry.from_file()).match)
    runner = web.AppRunner(provider_app, shutdown_timeout=0.1)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    keys, raw = make_keys()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=HttpSmsSender(
            url=f"{gateway.url}?key={GATEWAY_QUERY_SECRET}",
            auth_header=None,
            trace_configs=telemetry.http(),
        ),
        registry=HttpRegistry(
            base_url=f"https://127.0.0.1:{runner.addresses[0][1]}",
            client_cert=(pki.client_cert, pki.client_key),
            ca_file=pki.ca,
            trace_configs=telemetry.http(),
        ),
        clock=FixedClock(START),
        api_keys=keys,
        telemetry=telemetry,
    )
    server = await start_server(app, "127.0.0.1:0")
    api_key = raw[("alpha", Role.PLATFORM)]
    # The SDK's `interceptors=` hook, as a platform passes OpenTelemetry's client interceptors.
    target = f"127.0.0.1:{server.port}"
    client = await AsyncClient.connect(
        target, api_key=api_key, timeout=10, interceptors=[Traceparent()]
    )
    auditor = await AsyncClient.connect(
        target,
        api_key=raw[("alpha", Role.AUDITOR)],
        timeout=10,
        interceptors=[Traceparent(), StreamTraceparent()],
    )
    yield Traced(server, gateway, exporter, client, api_key, auditor)
    await client.close()
    await auditor.close()
    await server.stop(grace=0)
    await runner.cleanup()


def server_span(spans: tuple[ReadableSpan, ...], method: str) -> ReadableSpan:
    found = [s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("/" + method)]
    assert 1 == len(found), [s.name for s in spans]
    return found[0]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def dump(span: ReadableSpan) -> str:
    """Everything a span exports, as text (non-ASCII kept as is, so names can be searched)."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [
                {"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events
            ],
            "links": [dict(link.attributes or {}) for link in span.links],
            "status": span.status.description,
            "resource": dict(span.resource.attributes),
        },
        ensure_ascii=False,
        default=str,
    )


async def start_and_confirm(t: Traced) -> str:
    challenge = await t.client.start_phone_verification(
        account_id=ACCOUNT, phone_number=PHONE_LOCAL, client_ip=CLIENT_IP
    )
    text = t.gateway.requests[-1]["json"]["text"]
    found = re.search(r"\b(\d{6})\b", text)
    assert found is not None
    code = found.group(1)
    with pytest.raises(errors.OtpIncorrect):
        await t.client.confirm_phone_verification(
            challenge_id=challenge.challenge_id,
            account_id=ACCOUNT,
            code="000000" if code != "000000" else "111111",
        )
    await t.client.confirm_phone_verification(
        challenge_id=challenge.challenge_id, account_id=ACCOUNT, code=code
    )
    return code


async def test_each_rpc_is_a_server_span_under_the_callers_trace(traced: Traced) -> None:
    """Start and Confirm each get a SERVER span whose parent is the caller's traceparent,
    with the method, platform, reason and status code as attributes."""
    await start_and_confirm(traced)
    spans = traced.spans.get_finished_spans()
    start = server_span(spans, "StartPhoneVerification")
    assert start.parent is not None
    assert start.context is not None
    assert TRACE_ID == start.context.trace_id
    assert CALLER_SPAN_ID == start.parent.span_id
    assert start.parent.is_remote
    attributes = dict(start.attributes or {})
    for span in spans:
        if span.kind is SpanKind.SERVER:  # ours: nothing about the caller beyond these
            assert set(span.attributes or {}) <= {
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "xacthuc.platform",
                "xacthuc.reason",
                "rpc.grpc.status_code",
            }
    assert "StartPhoneVerification" == attributes["rpc.method"]
    assert "xacthuc.v1.VerificationService" == attributes["rpc.service"]
    assert "alpha" == attributes["xacthuc.platform"]
    assert "OK" == attributes["xacthuc.reason"]
    assert 0 == attributes["rpc.grpc.status_code"]
    confirms = [s for s in spans if s.name.endswith("/ConfirmPhoneVerification")]
    assert 2 == len(confirms)
    refused, accepted = sorted(confirms, key=lambda s: s.start_time or 0)
    assert "OTP_INCORRECT" == (refused.attributes or {})["xacthuc.reason"]
    assert (
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
        == (refused.attributes or {})["rpc.grpc.status_code"]
    )
    assert () == tuple(refused.events)  # a refusal is an answer, not an exception
    assert "OK" == (accepted.attributes or {})["xacthuc.reason"]
    for span in (refused, accepted):
        assert span.context is not None
        assert TRACE_ID == span.context.trace_id


async def test_the_blocking_clients_interceptors_reach_the_server(traced: Traced) -> None:
    """`Client.connect(interceptors=...)`: the traceparent its interceptor adds is the parent
    of the server's span (the server saw the metadata)."""

    def call() -> str:
        with Client.connect(
            f"127.0.0.1:{traced.server.port}",
            api_key=traced.api_key,
            timeout=10,
            interceptors=[SyncTraceparent()],
        ) as client:
            return client.get_jwks()

    assert "keys" in json.loads(await asyncio.to_thread(call))
    span = server_span(traced.spans.get_finished_spans(), "GetJwks")
    assert span.context is not None
    assert span.parent is not None
    assert (TRACE_ID, CALLER_SPAN_ID) == (span.context.trace_id, span.parent.span_id)


async def test_the_async_clients_interceptors_reach_the_server(traced: Traced) -> None:
    """`AsyncClient.connect(interceptors=...)` (the fixture's clients): the same."""
    await traced.client.get_jwks()
    span = server_span(traced.spans.get_finished_spans(), "GetJwks")
    assert span.context is not None
    assert span.parent is not None
    assert (TRACE_ID, CALLER_SPAN_ID) == (span.context.trace_id, span.parent.span_id)


async def test_a_streaming_rpc_is_a_server_span_too(traced: Traced) -> None:
    """ExportAuditRecords (server streaming) gets its span under the caller's trace, ended
    when the stream ends, with the auditor's platform and OK."""
    await start_and_confirm(traced)
    chunks = [chunk async for chunk in traced.auditor.export_audit_records()]
    assert chunks
    spans = traced.spans.get_finished_spans()
    export = server_span(spans, "ExportAuditRecords")
    assert export.parent is not None
    assert CALLER_SPAN_ID == export.parent.span_id
    attributes = dict(export.attributes or {})
    assert ("alpha", "OK", 0) == (
        attributes["xacthuc.platform"],
        attributes["xacthuc.reason"],
        attributes["rpc.grpc.status_code"],
    )
    # The records come from PostgreSQL (the pair store): the export touches no Redis.
    assert not [s for s in children(spans, export) if s.name in ("EVALSHA", "LRANGE")]


async def test_redis_and_the_sms_gateway_are_child_spans(traced: Traced) -> None:
    """Start's span has the Redis scripts and the gateway POST as children; Confirm's has
    its Redis script. Redis statements are the command name only."""
    await start_and_confirm(traced)
    spans = traced.spans.get_finished_spans()
    start = children(spans, server_span(spans, "StartPhoneVerification"))
    scopes = {s.instrumentation_scope.name for s in start if s.instrumentation_scope}
    assert "opentelemetry.instrumentation.redis" in scopes
    posts = [s for s in start if s.name == "POST"]
    assert 1 == len(posts)
    assert SpanKind.CLIENT is posts[0].kind
    urls = [str(v) for k, v in (posts[0].attributes or {}).items() if k in ("http.url", "url.full")]
    assert [traced.gateway.url] == urls  # no query string
    redis_spans = [s for s in spans if s.name in ("EVALSHA", "EVAL", "HGETALL", "PING")]
    assert redis_spans
    for span in redis_spans:
        statement = (span.attributes or {}).get("db.statement") or (span.attributes or {}).get(
            "db.query.text"
        )
        assert statement is None or re.fullmatch(r"[A-Z]+( \?)*", str(statement)), statement


async def test_the_registry_call_is_a_child_span(traced: Traced) -> None:
    """VerifyPersonalId's span has the registry POST as a child."""
    await traced.client.verify_personal_id(
        account_id=ACCOUNT,
        client_ip=CLIENT_IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        personal_id_number=ID_NUMBER,
        full_name=NAME,
        date_of_birth=BORN,
    )
    spans = traced.spans.get_finished_spans()
    verify = server_span(spans, "VerifyPersonalId")
    assert "OK" == (verify.attributes or {})["xacthuc.reason"]
    assert ["POST"] == [s.name for s in children(spans, verify) if s.name == "POST"]


async def test_no_span_carries_personal_data(traced: Traced) -> None:
    """No attribute, event or status of any span holds the phone number, the code, the
    client IP, the ID number, the name, the date of birth, the account, the API key or the
    gateway URL's query."""
    code = await start_and_confirm(traced)
    await traced.client.verify_personal_id(
        account_id=ACCOUNT,
        client_ip=CLIENT_IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        personal_id_number=ID_NUMBER,
        full_name=NAME,
        date_of_birth=BORN,
    )
    spans = traced.spans.get_finished_spans()
    assert len(spans) > 10
    text = "\n".join(dump(s) for s in spans)
    forbidden = (
        PHONE_E164,
        "983571246",
        "983 571 246",
        code,
        CLIENT_IP,
        ID_NUMBER,
        NAME,
        "Nguyễn",
        "1985-03-14",
        ACCOUNT,
        traced.api_key,
        GATEWAY_QUERY_SECRET,
    )
    assert [] == [secret for secret in forbidden if secret in text]


def test_tracing_is_off_unless_an_endpoint_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint, no tracing; XACTHUC_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turn it
    on, and OTEL_SDK_DISABLED=true off again."""
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    assert telemetry_from(make_settings()) is None
    on = telemetry_from(make_settings(otlp_endpoint="http://127.0.0.1:1"))
    assert on is not None
    on.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    from_env = telemetry_from(Settings.load(otp_hmac_keys="k" * 32, pseudonym_key="p" * 32))
    assert from_env is not None
    from_env.shutdown()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry_from(make_settings(otlp_endpoint="http://127.0.0.1:1")) is None


async def test_without_tracing_the_server_has_no_interceptor(
    redis_url: str, redis_namespace: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off by default: the app has no telemetry, so the server gets no interceptor."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    keys, _ = make_keys()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        clock=FixedClock(START),
        api_keys=keys,
    )
    assert app.telemetry is None
    made: list[dict[str, Any]] = []
    real = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)
    server = await start_server(app, "127.0.0.1:0")
    await server.stop(grace=0)
    assert [None] == [kw.get("interceptors") for kw in made]
