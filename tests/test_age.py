"""Age in completed years on the Vietnamese calendar date (Civil Code 2015; P6), 29 February."""

from __future__ import annotations

import datetime as dt

import pytest

from xacthuc.domain.age import (
    age_band,
    age_on,
    birthday,
    local_date,
    start_of_day,
    turns_at,
)

D = dt.date
UTC = dt.UTC


@pytest.mark.parametrize(
    ("today", "age"),
    [(D(2026, 6, 14), 15), (D(2026, 6, 15), 16), (D(2026, 6, 16), 16), (D(2028, 6, 14), 17)],
)
def test_age_counts_completed_years(today: dt.date, age: int) -> None:
    """The day before the 16th birthday: 15; on it and after: 16."""
    assert age == age_on(D(2010, 6, 15), today)


@pytest.mark.parametrize(
    ("today", "age"),
    [
        (D(2027, 2, 28), 14),  # common year: not yet
        (D(2027, 3, 1), 15),  # common year: the day after 28 February
        (D(2028, 2, 28), 15),
        (D(2028, 2, 29), 16),  # leap year: on the day itself
        (D(2029, 2, 28), 16),
        (D(2029, 3, 1), 17),
        (D(2030, 2, 28), 17),
        (D(2030, 3, 1), 18),
    ],
)
def test_29_february_birthdays_fall_on_1_march_in_common_years(today: dt.date, age: int) -> None:
    """Born 29 Feb 2012: 15 on 1 Mar 2027, 16 on 29 Feb 2028 (a 16th birthday is always in a
    leap year before 2100), 18 on 1 Mar 2030 (an 18th never is)."""
    assert age == age_on(D(2012, 2, 29), today)


def test_birthday_of_29_february() -> None:
    born = D(2012, 2, 29)
    assert [D(2027, 3, 1), D(2028, 2, 29), D(2030, 3, 1)] == [
        birthday(born, 15),
        birthday(born, 16),
        birthday(born, 18),
    ]
    assert D(2026, 6, 15) == birthday(D(2010, 6, 15), 16)


def test_age_and_birthday_agree_for_every_day_of_a_leap_cycle() -> None:
    """For every birth date over four years, the age turns exactly on `birthday`."""
    born = D(2012, 1, 1)
    while born < D(2016, 1, 1):
        b16 = birthday(born, 16)
        assert (15, 16) == (age_on(born, b16 - dt.timedelta(days=1)), age_on(born, b16))
        born += dt.timedelta(days=1)


def test_the_calendar_date_is_the_one_in_vietnam() -> None:
    """UTC+7, no daylight saving: local midnight is 17:00 UTC the day before."""
    before = dt.datetime(2026, 6, 14, 16, 59, 59, tzinfo=UTC).timestamp()
    assert D(2026, 6, 14) == local_date(before)
    assert D(2026, 6, 15) == local_date(before + 1)
    assert before + 1 == start_of_day(D(2026, 6, 15))


def test_the_16th_birthday_instant_is_local_midnight() -> None:
    """turns_at: the first instant of the birthday in Asia/Ho_Chi_Minh (29 Feb: 1 Mar)."""
    assert dt.datetime(2026, 6, 14, 17, tzinfo=UTC).timestamp() == turns_at(D(2010, 6, 15), 16)
    assert dt.datetime(2027, 2, 27, 17, tzinfo=UTC).timestamp() == turns_at(D(2011, 2, 28), 16)
    assert dt.datetime(2028, 2, 28, 17, tzinfo=UTC).timestamp() == turns_at(D(2012, 2, 29), 16)
    assert dt.datetime(2027, 2, 28, 17, tzinfo=UTC).timestamp() == turns_at(D(2012, 2, 29), 15)
    at = turns_at(D(2010, 6, 15), 16)
    assert (15, 16) == (
        age_on(D(2010, 6, 15), local_date(at - 1)),
        age_on(D(2010, 6, 15), local_date(at)),
    )


@pytest.mark.parametrize(
    ("today", "band"),
    [
        (D(2026, 6, 14), "under_16"),
        (D(2026, 6, 15), "16_17"),
        (D(2028, 6, 14), "16_17"),
        (D(2028, 6, 15), "adult"),
    ],
)
def test_age_bands(today: dt.date, band: str) -> None:
    """What a token may say instead of a date of birth."""
    assert band == age_band(D(2010, 6, 15), today)
