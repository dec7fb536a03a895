"""Cached keys and status lists for offline verification, refreshed without hammering xacthuc.

`JwksCache` keeps the JWKS and an `AttestationVerifier` over it. A token signed with a key
the cache does not know (a rotation happened since the last fetch) makes it fetch the JWKS
again, at most once per `min_refetch_interval` seconds, and verify once more; a flood of
tokens with made-up `kid`s therefore costs one fetch per interval, not one per token. The
JWKS is also refetched when older than `max_age` (keys removed after a compromise go away);
if that refresh fails, the keys it has stay in use.

`StatusListCache` fetches status list tokens (draft-ietf-oauth-status-list) by their URI
(over HTTP, or through any `fetch(uri)` callable such as the client's `get_status_list` RPC,
see `over_grpc`), verifies them with the cache's JWKS and keeps each for its `ttl` claim. When a refresh fails,
the copy it has is still used until the token's own `exp`; after that `is_revoked` raises
`StatusListUnavailable` and the platform decides (fail closed is the safe default).

Both come in a blocking and an asyncio form (`AsyncJwksCache`, `AsyncStatusListCache`) with
the same behaviour; the fetch is a callable, so the JWKS can come from the well-known URL
(`from_url`) or from the gRPC `get_jwks` call of the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from xacthuc.client.verify import AttestationVerifier, TokenInvalid, VerifiedAttestation
from xacthuc.domain.errors import Unavailable, XacthucError
from xacthuc.domain.statuslist import (
    MEDIA_TYPE,
    VALID,
    StatusListInvalid,
    StatusListToken,
    read_status_list_token,
    reference,
)

log = logging.getLogger(__name__)

Jwks = str | dict[str, Any]
Fetch = Callable[[], Jwks]
AsyncFetch = Callable[[], Awaitable[Jwks]]
Clock = Callable[[], float]
# uri -> the status list token (compact JWS text) found there.
FetchList = Callable[[str], str]
AsyncFetchList = Callable[[str], Awaitable[str]]
# What a failed list fetch may raise; the cache then falls back to the copy it holds.
_FETCH_ERRORS = (httpx.HTTPError, StatusListInvalid, ValueError, XacthucError)


class StatusListUnavailable(Unavailable):
    """No valid copy of the status list could be had: the status is unknown."""


class KeysUnavailable(Unavailable):
    """The JWKS has never been fetched successfully, and the last attempt was too recent to
    try again (`min_refetch_interval`)."""


def _parse(jwks: Jwks) -> dict[str, Any]:
    data = json.loads(jwks) if isinstance(jwks, str) else jwks
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS: a JSON object with a 'keys' array is expected")
    return data


class _JwksState:
    """What the blocking and asyncio caches share: the keys, and when a fetch is allowed."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Jwks | None,
        leeway: float,
        min_refetch_interval: float,
        max_age: float | None,
        clock: Clock,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._leeway = leeway
        self._min_interval = min_refetch_interval
        self._max_age = max_age
        self._clock = clock
        self._jwks: dict[str, Any] | None = None
        self._verifier: AttestationVerifier | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self.generation = 0  # grows with every successful fetch
        self.fetches = 0  # every attempt, for metrics and tests
        if jwks is not None:
            self._install(jwks, clock())

    def _install(self, jwks: Jwks, now: float) -> None:
        data = _parse(jwks)
        self._verifier = AttestationVerifier(
            data, issuer=self.issuer, audience=self.audience, leeway=self._leeway
        )
        self._jwks = data
        self._loaded_at = now
        self.generation += 1

    def _needs_load(self) -> bool:
        now = self._clock()
        if self._verifier is None:
            if not self._may_fetch(now):
                raise KeysUnavailable("no JWKS yet, and the last fetch failed moments ago")
            return True
        if self._max_age is None:
            return False
        return now - self._loaded_at >= self._max_age and self._may_fetch(now)

    def _may_fetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._min_interval

    def _attempt(self) -> None:
        self._last_attempt = self._clock()
        self.fetches += 1

    def _failed(self, error: Exception) -> None:
        if self._verifier is None:
            raise error
        log.warning("JWKS refresh failed, keeping the %d keys held: %s", len(self.key_ids), error)

    @property
    def jwks(self) -> dict[str, Any]:
        return dict(self._jwks or {"keys": []})

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset() if self._verifier is None else self._verifier.key_ids

    @property
    def verifier(self) -> AttestationVerifier:
        if self._verifier is None:
            raise RuntimeError("no JWKS loaded yet: call refresh() or verify() first")
        return self._verifier


class JwksCache(_JwksState):
    """Blocking cache over `fetch()` (JSON text or dict). Thread-safe."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        issuer: str,
        audience: str,
        jwks: Jwks | None = None,
        leeway: float = 30,
        min_refetch_interval: float = 30.0,
        max_age: float | None = 3600.0,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            issuer=issuer,
            audience=audience,
            jwks=jwks,
            leeway=leeway,
            min_refetch_interval=min_refetch_interval,
            max_age=max_age,
            clock=clock,
        )
        self._fetch = fetch
        self._lock = threading.Lock()
        self._owned: httpx.Client | None = None

    def close(self) -> None:
        """Close the HTTP client `from_url` made (a client passed in stays open)."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> JwksCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        issuer: str,
        audience: str,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        **options: Any,
    ) -> JwksCache:
        """A cache over the well-known JWKS URL (`.../.well-known/jwks.json`)."""
        client = http or httpx.Client(timeout=timeout, follow_redirects=True)

        def fetch() -> str:
            response = client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.text

        cache = cls(fetch, issuer=issuer, audience=audience, **options)
        cache._owned = None if http is not None else client
        return cache

    def refresh(self) -> None:
        """Fetch the JWKS now (not rate limited)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        self._attempt()
        try:
            jwks = self._fetch()
            self._install(jwks, self._clock())
        except Exception as e:
            self._failed(e)

    def refetch_if_allowed(self, seen_generation: int) -> bool:
        """After a `kid` miss at `seen_generation`: fetch again unless someone already did or
        the last attempt was too recent. True when the keys changed since `seen_generation`."""
        with self._lock:
            if self.generation == seen_generation and self._may_fetch(self._clock()):
                self._load()
            return self.generation != seen_generation

    def verify(self, token: str, *, now: float | None = None) -> VerifiedAttestation:
        """Verify offline; on an unknown `kid`, refetch (rate limited) and try once more."""
        if self._needs_load():
            with self._lock:
                if self._needs_load():
                    self._load()
        generation = self.generation
        try:
            return self.verifier.verify(token, now=now)
        except TokenInvalid as e:
            if e.reason != "UNKNOWN_KEY" or not self.refetch_if_allowed(generation):
                raise
        return self.verifier.verify(token, now=now)


class AsyncJwksCache(_JwksState):
    """The asyncio form of `JwksCache`: `fetch` is a coroutine function (e.g. the async
    client's `get_jwks`). Concurrent misses share one fetch."""

    def __init__(
        self,
        fetch: AsyncFetch,
        *,
        issuer: str,
        audience: str,
        jwks: Jwks | None = None,
        leeway: float = 30,
        min_refetch_interval: float = 30.0,
        max_age: float | None = 3600.0,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            issuer=issuer,
            audience=audience,
            jwks=jwks,
            leeway=leeway,
            min_refetch_interval=min_refetch_interval,
            max_age=max_age,
            clock=clock,
        )
        self._fetch = fetch
        self._lock = asyncio.Lock()
        self._owned: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        """Close the HTTP client `from_url` made (a client passed in stays open)."""
        if self._owned is not None:
            await self._owned.aclose()

    async def __aenter__(self) -> AsyncJwksCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        issuer: str,
        audience: str,
        http: httpx.AsyncClient | None = None,
        timeout: float = 5.0,
        **options: Any,
    ) -> AsyncJwksCache:
        """A cache over the well-known JWKS URL (`.../.well-known/jwks.json`)."""
        client = http or httpx.AsyncClient(timeout=timeout, follow_redirects=True)

        async def fetch() -> str:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.text

        cache = cls(fetch, issuer=issuer, audience=audience, **options)
        cache._owned = None if http is not None else client
        return cache

    async def refresh(self) -> None:
        """Fetch the JWKS now (not rate limited)."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        self._attempt()
        try:
            jwks = await self._fetch()
            self._install(jwks, self._clock())
        except Exception as e:
            self._failed(e)

    async def refetch_if_allowed(self, seen_generation: int) -> bool:
        async with self._lock:
            if self.generation == seen_generation and self._may_fetch(self._clock()):
                await self._load()
            return self.generation != seen_generation

    async def verify(self, token: str, *, now: float | None = None) -> VerifiedAttestation:
        """Verify offline; on an unknown `kid`, refetch (rate limited) and try once more."""
        if self._needs_load():
            async with self._lock:
                if self._needs_load():
                    await self._load()
        generation = self.generation
        try:
            return self.verifier.verify(token, now=now)
        except TokenInvalid as e:
            if e.reason != "UNKNOWN_KEY" or not await self.refetch_if_allowed(generation):
                raise
        return self.verifier.verify(token, now=now)


# ---- status lists ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    token: StatusListToken
    resolved_at: float


class _StatusLists:
    """The cache logic both forms share: freshness by `ttl`, validity by `exp`."""

    def __init__(
        self,
        *,
        clock: Clock,
        default_ttl: float,
        retry_after_failure: float,
        leeway: float,
    ) -> None:
        self._clock = clock
        self._default_ttl = default_ttl
        self._retry_after_failure = retry_after_failure
        self._leeway = leeway
        self._entries: dict[str, _Entry] = {}
        self._failed_at: dict[str, float] = {}
        self.fetches = 0

    def _fresh(self, uri: str, now: float) -> StatusListToken | None:
        entry = self._entries.get(uri)
        if entry is None:
            return None
        ttl = entry.token.ttl if entry.token.ttl is not None else self._default_ttl
        if now < entry.resolved_at + ttl and now < entry.token.expires_at:
            return entry.token
        return None

    def _usable(self, uri: str, now: float) -> StatusListToken | None:
        entry = self._entries.get(uri)
        if entry is not None and now < entry.token.expires_at + self._leeway:
            return entry.token
        return None

    def _backing_off(self, uri: str, now: float) -> bool:
        failed = self._failed_at.get(uri)
        return failed is not None and now - failed < self._retry_after_failure

    def _read(self, uri: str, body: str, jwks: dict[str, Any], issuer: str, now: float) -> None:
        token = read_status_list_token(
            body.strip(), jwks, expected_uri=uri, now=now, issuer=issuer, leeway=self._leeway
        )
        self._entries[uri] = _Entry(token, now)
        self._failed_at.pop(uri, None)

    def _fallback(self, uri: str, now: float, error: Exception | None) -> StatusListToken:
        if error is not None:
            self._failed_at[uri] = now
            log.warning("status list %s: refresh failed: %s", uri, error)
        held = self._usable(uri, now)
        if held is None:
            raise StatusListUnavailable(f"no valid status list from {uri}") from error
        return held

    @staticmethod
    def _status(token: StatusListToken, uri: str, idx: int) -> int:
        try:
            return token.status_list.get(idx)
        except IndexError:
            raise StatusListInvalid(
                "INDEX_OUT_OF_RANGE", f"index {idx} is outside the list at {uri}"
            ) from None


def _reference_of(verified: VerifiedAttestation) -> tuple[str, int] | None:
    return reference(verified.claims)


def _own_list(signed: Any, uri: str) -> str:
    """The token of a GetStatusList answer, if it is the list asked for: the RPC returns the
    calling platform's only list, so a token naming another URI cannot be answered that way."""
    if signed.uri != uri:
        raise ValueError(f"GetStatusList serves {signed.uri}, not {uri}")
    return str(signed.token)


class StatusListCache(_StatusLists):
    """Blocking status list cache; keys come from `jwks` (its issuer is required of lists).
    Lists are fetched over HTTP at their URI, or with `fetch(uri)` when given."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        http: httpx.Client | None = None,
        fetch: FetchList | None = None,
        timeout: float = 5.0,
        clock: Clock = time.time,
        default_ttl: float = 300.0,
        retry_after_failure: float = 10.0,
        leeway: float = 30.0,
    ) -> None:
        super().__init__(
            clock=clock,
            default_ttl=default_ttl,
            retry_after_failure=retry_after_failure,
            leeway=leeway,
        )
        self._jwks = jwks
        self._fetch_list = fetch
        self._owns_http = http is None and fetch is None
        self._http = http or (
            httpx.Client(timeout=timeout, follow_redirects=True) if fetch is None else None
        )
        self._lock = threading.Lock()

    @classmethod
    def over_grpc(cls, jwks: JwksCache, client: Any, **options: Any) -> StatusListCache:
        """A cache that fetches the platform's list with `client.get_status_list()` (a
        `xacthuc.client.Client`), for platforms that cannot reach the well-known listener."""

        def fetch(uri: str) -> str:
            return _own_list(client.get_status_list(), uri)

        return cls(jwks, fetch=fetch, **options)

    def close(self) -> None:
        """Close the HTTP client this cache made (a client passed in stays open)."""
        if self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> StatusListCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, uri: str) -> StatusListToken:
        """The verified status list token at `uri`, from the cache while its ttl lasts."""
        now = self._clock()
        token = self._fresh(uri, now)
        if token is not None:
            return token
        with self._lock:
            now = self._clock()
            token = self._fresh(uri, now)
            if token is not None:
                return token
            if self._backing_off(uri, now):
                return self._fallback(uri, now, None)
            try:
                self._fetch(uri, now)
            except _FETCH_ERRORS as e:
                return self._fallback(uri, now, e)
            return self._entries[uri].token

    def _fetch(self, uri: str, now: float) -> None:
        self.fetches += 1
        if self._fetch_list is not None:
            body = self._fetch_list(uri)
        else:
            assert self._http is not None
            response = self._http.get(uri, headers={"Accept": MEDIA_TYPE})
            response.raise_for_status()
            body = response.text
        if not self._jwks.key_ids:
            self._jwks.refresh()
        generation = self._jwks.generation
        try:
            self._read(uri, body, self._jwks.jwks, self._jwks.issuer, now)
        except StatusListInvalid as e:
            if e.reason != "UNKNOWN_KEY" or not self._jwks.refetch_if_allowed(generation):
                raise
            self._read(uri, body, self._jwks.jwks, self._jwks.issuer, now)

    def status(self, uri: str, idx: int) -> int:
        """The status value at `idx` (0 VALID, 1 INVALID, 2 SUSPENDED)."""
        return self._status(self.get(uri), uri, idx)

    def is_revoked(self, uri: str, idx: int) -> bool:
        """True unless the status is VALID (a suspended attestation may not act either)."""
        return self.status(uri, idx) != VALID

    def is_token_revoked(self, verified: VerifiedAttestation) -> bool:
        """The status of a verified attestation; False when it names no status list."""
        ref = _reference_of(verified)
        return False if ref is None else self.is_revoked(*ref)


class AsyncStatusListCache(_StatusLists):
    """The asyncio form of `StatusListCache`; concurrent misses of one URI share a fetch."""

    def __init__(
        self,
        jwks: AsyncJwksCache,
        *,
        http: httpx.AsyncClient | None = None,
        fetch: AsyncFetchList | None = None,
        timeout: float = 5.0,
        clock: Clock = time.time,
        default_ttl: float = 300.0,
        retry_after_failure: float = 10.0,
        leeway: float = 30.0,
    ) -> None:
        super().__init__(
            clock=clock,
            default_ttl=default_ttl,
            retry_after_failure=retry_after_failure,
            leeway=leeway,
        )
        self._jwks = jwks
        self._fetch_list = fetch
        self._owns_http = http is None and fetch is None
        self._http = http or (
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) if fetch is None else None
        )
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def over_grpc(cls, jwks: AsyncJwksCache, client: Any, **options: Any) -> AsyncStatusListCache:
        """A cache that fetches the platform's list with `await client.get_status_list()`
        (a `xacthuc.client.AsyncClient`), for platforms without HTTP access to xacthuc."""

        async def fetch(uri: str) -> str:
            return _own_list(await client.get_status_list(), uri)

        return cls(jwks, fetch=fetch, **options)

    async def aclose(self) -> None:
        """Close the HTTP client this cache made (a client passed in stays open)."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncStatusListCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get(self, uri: str) -> StatusListToken:
        """The verified status list token at `uri`, from the cache while its ttl lasts."""
        token = self._fresh(uri, self._clock())
        if token is not None:
            return token
        async with self._locks.setdefault(uri, asyncio.Lock()):
            now = self._clock()
            token = self._fresh(uri, now)
            if token is not None:
                return token
            if self._backing_off(uri, now):
                return self._fallback(uri, now, None)
            try:
                await self._fetch(uri, now)
            except _FETCH_ERRORS as e:
                return self._fallback(uri, now, e)
            return self._entries[uri].token

    async def _fetch(self, uri: str, now: float) -> None:
        self.fetches += 1
        if self._fetch_list is not None:
            body = await self._fetch_list(uri)
        else:
            assert self._http is not None
            response = await self._http.get(uri, headers={"Accept": MEDIA_TYPE})
            response.raise_for_status()
            body = response.text
        if not self._jwks.key_ids:
            await self._jwks.refresh()
        generation = self._jwks.generation
        try:
            self._read(uri, body, self._jwks.jwks, self._jwks.issuer, now)
        except StatusListInvalid as e:
            if e.reason != "UNKNOWN_KEY" or not await self._jwks.refetch_if_allowed(generation):
                raise
            self._read(uri, body, self._jwks.jwks, self._jwks.issuer, now)

    async def status(self, uri: str, idx: int) -> int:
        """The status value at `idx` (0 VALID, 1 INVALID, 2 SUSPENDED)."""
        return self._status(await self.get(uri), uri, idx)

    async def is_revoked(self, uri: str, idx: int) -> bool:
        """True unless the status is VALID (a suspended attestation may not act either)."""
        return await self.status(uri, idx) != VALID

    async def is_token_revoked(self, verified: VerifiedAttestation) -> bool:
        """The status of a verified attestation; False when it names no status list."""
        ref = _reference_of(verified)
        return False if ref is None else await self.is_revoked(*ref)
