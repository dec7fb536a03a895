"""Age in completed years on the calendar date in Vietnam (Civil Code 2015; Law on Children 2016).

Dates are taken in Asia/Ho_Chi_Minh (UTC+7, no daylight saving), so a birthday starts at
local midnight. Someone born on 29 February becomes a year older on 1 March in common years
(the day after 28 February), the usual civil reading.
"""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
CHILD_UNDER = 16  # Decree 147 Art. 27(3)(a); Law on Children Art. 1
ADULT_AT = 18  # Civil Code Art. 20


def local_date(ts: float) -> datetime.date:
    """The calendar date in Vietnam at instant `ts` (seconds since the epoch)."""
    return datetime.datetime.fromtimestamp(ts, VIETNAM).date()


def age_on(birth: datetime.date, day: datetime.date) -> int:
    """Completed years from `birth` to `day`."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def birthday(birth: datetime.date, years: int) -> datetime.date:
    """The date on which someone born on `birth` completes `years` years (29 Feb -> 1 Mar)."""
    try:
        return birth.replace(year=birth.year + years)
    except ValueError:  # 29 February in a common year
        return datetime.date(birth.year + years, 3, 1)


def start_of_day(day: datetime.date) -> float:
    """The instant local midnight begins `day` in Vietnam."""
    return datetime.datetime.combine(day, datetime.time(), VIETNAM).timestamp()


CHILD_CONSENT_FROM = 7  # Law 91/2025: a child of 7 or over consents too


def age_band(birth: datetime.date, day: datetime.date) -> str:
    """The age band a token may carry instead of a date of birth: "adult" (18+), "16_17" or
    "under_16"."""
    age = age_on(birth, day)
    if age >= ADULT_AT:
        return "adult"
    if age >= CHILD_UNDER:
        return "16_17"
    return "under_16"


def turns_at(birth: datetime.date, years: int) -> float:
    """The instant someone born on `birth` completes `years` years: local midnight in Vietnam
    at the start of that birthday (29 Feb -> 1 Mar in common years)."""
    return start_of_day(birthday(birth, years))
