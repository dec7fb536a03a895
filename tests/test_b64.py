"""The base64 forms in one place: base64url without padding, canonical standard base64."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xacthuc.domain.b64 import b64_decode_canonical, b64_encode, b64url_decode, b64url_encode


@given(st.binary(max_size=200))
def test_both_forms_round_trip(data: bytes) -> None:
    """Every byte string comes back from its encoding; base64url carries no padding."""
    assert data == b64url_decode(b64url_encode(data))
    assert data == b64_decode_canonical(b64_encode(data))
    assert "=" not in b64url_encode(data)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("AQ==", id="padding"),
        pytest.param("a+b/", id="standard-alphabet"),
        pytest.param("AQI D", id="space"),
        pytest.param("AQIDB", id="impossible-length"),
        pytest.param("AQ\u00e9", id="non-ascii"),
        pytest.param("AB", id="unused-bits-set"),
    ],
)
def test_base64url_decoding_is_strict(text: str) -> None:
    """Text outside unpadded base64url is refused, never decoded by skipping characters."""
    with pytest.raises(ValueError, match="base64"):
        b64url_decode(text)


@pytest.mark.parametrize("text", ["AQ", "AR==", "AQ==\n", "AQ=="[:-1], "A\u00e9=="])
def test_standard_decoding_takes_only_the_canonical_text(text: str) -> None:
    """Standard base64 must be padded, in the alphabet, with zero unused bits."""
    with pytest.raises(ValueError, match="base64"):
        b64_decode_canonical(text)
