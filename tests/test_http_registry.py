"""HttpRegistry against a real mutual-TLS registry on loopback: answers, failures, breaker."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import ssl
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xacthuc.adapters.registry.http import CircuitState, HttpRegistry
from xacthuc.domain.clock import FixedClock, MonotonicClock
from xacthuc.ports.registry import RegistryAnswer, RegistryQuery, RegistryUnavailableError

NUMBER = "001085336181"
NAME = "Nguyễn Văn An"
DOB = datetime.date(1985, 3, 14)
QUERY = RegistryQuery(NUMBER, unicodedata.normalize("NFD", f"  {NAME} "), DOB)
SECRETS = (
    NUMBER,
    NAME,
    unicodedata.normalize("NFD", NAME),
    "Nguyen Van An",
    json.dumps(NAME),  # the \\u escaped JSON form
    DOB.isoformat(),
    "14/03/1985",
)
CLIENT_CN = "xacthuc-test-client"


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


# --- a self-made PKI ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, a stray CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("xacthuc test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "localhost",
        server_key,
        issuer,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(CLIENT_CN, client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _issue("some other CA", other_key, None, ca=True)
    _write(folder / "ca", ca_cert, None)
    _write(folder / "server", server_cert, server_key)
    _write(folder / "client", client_cert, client_key)
    _write(folder / "other-ca", other_ca, None)
    return Pki(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.crt",
    )


# --- a scripted registry -----------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"result": "match"})
    delay: float = 0.0


@dataclass
class Registry:
    """A scripted e-ID provider: answers with `replies` in order, repeating the last one."""

    base_url: str = ""
    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return len(self.requests)

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        self.requests.append(
            {
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "json": await request.json(),
                "peer": peer,
            }
        )
        reply = self.replies[min(self.hits, len(self.replies)) - 1]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if isinstance(reply.body, str):
            return web.Response(text=reply.body, status=reply.status)
        return web.json_response(reply.body, status=reply.status)


@pytest.fixture
async def registry(pki: Pki) -> AsyncIterator[Registry]:
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_ssl.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_ssl.verify_mode = ssl.CERT_REQUIRED
    fake = Registry()
    app = web.Application()
    app.router.add_post("/v1/match", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    fake.base_url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1000.0)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def make(pki: Pki, clock: FixedClock, sleeps: list[float]) -> AsyncIterator[Any]:
    """Builds HttpRegistry clients with the test PKI, fake sleep and clock; closes them all."""
    made: list[HttpRegistry] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def factory(base_url: str, **kwargs: Any) -> HttpRegistry:
        settings: dict[str, Any] = {
            "base_url": base_url,
            "client_cert": (pki.client_cert, pki.client_key),
            "ca_file": pki.ca,
            "timeout": 2.0,
            "retries": 2,
            "clock": clock,
            "sleep": fake_sleep,
        }
        client = HttpRegistry(**{**settings, **kwargs})
        made.append(client)
        return client

    yield factory
    for client in made:  # aclose() is idempotent; this catches tests that failed midway
        await client.aclose()


async def closing(client: HttpRegistry, query: RegistryQuery = QUERY) -> RegistryAnswer:
    try:
        return await client.match(query)
    finally:
        await client.aclose()


# --- answers -----------------------------------------------------------------------------


async def test_match_over_mutual_tls(registry: Registry, make: Any) -> None:
    """A 200 "match" is MATCH; the registry saw our client certificate and the JSON body."""
    assert RegistryAnswer.MATCH == await closing(make(registry.base_url))

    assert 1 == registry.hits
    request = registry.requests[0]
    expected = {
        "personal_id": NUMBER,
        "id_type": "citizen",
        "full_name": NAME,
        "date_of_birth": "1985-03-14",
    }
    assert expected == request["json"]
    assert True is unicodedata.is_normalized("NFC", request["json"]["full_name"])
    assert "application/json" == request["headers"]["content-type"]
    assert 16 == len(request["headers"]["x-request-id"])
    assert ((("commonName", CLIENT_CN),),) == request["peer"]["subject"]


async def test_a_foreigners_number_travels_with_its_type(registry: Registry, make: Any) -> None:
    """R9: the wire says which kind of number it is, so the provider looks among foreigners."""
    query = RegistryQuery("8400123456", NAME, DOB, id_type="foreigner")
    assert RegistryAnswer.MATCH == await closing(make(registry.base_url), query)
    assert ("8400123456", "foreigner") == (
        registry.requests[0]["json"]["personal_id"],
        registry.requests[0]["json"]["id_type"],
    )


async def test_no_match(registry: Registry, make: Any) -> None:
    """A 200 "no_match" is NO_MATCH, in one request."""
    registry.replies = [Reply(body={"result": "no_match"})]

    assert RegistryAnswer.NO_MATCH == await closing(make(registry.base_url))
    assert 1 == registry.hits


async def test_trailing_slash_in_base_url(registry: Registry, make: Any) -> None:
    """base_url may end with a slash; the path is still /v1/match."""
    assert RegistryAnswer.MATCH == await closing(make(registry.base_url + "/"))


# --- unavailable -------------------------------------------------------------------------


async def test_client_without_certificate_is_refused(
    registry: Registry, make: Any, sleeps: list[float]
) -> None:
    """Without a client certificate the server refuses the handshake: unavailable, no hit."""
    with pytest.raises(RegistryUnavailableError) as caught:
        await closing(make(registry.base_url, client_cert=None))

    assert 0 == registry.hits
    assert [] == leaked(str(caught.value))


async def test_server_not_signed_by_our_ca_is_refused_without_retry(
    registry: Registry, make: Any, pki: Pki, sleeps: list[float]
) -> None:
    """A server certificate that does not verify against ca_file fails at once, not retried."""
    with pytest.raises(RegistryUnavailableError, match="after 1 attempt") as caught:
        await closing(make(registry.base_url, ca_file=pki.other_ca))

    assert 0 == registry.hits
    assert [] == sleeps
    assert "ConnectError" in str(caught.value)


async def test_slow_registry_times_out_in_bounded_time(registry: Registry, make: Any) -> None:
    """A registry slower than `timeout` fails every attempt and match ends in bounded time."""
    registry.replies = [Reply(delay=2.0)]
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(RegistryUnavailableError, match="Timeout"):
        await closing(make(registry.base_url, timeout=0.2, retries=1))

    elapsed = loop.time() - started
    assert 2 == registry.hits
    assert elapsed < 1.5, elapsed


async def test_failing_registry_is_retried_then_unavailable(
    registry: Registry, make: Any, sleeps: list[float]
) -> None:
    """Persistent 500s: 1 + retries requests with one request id, then unavailable."""
    registry.replies = [Reply(500, body={"error": "boom"})]

    with pytest.raises(RegistryUnavailableError, match=r"after 3 attempt.*HTTP 500") as caught:
        await closing(make(registry.base_url, retries=2))

    assert 3 == registry.hits
    assert 2 == len(sleeps)
    assert 1 == len({r["headers"]["x-request-id"] for r in registry.requests})
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_503_then_match_succeeds_on_retry(registry: Registry, make: Any) -> None:
    """A transient 503 followed by a 200 gives the answer."""
    registry.replies = [Reply(503), Reply(body={"result": "no_match"})]

    assert RegistryAnswer.NO_MATCH == await closing(make(registry.base_url))
    assert 2 == registry.hits


@pytest.mark.parametrize(
    "reply",
    [
        Reply(408, body={"result": "match"}),
        Reply(429, body={"error": "slow down"}),
        Reply(302, body={}),
        Reply(200, body={"result": "maybe"}),
        Reply(200, body={"result": True}),
        Reply(200, body=["match"]),
        Reply(200, body="match"),
        Reply(200, body='{"result": "match"}' + " " * (64 * 1024)),  # oversized answer
    ],
)
async def test_other_answers_are_unavailable_without_retry(
    registry: Registry, make: Any, reply: Reply, sleeps: list[float]
) -> None:
    """A non-5xx error status or a 200 without a valid result fails at once, not retried."""
    registry.replies = [reply]

    with pytest.raises(RegistryUnavailableError, match="after 1 attempt"):
        await closing(make(registry.base_url))

    assert 1 == registry.hits
    assert [] == sleeps


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 451])
async def test_a_rejecting_4xx_is_a_non_match_not_an_outage(
    registry: Registry,
    make: Any,
    sleeps: list[float],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 4xx (not 408/429) is the provider's answer about this query: NO_MATCH, one request,
    no retry, no breaker failure however often, and one WARNING naming the status only."""
    caplog.set_level(logging.DEBUG, logger="xacthuc.adapters.registry.http")
    registry.replies = [Reply(status, body={"error": "bad full_name Nguyễn 001085336181"})]
    client = make(registry.base_url, failure_threshold=2)
    try:
        for _ in range(5):
            assert RegistryAnswer.NO_MATCH == await client.match(QUERY)
        assert (5, [], CircuitState.CLOSED) == (registry.hits, sleeps, client.circuit_state)
    finally:
        await client.aclose()
    lines = [r for r in caplog.records if r.name == "xacthuc.adapters.registry.http"]
    assert [logging.WARNING] * 5 == [r.levelno for r in lines]
    assert all(f"HTTP {status}" in r.getMessage() for r in lines)
    assert [] == [m for r in lines for m in leaked(r.getMessage())]


# --- circuit breaker ---------------------------------------------------------------------


async def test_circuit_opens_after_threshold_and_half_opens_after_reset(
    registry: Registry, make: Any, clock: FixedClock
) -> None:
    """N failed matches open the circuit (no more hits); after reset_timeout one trial closes it."""
    registry.replies = [Reply(500)]
    client = make(registry.base_url, retries=1, failure_threshold=2, reset_timeout=30.0)
    try:
        for _ in range(2):
            with pytest.raises(RegistryUnavailableError, match="HTTP 500"):
                await client.match(QUERY)
        assert 4 == registry.hits
        assert CircuitState.OPEN == client.circuit_state

        for _ in range(5):
            with pytest.raises(RegistryUnavailableError, match="circuit is open"):
                await client.match(QUERY)
        clock.advance(29.9)
        with pytest.raises(RegistryUnavailableError, match="circuit is open"):
            await client.match(QUERY)
        assert 4 == registry.hits

        clock.advance(0.1)
        assert CircuitState.HALF_OPEN == client.circuit_state
        registry.replies = [Reply(body={"result": "match"})]
        assert RegistryAnswer.MATCH == await client.match(QUERY)
        assert 5 == registry.hits
        assert CircuitState.CLOSED == client.circuit_state
    finally:
        await client.aclose()


async def test_failed_trial_reopens_the_circuit_after_one_request(
    registry: Registry, make: Any, clock: FixedClock
) -> None:
    """A half-open trial is a single request; if it fails the circuit opens again."""
    registry.replies = [Reply(500)]
    client = make(registry.base_url, retries=2, failure_threshold=1, reset_timeout=10.0)
    try:
        with pytest.raises(RegistryUnavailableError):
            await client.match(QUERY)
        assert 3 == registry.hits

        clock.advance(10.0)
        with pytest.raises(RegistryUnavailableError, match="after 1 attempt"):
            await client.match(QUERY)
        assert 4 == registry.hits
        assert CircuitState.OPEN == client.circuit_state

        clock.advance(5.0)
        with pytest.raises(RegistryUnavailableError, match="circuit is open"):
            await client.match(QUERY)
        assert 4 == registry.hits
    finally:
        await client.aclose()


async def test_half_open_lets_only_one_concurrent_trial_through(
    registry: Registry, make: Any, clock: FixedClock
) -> None:
    """While the half-open trial is in flight, other matches fail fast without a request."""
    registry.replies = [Reply(500)]
    client = make(registry.base_url, retries=0, failure_threshold=1, reset_timeout=1.0)
    try:
        with pytest.raises(RegistryUnavailableError):
            await client.match(QUERY)
        clock.advance(1.0)
        registry.replies = [Reply(body={"result": "match"}, delay=0.2)]

        results = await asyncio.gather(
            client.match(QUERY), client.match(QUERY), return_exceptions=True
        )

        assert [RegistryAnswer.MATCH, RegistryUnavailableError] == [
            r if isinstance(r, RegistryAnswer) else type(r) for r in results
        ]
        assert 2 == registry.hits
        assert CircuitState.CLOSED == client.circuit_state
    finally:
        await client.aclose()


async def test_an_answer_resets_the_failure_count(registry: Registry, make: Any) -> None:
    """Failures must be consecutive: an answer in between keeps the circuit closed."""
    registry.replies = [Reply(500), Reply(body={"result": "no_match"}), Reply(500)]
    client = make(registry.base_url, retries=0, failure_threshold=2)
    try:
        with pytest.raises(RegistryUnavailableError):
            await client.match(QUERY)
        assert RegistryAnswer.NO_MATCH == await client.match(QUERY)
        with pytest.raises(RegistryUnavailableError):
            await client.match(QUERY)

        assert CircuitState.CLOSED == client.circuit_state
    finally:
        await client.aclose()


async def test_a_match_cut_short_by_its_caller_counts_as_a_failure(
    registry: Registry, make: Any
) -> None:
    """A caller's deadline that cancels a hanging match still counts for the breaker."""
    registry.replies = [Reply(delay=30.0)]
    client = make(registry.base_url, timeout=5.0, retries=0, failure_threshold=1)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.match(QUERY)

        assert CircuitState.OPEN == client.circuit_state
        with pytest.raises(RegistryUnavailableError, match="circuit is open"):
            await client.match(QUERY)
        assert 1 == registry.hits
    finally:
        await client.aclose()


async def test_a_cancelled_trial_opens_the_circuit_again(
    registry: Registry, make: Any, clock: FixedClock
) -> None:
    """A half-open trial cut short is a failed trial: open again, and the next trial may run."""
    registry.replies = [Reply(500)]
    client = make(registry.base_url, retries=0, failure_threshold=1, reset_timeout=10.0)
    try:
        with pytest.raises(RegistryUnavailableError):
            await client.match(QUERY)
        clock.advance(10.0)
        registry.replies = [Reply(delay=30.0)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.match(QUERY)
        assert CircuitState.OPEN == client.circuit_state

        clock.advance(10.0)
        registry.replies = [Reply()]
        assert RegistryAnswer.MATCH == await client.match(QUERY)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("deadline", "hits", "sleeps"), [(3.0, 1, []), (4.0, 2, [2.0]), (6.0, 3, [2.0, 2.0])]
)
async def test_no_back_off_or_attempt_starts_that_cannot_end_within_the_deadline(
    registry: Registry,
    clock: FixedClock,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    deadline: float,
    hits: int,
    sleeps: list[float],
) -> None:
    """One deadline covers attempts and back-off: with 2 s per attempt and 2 s back-off, a
    retry happens only when its wait and a whole attempt still fit."""
    monkeypatch.setattr("xacthuc.domain.backoff.random.uniform", lambda low, high: high)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the back-off passes on the breaker's clock
        slept.append(seconds)
        clock.advance(seconds)

    registry.replies = [Reply(500)]
    client = HttpRegistry(
        base_url=registry.base_url,
        client_cert=(pki.client_cert, pki.client_key),
        ca_file=pki.ca,
        timeout=2.0,
        retries=5,
        backoff=10.0,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
    )
    with pytest.raises(RegistryUnavailableError, match=f"after {hits} attempt"):
        await closing(client)

    assert (hits, sleeps) == (registry.hits, slept)


async def test_a_hanging_registry_opens_the_circuit_however_many_retries(
    registry: Registry, make: Any
) -> None:
    """Retries 5, 0.2 s per attempt, a registry that never answers: each match gives up within
    its 0.8 s deadline (attempts and back-off together) as a counted failure, so the circuit
    opens after two and the third match sends nothing."""
    registry.replies = [Reply(delay=30.0)]
    loop = asyncio.get_running_loop()
    client = make(
        registry.base_url,
        timeout=0.2,
        retries=5,
        backoff=0.1,
        deadline=0.8,
        failure_threshold=2,
        clock=MonotonicClock(),
        sleep=asyncio.sleep,
    )
    try:
        for _ in range(2):
            started = loop.time()
            with pytest.raises(RegistryUnavailableError, match="TimeoutError"):
                await client.match(QUERY)
            assert loop.time() - started < 0.8 + 0.7  # without the deadline: up to 4.3 s
        assert registry.hits <= 8  # at most 4 attempts of 0.2 s fit in 0.8 s
        assert CircuitState.OPEN == client.circuit_state

        hits = registry.hits
        with pytest.raises(RegistryUnavailableError, match="circuit is open"):
            await client.match(QUERY)
        assert hits == registry.hits
    finally:
        await client.aclose()


# --- no personal data anywhere -----------------------------------------------------------


async def test_no_personal_data_in_logs_or_errors(
    registry: Registry, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG for every logger, failures, retries and the open circuit log no PII."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "asyncio", "xacthuc"):
        caplog.set_level(logging.DEBUG, logger=name)
    registry.replies = [Reply(502)]
    client = make(registry.base_url, retries=1, failure_threshold=1)
    errors: list[RegistryUnavailableError] = []
    try:
        for _ in range(2):
            with pytest.raises(RegistryUnavailableError) as caught:
                await client.match(QUERY)
            errors.append(caught.value)
    finally:
        await client.aclose()
    with pytest.raises(RegistryUnavailableError) as refused:
        await closing(make(registry.base_url, client_cert=None))
    errors.append(refused.value)

    logger_roots = {record.name.split(".")[0] for record in caplog.records}
    # aiohttp's client logs little per request; its server (the registry here) logs each one.
    assert set() == {"aiohttp", "xacthuc"} - logger_roots
    assert [] == [r.getMessage() for r in caplog.records if leaked(r.getMessage())]
    assert [] == leaked(caplog.text)
    assert [] == [e for e in errors if leaked(str(e)) or leaked(repr(e))]
    ours = [r for r in caplog.records if r.name == "xacthuc.adapters.registry.http"]
    assert True is all("request_id=" in r.getMessage() for r in ours)
    assert True is any("circuit" in r.getMessage() for r in ours)


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "http://registry.example"},
        {"base_url": "registry.example"},
        {"timeout": 0.0},
        {"timeout": float("inf")},
        {"retries": -1},
        {"backoff": -0.1},
        {"failure_threshold": 0},
        {"reset_timeout": -1.0},
        {"deadline": 4.9},  # below `timeout` (5 s): not even one attempt would fit
        {"deadline": float("nan")},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any]) -> None:
    """Nonsense settings fail at construction, not at the first match."""
    settings: dict[str, Any] = {"base_url": "https://registry.example"}
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        HttpRegistry(**{**settings, **kwargs})


def test_registry_can_be_built_outside_an_event_loop(pki: Pki) -> None:
    """build_app() constructs the registry before `xacthuc serve` starts its loop."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    client = HttpRegistry(
        base_url="https://registry.example",
        client_cert=(pki.client_cert, pki.client_key),
        ca_file=pki.ca,
    )

    assert client._client is None


async def test_session_is_made_on_first_match_and_closed_by_aclose(
    registry: Registry, make: Any
) -> None:
    """One session carries every match; aclose() closes it and is idempotent."""
    client = make(registry.base_url)
    assert client._client is None

    assert RegistryAnswer.MATCH == await client.match(QUERY)
    session = client._client
    assert RegistryAnswer.MATCH == await client.match(QUERY)
    assert session is not None
    assert session is client._client
    await client.aclose()
    await client.aclose()

    assert True is session.closed
    assert 2 == registry.hits


async def test_match_after_aclose_fails_without_a_new_session(make: Any) -> None:
    """aclose() before any match makes no session; a later match fails instead of leaking one."""
    client = make("https://127.0.0.1:9")
    await client.aclose()

    with pytest.raises(RuntimeError):
        await client.match(QUERY)
    assert client._client is None


def test_missing_client_certificate_file_fails_at_construction(tmp_path: Path) -> None:
    """A client_cert path that does not exist fails when the registry is built."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError or ssl.SSLError by platform
        HttpRegistry(base_url="https://registry.example", client_cert=(missing, missing))
