"""The well-known HTTP listener on a real loopback port: JWKS, status lists, health, caching."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from xacthuc.adapters.keyring import Keyring
from xacthuc.adapters.wellknown import (
    bound_port,
    make_wellknown_app,
    start_wellknown,
    stop_wellknown,
)
from xacthuc.domain.statuslist import INVALID, StatusList, status_list_uri, verify_status_list_token

NOW = 1_800_000_000
JWKS_TTL = 600
STATUS_TTL = 120


class Published:
    """What the server would hand the listener: a keyring and one status list per platform."""

    def __init__(self, ring: Keyring, base: str) -> None:
        self.ring = ring
        self.base = base
        self.lists = {("alpha", 0): StatusList(1024)}
        self.lists[("alpha", 0)].set(42, INVALID)
        self.calls: list[tuple[str, int]] = []

    def jwks(self) -> str:
        return json.dumps(self.ring.published_jwks(NOW))

    async def status_list(self, platform: str, n: int) -> str | None:
        self.calls.append((platform, n))
        sl = self.lists.get((platform, n))
        if sl is None:
            return None
        uri = status_list_uri(self.base, platform, n)
        return sl.sign(self.ring.active, issuer="xacthuc", uri=uri, now=NOW, ttl=STATUS_TTL)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Published]]:
    published = Published(Keyring.init(tmp_path, now=NOW), "")
    app = make_wellknown_app(
        published.jwks, published.status_list, jwks_ttl=JWKS_TTL, status_ttl=STATUS_TTL
    )
    runner = await start_wellknown(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    published.base = base
    try:
        yield base, published
    finally:
        await stop_wellknown(runner)


async def test_jwks_is_served_with_its_cache_lifetime(served: tuple[str, Published]) -> None:
    """GET /.well-known/jwks.json: the keyring's JWKS, application/json, max-age = jwks ttl."""
    base, published = served
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{base}/.well-known/jwks.json")
    assert (200, "application/json", f"public, max-age={JWKS_TTL}", "*") == (
        r.status_code,
        r.headers["content-type"].split(";")[0],
        r.headers["cache-control"],
        r.headers["access-control-allow-origin"],
    )
    assert published.ring.published_jwks(NOW) == r.json()


async def test_status_list_is_served_as_a_signed_token(served: tuple[str, Published]) -> None:
    """GET /statuslists/alpha/0: application/statuslist+jwt, max-age = status ttl, verifies."""
    base, published = served
    uri = f"{base}/statuslists/alpha/0"
    async with httpx.AsyncClient() as http:
        r = await http.get(uri, headers={"Accept": "application/statuslist+jwt"})
    assert (200, "application/statuslist+jwt", f"public, max-age={STATUS_TTL}") == (
        r.status_code,
        r.headers["content-type"].split(";")[0],
        r.headers["cache-control"],
    )
    sl = verify_status_list_token(
        r.text, published.ring.published_jwks(NOW), expected_uri=uri, now=NOW
    )
    assert (INVALID, 0) == (sl.get(42), sl.get(41))


async def test_status_list_is_compressed_when_asked(served: tuple[str, Published]) -> None:
    """With Accept-Encoding: gzip the token travels gzipped (draft section 8.2); without, not."""
    base, _ = served
    uri = f"{base}/statuslists/alpha/0"
    async with httpx.AsyncClient() as http:
        zipped = await http.get(uri, headers={"Accept-Encoding": "gzip"})
        plain = await http.get(uri, headers={"Accept-Encoding": "identity"})
    assert ("gzip", None) == (
        zipped.headers.get("content-encoding"),
        plain.headers.get("content-encoding"),
    )
    assert plain.text == zipped.text  # httpx inflated the gzipped body


@pytest.mark.parametrize(
    "path",
    [
        "/statuslists/beta/0",  # no such platform list
        "/statuslists/alpha/1",  # no such list number
        "/statuslists/Alpha/0",  # not a platform id
        "/statuslists/alpha/-1",
        "/statuslists/alpha/01",
        "/statuslists/alpha/x",
        "/statuslists/alpha",
        "/nothing",
    ],
)
async def test_unknown_lists_are_404(served: tuple[str, Published], path: str) -> None:
    """Unknown platforms, list numbers or paths are 404; bad ids never reach the provider."""
    base, published = served
    async with httpx.AsyncClient() as http:
        r = await http.get(base + path)
    assert 404 == r.status_code
    assert all(p in {"alpha", "beta"} and n in {0, 1} for p, n in published.calls)


async def test_conditional_get_is_304(served: tuple[str, Published]) -> None:
    """A client that sends back the ETag gets 304 with no body."""
    base, _ = served
    async with httpx.AsyncClient() as http:
        first = await http.get(f"{base}/.well-known/jwks.json")
        again = await http.get(
            f"{base}/.well-known/jwks.json", headers={"If-None-Match": first.headers["etag"]}
        )
    assert (304, b"", f"public, max-age={JWKS_TTL}") == (
        again.status_code,
        again.content,
        again.headers["cache-control"],
    )


@pytest.mark.parametrize(
    "if_none_match",
    ["W/{etag}", '"other", {etag}', "*", '"other", W/{etag}'],
    ids=["weak", "in-a-list", "any", "weak-in-a-list"],
)
async def test_if_none_match_compares_weakly_and_star_matches(
    served: tuple[str, Published], if_none_match: str
) -> None:
    """RFC 9110 13.1.2: If-None-Match uses the weak comparison (a cache that stored the tag as
    `W/"..."` still revalidates) and `*` matches any current representation: 304."""
    base, _ = served
    async with httpx.AsyncClient() as http:
        first = await http.get(f"{base}/.well-known/jwks.json")
        header = if_none_match.format(etag=first.headers["etag"])
        again = await http.get(f"{base}/.well-known/jwks.json", headers={"If-None-Match": header})
        other = await http.get(f"{base}/.well-known/jwks.json", headers={"If-None-Match": '"x"'})
    assert (304, b"") == (again.status_code, again.content)
    assert 200 == other.status_code


async def test_jwks_follows_a_rotation(served: tuple[str, Published]) -> None:
    """After the keyring rotates, the listener serves the new JWKS (and a new ETag)."""
    base, published = served
    async with httpx.AsyncClient() as http:
        before = await http.get(f"{base}/.well-known/jwks.json")
        published.ring = published.ring.rotate(now=NOW + 60, token_ttl=3600)
        after = await http.get(f"{base}/.well-known/jwks.json")
    assert (2, 3) == (len(before.json()["keys"]), len(after.json()["keys"]))
    assert before.headers["etag"] != after.headers["etag"]


async def test_healthz(served: tuple[str, Published]) -> None:
    """GET /healthz answers ok and is never cached."""
    base, _ = served
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{base}/healthz")
    assert (200, "ok", "no-store") == (r.status_code, r.text, r.headers["cache-control"])


async def test_healthz_answers_503_while_not_serving(tmp_path: Path) -> None:
    """/healthz follows the `serving` verdict it is given (the health prober's), never cached."""
    published = Published(Keyring.init(tmp_path, now=NOW), "")
    verdict = [True]
    app = make_wellknown_app(
        published.jwks,
        published.status_list,
        jwks_ttl=JWKS_TTL,
        status_ttl=STATUS_TTL,
        serving=lambda: verdict[0],
    )
    runner = await start_wellknown(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound_port(runner)}/healthz"
    try:
        async with httpx.AsyncClient() as http:
            up = await http.get(url)
            verdict[0] = False
            down = await http.get(url)
            verdict[0] = True
            again = await http.get(url)
    finally:
        await stop_wellknown(runner)
    assert [(200, "ok"), (503, "unavailable"), (200, "ok")] == [
        (r.status_code, r.text) for r in (up, down, again)
    ]
    assert {"no-store"} == {r.headers["cache-control"] for r in (up, down, again)}


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/statuslists/alpha/0"])
async def test_a_browser_may_fetch_the_public_documents(
    served: tuple[str, Published], path: str
) -> None:
    """CORS: the preflight a browser sends before a GET with If-None-Match is allowed for any
    origin, and the GET lets scripts read the ETag."""
    base, _ = served
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            f"{base}{path}",
            headers={
                "Origin": "https://platform.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "if-none-match",
            },
        )
        got = await http.get(f"{base}{path}", headers={"Origin": "https://platform.example"})
    assert 204 == preflight.status_code
    h = preflight.headers
    assert ("*", "86400") == (h["access-control-allow-origin"], h["access-control-max-age"])
    assert "GET" in h["access-control-allow-methods"]
    assert "if-none-match" in h["access-control-allow-headers"].lower()
    assert ("*", "ETag") == (
        got.headers["access-control-allow-origin"],
        got.headers["access-control-expose-headers"],
    )


async def test_head_is_answered(served: tuple[str, Published]) -> None:
    """HEAD works for the JWKS (some caches probe with it)."""
    base, _ = served
    async with httpx.AsyncClient() as http:
        r = await http.head(f"{base}/.well-known/jwks.json")
    assert (200, b"") == (r.status_code, r.content)


def test_status_list_uri() -> None:
    """The uri tokens carry is the listener's path under the public base URL."""
    assert "https://id.example/statuslists/alpha/3" == status_list_uri(
        "https://id.example/", "alpha", 3
    )
