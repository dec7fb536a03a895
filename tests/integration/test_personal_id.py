"""Personal-ID verification end to end (R3, R4; P5, P7, P8): the shipped client, a real server over
real Redis, and an e-ID provider on loopback HTTPS with mutual TLS."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, Unpack

import pytest
from aiohttp import web

from xacthuc.adapters.registry.http import HttpRegistry
from xacthuc.adapters.registry.sandbox import SandboxRegistry
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import AsyncClient, Attestation, AttestationVerifier
from xacthuc.domain import errors
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import Code
from xacthuc.ports.registry import RegistryQuery
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.runtime import start_server

from ..conftest import pair_store
from ..test_http_registry import Pki, pki  # noqa: F401  (the self-made CA fixture)
from .conftest import START, CapturingSms, Citizen, Harness, make_keys, make_settings


class Person(Citizen):
    """What `by_id` sends: a citizen's identity, and the sex the user declares, if any."""

    sex: NotRequired[str]


class PersonChange(TypedDict, total=False):
    personal_id_number: str
    full_name: str
    date_of_birth: datetime.date
    sex: str


class Options(TypedDict, total=False):
    purpose: str
    declared_no_vietnamese_mobile: bool


# Synthetic citizens from the shipped sandbox file (verifiers/data/sandbox_citizens.jsonl).
AN: Person = {
    "personal_id_number": "001085336181",
    "full_name": "Nguyễn Văn An",
    "date_of_birth": datetime.date(1985, 3, 14),
}
NGOC: Person = {
    "personal_id_number": "001190312909",
    "full_name": "Trần Thị Bích Ngọc",
    "date_of_birth": datetime.date(1990, 11, 2),
}
IP = "203.0.113.20"
SECRETS = ("001085336181", "001190312909", "Nguyễn", "1985-03-14", "Ngọc")


@dataclass
class Provider:
    """A licensed e-ID provider on loopback: answers from the sandbox people, can be slow or fail."""

    people: SandboxRegistry
    delay: float = 0.0
    status: int = 200
    hits: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)
    rejects: str | None = None  # a full name the provider refuses with 400

    async def match(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.json()
        self.seen.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status)
        if body["full_name"] == self.rejects:
            return web.json_response({"error": f"bad name {body['full_name']}"}, status=400)
        query = RegistryQuery(
            body["personal_id"],
            body["full_name"],
            datetime.date.fromisoformat(body["date_of_birth"]),
            body["id_type"],
        )
        return web.json_response({"result": (await self.people.match(query)).value})


@dataclass
class ShiftedClock:
    """time.monotonic() plus an offset a test moves forward (the registry breaker's clock)."""

    offset: float = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset


@dataclass(kw_only=True)
class IdHarness(Harness):
    provider: Provider
    registry_clock: ShiftedClock = field(default_factory=ShiftedClock)


@pytest.fixture
async def idh(
    redis_url: str,
    redis_namespace: str,
    database: Database,
    pki: Pki,  # noqa: F811
) -> AsyncIterator[IdHarness]:
    provider = Provider(SandboxRegistry.from_file())
    registry_clock = ShiftedClock()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED
    web_app = web.Application()
    web_app.router.add_post("/v1/match", provider.match)
    runner = web.AppRunner(web_app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    registry = HttpRegistry(
        base_url=f"https://127.0.0.1:{runner.addresses[0][1]}",
        client_cert=(pki.client_cert, pki.client_key),
        ca_file=pki.ca,
        timeout=0.5,
        retries=1,
        backoff=0.01,
        clock=registry_clock,
    )
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=sms,
        clock=clock,
        api_keys=keys,
        registry=registry,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = IdHarness(app, server, sms, clock, raw, provider=provider, registry_clock=registry_clock)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)
    await runner.cleanup()


def shape(e: errors.XacthucError) -> tuple[object, ...]:
    """Everything a caller can see of a refusal, but its call's own request id."""
    return (e.code, e.reason, e.message, facts(e), e.retry_after)


def facts(e: errors.XacthucError) -> dict[str, str]:
    """The ErrorInfo metadata without `request_id` (new on every call, so it tells nothing)."""
    return {k: v for k, v in e.metadata.items() if k != "request_id"}


async def by_id(
    client: AsyncClient, person: Person, account: str = "acc-1", **kw: Unpack[Options]
) -> Attestation:
    options: Options = {
        "purpose": "no_vietnamese_mobile",
        "declared_no_vietnamese_mobile": True,
        **kw,
    }
    return await client.verify_personal_id(account_id=account, client_ip=IP, **person, **options)


async def test_a_registry_match_gives_a_personal_id_attestation(idh: IdHarness) -> None:
    """A declared no-mobile user who matches in the registry gets a verifiable personal-ID token."""
    client = await idh.client()
    att = await by_id(client, AN)

    verifier = AttestationVerifier(
        await client.get_jwks(), issuer=idh.app.settings.issuer, audience="alpha"
    )
    claims = verifier.verify(att.token, now=idh.clock.now())
    assert ("personal_id", True) == (claims.method, claims.commercial_livestream)
    assert 1 == idh.provider.hits
    assert "Nguyễn Văn An" == idh.provider.seen[0]["full_name"]
    eligibility = await client.get_commercial_livestream_eligibility(account_id="acc-1")
    assert (True, "") == (eligibility.eligible, eligibility.reason)


async def test_name_matching_ignores_case_spacing_and_normal_form_not_diacritics(
    idh: IdHarness,
) -> None:
    """'  nguyễn   VĂN an ' in NFD matches; 'Nguyen Van An' without diacritics does not."""
    import unicodedata

    client = await idh.client()
    spelled = unicodedata.normalize("NFD", "  nguyễn   VĂN an ")
    assert "personal_id" == (await by_id(client, {**AN, "full_name": spelled})).method
    with pytest.raises(errors.PersonalIdNotMatched):
        await by_id(client, {**AN, "full_name": "Nguyen Van An"}, account="acc-2")


async def test_unknown_number_looks_exactly_like_no_match(idh: IdHarness) -> None:
    """A well-formed number nobody has and a wrong name give the same status, reason and message."""
    client = await idh.client()
    with pytest.raises(errors.PersonalIdNotMatched) as unknown:
        await by_id(client, {**AN, "personal_id_number": "001085999999"})
    with pytest.raises(errors.PersonalIdNotMatched) as wrong_name:
        await by_id(client, {**AN, "full_name": "Nguyễn Văn Bình"}, account="acc-2")
    assert (
        unknown.value.code,
        unknown.value.reason,
        unknown.value.message,
        facts(unknown.value),
    ) == (
        wrong_name.value.code,
        wrong_name.value.reason,
        wrong_name.value.message,
        facts(wrong_name.value),
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"personal_id_number": "00108533618"}, errors.PersonalIdMalformed),
        ({"personal_id_number": "00108533618x"}, errors.PersonalIdMalformed),
        ({"personal_id_number": "003085336181"}, errors.PersonalIdPlaceCodeUnknown),
        ({"personal_id_number": "001885336181"}, errors.PersonalIdBirthYearInFuture),
        ({"personal_id_number": "001086336181"}, errors.PersonalIdBirthYearMismatch),
        ({"sex": "female"}, errors.PersonalIdSexMismatch),
        ({"date_of_birth": datetime.date(2030, 1, 1)}, errors.DateOfBirthInvalid),
        ({"date_of_birth": datetime.date(1899, 12, 31)}, errors.DateOfBirthInvalid),
        ({"full_name": "   "}, errors.FieldInvalid),
        # Control, format (bidi overrides) and private-use characters are in no registered
        # name; sent on, they could make a provider fail (and open the breaker for everyone).
        ({"full_name": "Nguyễn\x00Văn An"}, errors.FieldInvalid),
        ({"full_name": "Nguyễn Văn An\x1b[2J"}, errors.FieldInvalid),
        ({"full_name": "Nguyễn \u202eVăn An"}, errors.FieldInvalid),
        ({"full_name": "Nguyễn Văn An\ue000"}, errors.FieldInvalid),
    ],
)
async def test_structural_refusals_never_reach_the_registry(
    idh: IdHarness, change: PersonChange, error: type[errors.XacthucError]
) -> None:
    """Each structural problem has its own INVALID_ARGUMENT reason and costs no registry call."""
    client = await idh.client()
    with pytest.raises(error) as e:
        await by_id(client, {**AN, **change})
    assert Code.INVALID_ARGUMENT == e.value.code
    assert 0 == idh.provider.hits


async def test_without_the_declaration_the_phone_route_is_required(idh: IdHarness) -> None:
    """R3: no declaration of having no Vietnamese mobile -> FAILED_PRECONDITION PHONE_ROUTE_REQUIRED."""
    client = await idh.client()
    with pytest.raises(errors.PhoneRouteRequired) as e:
        await by_id(client, AN, declared_no_vietnamese_mobile=False)
    assert Code.FAILED_PRECONDITION == e.value.code
    assert 0 == idh.provider.hits
    auditor = await idh.client("alpha", Role.AUDITOR)
    (record,) = (await auditor.query_audit_records(event="id_check_started")).records
    assert ("refused", "PHONE_ROUTE_REQUIRED", "no_vietnamese_mobile") == (
        record.record["outcome"],
        record.record["reason"],
        record.record["purpose"],
    )


async def test_the_declaration_is_recorded_in_the_audit_log(idh: IdHarness) -> None:
    """R3: a declared no-mobile verification leaves id_check_started with purpose no_vietnamese_mobile."""
    client = await idh.client()
    await by_id(client, AN)
    auditor = await idh.client("alpha", Role.AUDITOR)
    events = [
        (r.record["event"], r.record.get("purpose"))
        for r in (await auditor.query_audit_records()).records
    ]
    assert [
        ("id_check_started", "no_vietnamese_mobile"),
        ("id_check", "no_vietnamese_mobile"),
        ("attestation_issued", None),
    ] == events


async def test_slow_registry_is_unavailable_and_attests_nothing(idh: IdHarness) -> None:
    """A registry that does not answer in time gives UNAVAILABLE REGISTRY_UNAVAILABLE, no attestation."""
    idh.provider.delay = 2.0
    client = await idh.client()
    with pytest.raises(errors.RegistryUnavailable) as e:
        await by_id(client, AN)
    assert Code.UNAVAILABLE == e.value.code
    with pytest.raises(errors.AttestationNotFound):
        await client.get_attestation(account_id="acc-1")


async def test_failing_registry_is_unavailable(idh: IdHarness) -> None:
    """A registry answering 500 is retried, then UNAVAILABLE; a later healthy registry matches."""
    idh.provider.status = 500
    client = await idh.client()
    with pytest.raises(errors.RegistryUnavailable):
        await by_id(client, AN)
    assert 2 == idh.provider.hits
    idh.provider.status = 200
    assert "personal_id" == (await by_id(client, AN)).method


async def test_children_are_sent_to_the_guardian_route(idh: IdHarness) -> None:
    """R1/P6: under 16 on today's date in Vietnam -> GUARDIAN_REQUIRED; P7 for the livestream purpose."""
    child: Person = {
        "personal_id_number": "001212345678",
        "full_name": "Em Bé",
        "date_of_birth": datetime.date(2012, 6, 1),
    }
    client = await idh.client()
    with pytest.raises(errors.GuardianRequired):
        await by_id(client, child)
    with pytest.raises(errors.GuardianManagedNoCommercialLivestream):
        await by_id(client, child, purpose="commercial_livestream")
    assert 0 == idh.provider.hits


async def test_commercial_livestream_needs_the_id_upgrade(idh: IdHarness) -> None:
    """R4: a phone-only account is not eligible until it verifies by personal ID."""
    client = await idh.client()
    eligibility = await client.get_commercial_livestream_eligibility(account_id="acc-1")
    assert (False, "NOT_AUTHENTICATED") == (eligibility.eligible, eligibility.reason)
    with pytest.raises(errors.AccountNotAuthenticated):
        await by_id(
            client, AN, purpose="commercial_livestream", declared_no_vietnamese_mobile=False
        )

    challenge = await client.start_phone_verification(
        account_id="acc-1", phone_number="0912345678", client_ip=IP
    )
    await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id="acc-1",
        code=idh.sms.code_for(challenge.challenge_id),
    )
    eligibility = await client.get_commercial_livestream_eligibility(account_id="acc-1")
    assert (False, "PERSONAL_ID_REQUIRED") == (eligibility.eligible, eligibility.reason)

    att = await by_id(
        client, AN, purpose="commercial_livestream", declared_no_vietnamese_mobile=False
    )
    assert ("personal_id", True) == (att.method, att.commercial_livestream)
    eligibility = await client.get_commercial_livestream_eligibility(account_id="acc-1")
    assert (True, "") == (eligibility.eligible, eligibility.reason)


async def test_eleventh_account_on_one_number_is_refused(idh: IdHarness) -> None:
    """P8: ten accounts may verify with one ID number on a platform; the 11th, within the same
    hour, is told the cap (PERSONAL_ID_ACCOUNT_LIMIT, no retry-after: waiting cannot help), not
    an attempt budget. A wrong name on that number still looks like one on a number nobody has."""
    client = await idh.client()
    for n in range(10):
        await by_id(client, AN, account=f"acc-{n}")
        idh.clock.advance(5)
    with pytest.raises(errors.PersonalIdAccountLimit) as e:
        await by_id(client, AN, account="acc-10")
    assert Code.RESOURCE_EXHAUSTED == e.value.code
    assert (None, {}) == (e.value.retry_after, facts(e.value))

    with pytest.raises(errors.PersonalIdNotMatched) as known:
        await by_id(client, {**AN, "full_name": "Nguyễn Văn Bình"}, account="probe-1")
    with pytest.raises(errors.PersonalIdNotMatched) as unknown:
        await by_id(client, {**AN, "personal_id_number": "001085999999"}, account="probe-2")
    assert shape(known.value) == shape(unknown.value)


async def test_queries_the_provider_rejects_do_not_open_the_circuit_for_everyone(
    idh: IdHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 is the provider's answer about that query, not an outage: sent more times than
    the breaker's threshold (5), each is a non-match (one request, no retry), and another
    user still gets the registry's answer. Logged once per call, the status only."""
    idh.provider.rejects = "Trần Thị Bị Từ Chối"
    client = await idh.client()
    caplog.set_level(logging.DEBUG, logger="xacthuc.adapters.registry.http")
    for n in range(6):  # each on its own number and account: no budget runs out
        person: Person = {**AN, "personal_id_number": f"00108599999{n}"}
        with pytest.raises(errors.PersonalIdNotMatched):
            await by_id(client, {**person, "full_name": "Trần Thị Bị Từ Chối"}, account=f"p-{n}")
    assert 6 == idh.provider.hits

    assert "personal_id" == (await by_id(client, NGOC, account="someone-else")).method
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert [logging.WARNING] * 6 == [r.levelno for r in rejected]
    assert all("HTTP 400" in r.getMessage() for r in rejected)
    assert [] == [
        r for r in caplog.records if "Từ Chối" in r.getMessage() or "bad name" in r.getMessage()
    ]


async def test_a_query_the_provider_rejects_answers_exactly_like_a_non_match(
    idh: IdHarness,
) -> None:
    """No oracle: the 4xx answer has the status, reason, message and metadata of a wrong name,
    and costs the attempt the same way (audited alike, nothing refunded)."""
    idh.provider.rejects = "Nguyễn Văn Từ Chối"
    client = await idh.client()
    with pytest.raises(errors.PersonalIdNotMatched) as rejected:
        await by_id(client, {**AN, "full_name": "Nguyễn Văn Từ Chối"}, account="acc-1")
    with pytest.raises(errors.PersonalIdNotMatched) as wrong:
        await by_id(client, {**AN, "full_name": "Nguyễn Văn Bình"}, account="acc-2")
    assert shape(rejected.value) == shape(wrong.value)
    auditor = await idh.client("alpha", Role.AUDITOR)
    checks = (await auditor.query_audit_records(event="id_check")).records
    assert 2 == len(checks)
    strip = ("account", "attempt", "seq", "time", "prev", "leaf")

    def kept(r: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in r.items() if k not in strip}

    assert kept(checks[0].record) == kept(checks[1].record)


async def test_a_5xx_storm_still_opens_the_circuit(idh: IdHarness) -> None:
    """Outages stay outages: five calls answered 503 open the circuit for everyone."""
    idh.provider.status = 503
    client = await idh.client()
    for n in range(5):
        with pytest.raises(errors.RegistryUnavailable):
            await by_id(client, AN, account=f"acc-{n}")
    idh.provider.status = 200
    hits = idh.provider.hits
    with pytest.raises(errors.RegistryUnavailable):
        await by_id(client, NGOC, account="someone-else")
    assert hits == idh.provider.hits


async def test_a_registry_outage_costs_the_user_no_attempt(idh: IdHarness) -> None:
    """More failed calls than the hourly budgets allow (500s, then the open circuit): each is
    UNAVAILABLE, none is charged (audited `refunded`); once the registry is back the user
    verifies at once instead of ID_ATTEMPTS_EXCEEDED for an hour."""
    idh.provider.status = 500
    client = await idh.client()
    for _ in range(12):
        with pytest.raises(errors.RegistryUnavailable) as e:
            await by_id(client, AN)
        assert Code.UNAVAILABLE == e.value.code
    assert 10 == idh.provider.hits  # 5 calls x 2 attempts, then the circuit opened

    idh.provider.status = 200
    idh.registry_clock.offset += 30  # the breaker's reset time: one trial call
    assert "personal_id" == (await by_id(client, AN)).method
    auditor = await idh.client("alpha", Role.AUDITOR)
    failed = (await auditor.query_audit_records(event="id_check")).records[:-1]
    assert [("failed", "REGISTRY_UNAVAILABLE", "account,personal_id")] * 12 == [
        (r.record["outcome"], r.record["reason"], r.record["refunded"]) for r in failed
    ]


async def test_attempts_are_limited_per_number_with_back_off(idh: IdHarness) -> None:
    """Five non-matches lock the number: the right data is then refused with retry-after."""
    client = await idh.client()
    for n in range(4):
        with pytest.raises(errors.PersonalIdNotMatched):
            await by_id(client, {**AN, "full_name": f"Sai Tên {n}"}, account=f"probe-{n}")
    with pytest.raises(errors.IdAttemptsExceeded):
        await by_id(client, {**AN, "full_name": "Sai Tên 4"}, account="probe-4")
    with pytest.raises(errors.IdAttemptsExceeded) as locked:
        await by_id(client, AN, account="owner")
    assert ("personal_id", 900) == (locked.value.metadata["scope"], locked.value.retry_after)
    idh.clock.advance(901)
    assert "personal_id" == (await by_id(client, AN, account="owner")).method


async def test_no_personal_data_in_logs_or_audit(
    idh: IdHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """P9: the number, name and date of birth appear in no log line and no audit record."""
    caplog.set_level(logging.DEBUG)
    client = await idh.client()
    await by_id(client, AN)
    with pytest.raises(errors.PersonalIdNotMatched):
        await by_id(client, {**NGOC, "full_name": "Trần Thị Khác"}, account="acc-2")
    with pytest.raises(errors.PersonalIdBirthYearMismatch):
        await by_id(client, {**NGOC, "date_of_birth": datetime.date(1991, 1, 1)}, account="acc-3")
    auditor = await idh.client("alpha", Role.AUDITOR)
    records = [r.raw for r in (await auditor.query_audit_records()).records]
    assert 6 == len(records)
    haystack = records + [r.getMessage() for r in caplog.records]
    assert [] == [(s, h) for s in SECRETS for h in haystack if s in h]


async def test_a_hanging_registry_opens_the_circuit_with_many_retries(
    redis_url: str,
    redis_namespace: str,
    database: Database,
    pki: Pki,  # noqa: F811
) -> None:
    """Built from settings as `xacthuc serve` is: 5 retries of 0.2 s, a 0.8 s deadline, a
    registry that never answers. Each call is UNAVAILABLE within the deadline and counted by
    the breaker (2 failures open it), so the third call sends nothing to the registry."""
    provider = Provider(SandboxRegistry.from_file(), delay=30.0)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED
    web_app = web.Application()
    web_app.router.add_post("/v1/match", provider.match)
    runner = web.AppRunner(web_app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    settings = make_settings(
        registry_backend="http",
        registry_url=f"https://127.0.0.1:{runner.addresses[0][1]}",
        registry_client_cert_file=pki.client_cert,
        registry_client_key_file=pki.client_key,
        registry_ca_file=pki.ca,
        registry_timeout_seconds=0.2,
        registry_retries=5,
        registry_deadline_seconds=0.8,
        registry_breaker_failures=2,
    )
    keys, raw = make_keys()
    app = build_app(
        settings,
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=CapturingSms(),
        clock=FixedClock(START),
        api_keys=keys,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = IdHarness(app, server, CapturingSms(), FixedClock(START), raw, provider=provider)
    loop = asyncio.get_running_loop()
    try:
        client = await h.client()
        for n in range(2):
            started = loop.time()
            with pytest.raises(errors.RegistryUnavailable):
                await by_id(client, AN, account=f"acc-{n}")
            assert loop.time() - started < 0.8 + 0.7  # before: up to 2.2 s, then cancelled
        hits = provider.hits
        assert hits <= 8  # at most 4 attempts of 0.2 s fit in 0.8 s

        with pytest.raises(errors.RegistryUnavailable):
            await by_id(client, AN, account="acc-2")
        assert hits == provider.hits
    finally:
        for c in h.clients:
            await c.close()
        await server.stop(grace=0)
        await runner.cleanup()
