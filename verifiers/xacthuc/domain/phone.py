"""Vietnamese mobile numbers (Decree 147 R2; policy P4).

A number is accepted only when `phonenumbers` parses it (region VN as default) as a valid
Vietnamese MOBILE number; it is then normalised to E.164 (`+84` and 9 digits). The carrier
is deliberately not looked at: number portability makes the prefix a poor guide (DOMAIN C).
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, PhoneNumberType

from xacthuc.domain.errors import (
    PhoneMalformed,
    PhoneNotVietnamese,
    PhoneNotVietnameseMobile,
    PhoneRetiredFormat,
)

_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
_MAX_INPUT = 32
_ALLOWED = re.compile(r"[0-9+() .\-]+")
# The two shapes nearly every request has: "+84" or the national prefix "0", then the nine
# digits of the national number (first digit not 0). `phonenumbers.parse` of such a text is
# exactly PhoneNumber(84, those digits) (tests/test_phone_fast_path.py checks every prefix),
# so the parse, two thirds of the check's cost, is skipped; the type is still decided by
# `phonenumbers` from its metadata, and anything else (or any refusal) takes the full path.
_PLAIN = re.compile(r"(?:\+84|0)([1-9][0-9]{8})")


def normalize_vn_mobile(raw: str) -> str:
    """Return the E.164 form of a Vietnamese mobile number, or raise the precise reason."""
    text = raw.strip()
    plain = _PLAIN.fullmatch(text)
    if plain is not None:
        digits = plain.group(1)
        number = PhoneNumber(country_code=84, national_number=int(digits))
        if phonenumbers.number_type(number) in _MOBILE_TYPES:
            return "+84" + digits
    return _normalize(text)


def _normalize(text: str) -> str:
    """`normalize_vn_mobile` of a stripped text, through `phonenumbers.parse`."""
    if not text or len(text) > _MAX_INPUT or not _ALLOWED.fullmatch(text):
        raise PhoneMalformed()
    try:
        number = phonenumbers.parse(text, "VN")
    except NumberParseException:
        raise PhoneMalformed() from None
    if number.country_code != 84:
        if phonenumbers.is_valid_number(number):
            raise PhoneNotVietnamese()
        raise PhoneMalformed()
    national = str(number.national_number)
    if not phonenumbers.is_valid_number(number):
        # 11-digit mobile numbers (01xx xxx xxxx) were moved to 10 digits in 2018.
        if len(national) == 10 and national.startswith("1"):
            raise PhoneRetiredFormat()
        if phonenumbers.is_possible_number(number):
            raise PhoneNotVietnameseMobile()
        raise PhoneMalformed()
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise PhoneNotVietnameseMobile()
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def mask(e164: str) -> str:
    """A display form that shows the user which number got the code: `+84 91*****78`."""
    national = e164.removeprefix("+84")
    return f"+84 {national[:2]}{'*' * (len(national) - 4)}{national[-2:]}"
