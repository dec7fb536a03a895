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
status or error class. Neither that error nor any log line carries the phone number, the
message text, the URL or the credentials; logs name the `message_id` and the status only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from xacthuc.sms.base import SmsDeliveryError, SmsMessage

__all__ = ["HttpSmsSender"]

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 2.0
MAX_RETRY_AFTER_SECONDS = 5.0

# Failures worth another attempt: the request may never have arrived, or arrived and the answer
# was lost; Idempotency-Key makes the repeat harmless. Other httpx errors (a malformed URL, an
# unsupported scheme, a proxy refusal) will not fix themselves and fail at once.
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    TimeoutError,  # the whole-attempt deadline below
)


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
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if httpx.URL(url).scheme not in ("http", "https"):
            raise ValueError("SMS gateway url must be http:// or https://")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if not (backoff >= 0 and math.isfinite(backoff)):
            raise ValueError("backoff must be a non-negative number of seconds")
        self._url = url
        self._headers = {"Authorization": auth_header} if auth_header else {}
        self._timeout = timeout
        self._attempts = 1 + retries
        self._backoff = backoff
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(self, message: SmsMessage) -> None:
        body = {"to": message.to, "text": message.text, "message_id": message.message_id}
        headers = {**self._headers, "Idempotency-Key": message.message_id}
        failure = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._client.post(
                        self._url, json=body, headers=headers, timeout=self._timeout
                    )
            except _RETRYABLE_ERRORS as exc:
                failure = type(exc).__name__
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
                self._log_failure(message, attempt, failure, final=True)
                # `from None`: the httpx exception holds the request, with its body and headers.
                raise SmsDeliveryError(f"SMS gateway request failed: {failure}") from None
            else:
                status = response.status_code
                if response.is_success:
                    return
                failure = f"HTTP {status}"
                if status != 429 and status < 500:
                    self._log_failure(message, attempt, failure, final=True)
                    raise SmsDeliveryError(f"SMS gateway rejected the message: {failure}")
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            if attempt == self._attempts:
                break
            self._log_failure(message, attempt, failure, final=False)
            await self._sleep(retry_after if retry_after is not None else self._jitter(attempt))
        self._log_failure(message, self._attempts, failure, final=True)
        raise SmsDeliveryError(
            f"SMS gateway failed after {self._attempts} attempt(s); last: {failure}"
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _jitter(self, attempt: int) -> float:
        ceiling = min(MAX_BACKOFF_SECONDS, self._backoff * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    def _log_failure(self, message: SmsMessage, attempt: int, failure: str, *, final: bool) -> None:
        logger.warning(
            "SMS send attempt %d/%d %s: message_id=%s status=%s",
            attempt,
            self._attempts,
            "failed, giving up" if final else "failed, will retry",
            message.message_id,
            failure,
        )


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait per a Retry-After header, capped; None when absent or unreadable."""
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
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return min(seconds, MAX_RETRY_AFTER_SECONDS)
