"""Authorization, revocation, status lists and key rotation end to end (issue 5: R4-R6, P6, P7).

A real server over real Redis with a signing keyring and the well-known HTTP listener on
loopback ports, driven through the shipped SDK. For every case the online decision
(`Authorize`) is compared with the SDK's offline decision, computed from the token alone plus
the status list, fetched over the well-known listener or by `GetStatusList`: the two must be
equal for every action.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from xacthuc.adapters.keyring import Keyring
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import (
    ACTIONS,
    AsyncClient,
    AsyncJwksCache,
    AsyncOfflineAuthorizer,
    AsyncStatusListCache,
    Attestation,
    AttestationVerifier,
    Client,
    Decision,
    GuardianLink,
    TokenInvalid,
)
from xacthuc.domain import errors
from xacthuc.domain.age import start_of_day, turns_at
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.statuslist import INVALID, VALID, read_status_list_token
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.runtime import start_server
from xacthuc.v1 import verification_pb2, verification_pb2_grpc

from ..conftest import pair_store
from .conftest import START, CapturingSms, Citizen, Harness, make_keys, make_settings

ISSUER = "https://xacthuc.test"
IP = "203.0.113.50"
JWKS_TTL = 120
LIST_TTL = 60
TOKEN_TTL = 86_400
AN: Citizen = {  # the sandbox registry's adult An (verifiers/data/sandbox_citizens.jsonl)
    "personal_id_number": "001085336181",
    "full_name": "Nguyễn Văn An",
    "date_of_birth": dt.date(1985, 3, 14),
}

READ_OK = Decision(True, "READ_UNRESTRICTED", "R5")
OK = Decision(True, "AUTHENTICATED", "R5")


def table(others: Decision, commercial: Decision | None = None) -> dict[str, Decision]:
    """Read is always allowed; every other action gets `others`, commercial livestream
    `commercial` when it differs."""
    expected = {action.value: others for action in ACTIONS}
    expected["read"] = READ_OK
    if commercial is not None:
        expected["commercial_livestream"] = commercial
    return expected


@dataclass
class AzHarness(Harness):
    keyring: Path = Path()
    base: str = ""  # the well-known listener, http://127.0.0.1:<port>
    phones: list[str] = field(default_factory=lambda: [f"09123456{n:02d}" for n in range(100)])

    def next_phone(self) -> str:
        return self.phones.pop(0)


@pytest.fixture
async def az(
    redis_url: str, redis_namespace: str, database: Database, tmp_path: Path
) -> AsyncIterator[AzHarness]:
    keys, raw = make_keys()
    clock = FixedClock(START)
    ring = tmp_path / "keyring"
    Keyring.init(ring, now=START)
    sms = CapturingSms()
    app = build_app(
        make_settings(
            issuer=ISSUER,
            signing_keys_dir=str(ring),
            wellknown_listen="127.0.0.1:0",
            jwks_ttl_seconds=JWKS_TTL,
            status_list_ttl_seconds=LIST_TTL,
            token_ttl_seconds=TOKEN_TTL,
        ),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=sms,
        clock=clock,
        api_keys=keys,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = AzHarness(
        app, server, sms, clock, raw, keyring=ring, base=f"http://127.0.0.1:{server.wellknown_port}"
    )
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)


class Offline:
    """What a platform runs to decide offline: the JWKS from the well-known URL (refetched on
    an unknown kid), the status list over HTTP ("http") or by GetStatusList ("grpc")."""

    def __init__(self, h: AzHarness, client: AsyncClient, source: str, platform: str = "alpha"):
        self.h = h
        self.keys = AsyncJwksCache.from_url(
            f"{h.base}/.well-known/jwks.json", issuer=ISSUER, audience=platform
        )
        if source == "http":
            self.lists = AsyncStatusListCache(self.keys, clock=h.clock)
        else:
            self.lists = AsyncStatusListCache.over_grpc(self.keys, client, clock=h.clock)
        self.authorizer = AsyncOfflineAuthorizer(self.keys, self.lists)

    async def decide(self, token: str | None, action: str) -> Decision:
        return await self.authorizer.authorize(token, action, now=self.h.clock.now())

    async def aclose(self) -> None:
        await self.lists.aclose()
        await self.keys.aclose()


@pytest.fixture(params=["http", "grpc"])
async def offline(request: pytest.FixtureRequest, az: AzHarness) -> AsyncIterator[Offline]:
    o = Offline(az, await az.client(), request.param)
    yield o
    await o.aclose()


async def agree(
    client: AsyncClient, offline: Offline, account: str, token: str | None
) -> dict[str, Decision]:
    """Authorize every action online and offline; they must be equal. Returns the decisions."""
    decisions: dict[str, Decision] = {}
    for action in ACTIONS:
        online = await client.authorize(account_id=account, action=action)
        off = await offline.decide(token, action)
        assert online == off, f"{account} {action}: online {online} != offline {off}"
        decisions[action.value] = online
    return decisions


async def verify_phone(h: AzHarness, client: AsyncClient, account: str) -> Attestation:
    challenge = await client.start_phone_verification(
        account_id=account, phone_number=h.next_phone(), client_ip=IP
    )
    return await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id=account,
        code=h.sms.code_for(challenge.challenge_id),
    )


async def link_child(client: AsyncClient, child: str, born: dt.date) -> GuardianLink:
    return await client.link_guardian(
        child_account_id=child,
        child_date_of_birth=born,
        guardian_account_id="mum",
        guardian_date_of_birth=dt.date(1988, 8, 8),
        relationship="parent",
        guardian_consent=True,
        child_consent=True,
    )


def _segment(token: str, n: int) -> dict[str, Any]:
    part = token.split(".")[n]
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(data, dict)
    return data


def header(token: str) -> dict[str, Any]:
    return _segment(token, 0)


def claims(token: str) -> dict[str, Any]:
    return _segment(token, 1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- every authorize case, online == offline ----------------------------------------------------


async def test_no_attestation_may_only_read(az: AzHarness, offline: Offline) -> None:
    """R6: an account never verified is refused every action but reading (R5)."""
    client = await az.client()
    decisions = await agree(client, offline, "stranger", None)
    assert table(Decision(False, "NOT_AUTHENTICATED", "R6")) == decisions
    intro = await client.introspect_attestation(account_id="stranger")
    assert (False, "none", "", None) == (
        intro.active,
        intro.status,
        intro.token_id,
        intro.expires_at,
    )


async def test_phone_verified_may_act_but_not_sell_live(az: AzHarness, offline: Offline) -> None:
    """R5: a phone attestation allows posting, commenting, sharing, livestreaming; R4:
    commercial livestream needs a personal-ID attestation."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-phone")
    decisions = await agree(client, offline, "acc-phone", att.token)
    assert table(OK, Decision(False, "PERSONAL_ID_REQUIRED", "R4")) == decisions


async def test_personal_id_may_sell_live(az: AzHarness, offline: Offline) -> None:
    """R3/R4: a personal-ID attestation allows everything, commercial livestream included."""
    client = await az.client()
    att = await client.verify_personal_id(
        account_id="acc-id",
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        client_ip=IP,
        **AN,
    )
    decisions = await agree(client, offline, "acc-id", att.token)
    assert table(OK) == decisions


async def test_guardian_managed_child(az: AzHarness, offline: Offline) -> None:
    """P6/P7: a child under 16 registered by a guardian may post, but never livestream
    commercially, whatever the guardian's method."""
    client = await az.client()
    await client.verify_personal_id(
        account_id="mum",
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        client_ip=IP,
        **AN,
    )
    result = await link_child(client, "kid-1", dt.date(2015, 3, 10))
    assert "personal_id" == result.attestation.method
    decisions = await agree(client, offline, "kid-1", result.attestation.token)
    assert table(OK, Decision(False, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM", "P7")) == (
        decisions
    )


async def test_revoked(az: AzHarness, offline: Offline) -> None:
    """R5: after RevokeAttestation every action but reading is ATTESTATION_REVOKED, online
    and offline (the status list bit); revoking again changes nothing."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-rev")
    first = await client.revoke_attestation(account_id="acc-rev", reason="account_deleted")
    revoked_at = az.clock.now()
    az.clock.advance(30)
    again = await client.revoke_attestation(account_id="acc-rev", reason="fraud")
    assert (revoked_at, False, True, revoked_at) == (
        first.revoked_at.timestamp(),
        first.already_revoked,
        again.already_revoked,
        again.revoked_at.timestamp(),
    )
    decisions = await agree(client, offline, "acc-rev", att.token)
    assert table(Decision(False, "ATTESTATION_REVOKED", "R5")) == decisions


async def test_expired(az: AzHarness, offline: Offline) -> None:
    """R5: from the token's expiry on, ATTESTATION_EXPIRED (the SDK still verifies an
    expired token's signature, so it does not say NOT_AUTHENTICATED)."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-exp")
    az.clock.advance(TOKEN_TTL - 1)
    assert table(OK, Decision(False, "PERSONAL_ID_REQUIRED", "R4")) == await agree(
        client, offline, "acc-exp", att.token
    )
    az.clock.advance(1)
    decisions = await agree(client, offline, "acc-exp", att.token)
    assert table(Decision(False, "ATTESTATION_EXPIRED", "R5")) == decisions
    assert "expired" == (await client.introspect_attestation(account_id="acc-exp")).status


async def test_aged_out(az: AzHarness, offline: Offline) -> None:
    """P6: a child whose token ends at the 16th birthday (exp_reason age_16) is AGED_OUT from
    that local midnight, before and after the sweep ends the link."""
    born = dt.date(2011, 3, 10)
    birthday = turns_at(born, 16)
    az.clock.set(start_of_day(dt.date(2027, 3, 9)) + 12 * 3600)
    client = await az.client()
    await verify_phone(az, client, "mum")
    result = await link_child(client, "kid-16", born)
    assert (birthday, "age_16") == (
        claims(result.attestation.token)["exp"],
        claims(result.attestation.token)["exp_reason"],
    )
    az.clock.set(birthday - 1)
    before = await agree(client, offline, "kid-16", result.attestation.token)
    assert table(OK, Decision(False, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM", "P7")) == before

    az.clock.set(birthday)
    aged_out = table(Decision(False, "AGED_OUT", "P6"))
    assert aged_out == await agree(client, offline, "kid-16", result.attestation.token)
    assert 1 == await az.app.age_out.run_once()
    az.clock.advance(3600)
    assert aged_out == await agree(client, offline, "kid-16", result.attestation.token)
    assert "aged_out" == (await client.introspect_attestation(account_id="kid-16")).status


async def test_a_withdrawn_guardian_link_is_revoked_everywhere(
    az: AzHarness, offline: Offline
) -> None:
    """P6: the guardian's withdrawal revokes the child's attestation: online and offline."""
    client = await az.client()
    await verify_phone(az, client, "mum")
    result = await link_child(client, "kid-w", dt.date(2015, 3, 10))
    await client.withdraw_guardian_link(link_id=result.link_id)
    decisions = await agree(client, offline, "kid-w", result.attestation.token)
    assert table(Decision(False, "ATTESTATION_REVOKED", "R5")) == decisions


# --- revocation, online and offline -----------------------------------------------------------


async def test_an_unchanged_status_list_is_a_304_after_a_rebuild(az: AzHarness) -> None:
    """The list is rebuilt (the 5 s copy expired) with the same bits: the same bytes, so the
    same ETag and a 304; a revocation changes it (200, another ETag)."""
    client = await az.client()
    await verify_phone(az, client, "acc-1")
    uri = f"{az.base}/statuslists/alpha/0"
    async with httpx.AsyncClient() as http:
        first = await http.get(uri)
        az.clock.advance(10)  # past the in-process copy, within the list's ttl window
        builds = az.app.status_lists.builds
        unchanged = await http.get(uri, headers={"If-None-Match": first.headers["etag"]})
        assert builds + 1 == az.app.status_lists.builds  # it was signed again
        await client.revoke_attestation(account_id="acc-1", reason="fraud")
        changed = await http.get(uri, headers={"If-None-Match": first.headers["etag"]})
    assert (200, 304, b"", 200) == (
        first.status_code,
        unchanged.status_code,
        unchanged.content,
        changed.status_code,
    )
    assert first.headers["etag"] == unchanged.headers["etag"] != changed.headers["etag"]


async def test_revocation_is_seen_online_and_through_the_status_list(az: AzHarness) -> None:
    """Introspection and Authorize see a revocation at once; the status list served over HTTP
    has the token's bit set; a platform's cached list shows it once its ttl has passed."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-1")
    await verify_phone(az, client, "acc-2")
    ref = claims(att.token)["status"]["status_list"]
    uri = f"{az.base}/statuslists/alpha/0"
    assert uri == ref["uri"]

    intro = await client.introspect_attestation(account_id="acc-1")
    assert (True, "active", att.token_id, "phone_otp", uri, ref["idx"]) == (
        intro.active,
        intro.status,
        intro.token_id,
        intro.method,
        intro.status_list_uri,
        intro.status_list_index,
    )
    assert att.expires_at == intro.expires_at

    warm = Offline(az, client, "http")  # a platform that fetched the list before the revocation
    assert OK == await warm.decide(att.token, "post")

    await client.revoke_attestation(account_id="acc-1", reason="fraud")

    intro = await client.introspect_attestation(account_id="acc-1")
    assert (False, "revoked") == (intro.active, intro.status)
    assert Decision(False, "ATTESTATION_REVOKED", "R5") == await client.authorize(
        account_id="acc-1", action="post"
    )
    async with httpx.AsyncClient() as http:
        served = await http.get(uri)
    assert (200, "application/statuslist+jwt", f"public, max-age={LIST_TTL}") == (
        served.status_code,
        served.headers["content-type"],
        served.headers["cache-control"],
    )
    listed = read_status_list_token(
        served.text, await client.get_jwks(), expected_uri=uri, now=az.clock.now(), issuer=ISSUER
    )
    other = (await client.introspect_attestation(account_id="acc-2")).status_list_index
    assert other is not None
    assert (INVALID, VALID, LIST_TTL) == (
        listed.status_list.get(ref["idx"]),
        listed.status_list.get(other),
        listed.ttl,
    )
    assert len(listed.status_list) >= 16 * 1024 * 8  # padded: herd privacy

    rpc_list = await client.get_status_list()
    assert uri == rpc_list.uri
    assert INVALID == read_status_list_token(
        rpc_list.token, await client.get_jwks(), expected_uri=uri, now=az.clock.now()
    ).status_list.get(ref["idx"])

    assert OK == await warm.decide(att.token, "post")  # its copy is fresh for one ttl
    az.clock.advance(LIST_TTL)
    assert Decision(False, "ATTESTATION_REVOKED", "R5") == await warm.decide(att.token, "post")
    assert READ_OK == await warm.decide(att.token, "read")
    await warm.aclose()


async def test_an_independent_jose_library_reads_what_the_server_serves(az: AzHarness) -> None:
    """jwcrypto, knowing nothing of xacthuc, verifies the attestation token and the status
    list fetched from the well-known listener, and reads the revoked entry (2 bits, LSB first)."""
    from jwcrypto import jwk as jc_jwk
    from jwcrypto import jwt as jc_jwt

    client = await az.client()
    att = await verify_phone(az, client, "acc-1")
    await client.revoke_attestation(account_id="acc-1", reason="fraud")
    ref = claims(att.token)["status"]["status_list"]
    async with httpx.AsyncClient() as http:
        keyset = jc_jwk.JWKSet.from_json((await http.get(f"{az.base}/.well-known/jwks.json")).text)
        listed = (await http.get(ref["uri"])).text
    token = jc_jwt.JWT(jwt=att.token, key=keyset, algs=["EdDSA"], check_claims={"aud": "alpha"})
    assert "acc-1" == json.loads(token.claims)["sub"]
    status = jc_jwt.JWT(jwt=listed, key=keyset, algs=["EdDSA"], check_claims={"sub": ref["uri"]})
    status_list = json.loads(status.claims)["status_list"]
    bits, lst = status_list["bits"], status_list["lst"]
    raw = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    at = ref["idx"] * bits  # the draft: entry i at bits [i*bits, (i+1)*bits), LSB first
    assert ("statuslist+jwt", 2, 1) == (
        json.loads(status.header)["typ"],
        bits,
        raw[at // 8] >> (at % 8) & ((1 << bits) - 1),
    )


async def test_revocation_refusals(az: AzHarness) -> None:
    """ATTESTATION_NOT_FOUND for an account never verified (or another platform's); FIELD_INVALID
    for a reason outside 1-64 of a-z 0-9 _ (nothing is revoked)."""
    client = await az.client()
    await verify_phone(az, client, "acc-1")
    with pytest.raises(errors.AttestationNotFound):
        await client.revoke_attestation(account_id="nobody", reason="fraud")
    beta = await az.client("beta")
    with pytest.raises(errors.AttestationNotFound):
        await beta.revoke_attestation(account_id="acc-1", reason="fraud")
    for bad in ("", "Fraud", "x" * 65, "0912345678 deleted"):
        with pytest.raises(errors.FieldInvalid) as e:
            await client.revoke_attestation(account_id="acc-1", reason=bad)
        assert "reason" == e.value.metadata["field"]
    assert "active" == (await client.introspect_attestation(account_id="acc-1")).status


async def test_authorize_refuses_malformed_requests(az: AzHarness) -> None:
    """ACTION_UNSPECIFIED and a malformed account id are FIELD_INVALID naming the field; the
    SDK refuses an unknown action name the same way before calling."""
    key = az.keys[("alpha", Role.PLATFORM)]
    async with grpc.aio.insecure_channel(az.target) as channel:
        stub = verification_pb2_grpc.VerificationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Authorize(
                verification_pb2.AuthorizeRequest(account_id="a"),
                metadata=(("authorization", f"Bearer {key}"),),
            )
    assert grpc.StatusCode.INVALID_ARGUMENT == e.value.code()
    assert "action" in (e.value.details() or "")
    client = await az.client()
    with pytest.raises(errors.FieldInvalid) as fe:
        await client.authorize(account_id="bad id!", action="post")
    assert "account_id" == fe.value.metadata["field"]
    with pytest.raises(errors.FieldInvalid) as fe:
        await client.authorize(account_id="a", action="dance")
    assert "action" == fe.value.metadata["field"]


async def test_blocking_client_authorizes_revokes_and_introspects(az: AzHarness) -> None:
    """The sync Client speaks the same four calls."""
    import asyncio

    client = await az.client()
    await verify_phone(az, client, "acc-s")

    def flow() -> tuple[Decision, bool, Decision, str, str]:
        with Client.connect(az.target, api_key=az.keys[("alpha", Role.PLATFORM)]) as c:
            before = c.authorize(account_id="acc-s", action="comment")
            revoked = c.revoke_attestation(account_id="acc-s", reason="account_deleted")
            return (
                before,
                revoked.already_revoked,
                c.authorize(account_id="acc-s", action="comment"),
                c.introspect_attestation(account_id="acc-s").status,
                c.get_status_list().uri,
            )

    assert (
        OK,
        False,
        Decision(False, "ATTESTATION_REVOKED", "R5"),
        "revoked",
        f"{az.base}/statuslists/alpha/0",
    ) == await asyncio.to_thread(flow)


# --- tokens the SDK must refuse ------------------------------------------------------------------


async def test_forged_tokens_are_refused_by_the_sdk(az: AzHarness, offline: Offline) -> None:
    """A tampered payload, a token for another platform, `alg: none` and an HS256 token
    keyed with the public key (algorithm confusion) all raise TokenInvalid: never a decision."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-1")
    head, payload, signature = att.token.split(".")
    kid = header(att.token)["kid"]

    tampered_claims = claims(att.token) | {"method": "personal_id", "commercial_livestream": True}
    tampered = f"{head}.{b64(json.dumps(tampered_claims).encode())}.{signature}"

    beta = await az.client("beta")
    for_beta = (await verify_phone(az, beta, "acc-b")).token

    none_head = b64(json.dumps({"alg": "none", "typ": header(att.token)["typ"]}).encode())
    alg_none = f"{none_head}.{payload}."

    jwk = next(k for k in json.loads(await client.get_jwks())["keys"] if k["kid"] == kid)
    public = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    hs_head = b64(
        json.dumps({"alg": "HS256", "typ": header(att.token)["typ"], "kid": kid}).encode()
    )
    mac = hmac.new(public, f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
    confused = f"{hs_head}.{payload}.{b64(mac)}"

    expected = {
        "tampered": (tampered, "BAD_SIGNATURE"),
        "wrong audience": (for_beta, "WRONG_AUDIENCE"),
        "alg none": (alg_none, "ALGORITHM_NOT_ALLOWED"),
        "algorithm confusion": (confused, "ALGORITHM_NOT_ALLOWED"),
    }
    seen = {}
    for name, (token, _) in expected.items():
        with pytest.raises(TokenInvalid) as e:
            await offline.decide(token, "post")
        seen[name] = e.value.reason
    assert {name: reason for name, (_, reason) in expected.items()} == seen
    assert OK == await offline.decide(att.token, "post")  # the genuine one, same setup


# --- key rotation without restart ----------------------------------------------------------------


def kids(jwks: str | dict[str, Any]) -> set[str]:
    data = json.loads(jwks) if isinstance(jwks, str) else jwks
    return {k["kid"] for k in data["keys"]}


async def test_rotation_while_the_server_runs(az: AzHarness) -> None:
    """`keys rotate` on the keyring directory takes effect without a restart: the next key
    was published before it signs, new tokens carry it, tokens signed before the rotation
    still verify with the new JWKS, a platform's JWKS cache from before the rotation verifies
    new tokens without a refetch, and refetches (once, rate limited) for a key it never saw."""
    client = await az.client()
    old = await verify_phone(az, client, "acc-old")
    ring = Keyring.load(az.keyring)
    assert ring.next is not None
    k1, k2 = ring.active.kid, ring.next.kid
    jwks_before = await client.get_jwks()
    async with httpx.AsyncClient() as http:
        served = await http.get(f"{az.base}/.well-known/jwks.json")
    assert json.loads(jwks_before) == served.json()
    assert f"public, max-age={JWKS_TTL}" == served.headers["cache-control"]
    assert (k1, {k1, k2}) == (header(old.token)["kid"], kids(jwks_before))

    cache = AsyncJwksCache.from_url(
        f"{az.base}/.well-known/jwks.json",
        issuer=ISSUER,
        audience="alpha",
        min_refetch_interval=60,
        clock=az.clock,  # paces refetches: on the test's clock
    )
    await cache.refresh()
    fetches = cache.fetches

    Keyring.rotate_dir(az.keyring, now=az.clock.now(), token_ttl=TOKEN_TTL)
    rotated = Keyring.load(az.keyring)
    assert rotated.next is not None
    k3 = rotated.next.kid

    new = await verify_phone(az, client, "acc-new")
    jwks_after = await client.get_jwks()
    assert (k2, {k1, k2, k3}) == (header(new.token)["kid"], kids(jwks_after))
    after = AttestationVerifier(jwks_after, issuer=ISSUER, audience="alpha")
    assert "acc-old" == after.verify(old.token, now=az.clock.now()).account_id
    assert "acc-new" == (await cache.verify(new.token, now=az.clock.now())).account_id
    assert fetches == cache.fetches  # k2 was in the JWKS cached before it signed
    resigned = await client.get_attestation(account_id="acc-old")
    assert k2 == header(resigned.token)["kid"]
    assert 1 == az.app.signing.reloads

    lists = AsyncStatusListCache(cache, clock=az.clock)
    offline = AsyncOfflineAuthorizer(cache, lists)
    for token in (old.token, new.token):
        assert await client.authorize(account_id="acc-old", action="post") == (
            await offline.authorize(token, "post", now=az.clock.now())
        )

    # A second rotation: k3 signs. The cache has never seen k3: one refetch, then it verifies.
    az.clock.advance(120)  # more than min_refetch_interval since the cache's last fetch
    Keyring.rotate_dir(az.keyring, now=az.clock.now(), token_ttl=TOKEN_TTL)
    third = await verify_phone(az, client, "acc-third")
    assert k3 == header(third.token)["kid"]
    assert "acc-third" == (await cache.verify(third.token, now=az.clock.now())).account_id
    assert fetches + 1 == cache.fetches
    assert {k1, k2, k3} <= kids(cache.jwks)  # retired keys stay until their tokens expire
    forged_head = b64(
        json.dumps({"alg": "EdDSA", "typ": header(third.token)["typ"], "kid": "A" * 43}).encode()
    )
    _, payload, signature = third.token.split(".")
    with pytest.raises(TokenInvalid) as e:
        await cache.verify(f"{forged_head}.{payload}.{signature}", now=az.clock.now())
    assert ("UNKNOWN_KEY", fetches + 1) == (e.value.reason, cache.fetches)  # rate limited
    await lists.aclose()
    await cache.aclose()


async def test_retired_key_leaves_the_jwks_when_its_last_token_expired(az: AzHarness) -> None:
    """After a rotation the retired key is published until token_ttl + leeway has passed on
    the service's clock, then it leaves the JWKS without any change on disk."""
    client = await az.client()
    k1 = Keyring.load(az.keyring).active.kid
    Keyring.rotate_dir(az.keyring, now=az.clock.now(), token_ttl=TOKEN_TTL, leeway=300)
    assert k1 in kids(await client.get_jwks())
    az.clock.advance(TOKEN_TTL + 299)
    assert k1 in kids(await client.get_jwks())
    az.clock.advance(1)
    assert k1 not in kids(await client.get_jwks())


async def test_the_listener_starts_and_stops_with_the_server() -> None:
    """XACTHUC_WELLKNOWN_LISTEN starts the HTTP listener with the server (unknown platforms
    404, health ok) and Server.stop stops it; the URIs name the port actually bound."""
    keys, _ = make_keys()
    app = build_app(
        make_settings(wellknown_listen="127.0.0.1:0"),
        sms=CapturingSms(),
        clock=FixedClock(START),
        api_keys=keys,
    )
    server = await start_server(app, "127.0.0.1:0")
    base = f"http://127.0.0.1:{server.wellknown_port}"
    try:
        assert f"{base}/statuslists/beta/0" == app.status_lists.uri("beta")
        async with httpx.AsyncClient() as http:
            codes = [
                (await http.get(f"{base}{path}")).status_code
                for path in ("/healthz", "/statuslists/alpha/0", "/statuslists/gamma/0")
            ]
        assert [200, 200, 404] == codes
    finally:
        await server.stop(grace=0)
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base}/healthz")
