"""The fast path of `normalize_vn_mobile` ("+84" or "0" and nine digits, no parse) answers
exactly as the full `phonenumbers.parse` path does, for every four-digit prefix of the
national number: the same E.164 number, or the same refusal."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumber

from xacthuc.domain.errors import XacthucError
from xacthuc.domain.phone import _normalize, normalize_vn_mobile


def _outcome(fn: object, text: str) -> str:
    try:
        return fn(text)  # type: ignore[operator, no-any-return]
    except XacthucError as e:
        return f"refused {e.reason}"


def _nationals() -> list[str]:
    rng = random.Random(147)
    out = []
    for prefix in range(1000, 10000):
        for suffix in ("00000", "99999", f"{rng.randrange(100000):05d}"):
            out.append(f"{prefix}{suffix}")
    return out


def test_the_parse_the_fast_path_skips_gives_the_number_it_builds() -> None:
    for national in _nationals()[::7]:
        for text in (f"+84{national}", f"0{national}"):
            assert phonenumbers.parse(text, "VN") == PhoneNumber(
                country_code=84, national_number=int(national)
            ), text


@pytest.mark.parametrize("shape", ["+84{}", "0{}"])
def test_fast_path_answers_as_the_full_path(shape: str) -> None:
    accepted = 0
    for national in _nationals():
        text = shape.format(national)
        fast = _outcome(normalize_vn_mobile, text)
        assert fast == _outcome(_normalize, text.strip()), text
        accepted += not fast.startswith("refused")
    assert accepted > 1000  # the prefixes of mobile numbers were among them


@pytest.mark.parametrize(
    "text",
    ["84912345678", "+840912345678", "00912345678", "+84 912345678", "0912 345 678",
     "+8491234567", "091234567", "+849123456789", " 0912345678 ", "\t+84912345678\n",
     "+84123456789", "0212345678", "0891234567", "٠٩١٢٣٤٥٦٧٨", "0912345678\u200b"],
)  # fmt: skip
def test_other_shapes_answer_as_the_full_path(text: str) -> None:
    assert _outcome(normalize_vn_mobile, text) == _outcome(_normalize, text.strip())
