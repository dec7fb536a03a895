"""The SDK's caches: JWKS refetch on an unknown kid (rate limited), status lists kept for
their ttl (injected clock), both against fakes and against the real well-known listener."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from xacthuc.adapters.keyring import Keyring
from xacthuc.adapters.wellknown import (
    bound_port,
    make_wellknown_app,
    start_wellknown,
    stop_wellknown,
)
from xacthuc.client.jwks import AsyncJwksCache, Jwks, JwksCache, KeysUnavailable
from xacthuc.client.status_lists import (
    AsyncStatusListCache,
    StatusListCache,
    StatusListUnavailable,
)
from xacthuc.client.verify import TokenInvalid, VerifiedAttestation
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.statuslist import INVALID, MEDIA_TYPE, StatusList, StatusListInvalid
from xacthuc.domain.tokens import SigningKey, TokenSigner

NOW = 1_800_000_000.0
ISSUER = "xacthuc-test"
URI = "https://xacthuc.example/statuslists/alpha/0"


class Issuer:
    """A keyring that can rotate faster than caches notice, and a fetch that counts calls."""

    def __init__(self, directory: Path) -> None:
        self.ring = Keyring.init(directory, now=NOW)
        self.fetches = 0
        self.fail = False

    def rotate_unseen(self) -> None:
        """Two rotations: the key that now signs was never in a JWKS a cache fetched."""
        self.ring = self.ring.rotate(now=NOW, token_ttl=3600)
        self.ring = self.ring.rotate(now=NOW, token_ttl=3600)

    def fetch(self) -> str:
        self.fetches += 1
        if self.fail:
            raise httpx.ConnectError("JWKS endpoint down (test)")
        return json.dumps(self.ring.published_jwks())

    async def afetch(self) -> str:
        await asyncio.sleep(0)
        return self.fetch()

    def token(self, token_id: str = "tok-1") -> str:
        record = AttestationRecord("acct-1", "phone_otp", token_id, NOW, NOW, NOW + 3600)
        return self.ring.signer(ISSUER).sign("alpha", record)


def forged_kid_token(kid: str) -> str:
    """A token whose kid names no published key (signed by a throwaway key)."""
    key = SigningKey.generate()
    record = AttestationRecord("acct-1", "phone_otp", "tok-x", NOW, NOW, NOW + 3600)
    claims = TokenSigner(key, issuer=ISSUER).claims("alpha", record)
    return jwt.encode(
        claims,
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": kid, "typ": "xacthuc-attestation+jwt"},
    )


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def cache(
    issuer: Issuer, clock: FixedClock, *, jwks: Jwks | None = None, max_age: float | None = 3600.0
) -> JwksCache:
    return JwksCache(
        issuer.fetch,
        issuer=ISSUER,
        audience="alpha",
        min_refetch_interval=30,
        clock=clock,
        jwks=jwks,
        max_age=max_age,
    )


# ---- JwksCache -------------------------------------------------------------------------------


def test_first_verify_fetches_once(issuer: Issuer) -> None:
    """The JWKS is fetched on first use and then reused for every token."""
    c = cache(issuer, FixedClock(0.0))
    for i in range(5):
        c.verify(issuer.token(f"tok-{i}"), now=NOW)
    assert 1 == issuer.fetches


def test_unknown_kid_triggers_one_refetch_then_verifies(issuer: Issuer) -> None:
    """A token of a key rotated in since the last fetch: one refetch, then it verifies."""
    clock = FixedClock(100.0)
    c = cache(issuer, clock)
    c.verify(issuer.token(), now=NOW)
    clock.advance(30)  # the first fetch counts too: the next one is allowed from here on
    issuer.rotate_unseen()
    assert "acct-1" == c.verify(issuer.token("tok-2"), now=NOW).account_id
    assert (2, 2) == (issuer.fetches, c.fetches)


def test_second_unknown_kid_within_the_interval_does_not_refetch(issuer: Issuer) -> None:
    """After a refetch, another unknown kid within min_refetch_interval fails without a fetch."""
    clock = FixedClock(100.0)
    c = cache(issuer, clock)
    c.verify(issuer.token(), now=NOW)
    clock.advance(30)
    issuer.rotate_unseen()
    c.verify(issuer.token("tok-2"), now=NOW)  # refetch no. 1
    clock.advance(29)
    issuer.rotate_unseen()
    with pytest.raises(TokenInvalid) as e:
        c.verify(issuer.token("tok-3"), now=NOW)
    assert ("UNKNOWN_KEY", 2) == (e.value.reason, issuer.fetches)


def test_refetch_is_allowed_again_after_the_interval(issuer: Issuer) -> None:
    """Once min_refetch_interval has passed, an unknown kid may refetch again."""
    clock = FixedClock(100.0)
    c = cache(issuer, clock)
    c.verify(issuer.token(), now=NOW)
    clock.advance(30)
    issuer.rotate_unseen()
    c.verify(issuer.token("tok-2"), now=NOW)
    issuer.rotate_unseen()
    clock.advance(30)
    assert "tok-3" == c.verify(issuer.token("tok-3"), now=NOW).token_id
    assert 3 == issuer.fetches


def test_a_flood_of_made_up_kids_costs_one_fetch_per_interval(issuer: Issuer) -> None:
    """A hundred tokens with random kids in one interval: one refetch in all."""
    clock = FixedClock(100.0)
    c = cache(issuer, clock)
    c.verify(issuer.token(), now=NOW)
    clock.advance(30)
    for i in range(100):
        with pytest.raises(TokenInvalid):
            c.verify(forged_kid_token(f"bogus-{i}"), now=NOW)
    assert 2 == issuer.fetches


def test_other_failures_never_refetch(issuer: Issuer) -> None:
    """A bad signature on a known kid is not a rotation: no fetch."""
    c = cache(issuer, FixedClock(100.0))
    token = issuer.token()
    c.verify(token, now=NOW)
    head, body, sig = token.split(".")
    bad = f"{head}.{body}.{sig[:-4]}AAAA"
    with pytest.raises(TokenInvalid) as e:
        c.verify(bad, now=NOW)
    assert ("BAD_SIGNATURE", 1) == (e.value.reason, issuer.fetches)


def test_jwks_older_than_max_age_is_refreshed(issuer: Issuer) -> None:
    """After max_age the next verify refetches; if that fails the held keys still serve."""
    clock = FixedClock(0.0)
    c = cache(issuer, clock, max_age=3600)
    token = issuer.token()
    c.verify(token, now=NOW)
    clock.set(3600)
    c.verify(token, now=NOW)
    assert 2 == issuer.fetches
    clock.set(7200)
    issuer.fail = True
    assert "tok-1" == c.verify(token, now=NOW).token_id
    clock.set(7201)  # within the refetch interval of the failed attempt: no new attempt
    c.verify(token, now=NOW)
    assert 3 == issuer.fetches


def test_first_fetch_failure_raises_and_is_rate_limited(issuer: Issuer) -> None:
    """With no keys at all, a failed fetch raises; a retry within the interval does not fetch."""
    clock = FixedClock(0.0)
    c = cache(issuer, clock)
    issuer.fail = True
    with pytest.raises(httpx.ConnectError):
        c.verify(issuer.token(), now=NOW)
    with pytest.raises(KeysUnavailable):
        c.verify(issuer.token(), now=NOW)
    issuer.fail = False
    clock.set(30)
    assert "tok-1" == c.verify(issuer.token(), now=NOW).token_id
    assert 2 == issuer.fetches


def test_initial_jwks_needs_no_fetch(issuer: Issuer) -> None:
    """A cache built with a JWKS in hand verifies without fetching."""
    c = cache(issuer, FixedClock(0.0), jwks=issuer.ring.published_jwks())
    c.verify(issuer.token(), now=NOW)
    assert 0 == issuer.fetches


async def test_async_unknown_kid_refetches_once_for_concurrent_misses(issuer: Issuer) -> None:
    """Twenty concurrent tokens of an unseen key share one refetch, and all verify."""
    clock = FixedClock(100.0)
    c = AsyncJwksCache(
        issuer.afetch, issuer=ISSUER, audience="alpha", min_refetch_interval=30, clock=clock
    )
    await c.verify(issuer.token(), now=NOW)
    clock.advance(30)
    issuer.rotate_unseen()
    tokens = [issuer.token(f"tok-{i}") for i in range(20)]
    verified = await asyncio.gather(*(c.verify(t, now=NOW) for t in tokens))
    assert (20, 2) == (len({v.token_id for v in verified}), issuer.fetches)


async def test_async_second_unknown_kid_within_interval_fails(issuer: Issuer) -> None:
    """The asyncio cache keeps the same rate limit as the blocking one."""
    clock = FixedClock(100.0)
    c = AsyncJwksCache(
        issuer.afetch, issuer=ISSUER, audience="alpha", min_refetch_interval=30, clock=clock
    )
    await c.verify(issuer.token(), now=NOW)
    clock.advance(30)
    issuer.rotate_unseen()
    await c.verify(issuer.token("tok-2"), now=NOW)
    issuer.rotate_unseen()
    with pytest.raises(TokenInvalid):
        await c.verify(issuer.token("tok-3"), now=NOW)
    clock.advance(30)
    await c.verify(issuer.token("tok-3"), now=NOW)
    assert 3 == issuer.fetches


# ---- StatusListCache ---------------------------------------------------------------------------


class ListServer:
    """An httpx transport that serves one status list token, re-signed on each request."""

    def __init__(self, key: SigningKey, ttl: int = 300) -> None:
        self.key = key
        self.ttl = ttl
        self.list = StatusList(128)
        self.requests = 0
        self.down = False
        self.signed_at = NOW

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            return httpx.Response(503)
        assert MEDIA_TYPE == request.headers["accept"]
        token = self.list.sign(
            self.key, issuer=ISSUER, uri=str(request.url), now=self.signed_at, ttl=self.ttl
        )
        return httpx.Response(200, text=token, headers={"content-type": MEDIA_TYPE})


def status_cache(
    issuer: Issuer, server: ListServer, clock: FixedClock
) -> tuple[StatusListCache, JwksCache]:
    keys = cache(issuer, FixedClock(1000.0))
    http = httpx.Client(transport=httpx.MockTransport(server.handle))
    return StatusListCache(keys, http=http, clock=clock), keys


def test_status_list_is_cached_for_its_ttl(issuer: Issuer) -> None:
    """Within the ttl claim no request is made; a revocation shows after the ttl."""
    server = ListServer(issuer.ring.active, ttl=300)
    clock = FixedClock(NOW)
    lists, _ = status_cache(issuer, server, clock)
    assert False is lists.is_revoked(URI, 7)
    server.list.set(7, INVALID)
    clock.set(NOW + 299)
    assert (False, 1) == (lists.is_revoked(URI, 7), server.requests)
    server.signed_at = NOW + 300
    clock.set(server.signed_at)
    assert (True, 2) == (lists.is_revoked(URI, 7), server.requests)


def test_stale_copy_serves_until_exp_when_refresh_fails(issuer: Issuer) -> None:
    """The issuer is down after the ttl: the held list is used until its exp, then unknown."""
    server = ListServer(issuer.ring.active, ttl=300)  # exp = iat + 600
    clock = FixedClock(NOW)
    lists, _ = status_cache(issuer, server, clock)
    lists.is_revoked(URI, 1)
    server.down = True
    clock.set(NOW + 400)
    assert False is lists.is_revoked(URI, 1)
    clock.set(NOW + 600 + 30)  # exp plus the leeway
    with pytest.raises(StatusListUnavailable):
        lists.is_revoked(URI, 1)


def test_failed_refresh_backs_off(issuer: Issuer) -> None:
    """After a failed refresh, requests within retry_after_failure make no new request."""
    server = ListServer(issuer.ring.active, ttl=300)
    clock = FixedClock(NOW)
    lists, _ = status_cache(issuer, server, clock)
    lists.is_revoked(URI, 1)
    server.down = True
    clock.set(NOW + 300)
    for _ in range(5):
        lists.is_revoked(URI, 1)
    assert 2 == server.requests
    clock.set(NOW + 310)
    lists.is_revoked(URI, 1)
    assert 3 == server.requests


def test_no_list_at_all_is_unavailable(issuer: Issuer) -> None:
    """If the first fetch fails, the status is unknown: StatusListUnavailable."""
    server = ListServer(issuer.ring.active)
    server.down = True
    lists, _ = status_cache(issuer, server, FixedClock(NOW))
    with pytest.raises(StatusListUnavailable):
        lists.is_revoked(URI, 1)


def test_index_outside_the_list_is_invalid(issuer: Issuer) -> None:
    """An idx past the list's end makes no statement: the token must be rejected."""
    lists, _ = status_cache(issuer, ListServer(issuer.ring.active), FixedClock(NOW))
    with pytest.raises(StatusListInvalid) as e:
        lists.is_revoked(URI, 128)
    assert "INDEX_OUT_OF_RANGE" == e.value.reason


def test_list_signed_by_an_unseen_key_refetches_the_jwks(issuer: Issuer) -> None:
    """A status list signed after a rotation the JWKS cache missed: one JWKS refetch."""
    server = ListServer(issuer.ring.active)
    keys_clock = FixedClock(1000.0)
    keys = cache(issuer, keys_clock)
    http = httpx.Client(transport=httpx.MockTransport(server.handle))
    lists = StatusListCache(keys, http=http, clock=FixedClock(NOW))
    keys.refresh()
    keys_clock.advance(30)
    issuer.rotate_unseen()
    server.key = issuer.ring.active
    assert False is lists.is_revoked(URI, 3)
    assert 2 == issuer.fetches


def test_list_from_a_foreign_key_is_refused(issuer: Issuer) -> None:
    """A list signed by a key outside the JWKS never counts, even with the right URI."""
    server = ListServer(SigningKey.generate())
    lists, _ = status_cache(issuer, server, FixedClock(NOW))
    with pytest.raises(StatusListUnavailable) as e:
        lists.is_revoked(URI, 3)
    assert isinstance(e.value.__cause__, StatusListInvalid)


def test_is_token_revoked_follows_the_status_claim(issuer: Issuer) -> None:
    """A verified attestation naming (uri, idx) is revoked when that entry is set."""
    server = ListServer(issuer.ring.active)
    server.list.set(9, INVALID)
    lists, _ = status_cache(issuer, server, FixedClock(NOW))

    def attestation(claims: dict[str, Any]) -> VerifiedAttestation:
        at = datetime.fromtimestamp(NOW, UTC)
        return VerifiedAttestation("a", "alpha", "phone_otp", "t", at, at, False, False, claims)

    def ref(idx: int) -> dict[str, Any]:
        return {"status": {"status_list": {"idx": idx, "uri": URI}}}

    assert (True, False, False) == (
        lists.is_token_revoked(attestation(ref(9))),
        lists.is_token_revoked(attestation(ref(8))),
        lists.is_token_revoked(attestation({})),
    )


async def test_async_status_list_cache_shares_one_fetch(issuer: Issuer) -> None:
    """Concurrent lookups of one URI make one request; the ttl applies as in the blocking form."""
    server = ListServer(issuer.ring.active, ttl=60)
    server.list.set(2, INVALID)
    clock = FixedClock(NOW)
    keys = AsyncJwksCache(issuer.afetch, issuer=ISSUER, audience="alpha", clock=FixedClock(1000))
    http = httpx.AsyncClient(transport=httpx.MockTransport(server.handle))
    async with AsyncStatusListCache(keys, http=http, clock=clock) as lists:
        results = await asyncio.gather(*(lists.is_revoked(URI, i) for i in range(4)))
        assert ([False, False, True, False], 1) == (results, server.requests)
        server.signed_at = NOW + 60
        clock.set(server.signed_at)
        await lists.is_revoked(URI, 0)
        assert 2 == server.requests
    await http.aclose()


# ---- against the real well-known listener ------------------------------------------------------


@pytest.fixture
async def listener(issuer: Issuer) -> AsyncIterator[str]:
    base = ""
    lists = {0: StatusList(64)}
    lists[0].set(5, INVALID)

    async def status_list(platform: str, n: int) -> str | None:
        if platform != "alpha" or n not in lists:
            return None
        uri = f"{base}/statuslists/alpha/{n}"
        return lists[n].sign(issuer.ring.active, issuer=ISSUER, uri=uri, now=NOW, ttl=60)

    app = make_wellknown_app(issuer.fetch, status_list, jwks_ttl=300, status_ttl=60)
    runner = await start_wellknown(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        yield base
    finally:
        await stop_wellknown(runner)


async def test_caches_over_the_well_known_urls(issuer: Issuer, listener: str) -> None:
    """AsyncJwksCache.from_url and AsyncStatusListCache read the listener end to end."""
    async with AsyncJwksCache.from_url(
        f"{listener}/.well-known/jwks.json", issuer=ISSUER, audience="alpha"
    ) as keys:
        verified = await keys.verify(issuer.token(), now=NOW)
        async with AsyncStatusListCache(keys, clock=FixedClock(NOW)) as lists:
            uri = f"{listener}/statuslists/alpha/0"
            assert ("acct-1", True, False) == (
                verified.account_id,
                await lists.is_revoked(uri, 5),
                await lists.is_revoked(uri, 4),
            )
            with pytest.raises(StatusListUnavailable):
                await lists.is_revoked(f"{listener}/statuslists/alpha/9", 0)


async def test_blocking_caches_over_the_well_known_urls(issuer: Issuer, listener: str) -> None:
    """The blocking forms work against the same listener (run in a worker thread)."""

    def run() -> tuple[str, bool]:
        with (
            JwksCache.from_url(
                f"{listener}/.well-known/jwks.json", issuer=ISSUER, audience="alpha"
            ) as keys,
            StatusListCache(keys, clock=FixedClock(NOW)) as lists,
        ):
            verified = keys.verify(issuer.token(), now=NOW)
            return verified.account_id, lists.is_revoked(f"{listener}/statuslists/alpha/0", 5)

    assert ("acct-1", True) == await asyncio.to_thread(run)
