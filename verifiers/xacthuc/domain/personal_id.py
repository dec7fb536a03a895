"""Structural validation of the 12-digit personal identification number (DOMAIN C; policy P5).

Layout (DOMAIN part C):

* digits 1-3: the province where the birth was registered (`PROVINCE_CODES`, the 63
  pre-2025 provinces; numbers issued before the 2025 merger stay valid), or a country code
  101-295 (`COUNTRY_CODES`) for a birth registered abroad;
* digit 4: century and sex: birth year = (19 + d4 // 2) * 100 + d5d6; an odd d4 is female;
* digits 5-6: the last two digits of the birth year;
* digits 7-12: random. **There is no checksum**, so none is checked.

`parse_personal_id` checks, in this order, and raises the first failing reason (each an
`InvalidArgument` subclass from `xacthuc.domain.errors`):

1. after trimming whitespace, exactly 12 ASCII digits (not other Unicode digits such as
   '١' or '１')                                          -> `PERSONAL_ID_MALFORMED`
2. digits 1-3 are a province or a country code            -> `PERSONAL_ID_PLACE_CODE_UNKNOWN`
3. the encoded birth year is not after `today`'s year     -> `PERSONAL_ID_BIRTH_YEAR_IN_FUTURE`
4. `date_of_birth` is not after `today`                   -> `DATE_OF_BIRTH_INVALID`
5. the encoded birth year equals `date_of_birth.year`     -> `PERSONAL_ID_BIRTH_YEAR_MISMATCH`
6. when a sex is declared, it equals the encoded sex      -> `PERSONAL_ID_SEX_MISMATCH`

A foreigner's identification number (R9, `IdType.FOREIGNER`) is another kind: Decree
59/2022/ND-CP Art. 3(13), carried over by Decree 69/2024/ND-CP, defines it only as "a unique
string of natural numbers established by the electronic identification and authentication
system to manage the e-identity of a foreigner"; no length, layout or checksum is published.
`parse_foreigner_id` therefore checks only its form, 6-20 ASCII digits after trimming
(`FOREIGNER_ID_LENGTHS`, our bound, generous on purpose) -> `PERSONAL_ID_MALFORMED`, and the
registry decides. Nothing in it is cross-checked with the declared date of birth or sex.

Passing these checks is NOT authentication: only a registry match is (DOMAIN A, P5).
No error message, `repr` or `str` produced here contains the number or the date of birth
(P9): the errors carry fixed messages and `PersonalIdNumber` redacts itself.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xacthuc.domain.errors import (
    DateOfBirthInvalid,
    PersonalIdBirthYearInFuture,
    PersonalIdBirthYearMismatch,
    PersonalIdMalformed,
    PersonalIdPlaceCodeUnknown,
    PersonalIdSexMismatch,
)

__all__ = [
    "COUNTRY_CODES",
    "FOREIGNER_ID_LENGTHS",
    "PROVINCE_CODES",
    "IdType",
    "PersonalIdNumber",
    "Sex",
    "birth_year_of",
    "parse_foreigner_id",
    "parse_personal_id",
]

NUMBER_LENGTH = 12

# The 63 pre-2025 provinces and their birth-registration codes, copied from DOMAIN.md part C.
PROVINCE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "001": "Ha Noi",
        "002": "Ha Giang",
        "004": "Cao Bang",
        "006": "Bac Kan",
        "008": "Tuyen Quang",
        "010": "Lao Cai",
        "011": "Dien Bien",
        "012": "Lai Chau",
        "014": "Son La",
        "015": "Yen Bai",
        "017": "Hoa Binh",
        "019": "Thai Nguyen",
        "020": "Lang Son",
        "022": "Quang Ninh",
        "024": "Bac Giang",
        "025": "Phu Tho",
        "026": "Vinh Phuc",
        "027": "Bac Ninh",
        "030": "Hai Duong",
        "031": "Hai Phong",
        "033": "Hung Yen",
        "034": "Thai Binh",
        "035": "Ha Nam",
        "036": "Nam Dinh",
        "037": "Ninh Binh",
        "038": "Thanh Hoa",
        "040": "Nghe An",
        "042": "Ha Tinh",
        "044": "Quang Binh",
        "045": "Quang Tri",
        "046": "Thua Thien Hue",
        "048": "Da Nang",
        "049": "Quang Nam",
        "051": "Quang Ngai",
        "052": "Binh Dinh",
        "054": "Phu Yen",
        "056": "Khanh Hoa",
        "058": "Ninh Thuan",
        "060": "Binh Thuan",
        "062": "Kon Tum",
        "064": "Gia Lai",
        "066": "Dak Lak",
        "067": "Dak Nong",
        "068": "Lam Dong",
        "070": "Binh Phuoc",
        "072": "Tay Ninh",
        "074": "Binh Duong",
        "075": "Dong Nai",
        "077": "Ba Ria-Vung Tau",
        "079": "Ho Chi Minh City",
        "080": "Long An",
        "082": "Tien Giang",
        "083": "Ben Tre",
        "084": "Tra Vinh",
        "086": "Vinh Long",
        "087": "Dong Thap",
        "089": "An Giang",
        "091": "Kien Giang",
        "092": "Can Tho",
        "093": "Hau Giang",
        "094": "Soc Trang",
        "095": "Bac Lieu",
        "096": "Ca Mau",
    }
)

# Births registered abroad carry a country code in digits 1-3 (DOMAIN C).
COUNTRY_CODES: frozenset[str] = frozenset(f"{code:03d}" for code in range(101, 296))

_ASCII_DIGITS = frozenset("0123456789")

# A foreigner's identification number: digits of unpublished length (see the module doc).
FOREIGNER_ID_LENGTHS = range(6, 21)


class IdType(enum.Enum):
    """Which kind of personal identification number (R3, R9)."""

    CITIZEN = "citizen"  # the 12-digit number of a Vietnamese citizen (DOMAIN C)
    FOREIGNER = "foreigner"  # a foreigner's identification number in the e-ID system


class Sex(enum.Enum):
    """Sex as encoded in digit 4 of the number (odd = female) or as declared by the user."""

    MALE = "male"
    FEMALE = "female"


@dataclass(frozen=True, slots=True, repr=False)
class PersonalIdNumber:
    """A structurally valid personal identification number and what its digits encode.

    `repr()` and `str()` never show the number (nor the digits derived from it), so an
    instance is safe in logs, tracebacks and assertion messages (P9).
    """

    number: str = field(repr=False)
    place_code: str
    born_abroad: bool
    birth_year: int
    sex: Sex

    def __repr__(self) -> str:
        return "PersonalIdNumber(<redacted>)"

    __str__ = __repr__


def birth_year_of(century_sex_digit: int, two_digit_year: int) -> tuple[int, Sex]:
    """Birth year and sex from digit 4 and digits 5-6 (DOMAIN C)."""
    year = (19 + century_sex_digit // 2) * 100 + two_digit_year
    return year, (Sex.FEMALE if century_sex_digit % 2 else Sex.MALE)


def parse_personal_id(
    raw: str,
    *,
    date_of_birth: datetime.date,
    sex: Sex | None,
    today: datetime.date,
) -> PersonalIdNumber:
    """Validate `raw` against DOMAIN C and the user's declarations (see the module doc).

    `today` is the verification date in Asia/Ho_Chi_Minh, supplied by the caller's clock.
    """
    number = raw.strip() if isinstance(raw, str) else ""
    if len(number) != NUMBER_LENGTH or not _ASCII_DIGITS.issuperset(number):
        raise PersonalIdMalformed()
    place_code = number[:3]
    born_abroad = place_code in COUNTRY_CODES
    if not born_abroad and place_code not in PROVINCE_CODES:
        raise PersonalIdPlaceCodeUnknown()
    birth_year, encoded_sex = birth_year_of(int(number[3]), int(number[4:6]))
    if birth_year > today.year:
        raise PersonalIdBirthYearInFuture()
    if date_of_birth > today:
        raise DateOfBirthInvalid()
    if birth_year != date_of_birth.year:
        raise PersonalIdBirthYearMismatch()
    if sex is not None and sex is not encoded_sex:
        raise PersonalIdSexMismatch()
    return PersonalIdNumber(
        number=number,
        place_code=place_code,
        born_abroad=born_abroad,
        birth_year=birth_year,
        sex=encoded_sex,
    )


def parse_foreigner_id(raw: str) -> str:
    """A foreigner's identification number (R9): 6-20 ASCII digits after trimming, else
    PERSONAL_ID_MALFORMED. Its structure is not published, so nothing else is checked here:
    the registry decides (see the module doc)."""
    number = raw.strip() if isinstance(raw, str) else ""
    if len(number) not in FOREIGNER_ID_LENGTHS or not _ASCII_DIGITS.issuperset(number):
        raise PersonalIdMalformed(
            "personal_id_number must be 6-20 ASCII digits for a foreigner's identification number"
        )
    return number
