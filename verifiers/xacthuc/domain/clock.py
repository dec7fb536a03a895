"""Time as an injected dependency: rules never read the system clock themselves.

One type, `Clock`, everywhere a component needs the time: use cases, adapters, the gRPC edge
and the SDK's caches take one and call `now()`. Two real clocks implement it: `SystemClock`
(seconds since the Unix epoch: expiry, birthdays, token times) and `MonotonicClock` (seconds
that never go back: pacing, back-off windows, circuit breakers, which must not jump with the
wall clock). Tests pass a `FixedClock` for either.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

INSTANT_FORM = "an RFC 3339 time with an offset, such as 2027-01-01T00:00:00+07:00 (Z for UTC)"


def parse_instant(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 (ISO 8601) time that states its offset. A time
    without one (a bare date included) is refused, not read in some zone: an auditor's range
    must mean one instant wherever it is typed (the CLI and the console agree). ValueError
    names the expected form (`INSTANT_FORM`)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"must be {INSTANT_FORM}") from None
    if when.tzinfo is None:
        raise ValueError(f"has no offset: must be {INSTANT_FORM}")
    return when.timestamp()


class Clock(Protocol):
    def now(self) -> float:
        """Seconds: since the Unix epoch (UTC) for a wall clock, from an arbitrary origin for
        a monotonic one (only differences mean anything)."""
        ...


class SystemClock:
    """The wall clock: seconds since the Unix epoch."""

    def now(self) -> float:
        return time.time()


class MonotonicClock:
    """A clock for measuring intervals: never goes back, unrelated to the date."""

    def now(self) -> float:
        return time.monotonic()


class FixedClock:
    """A clock that moves only when told to; for tests and replays."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with milliseconds, the audit log's time format."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
