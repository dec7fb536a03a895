"""Structural validation of the 12-digit personal identification number (DOMAIN C, P5)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from xacthuc.domain.errors import (
    DateOfBirthInvalid,
    InvalidArgument,
    PersonalIdBirthYearInFuture,
    PersonalIdBirthYearMismatch,
    PersonalIdMalformed,
    PersonalIdPlaceCodeUnknown,
    PersonalIdSexMismatch,
    XacthucError,
)
from xacthuc.domain.personal_id import (
    COUNTRY_CODES,
    PROVINCE_CODES,
    PersonalIdNumber,
    Sex,
    parse_foreigner_id,
    parse_personal_id,
)

TODAY = datetime.date(2025, 6, 15)
D = datetime.date

UNKNOWN_PLACE_CODES = sorted(
    {f"{code:03d}" for code in range(1000)} - set(PROVINCE_CODES) - COUNTRY_CODES
)


def parse(raw: str, dob: datetime.date, sex: Sex | None = None) -> PersonalIdNumber:
    return parse_personal_id(raw, date_of_birth=dob, sex=sex, today=TODAY)


def texts_of(value: object) -> list[str]:
    return [repr(value), str(value), f"{value}"]


def assert_no_leak(value: object, *secrets: str) -> None:
    leaks = [(s, t) for t in texts_of(value) for s in secrets if s and s in t]
    assert [] == leaks


# --- the reference table -----------------------------------------------------------------


def test_province_table_has_the_63_provinces_of_domain_c() -> None:
    """The table holds 63 distinct 3-digit codes from 001 Ha Noi to 096 Ca Mau."""
    assert 63 == len(PROVINCE_CODES)
    assert "Ha Noi" == PROVINCE_CODES["001"]
    assert "Ho Chi Minh City" == PROVINCE_CODES["079"]
    assert "Ca Mau" == PROVINCE_CODES["096"]
    assert True is all(len(c) == 3 and c.isdigit() for c in PROVINCE_CODES)


def test_country_codes_are_101_to_295() -> None:
    """Births abroad use the 195 country codes 101-295, disjoint from the provinces."""
    assert 195 == len(COUNTRY_CODES)
    assert {"101", "295"} <= COUNTRY_CODES
    assert set() == COUNTRY_CODES & set(PROVINCE_CODES)


# --- valid examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "dob", "year", "sex"),
    [
        ("001085012345", D(1985, 3, 14), 1985, Sex.MALE),  # digit 4 = 0: 1900s male
        ("079190123456", D(1990, 11, 2), 1990, Sex.FEMALE),  # 1: 1900s female
        ("048205987654", D(2005, 1, 1), 2005, Sex.MALE),  # 2: 2000s male
        ("092312000001", D(2012, 7, 7), 2012, Sex.FEMALE),  # 3: 2000s female
        ("096300000000", D(2000, 1, 1), 2000, Sex.FEMALE),  # year 2000 is "00"
        ("001225111111", D(2025, 6, 15), 2025, Sex.MALE),  # born today
    ],
)
def test_valid_numbers_for_each_century_digit(
    raw: str, dob: datetime.date, year: int, sex: Sex
) -> None:
    """Digits 0-3 in position 4 give 1900s/2000s and male/female as DOMAIN C says."""
    parsed = parse(raw, dob)

    assert raw == parsed.number
    assert year == parsed.birth_year
    assert sex == parsed.sex
    assert raw[:3] == parsed.place_code
    assert False is parsed.born_abroad


def test_born_abroad_country_code() -> None:
    """A country code (101) in positions 1-3 parses and is flagged born_abroad."""
    parsed = parse("101093931789", D(1993, 2, 11), Sex.MALE)

    assert "101" == parsed.place_code
    assert True is parsed.born_abroad
    assert 1993 == parsed.birth_year


def test_surrounding_whitespace_is_trimmed() -> None:
    """Spaces, tabs and newlines around the number are ignored."""
    assert "001085012345" == parse(" \t001085012345\n", D(1985, 3, 14)).number


def test_declared_sex_matching_the_number_is_accepted() -> None:
    """A declared sex equal to the encoded one passes; None skips the check."""
    assert Sex.FEMALE == parse("079190123456", D(1990, 11, 2), Sex.FEMALE).sex
    assert Sex.FEMALE == parse("079190123456", D(1990, 11, 2), None).sex


# --- one concrete example per reason -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "dob", "sex", "error", "reason"),
    [
        ("00108501234", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        ("0010850123456", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        ("00108501234a", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        ("001 085012345", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        ("٠٠١٠٨٥٠١٢٣٤٥", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        ("", D(1985, 3, 14), None, PersonalIdMalformed, "PERSONAL_ID_MALFORMED"),
        (
            "003085012345",
            D(1985, 3, 14),
            None,
            PersonalIdPlaceCodeUnknown,
            "PERSONAL_ID_PLACE_CODE_UNKNOWN",
        ),
        (
            "001226012345",
            D(2026, 1, 1),
            None,
            PersonalIdBirthYearInFuture,
            "PERSONAL_ID_BIRTH_YEAR_IN_FUTURE",
        ),
        (
            "001085012345",
            D(1986, 3, 14),
            None,
            PersonalIdBirthYearMismatch,
            "PERSONAL_ID_BIRTH_YEAR_MISMATCH",
        ),
        (
            "001185012345",
            D(1985, 3, 14),
            Sex.MALE,
            PersonalIdSexMismatch,
            "PERSONAL_ID_SEX_MISMATCH",
        ),
        ("001025012345", D(2025, 6, 16), None, DateOfBirthInvalid, "DATE_OF_BIRTH_INVALID"),
    ],
)
def test_each_reason_with_a_concrete_example(
    raw: str,
    dob: datetime.date,
    sex: Sex | None,
    error: type[XacthucError],
    reason: str,
) -> None:
    """Each rule fails with its own InvalidArgument reason and a message without the data."""
    with pytest.raises(error) as caught:
        parse(raw, dob, sex)

    assert reason == caught.value.reason
    assert True is isinstance(caught.value, InvalidArgument)
    assert_no_leak(caught.value, raw.strip(), dob.isoformat(), str(dob.year))


def test_births_in_the_2100s_are_in_the_future() -> None:
    """Century digits 4-9 (2100s-2300s) are always in the future today."""
    for digit in "456789":
        with pytest.raises(PersonalIdBirthYearInFuture):
            parse(f"001{digit}00012345", D(2000, 1, 1))


def test_birth_year_in_future_is_checked_before_the_mismatch() -> None:
    """A number born next year fails as in-the-future even if the DOB says otherwise."""
    with pytest.raises(PersonalIdBirthYearInFuture):
        parse("001226012345", D(1990, 1, 1))


def test_future_date_of_birth_is_reported_before_a_year_mismatch() -> None:
    """A DOB in the future is the DOB's fault, not a mismatch with a past number."""
    with pytest.raises(DateOfBirthInvalid):
        parse("001085012345", D(2030, 1, 1))


def test_no_checksum_any_random_tail_is_accepted() -> None:
    """Positions 7-12 are random: every tail of a valid prefix passes (no checksum)."""
    tails = ["000000", "999999", "123456", "654321"]

    assert [1985] * 4 == [parse(f"001085{t}", D(1985, 1, 1)).birth_year for t in tails]


# --- redaction ---------------------------------------------------------------------------


def test_repr_and_str_of_the_result_never_show_the_number() -> None:
    """repr(), str() and f-strings of a parsed number show neither it nor its digits."""
    parsed = parse("079190123456", D(1990, 11, 2))

    assert "PersonalIdNumber(<redacted>)" == repr(parsed)
    assert_no_leak(parsed, "079190123456", "190123456", "123456")


def test_result_is_frozen() -> None:
    """A parsed number cannot be altered."""
    parsed = parse("079190123456", D(1990, 11, 2))

    with pytest.raises(AttributeError):
        parsed.number = "001085012345"  # type: ignore[misc]  # the refusal under test


# --- properties --------------------------------------------------------------------------

provinces = st.sampled_from(sorted(PROVINCE_CODES))
places = st.one_of(provinces, st.sampled_from(sorted(COUNTRY_CODES)))
tails = st.text(alphabet="0123456789", min_size=6, max_size=6)
sexes = st.sampled_from(Sex)


@st.composite
def birth_dates(draw: st.DrawFn, first_year: int = 1900) -> datetime.date:
    return draw(st.dates(min_value=D(first_year, 1, 1), max_value=TODAY))


def encode(place: str, year: int, sex: Sex, tail: str) -> str:
    digit = (year // 100 - 19) * 2 + (1 if sex is Sex.FEMALE else 0)
    return f"{place}{digit}{year % 100:02d}{tail}"


@given(place=provinces, dob=birth_dates(), sex=sexes, tail=tails)
def test_generated_valid_numbers_parse_with_their_year_and_sex(
    place: str, dob: datetime.date, sex: Sex, tail: str
) -> None:
    """Any province, consistent century/sex/year digits and any tail parse back exactly."""
    raw = encode(place, dob.year, sex, tail)

    parsed = parse(raw, dob, sex)

    assert (raw, place, False, dob.year, sex) == (
        parsed.number,
        parsed.place_code,
        parsed.born_abroad,
        parsed.birth_year,
        parsed.sex,
    )
    assert_no_leak(parsed, raw)


@given(place=places, dob=birth_dates(), sex=sexes, tail=tails)
def test_generated_numbers_from_any_place_parse(
    place: str, dob: datetime.date, sex: Sex, tail: str
) -> None:
    """Provinces and country codes both parse; only country codes are born_abroad."""
    parsed = parse(encode(place, dob.year, sex, tail), dob)

    assert (place in COUNTRY_CODES) == parsed.born_abroad
    assert sex == parsed.sex


@given(digits=st.text(alphabet="0123456789", max_size=30).filter(lambda s: len(s) != 12))
def test_generated_wrong_lengths_are_malformed(digits: str) -> None:
    """Any run of ASCII digits that is not 12 long is PERSONAL_ID_MALFORMED."""
    with pytest.raises(PersonalIdMalformed) as caught:
        parse(digits, D(1985, 1, 1))

    assert_no_leak(caught.value, digits)


@given(
    place=provinces,
    dob=birth_dates(),
    sex=sexes,
    tail=tails,
    position=st.integers(0, 11),
    intruder=st.characters(exclude_characters="0123456789"),
)
@example(place="001", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345", position=5, intruder="١")
@example(place="001", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345", position=0, intruder="１")
@example(place="001", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345", position=11, intruder="²")
def test_generated_non_ascii_digit_characters_are_malformed(
    place: str, dob: datetime.date, sex: Sex, tail: str, position: int, intruder: str
) -> None:
    """One character that is not an ASCII digit (Unicode digits included) is malformed."""
    valid = encode(place, dob.year, sex, tail)
    raw = valid[:position] + intruder + valid[position + 1 :]

    with pytest.raises(PersonalIdMalformed) as caught:
        parse(raw, dob, sex)

    assert_no_leak(caught.value, raw, valid, dob.isoformat())


@given(place=st.sampled_from(UNKNOWN_PLACE_CODES), dob=birth_dates(), sex=sexes, tail=tails)
@example(place="000", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
@example(place="003", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
@example(place="097", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
@example(place="100", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
@example(place="296", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
@example(place="999", dob=D(1985, 1, 1), sex=Sex.MALE, tail="012345")
def test_generated_unknown_place_codes_are_rejected(
    place: str, dob: datetime.date, sex: Sex, tail: str
) -> None:
    """Codes that are neither a province nor 101-295 give PERSONAL_ID_PLACE_CODE_UNKNOWN."""
    raw = encode(place, dob.year, sex, tail)

    with pytest.raises(PersonalIdPlaceCodeUnknown) as caught:
        parse(raw, dob, sex)

    assert_no_leak(caught.value, raw, dob.isoformat())


@given(place=places, dob=birth_dates(), other=birth_dates(), sex=sexes, tail=tails)
def test_generated_year_mismatches_are_rejected(
    place: str, dob: datetime.date, other: datetime.date, sex: Sex, tail: str
) -> None:
    """A number encoding one past year with a DOB in another gives BIRTH_YEAR_MISMATCH."""
    raw = encode(place, dob.year, sex, tail)
    if other.year == dob.year:
        other = other.replace(year=dob.year - 1 if dob.year > 1900 else dob.year + 1, day=1)

    with pytest.raises(PersonalIdBirthYearMismatch) as caught:
        parse(raw, other, sex)

    assert_no_leak(caught.value, raw, other.isoformat())


@given(place=places, year=st.integers(TODAY.year + 1, 2399), sex=sexes, tail=tails)
def test_generated_future_birth_years_are_rejected(
    place: str, year: int, sex: Sex, tail: str
) -> None:
    """Any encoded year after today's gives PERSONAL_ID_BIRTH_YEAR_IN_FUTURE."""
    raw = encode(place, year, sex, tail)

    with pytest.raises(PersonalIdBirthYearInFuture) as caught:
        parse(raw, D(2000, 1, 1), sex)

    assert_no_leak(caught.value, raw)


@given(place=places, dob=birth_dates(), sex=sexes, tail=tails)
def test_generated_sex_mismatches_are_rejected(
    place: str, dob: datetime.date, sex: Sex, tail: str
) -> None:
    """Declaring the other sex than digit 4 encodes gives PERSONAL_ID_SEX_MISMATCH."""
    raw = encode(place, dob.year, sex, tail)
    other = Sex.MALE if sex is Sex.FEMALE else Sex.FEMALE

    with pytest.raises(PersonalIdSexMismatch) as caught:
        parse(raw, dob, other)

    assert_no_leak(caught.value, raw, dob.isoformat())


# --- a foreigner's identification number (R9) ------------------------------------------------


@pytest.mark.parametrize("raw", ["123456", " 3920071154 ", "0" * 20, "001085336181"])
def test_foreigner_number_is_6_to_20_ascii_digits(raw: str) -> None:
    """Only the form is checked (no structure is published): trimmed, 6-20 ASCII digits."""
    assert raw.strip() == parse_foreigner_id(raw)


@pytest.mark.parametrize("raw", ["12345", "1" * 21, "12345x", "１２３４５６", "123 456", ""])
def test_foreigner_number_of_another_form_is_malformed(raw: str) -> None:
    """Anything else is PERSONAL_ID_MALFORMED, with a message that names the rule, not the value."""
    with pytest.raises(PersonalIdMalformed) as e:
        parse_foreigner_id(raw)
    assert "6-20 ASCII digits" in e.value.message
    assert raw.strip() == "" or raw.strip() not in e.value.message


def test_the_two_kinds_of_number_have_different_pseudonyms() -> None:
    """Equal digits of a citizen and a foreigner are two subjects; a citizen's pseudonym is the
    one it always had; both start `id_` (the stores key P8 slots by that prefix)."""
    from xacthuc.domain.keyed import Pseudonymizer

    p = Pseudonymizer(b"k" * 32)
    citizen, foreigner = p.personal_id("001085336181"), p.personal_id("001085336181", "foreigner")
    assert citizen != foreigner
    assert citizen == p._make("id", "001085336181")
    assert (True, True, 35) == (
        citizen.startswith("id_"),
        foreigner.startswith("id_"),
        len(foreigner),
    )
