"""The end user's client IP (P3): one plain IPv4 or IPv6 address, bounded, never echoed."""

from __future__ import annotations

import pytest

from xacthuc.domain.errors import FieldInvalid
from xacthuc.verifiers.phone_otp import check_client_ip


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7\n", "203.0.113.7"),
        ("2001:DB8::1", "2001:db8::1"),
        (
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ),
        ("::ffff:203.0.113.7", "::ffff:cb00:7107"),
    ],
)
def test_plain_addresses_are_accepted_in_canonical_form(given: str, expected: str) -> None:
    """IPv4 and IPv6 literals, surrounding whitespace trimmed, come back canonical."""
    assert expected == check_client_ip(given)


@pytest.mark.parametrize(
    "given",
    [
        "",
        "not an ip",
        "fe80::1%eth0",
        "fe80::1%1",
        "2001:db8::1%",
        "2001:db8::1%\x00",
        "2001:db8::1%" + "x" * 100_000,
        "203.0.113.7" + " " * 100_000,
        "1" * 100_000,
        "203.0.113.7\x00",
        "203.0.113.0/24",
    ],
    ids=[
        "empty",
        "words",
        "named-zone",
        "numeric-zone",
        "empty-zone",
        "nul-zone",
        "long-zone",
        "long-padding",
        "long-digits",
        "nul",
        "network",
    ],
)
def test_zone_ids_over_long_and_malformed_values_are_field_invalid(given: str) -> None:
    """A zone id, anything longer than the longest IPv6 literal (45 characters) and anything
    that is not an address is FIELD_INVALID `client_ip`, without the value in the message."""
    with pytest.raises(FieldInvalid) as e:
        check_client_ip(given)
    assert "client_ip" == e.value.metadata["field"]
    assert len(e.value.message) < 100
    assert "%" not in e.value.message
