"""Status lists for offline revocation checks, cached for their `ttl`.

`StatusListCache` fetches status list tokens (draft-ietf-oauth-status-list) by their URI
(over HTTP, or through any `fetch(uri)` callable such as the client's `get_status_list` RPC,
see `over_grpc`), verifies them with a `JwksCache`'s keys and keeps each for its `ttl` claim.
When a refresh fails, the copy it has is still used until the token's own `exp`; after that
`is_revoked` raises `StatusListUnavailable` and the platform decides (fail closed is the safe
default).

It comes in a blocking and an asyncio form (`AsyncStatusListCache`) with the same behaviour:
both run the rules of `_StatusLists` and differ only in how they fetch and lock. The clock
(`xacthuc.domain.clock.Clock`, the system clock by default) is compared with the lists' `exp`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from xacthuc.client.jwks import AsyncJwksCache, JwksCache, response_text
from xacthuc.client.verify import VerifiedAttestation
from xacthuc.domain.clock import Clock, SystemClock
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

# uri -> the status list token (compact JWS text) found there.
FetchList = Callable[[str], str]
AsyncFetchList = Callable[[str], Awaitable[str]]
# What a failed list fetch may raise; the cache then falls back to the copy it holds.
_FETCH_ERRORS = (httpx.HTTPError, StatusListInvalid, ValueError, XacthucError)
_ACCEPT_LIST = {"Accept": MEDIA_TYPE}

# What differs between the two forms: the key cache, the fetch, the HTTP client, the lock.
KeysT = TypeVar("KeysT", JwksCache, AsyncJwksCache)
FetchListT = TypeVar("FetchListT", FetchList, AsyncFetchList)
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
LockT = TypeVar("LockT", threading.Lock, asyncio.Lock)


class StatusListUnavailable(Unavailable):
    """No valid copy of the status list could be had: the status is unknown."""


@dataclass(slots=True)
class _Entry:
    token: StatusListToken
    resolved_at: float


class _StatusLists(Generic[KeysT, FetchListT, HttpT, LockT]):
    """What the blocking and asyncio caches share: the options, the copies held, freshness by
    `ttl`, validity by `exp`. The two forms add only the fetching and locking."""

    def __init__(
        self,
        jwks: KeysT,
        *,
        http: HttpT | None = None,
        fetch: FetchListT | None = None,
        timeout: float = 5.0,
        clock: Clock | None = None,
        default_ttl: float = 300.0,
        retry_after_failure: float = 10.0,
        leeway: float = 30.0,
    ) -> None:
        self._jwks: KeysT = jwks
        self._fetch_list: FetchListT | None = fetch
        self._owns_http = http is None and fetch is None
        self._http: HttpT | None = http or (self._new_http(timeout) if fetch is None else None)
        self._locks: dict[str, LockT] = {}  # one per URI: misses of one list share a fetch
        self._clock = clock or SystemClock()
        self._default_ttl = default_ttl
        self._retry_after_failure = retry_after_failure
        self._leeway = leeway
        self._entries: dict[str, _Entry] = {}
        self._failed_at: dict[str, float] = {}
        self.fetches = 0

    def _new_http(self, timeout: float) -> HttpT:
        raise NotImplementedError

    def _new_lock(self) -> LockT:
        raise NotImplementedError

    def _lock(self, uri: str) -> LockT:
        lock = self._locks.get(uri)
        if lock is None:
            lock = self._locks.setdefault(uri, self._new_lock())
        return lock

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


class StatusListCache(_StatusLists[JwksCache, FetchList, httpx.Client, threading.Lock]):
    """Blocking status list cache; keys come from `jwks` (its issuer is required of lists).
    Lists are fetched over HTTP at their URI, or with `fetch(uri)` when given."""

    def _new_http(self, timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout, follow_redirects=True)

    def _new_lock(self) -> threading.Lock:
        return threading.Lock()

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
        now = self._clock.now()
        token = self._fresh(uri, now)
        if token is not None:
            return token
        with self._lock(uri):
            now = self._clock.now()
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
            body = response_text(self._http.get(uri, headers=_ACCEPT_LIST))
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

    def token_status(self, verified: VerifiedAttestation) -> int:
        """The status value of a verified attestation (0 VALID, 1 INVALID, 2 SUSPENDED: the
        account is locked, R7); VALID when it names no status list."""
        ref = _reference_of(verified)
        return VALID if ref is None else self.status(*ref)


class AsyncStatusListCache(
    _StatusLists[AsyncJwksCache, AsyncFetchList, httpx.AsyncClient, asyncio.Lock]
):
    """The asyncio form of `StatusListCache`; concurrent misses of one URI share a fetch."""

    def _new_http(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    def _new_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

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
        token = self._fresh(uri, self._clock.now())
        if token is not None:
            return token
        async with self._lock(uri):
            now = self._clock.now()
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
            body = response_text(await self._http.get(uri, headers=_ACCEPT_LIST))
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

    async def token_status(self, verified: VerifiedAttestation) -> int:
        """The status value of a verified attestation (0 VALID, 1 INVALID, 2 SUSPENDED: the
        account is locked, R7); VALID when it names no status list."""
        ref = _reference_of(verified)
        return VALID if ref is None else await self.status(*ref)
