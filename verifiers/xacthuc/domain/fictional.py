"""Test numbers: Vietnamese mobile numbers that are never texted and accept a fixed code.

Like Twilio's magic numbers or Firebase's fictional phone numbers, they let a platform run
its sign-up flow end to end, in its own tests or against a dev server, without an SMS
gateway and without reading codes anywhere. They are turned on by XACTHUC_TEST_NUMBERS in
dev mode; production mode refuses to start with them.

The range is every number of the 095 prefix, +84 95x xxx xxx (national 095x xxx xxx):
095 was the prefix of S-Fone, a CDMA network that closed in the early 2010s, and no
operator holds it today (see DOMAIN "Vietnamese mobile numbers" for the prefixes in use;
`phonenumbers` still classifies 095 numbers as valid mobile numbers, so they take the real
validation path, and names no carrier for them; tests/test_testing_kit.py checks both). Even
if the prefix were handed out again, a test number never causes an SMS to be sent.
"""

from __future__ import annotations

from dataclasses import dataclass

TEST_NUMBER_PREFIX = "+8495"  # E.164: +84 95 and 7 more digits
TEST_NUMBERS_DESCRIPTION = "the test numbers +84 95x xxx xxx (095x xxx xxx)"


def is_test_number(e164: str) -> bool:
    """Whether a normalised (E.164) Vietnamese mobile number is in the test range."""
    return e164.startswith(TEST_NUMBER_PREFIX) and len(e164) == len(TEST_NUMBER_PREFIX) + 7


def test_number(n: int) -> str:
    """The n-th test number in national form (`0950000000` + n), for n in 0..9_999_999."""
    if not 0 <= n <= 9_999_999:
        raise ValueError("n must be between 0 and 9999999")
    return f"095{n:07d}"


test_number.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


@dataclass(frozen=True, slots=True)
class TestNumbers:
    """The test range, on, with the code every challenge to a test number gets."""

    __test__ = False  # not a pytest test class, even when imported into a test module

    code: str

    def __contains__(self, e164: object) -> bool:
        return isinstance(e164, str) and is_test_number(e164)
