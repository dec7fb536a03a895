"""Production sender: hands each SMS to an HTTP gateway (the provider's API or a small bridge).

Wire contract, one request per attempt:

    POST <url>
    Content-Type: application/json
    Authorization: <auth_header>          (only when configured, sent verbatim, e.g. "Bearer xyz")
    Idempotency-Key: <message_id>         (identical on every retry of the same message)

    {"to": "+84912345678", "text": "<message with the code>", "message_id": "<message_id>"}

The gateway answers:

* any 2xx: accepted; the body is ignored.
* 429 or any 5xx: temporary; the sender retries. A `Retry-After` header (seconds or an HTTP
  date) is honoured, capped at 5 s.
* any other status (4xx, and 3xx: redirects are not followed): permanent; no retry.

Connect errors, timeouts (each attempt is bounded by `timeout` seconds as a whole) and a
connection dropped mid-exchange are retried too. Because a retry can reach the gateway after
an earlier attempt already did, the gateway must de-duplicate on `Idempotency-Key`
(`message_id` is also in the body). Without `Retry-After`, the wait before retry n (n = 1, 2,
...) is drawn uniformly from [0, min(2 s, backoff * 2**(n-1))] ("full jitter").

After `1 + retries` failed attempts, `send` raises `SmsDeliveryError` naming the last HTTP
status or error class (`ConnectError` when no connection could be made, `TimeoutError` when
an attempt ran out of time, otherwise aiohttp's class name). Neither that error nor any log
line carries the phone number, the message text, the URL or the credentials; logs name the
`message_id` and the status only.

Transport: one `aiohttp.ClientSession` (a keep-alive pool of up to 100 connections), either
passed in by the caller or created by the sender on its first send: a session belongs to the
event loop it is made in, and the sender may be built before the loop runs. A forward proxy
named by the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, minus `NO_PROXY`) is used
by the sender's own session, read once when the sender is built, and so are `trace_configs`
(tracing: `xacthuc.server.telemetry`, which records no body and no query string).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from xacthuc.adapters.outbound import proxy_from_environment
from xacthuc.domain.backoff import check_retry_options, full_jitter
from xacthuc.domain.clock import Clock, SystemClock
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage

__all__ = ["HttpSmsSender", "failure_kind"]

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 2.0
MAX_RETRY_AFTER_SECONDS = 5.0
# A reply body is read (and dropped) up to this size so its connection can be reused; a longer
# one is left unread and its connection closed instead.
MAX_DRAINED_BODY_BYTES = 64 * 1024
# aiohttp's per-request timeout when the attempt is bounded by `asyncio.timeout` (`_post`).
_UNBOUNDED = aiohttp.ClientTimeout()


class HttpSmsSender:
    """Sends each `SmsMessage` as a JSON POST, retrying transient failures (see module doc)."""

    def __init__(
        self,
        *,
        url: str,
        auth_header: str | None,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        client: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Clock | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        on_failed_attempt: Callable[[str], object] | None = None,
    ) -> None:
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            parsed = URL()
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("SMS gateway url must be http:// or https://")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        check_retry_options(retries, backoff)
        self._url = parsed
        self._headers = {"Authorization": auth_header} if auth_header else {}
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = 1 + retries
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock or SystemClock()  # reads Retry-After dates
        self._owns_client = client is None
        self._client = client
        self._proxy = proxy_from_environment(parsed) if client is None else None
        self._trace_configs = list(trace_configs)
        # Told the kind of every failed attempt, retried or not (metrics: retries that end in
        # success would otherwise hide a failing gateway).
        self._on_failed_attempt = on_failed_attempt or (lambda kind: None)
        self._closed = False

    async def send(self, message: SmsMessage) -> None:
        session = self._session()
        body = {"to": message.to, "text": message.text, "message_id": message.message_id}
        headers = {**self._headers, "Idempotency-Key": message.message_id}
        failure = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            permanent = False
            try:
                status, retry_after_header = await self._post(session, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure, permanent = _classify(exc)
            else:
                if 200 <= status < 300:
                    return
                failure = f"HTTP {status}"
                permanent = status != 429 and status < 500
                retry_after = _parse_retry_after(retry_after_header, self._clock.now())
            self._on_failed_attempt(failure_kind(failure))
            if permanent:
                # Raised outside any `except`, so the error has no __context__: aiohttp's
                # exceptions hold the request (URL, headers) and must not travel with it.
                self._log_failure(message, attempt, failure, final=True)
                what = "rejected the message" if failure.startswith("HTTP ") else "request failed"
                raise SmsDeliveryError(f"SMS gateway {what}: {failure}")
            if attempt == self._attempts:
                break
            self._log_failure(message, attempt, failure, final=False)
            await self._sleep(
                retry_after
                if retry_after is not None
                else full_jitter(attempt, base=self._backoff, cap=MAX_BACKOFF_SECONDS)
            )
        self._log_failure(message, self._attempts, failure, final=True)
        raise SmsDeliveryError(
            f"SMS gateway failed after {self._attempts} attempt(s); last: {failure}"
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._owns_client and self._client is not None:
            await self._client.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            if self._closed:
                raise RuntimeError("HttpSmsSender is closed")
            # Made here, inside the running loop, not in __init__ (see the module doc).
            self._client = aiohttp.ClientSession(
                timeout=self._client_timeout,
                proxy=self._proxy,
                trace_configs=self._trace_configs or None,
            )
        return self._client

    async def _post(
        self,
        session: aiohttp.ClientSession,
        body: dict[str, str],
        headers: dict[str, str],
    ) -> tuple[int, str | None]:
        """One attempt, bounded by `timeout` as a whole: (status, Retry-After header).

        The one bound is `asyncio.timeout`'s; aiohttp's own per-request timer is switched
        off (`_UNBOUNDED`: it would be a second timer armed and cancelled per send, bounding
        the same span)."""
        async with (
            asyncio.timeout(self._timeout),
            session.post(
                self._url,
                json=body,
                headers=headers,
                timeout=_UNBOUNDED,
                allow_redirects=False,
                raise_for_status=False,  # even when an injected session says otherwise
            ) as response,
        ):
            await _drain(response)
            return response.status, response.headers.get("Retry-After")

    def _log_failure(self, message: SmsMessage, attempt: int, failure: str, *, final: bool) -> None:
        logger.warning(
            "SMS send attempt %d/%d %s: message_id=%s status=%s",
            attempt,
            self._attempts,
            "failed, giving up" if final else "failed, will retry",
            message.message_id,
            failure,
        )


def failure_kind(failure: str) -> str:
    """A failed attempt's kind, from a bounded set: "HTTP 429", "HTTP 4xx", "HTTP 5xx",
    "HTTP 3xx", or the error's name (`TimeoutError`, `ConnectError`, aiohttp's classes)."""
    if not failure.startswith("HTTP "):
        return failure
    status = failure.removeprefix("HTTP ")
    return failure if status == "429" else f"HTTP {status[:1]}xx"


def _classify(exc: aiohttp.ClientError | TimeoutError) -> tuple[str, bool]:
    """(name for the error and log, permanent?) of a failed attempt.

    Worth another attempt: the request may never have arrived, or arrived and the answer was
    lost; Idempotency-Key makes the repeat harmless. That covers timeouts, failed connects
    (DNS, refused, TLS), connections reset or closed mid-exchange, truncated or malformed
    replies. Other client errors (a malformed URL, a proxy refusing the tunnel) will not fix
    themselves and fail at once.
    """
    if isinstance(exc, TimeoutError):  # asyncio.timeout and aiohttp's own timeout errors
        return "TimeoutError", False
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError", False
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return type(exc).__name__, True
    if isinstance(
        exc,
        aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        return type(exc).__name__, False
    return type(exc).__name__, True


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read and drop a short body, so the keep-alive connection goes back to the pool."""
    remaining = MAX_DRAINED_BODY_BYTES
    while remaining > 0:
        chunk = await response.content.readany()
        if not chunk:
            return
        remaining -= len(chunk)


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a Retry-After header (an HTTP date counts from `now`), capped;
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - now)
    return min(seconds, MAX_RETRY_AFTER_SECONDS)
