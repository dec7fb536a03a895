"""The JWKS for offline verification, cached and refreshed without hammering xacthuc.

`JwksCache` keeps the JWKS and an `AttestationVerifier` over it. A token signed with a key
the cache does not know (a rotation happened since the last fetch) makes it fetch the JWKS
again, at most once per `min_refetch_interval` seconds, and verify once more; a flood of
tokens with made-up `kid`s therefore costs one fetch per interval, not one per token. The
JWKS is also refetched when older than `max_age` (keys removed after a compromise go away);
if that refresh fails, the keys it has stay in use.

It comes in a blocking and an asyncio form (`AsyncJwksCache`) with the same behaviour: both
run the rules of `_JwksState` and differ only in how they fetch and lock. The fetch is a
callable, so the JWKS can come from the well-known URL (`from_url`) or from the gRPC
`get_jwks` call of the client. The clock (`xacthuc.domain.clock.Clock`, monotonic by default)
paces the refetches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import httpx

from xacthuc.client.verify import AttestationVerifier, TokenInvalid, VerifiedAttestation
from xacthuc.domain.clock import Clock, MonotonicClock
from xacthuc.domain.errors import Unavailable

log = logging.getLogger(__name__)

Jwks = str | dict[str, Any]
Fetch = Callable[[], Jwks]
AsyncFetch = Callable[[], Awaitable[Jwks]]
_ACCEPT_JSON = {"Accept": "application/json"}

# What differs between the two forms: the fetch, the HTTP client `from_url` makes, the lock.
FetchT = TypeVar("FetchT", Fetch, AsyncFetch)
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
LockT = TypeVar("LockT", threading.Lock, asyncio.Lock)


class KeysUnavailable(Unavailable):
    """The JWKS has never been fetched successfully, and the last attempt was too recent to
    try again (`min_refetch_interval`)."""


def response_text(response: httpx.Response) -> str:
    """The body of a successful answer (an HTTP error status raises `httpx.HTTPStatusError`)."""
    response.raise_for_status()
    return response.text


def _parse(jwks: Jwks) -> dict[str, Any]:
    data = json.loads(jwks) if isinstance(jwks, str) else jwks
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS: a JSON object with a 'keys' array is expected")
    return data


class _JwksState(Generic[FetchT, HttpT, LockT]):
    """What the blocking and asyncio caches share: the options, the keys, and when a fetch
    is allowed. The two forms add only the fetching and locking."""

    def __init__(
        self,
        fetch: FetchT,
        *,
        issuer: str,
        audience: str,
        jwks: Jwks | None = None,
        leeway: float = 30,
        min_refetch_interval: float = 30.0,
        max_age: float | None = 3600.0,
        clock: Clock | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._fetch: FetchT = fetch
        self._lock: LockT = self._new_lock()
        self._owned: HttpT | None = None  # the HTTP client `from_url` made, closed with us
        self._leeway = leeway
        self._min_interval = min_refetch_interval
        self._max_age = max_age
        self._clock = clock or MonotonicClock()
        self._jwks: dict[str, Any] | None = None
        self._verifier: AttestationVerifier | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self.generation = 0  # grows with every successful fetch
        self.fetches = 0  # every attempt, for metrics and tests
        if jwks is not None:
            self._install(jwks)

    def _new_lock(self) -> LockT:
        raise NotImplementedError

    def _install(self, jwks: Jwks) -> None:
        data = _parse(jwks)
        self._verifier = AttestationVerifier(
            data, issuer=self.issuer, audience=self.audience, leeway=self._leeway
        )
        self._jwks = data
        self._loaded_at = self._clock.now()
        self.generation += 1

    def _needs_load(self) -> bool:
        now = self._clock.now()
        if self._verifier is None:
            if not self._may_fetch():
                raise KeysUnavailable("no JWKS yet, and the last fetch failed moments ago")
            return True
        if self._max_age is None:
            return False
        return now - self._loaded_at >= self._max_age and self._may_fetch()

    def _may_fetch(self) -> bool:
        now = self._clock.now()
        return self._last_attempt is None or now - self._last_attempt >= self._min_interval

    def _may_refetch(self, seen_generation: int) -> bool:
        """After a `kid` miss at `seen_generation`: nobody fetched since, and it is allowed."""
        return self.generation == seen_generation and self._may_fetch()

    def _attempt(self) -> None:
        self._last_attempt = self._clock.now()
        self.fetches += 1

    def _failed(self, error: Exception) -> None:
        if self._verifier is None:
            raise error
        log.warning("JWKS refresh failed, keeping the %d keys held: %s", len(self.key_ids), error)

    @staticmethod
    def _retry_on(error: TokenInvalid) -> bool:
        """Whether a failed verification may succeed with a fresher JWKS."""
        return error.reason == "UNKNOWN_KEY"

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


class JwksCache(_JwksState[Fetch, httpx.Client, threading.Lock]):
    """Blocking cache over `fetch()` (JSON text or dict). Thread-safe."""

    def _new_lock(self) -> threading.Lock:
        return threading.Lock()

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
            return response_text(client.get(url, headers=_ACCEPT_JSON))

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
            self._install(self._fetch())
        except Exception as e:
            self._failed(e)

    def refetch_if_allowed(self, seen_generation: int) -> bool:
        """After a `kid` miss at `seen_generation`: fetch again unless someone already did or
        the last attempt was too recent. True when the keys changed since `seen_generation`."""
        with self._lock:
            if self._may_refetch(seen_generation):
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
            if not self._retry_on(e) or not self.refetch_if_allowed(generation):
                raise
        return self.verifier.verify(token, now=now)


class AsyncJwksCache(_JwksState[AsyncFetch, httpx.AsyncClient, asyncio.Lock]):
    """The asyncio form of `JwksCache`: `fetch` is a coroutine function (e.g. the async
    client's `get_jwks`). Concurrent misses share one fetch."""

    def _new_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

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
            return response_text(await client.get(url, headers=_ACCEPT_JSON))

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
            self._install(await self._fetch())
        except Exception as e:
            self._failed(e)

    async def refetch_if_allowed(self, seen_generation: int) -> bool:
        """After a `kid` miss at `seen_generation`: fetch again unless someone already did or
        the last attempt was too recent. True when the keys changed since `seen_generation`."""
        async with self._lock:
            if self._may_refetch(seen_generation):
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
            if not self._retry_on(e) or not await self.refetch_if_allowed(generation):
                raise
        return self.verifier.verify(token, now=now)
