"""Production registry adapter: a licensed e-ID authentication provider over mutual TLS (P5).

Wire contract, one request per attempt:

    POST <base_url>/v1/match
    Content-Type: application/json
    X-Request-Id: <random hex, identical on every retry of one match>

    {"personal_id": "<digits>", "id_type": "citizen" | "foreigner",
     "full_name": "<NFC, single spaces>", "date_of_birth": "YYYY-MM-DD"}

`id_type` says which kind of number `personal_id` is (R9): a citizen's 12-digit personal
identification number, or a foreigner's identification number in the e-ID system (Decree
69/2024/ND-CP), which may have the same digits as some citizen's number and names another
person: a provider must look it up among foreigners' e-identities only.

The provider answers `200` with `{"result": "match"}` or `{"result": "no_match"}` (an
unknown number is `no_match` too). A 4xx other than 408 and 429 is the provider refusing THIS
query (it found something in it to reject), not an outage: it is answered `NO_MATCH`, exactly
like a non-match (it costs the user an attempt, is not retried and is no breaker failure;
otherwise one user repeating a query the provider rejects would open the circuit for every
user), and logged once at WARNING with the status only. Anything else is "unavailable":

* connect errors, dropped connections, timeouts (each attempt is bounded by `timeout`
  seconds as a whole) and 5xx are retried, at most `retries` times, with full-jitter
  back-off (the wait before retry n is uniform in [0, min(2 s, backoff * 2**(n-1))]);
  a match is read-only, so a repeat is harmless;
* one deadline, `deadline` seconds from the start of `match`, covers every attempt and every
  back-off wait: a wait starts only when the wait and a whole attempt (`timeout`) still fit
  before it, and an attempt only when it does, otherwise `match` gives up at once (so with
  a hanging provider it ends within `deadline` however high `retries` is);
* TLS failures (the provider's certificate does not verify, our client certificate is
  refused), other statuses (408, 429, 1xx, redirects, which are not followed) and a 200
  whose body is not one of the two answers are not retried;

and once the attempts are spent `match` raises `RegistryUnavailableError`.

TLS: an `ssl.SSLContext` built here, TLS 1.2 minimum, verifying the provider against
`ca_file` (or the system trust store when None), presenting `client_cert` = (certificate
chain PEM, private key PEM) when given.

Transport: one `aiohttp.ClientSession` over that context (a keep-alive pool of up to 100
connections), made on the first `match` because a session belongs to the event loop it is
made in and the adapter may be built before the loop runs. A forward proxy named by the
environment (`HTTPS_PROXY`, `ALL_PROXY`, minus `NO_PROXY`) is used, read once at construction,
and so are `trace_configs` (tracing: `xacthuc.server.telemetry`, which records no body).

Circuit breaker: every `match` that ends without an answer is one failure, whether it raised
`RegistryUnavailableError` or was cut short by its caller (cancelled, for example by the
caller's own deadline); a `MATCH` or `NO_MATCH` (a rejecting 4xx included) resets the count. After `failure_threshold` consecutive failures the
circuit opens: for `reset_timeout` seconds (read from the injected `clock`) every `match`
fails at once without touching the network. Then the circuit is half-open: exactly one
caller makes a single trial attempt (no retries) while the others still fail fast; success
closes the circuit, failure opens it for another `reset_timeout`.

Neither errors nor log lines carry the number, the name, the date of birth or the URL; logs
name the request id, the attempt and the HTTP status or error class only (P9): `ConnectError`
when no (TLS) connection could be made, `TimeoutError` when an attempt ran out of time,
otherwise aiohttp's class name.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import secrets
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from xacthuc.adapters.outbound import proxy_from_environment
from xacthuc.domain.backoff import check_retry_options, full_jitter
from xacthuc.domain.clock import Clock, MonotonicClock
from xacthuc.ports.registry import (
    RegistryAnswer,
    RegistryQuery,
    RegistryUnavailableError,
    clean_name,
)

__all__ = ["CircuitState", "HttpRegistry", "build_ssl_context"]

logger = logging.getLogger(__name__)

MATCH_PATH = "/v1/match"
MAX_BACKOFF_SECONDS = 2.0
MAX_RESPONSE_BYTES = 64 * 1024

_ANSWERS = {"match": RegistryAnswer.MATCH, "no_match": RegistryAnswer.NO_MATCH}


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# 4xx statuses that say nothing about the query: the provider timed out or is shedding load.
_OUTAGE_4XX = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class _Rejected:
    """The provider refused this very query with a 4xx: a definite answer, a non-match."""

    status: int


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed attempt; `label` is safe to log (a status or an error class name)."""

    label: str
    retryable: bool


def build_ssl_context(
    *, client_cert: tuple[Path, Path] | None, ca_file: Path | None
) -> ssl.SSLContext:
    """A client-side context: verifies the server (against `ca_file` if given), mutual TLS."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        cert_file, key_file = client_cert
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context


class HttpRegistry:
    """`IdentityRegistry` over HTTPS with retries and a circuit breaker (see module doc)."""

    def __init__(
        self,
        *,
        base_url: str,
        client_cert: tuple[Path, Path] | None = None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        deadline: float = 10.0,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        try:
            url = URL(base_url)
        except (TypeError, ValueError):
            url = URL()
        if url.scheme != "https" or not url.host:
            raise ValueError("registry base_url must be an https:// URL")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        check_retry_options(retries, backoff)
        if not (deadline >= timeout and math.isfinite(deadline)):
            raise ValueError("deadline must be a number of seconds, at least `timeout`")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not (reset_timeout >= 0 and math.isfinite(reset_timeout)):
            raise ValueError("reset_timeout must be a non-negative number of seconds")
        self._url = URL(base_url.rstrip("/") + MATCH_PATH)
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = 1 + retries
        self._backoff = backoff
        self._deadline = deadline
        self._failure_threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._clock = (
            clock or MonotonicClock()
        )  # the breaker and the deadline: immune to date changes
        self._sleep = sleep
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        # Built now, so a missing or unreadable certificate fails at start, not at first match.
        self._ssl = build_ssl_context(client_cert=client_cert, ca_file=ca_file)
        self._proxy = proxy_from_environment(self._url)
        self._trace_configs = list(trace_configs)
        self._client: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def name(self) -> str:
        """The provider's host: names this registry in metrics (bounded, no personal data)."""
        return self._url.host or "registry"

    @property
    def circuit_state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock.now() - self._opened_at < self._reset_timeout:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        request_id = secrets.token_hex(8)
        state = self.circuit_state
        if state is CircuitState.OPEN or (
            state is CircuitState.HALF_OPEN and self._trial_in_flight
        ):
            logger.info("identity registry circuit open, failing fast: request_id=%s", request_id)
            raise RegistryUnavailableError("identity registry circuit is open; retry later")
        trial = state is CircuitState.HALF_OPEN
        if trial:
            self._trial_in_flight = True
        try:
            answer = await self._attempt_all(query, request_id, attempts=1 if trial else None)
        except asyncio.CancelledError:
            # Cut short by the caller (its deadline, a shutdown): no answer, so a failure too;
            # otherwise a registry slower than the caller's patience would never open the circuit.
            logger.warning("identity registry match cancelled: request_id=%s", request_id)
            self._record_failure(request_id)
            raise
        except BaseException:
            self._record_failure(request_id)
            raise
        finally:
            if trial:
                self._trial_in_flight = False
        self._failures = 0
        self._opened_at = None
        return answer

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            if self._closed:
                raise RuntimeError("HttpRegistry is closed")
            # Made here, inside the running loop, not in __init__ (see the module doc).
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=self._client_timeout,
                proxy=self._proxy,
                trace_configs=self._trace_configs or None,
            )
        return self._client

    async def _attempt_all(
        self, query: RegistryQuery, request_id: str, *, attempts: int | None
    ) -> RegistryAnswer:
        body = {
            "personal_id": query.number,
            "id_type": query.id_type,
            "full_name": clean_name(query.full_name),
            "date_of_birth": query.date_of_birth.isoformat(),
        }
        headers = {"X-Request-Id": request_id}
        total = attempts if attempts is not None else self._attempts
        session = self._session()
        # One deadline for attempts and back-off; the first attempt always fits (deadline >=
        # timeout), a later one only when its wait and the whole attempt end before it.
        deadline = self._clock.now() + self._deadline
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(session, body, headers)
            if isinstance(outcome, RegistryAnswer):
                return outcome
            if isinstance(outcome, _Rejected):
                # The status only: a provider's 4xx body may echo the query (P9).
                logger.warning(
                    "identity registry rejected the query with HTTP %d, answered as a "
                    "non-match: request_id=%s",
                    outcome.status,
                    request_id,
                )
                return RegistryAnswer.NO_MATCH
            delay = full_jitter(attempt, base=self._backoff, cap=MAX_BACKOFF_SECONDS)
            if not outcome.retryable or attempt == total:
                next_step = "giving up"
            elif self._clock.now() + delay + self._timeout > deadline:
                next_step = "giving up, no time for another attempt before the deadline"
            else:
                next_step = "will retry"
            self._log_failure(request_id, attempt, total, outcome.label, next_step)
            if next_step != "will retry":
                break
            await self._sleep(delay)
            if self._clock.now() + self._timeout > deadline:  # the wait itself ran long
                logger.warning(
                    "identity registry giving up after %d attempt(s), no time for another "
                    "before the deadline: request_id=%s",
                    attempt,
                    request_id,
                )
                break
        # Raised outside any `except`: no aiohttp exception (which holds the request, URL and
        # headers) is chained as __cause__ or __context__.
        raise RegistryUnavailableError(
            f"identity registry failed after {attempt} attempt(s); last: {outcome.label}"
        )

    async def _attempt(
        self, session: aiohttp.ClientSession, body: dict[str, str], headers: dict[str, str]
    ) -> RegistryAnswer | _Rejected | _Failure:
        try:
            async with (
                asyncio.timeout(self._timeout),
                session.post(
                    self._url,
                    json=body,
                    headers=headers,
                    timeout=self._client_timeout,
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                content = await _read_limited(response, MAX_RESPONSE_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _classify(exc)
        if status >= 500:
            return _Failure(f"HTTP {status}", retryable=True)
        if 400 <= status < 500 and status not in _OUTAGE_4XX:
            return _Rejected(status)
        if status != 200:
            return _Failure(f"HTTP {status}", retryable=False)
        if content is None:
            return _Failure("oversized answer", retryable=False)
        try:
            payload = json.loads(content)
        except ValueError:
            return _Failure("answer is not JSON", retryable=False)
        result = payload.get("result") if isinstance(payload, dict) else None
        answer = _ANSWERS.get(result) if isinstance(result, str) else None
        if answer is None:
            return _Failure("answer has no valid result", retryable=False)
        return answer

    def _record_failure(self, request_id: str) -> None:
        was_open = self._opened_at is not None
        self._failures += 1
        if was_open or self._failures >= self._failure_threshold:
            self._opened_at = self._clock.now()
            logger.error(
                "identity registry circuit opened for %.1f s after %d consecutive failure(s): "
                "request_id=%s",
                self._reset_timeout,
                self._failures,
                request_id,
            )

    def _log_failure(
        self, request_id: str, attempt: int, total: int, failure: str, next_step: str
    ) -> None:
        logger.warning(
            "identity registry attempt %d/%d failed, %s: request_id=%s status=%s",
            attempt,
            total,
            next_step,
            request_id,
            failure,
        )


def _classify(exc: aiohttp.ClientError | TimeoutError) -> _Failure:
    """A failed exchange. Worth another attempt: the request may never have arrived, or its
    answer was lost (timeouts, failed connects, connections reset or closed mid-exchange,
    truncated or malformed replies), unless a TLS refusal is behind it. Other client errors (a
    malformed URL, a proxy refusing the tunnel) will not fix themselves.
    """
    if isinstance(exc, TimeoutError):  # asyncio.timeout and aiohttp's own timeout errors
        return _Failure("TimeoutError", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Failure("ConnectError", retryable=not _is_tls_failure(exc))
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return _Failure(type(exc).__name__, retryable=False)
    if isinstance(
        exc,
        aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        return _Failure(type(exc).__name__, retryable=not _is_tls_failure(exc))
    return _Failure(type(exc).__name__, retryable=False)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _is_tls_failure(exc: BaseException) -> bool:
    """True when a TLS refusal (a certificate rejected by either side) is behind `exc`.

    Retrying cannot fix it. Timeouts never count: asyncio's TLS layer leaves internal
    `SSLWantReadError`s in the context chain of a cancelled read. Only a verification failure
    or a plain `ssl.SSLError` (how OpenSSL reports alerts such as "certificate required")
    counts; EOF, syscall and want-read/write errors are connection trouble and are retried.
    """
    if isinstance(exc, TimeoutError):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError) or type(current) is ssl.SSLError:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
