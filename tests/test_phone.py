"""Vietnamese mobile numbers (P4, DOMAIN part C): what is accepted, normalised, refused."""

from __future__ import annotations

import pytest

from xacthuc.domain import errors
from xacthuc.domain.phone import mask, normalize_vn_mobile

# One number per current prefix of DOMAIN part C (carrier never used as a control).
PREFIXES = [
    "032",
    "033",
    "034",
    "035",
    "036",
    "037",
    "038",
    "039",
    "086",
    "096",
    "097",
    "098",  # Viettel
    "081",
    "082",
    "083",
    "084",
    "085",
    "088",
    "091",
    "094",  # Vinaphone
    "070",
    "076",
    "077",
    "078",
    "079",
    "0896",
    "0897",
    "0898",
    "0899",
    "090",
    "093",  # MobiFone
    "052",
    "056",
    "058",
    "092",  # Vietnamobile
    "059",
    "0993",
    "0994",
    "0995",
    "0996",
    "0997",  # Gmobile
    "0998",
    "0999",  # Indochina Telecom
    "087",  # Itelecom
    "0559",
]  # Wintel


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_current_prefix_is_a_mobile_number(prefix: str) -> None:
    """Each prefix of DOMAIN part C normalises to +84 and 9 digits."""
    national = (prefix + "2345678")[:10]
    assert "+84" + national[1:] == normalize_vn_mobile(national)


@pytest.mark.parametrize(
    "raw",
    [
        "0912345678",
        "84912345678",
        "+840912345678",
        "00840912345678",
        " +84 912 345 678 ",
        "0912-345-678",
        "(091) 234.5678",
    ],
)
def test_common_spellings_normalise_to_e164(raw: str) -> None:
    """The forms DOMAIN part C names all become +84912345678."""
    assert "+84912345678" == normalize_vn_mobile(raw)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("+14155552671", errors.PhoneNotVietnamese),
        ("+66 81 234 5678", errors.PhoneNotVietnamese),
        ("02438253825", errors.PhoneNotVietnameseMobile),  # Ha Noi landline
        ("028 3829 5555", errors.PhoneNotVietnameseMobile),  # Ho Chi Minh City landline
        ("1800 1090", errors.PhoneNotVietnameseMobile),  # toll-free
        ("01234567890", errors.PhoneRetiredFormat),  # retired 11-digit Vinaphone
        ("0168 812 3456", errors.PhoneRetiredFormat),  # retired 11-digit Viettel
        ("", errors.PhoneMalformed),
        ("   ", errors.PhoneMalformed),
        ("0912", errors.PhoneMalformed),
        ("abc", errors.PhoneMalformed),
        ("091234567x", errors.PhoneMalformed),
        ("０９１２３４５６７８", errors.PhoneMalformed),  # full-width digits
        ("0" * 40, errors.PhoneMalformed),
    ],
)
def test_refusals_carry_their_precise_reason(raw: str, error: type[errors.XacthucError]) -> None:
    """Foreign, landline, retired and malformed numbers are refused with their own reason."""
    with pytest.raises(error) as e:
        normalize_vn_mobile(raw)
    assert raw.strip() == "" or raw not in str(e.value)


def test_mask_shows_only_the_ends() -> None:
    """The display form keeps two digits at each end."""
    assert "+84 91*****78" == mask("+84912345678")
