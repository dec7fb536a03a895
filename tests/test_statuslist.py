"""Token Status List (draft-ietf-oauth-status-list): the draft's test vectors, bit order,
compression, and the signed `statuslist+jwt` token."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, TypedDict

import jwt
import pytest

from xacthuc.domain.statuslist import (
    INVALID,
    SUSPENDED,
    VALID,
    StatusList,
    StatusListInvalid,
    read_status_list_token,
    reference,
    verify_status_list_token,
)
from xacthuc.domain.tokens import SigningKey, public_jwk

NOW = 1_800_000_000
URI = "https://xacthuc.example/statuslists/alpha/0"
ISSUER = "xacthuc-test"

# Draft section 4.1/4.2: 16 one-bit statuses, bytes b9 a3.
SECTION_4_STATUSES = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
SECTION_4_LST = "eNrbuRgAAhcBXQ"
# Draft section 4.1/4.2: 12 two-bit statuses, bytes c9 44 f9.
SECTION_4_STATUSES_2BIT = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]
SECTION_4_LST_2BIT = "eNo76fITAAPfAgc"


class Vector(TypedDict):
    bits: int
    statuses: dict[int, int]  # index -> status, for every index whose status is not 0
    lst: str


# Draft Appendix C.1-C.3: lists of 2^20 entries, the given indices set, every other 0.
# C.2's `lst` is the base64url of the byte string of its CBOR vector: the JSON form as
# rendered in the draft text we worked from is one byte short (it does not inflate to the
# end of its ZLIB stream), while the CBOR bytes do and decode to exactly the listed statuses.
C1: Vector = {
    "bits": 1,
    "statuses": dict.fromkeys(
        [0, 1993, 25460, 159495, 495669, 554353, 645645, 723232, 854545, 934534, 1000345], 1
    ),
    "lst": "eNrt3AENwCAMAEGogklACtKQPg9LugC9k_ACvreiogEAAKkeCQAAAAAAAAAAAAAAAAAAAIBylgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAXG9IAAAAAAAAAPwsJAAAAAAAAAAAAAAAvhsSAAAAAAAAAAAA7KpLAAAAAAAAAAAAAAAAAAAAAJsLCQAAAAAAAAAAADjelAAAAAAAAAAAKjDMAQAAAACAZC8L2AEb",
}
C2: Vector = {
    "bits": 2,
    "statuses": {
        0: 1,
        1993: 2,
        25460: 1,
        159495: 3,
        495669: 1,
        554353: 1,
        645645: 2,
        723232: 1,
        854545: 1,
        934534: 2,
        1000345: 3,
    },
    "lst": "eNrt2zENACEQAEEuoaBABP5VIO01fCjIHTMStt9ovGVIAAAAAABAbiEBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEB5WwIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAID0ugQAAAAAAAAAAAAAAAAAQG12SgAAAAAAAAAAAAAAAAAAAAAAAAAAAOCSIQEAAAAAAAAAAAAAAAAAAAAAAAD8ExIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwJEuAQAAAAAAAAAAAAAAAAAAAAAAAMB9SwIAAAAAAAAAAAAAAAAAAACoYUoAAAAAAAAAAAAAAEBqH81gAQw",
}
C3: Vector = {
    "bits": 4,
    "statuses": {
        0: 1,
        1993: 2,
        35460: 3,
        459495: 4,
        595669: 5,
        754353: 6,
        845645: 7,
        923232: 8,
        924445: 9,
        934534: 10,
        1004534: 11,
        1000345: 12,
        1030203: 13,
        1030204: 14,
        1030205: 15,
    },
    "lst": "eNrt0EENgDAQADAIHwImkIIEJEwCUpCEBBQRHOy35Li1EjoOQGabAgAAAAAAAAAAAAAAAAAAACC1SQEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABADrsCAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADoxaEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIIoCgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACArpwKAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAGhqVkAzlwIAAAAAiGVRAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABx3AoAgLpVAQAAAAAAAAAAAAAAwM89rwMAAAAAAAAAAAjsA9xMBMA",
}


def key_and_jwks() -> tuple[SigningKey, dict[str, Any]]:
    key = SigningKey.generate()
    return key, {"keys": [public_jwk(key.private_key.public_key())]}


def signed(sl: StatusList, key: SigningKey, *, ttl: int = 300) -> str:
    return sl.sign(key, issuer=ISSUER, uri=URI, now=NOW, ttl=ttl)


def test_section4_example_one_bit() -> None:
    """The draft's 16-entry example decodes to its statuses and re-encodes to its `lst`."""
    sl = StatusList.decode({"bits": 1, "lst": SECTION_4_LST})
    assert bytes([0xB9, 0xA3]) == sl.to_bytes()
    assert SECTION_4_STATUSES == [sl.get(i) for i in range(16)]
    built = StatusList(16)
    for i, v in enumerate(SECTION_4_STATUSES):
        built.set(i, v)
    assert {"bits": 1, "lst": SECTION_4_LST} == built.encode()


def test_section4_example_two_bits() -> None:
    """The draft's 2-bit example (with SUSPENDED) decodes and re-encodes exactly."""
    sl = StatusList.decode({"bits": 2, "lst": SECTION_4_LST_2BIT})
    assert bytes([0xC9, 0x44, 0xF9]) == sl.to_bytes()
    assert SECTION_4_STATUSES_2BIT == [sl.get(i) for i in range(12)]
    built = StatusList(12, bits=2)
    for i, v in enumerate(SECTION_4_STATUSES_2BIT):
        built.set(i, v)
    assert {"bits": 2, "lst": SECTION_4_LST_2BIT} == built.encode()


@pytest.mark.parametrize("vector", [C1, C2, C3], ids=["C.1-1bit", "C.2-2bit", "C.3-4bit"])
def test_appendix_c_vectors(vector: Vector) -> None:
    """Appendix C: 2^20 entries; the set indices read back, all others are VALID, and
    building the same list gives the same `lst` (zlib level 9)."""
    sl = StatusList.decode({"bits": vector["bits"], "lst": vector["lst"]})
    assert 2**20 == len(sl)
    per_byte = 8 // vector["bits"]
    nonzero = {
        i: sl.get(i)
        for byte_no, byte in enumerate(sl.to_bytes())
        if byte
        for i in range(byte_no * per_byte, (byte_no + 1) * per_byte)
        if sl.get(i)
    }
    assert vector["statuses"] == nonzero
    built = StatusList(2**20, bits=vector["bits"])
    for i, v in vector["statuses"].items():
        built.set(i, v)
    assert {"bits": vector["bits"], "lst": vector["lst"]} == built.encode()


def test_bit_order_index_zero_is_the_least_significant_bit_of_byte_zero() -> None:
    """Index 0 is bit 0 of byte 0, index 7 bit 7, index 8 bit 0 of byte 1 (section 4.1)."""
    assert [
        bytes([0b0000_0001, 0]),
        bytes([0b1000_0000, 0]),
        bytes([0, 0b0000_0001]),
        bytes([0, 0b1000_0000]),
    ] == [_only(16, i) for i in (0, 7, 8, 15)]


def _only(size: int, idx: int, bits: int = 1, value: int = 1) -> bytes:
    sl = StatusList(size, bits=bits)
    sl.set(idx, value)
    return sl.to_bytes()


def test_bit_order_for_wider_statuses() -> None:
    """With 2 bits, index 1 sits in bits 2-3 of byte 0; with 4 bits index 1 is the high nibble."""
    assert (bytes([0b0000_1000]), bytes([0xA0])) == (
        _only(4, 1, bits=2, value=SUSPENDED),
        _only(2, 1, bits=4, value=0xA),
    )


def test_set_overwrites_only_its_own_bits() -> None:
    """Setting one entry back to VALID leaves its neighbours alone."""
    sl = StatusList(8, bits=2)
    for i in range(4):
        sl.set(i, 3)
    sl.set(1, VALID)
    assert [3, 0, 3, 3] == [sl.get(i) for i in range(4)]


def test_compression_round_trip_of_a_large_sparse_list() -> None:
    """A million-entry list with a few revocations compresses small and decodes identically."""
    sl = StatusList(1_000_000)
    for i in (0, 1, 77_777, 999_999):
        sl.set(i, INVALID)
    encoded = sl.encode()
    assert len(encoded["lst"]) < 1000
    assert sl == StatusList.decode(json.loads(json.dumps(encoded)))
    raw = zlib.decompress(base64.urlsafe_b64decode(encoded["lst"] + "=="))
    assert 125_000 == len(raw)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"bits": 3, "lst": SECTION_4_LST}, "MALFORMED"),
        ({"bits": True, "lst": SECTION_4_LST}, "MALFORMED"),
        ({"bits": 1, "lst": "eNrbuRgAAhcBXQ=="}, "MALFORMED"),
        ({"bits": 1, "lst": "not base64!"}, "MALFORMED"),
        ({"bits": 1, "lst": base64.urlsafe_b64encode(b"plain").decode().rstrip("=")}, "MALFORMED"),
        ({"bits": 1, "lst": SECTION_4_LST[:-3]}, "MALFORMED"),
        ({"bits": 1}, "MALFORMED"),
        ("not an object", "MALFORMED"),
    ],
    ids=["bits-3", "bits-bool", "padded", "not-b64", "not-zlib", "truncated", "no-lst", "str"],
)
def test_malformed_lists_are_refused(obj: object, reason: str) -> None:
    """Bad bits, padding, non-base64url, non-ZLIB or truncated data: StatusListInvalid."""
    with pytest.raises(StatusListInvalid) as e:
        StatusList.decode(obj)
    assert reason == e.value.reason


def test_decompression_bomb_is_refused() -> None:
    """A list that inflates past the limit is refused without inflating it whole."""
    bomb = base64.urlsafe_b64encode(zlib.compress(bytes(10_000_000), 9)).decode().rstrip("=")
    with pytest.raises(StatusListInvalid) as e:
        StatusList.decode({"bits": 1, "lst": bomb}, max_bytes=1_000_000)
    assert "TOO_LARGE" == e.value.reason


def test_out_of_range_index_and_value() -> None:
    """Indices outside the list and values wider than `bits` are errors, not wrap-arounds."""
    sl = StatusList(16)
    with pytest.raises(IndexError):
        sl.get(16)
    with pytest.raises(IndexError):
        sl.get(-1)
    with pytest.raises(ValueError, match="does not fit"):
        sl.set(0, 2)


def test_signed_token_verifies_and_carries_the_draft_claims() -> None:
    """The token has typ statuslist+jwt, kid, EdDSA, and sub/iat/exp/ttl/status_list."""
    key, jwks = key_and_jwks()
    sl = StatusList(64)
    sl.set(5, INVALID)
    token = signed(sl, key, ttl=600)
    assert {"alg": "EdDSA", "kid": key.kid, "typ": "statuslist+jwt"} == jwt.get_unverified_header(
        token
    )
    verified = read_status_list_token(token, jwks, expected_uri=URI, now=NOW + 10, issuer=ISSUER)
    assert (sl, URI, NOW, NOW + 1200, 600.0) == (
        verified.status_list,
        verified.uri,
        verified.issued_at,
        verified.expires_at,
        verified.ttl,
    )
    assert {"iss", "sub", "iat", "exp", "ttl", "status_list"} == set(verified.claims)
    assert INVALID == verify_status_list_token(token, jwks, expected_uri=URI, now=NOW).get(5)


def test_a_bare_public_key_also_verifies() -> None:
    """A verifier may pass the Ed25519 public key instead of a JWKS."""
    key, _ = key_and_jwks()
    token = signed(StatusList(8), key)
    pub = key.private_key.public_key()
    assert StatusList(8) == verify_status_list_token(token, pub, expected_uri=URI, now=NOW)


def _tamper_payload(token: str, **changes: object) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{body}.{sig}"


def test_a_tampered_list_fails() -> None:
    """Flipping a revocation off in the payload breaks the signature."""
    key, jwks = key_and_jwks()
    sl = StatusList(16)
    sl.set(3, INVALID)
    forged = _tamper_payload(signed(sl, key), status_list=StatusList(16).encode())
    with pytest.raises(StatusListInvalid) as e:
        verify_status_list_token(forged, jwks, expected_uri=URI, now=NOW)
    assert "BAD_SIGNATURE" == e.value.reason


@pytest.mark.parametrize("typ", ["JWT", "xacthuc-attestation+jwt", None])
def test_wrong_typ_fails(typ: str | None) -> None:
    """Only `statuslist+jwt` is a status list token: an attestation cannot pass as one."""
    key, jwks = key_and_jwks()
    claims = StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=60)
    # typ None leaves the header without typ (PyJWT would otherwise add "JWT").
    token = jwt.api_jws.PyJWS().encode(
        json.dumps(claims).encode(),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": typ},
    )
    with pytest.raises(StatusListInvalid) as e:
        verify_status_list_token(token, jwks, expected_uri=URI, now=NOW)
    assert "WRONG_TYPE" == e.value.reason


def test_full_media_type_as_typ_is_accepted() -> None:
    """RFC 7515: `application/statuslist+jwt` names the same type as `statuslist+jwt`."""
    key, jwks = key_and_jwks()
    claims = StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=60)
    token = jwt.encode(
        claims,
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "application/statuslist+jwt"},
    )
    assert StatusList(8) == verify_status_list_token(token, jwks, expected_uri=URI, now=NOW)


class Check(TypedDict, total=False):
    """The keyword arguments of verify_status_list_token that a case changes."""

    expected_uri: str
    now: float
    issuer: str


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"expected_uri": URI + "x"}, "WRONG_URI"),
        ({"now": NOW + 600 + 30}, "EXPIRED"),
        ({"now": NOW - 31}, "NOT_YET_VALID"),
        ({"issuer": "someone-else"}, "WRONG_ISSUER"),
    ],
    ids=["other-uri", "expired", "future-iat", "other-issuer"],
)
def test_claims_are_checked(kwargs: Check, reason: str) -> None:
    """sub must be the URI asked for; exp, iat (with 30 s leeway) and iss are enforced."""
    key, jwks = key_and_jwks()
    token = signed(StatusList(8), key, ttl=300)  # exp = NOW + 600
    args: Check = {"expected_uri": URI, "now": NOW, **kwargs}
    with pytest.raises(StatusListInvalid) as e:
        verify_status_list_token(token, jwks, **args)
    assert reason == e.value.reason


def test_unknown_kid_and_other_algorithms_fail() -> None:
    """A key outside the JWKS, or an HS256 token, is refused before any claim is read."""
    key, jwks = key_and_jwks()
    other, _ = key_and_jwks()
    with pytest.raises(StatusListInvalid) as e1:
        verify_status_list_token(signed(StatusList(8), other), jwks, expected_uri=URI, now=NOW)
    claims = StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=60)
    hs = jwt.encode(
        claims, "k" * 32, algorithm="HS256", headers={"typ": "statuslist+jwt", "kid": key.kid}
    )
    with pytest.raises(StatusListInvalid) as e2:
        verify_status_list_token(hs, jwks, expected_uri=URI, now=NOW)
    assert ("UNKNOWN_KEY", "ALGORITHM_NOT_ALLOWED") == (e1.value.reason, e2.value.reason)


def test_missing_exp_is_refused() -> None:
    """A list without exp could be replayed forever: refused."""
    key, jwks = key_and_jwks()
    claims = StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=60)
    del claims["exp"]
    token = jwt.encode(
        claims,
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "statuslist+jwt"},
    )
    with pytest.raises(StatusListInvalid) as e:
        verify_status_list_token(token, jwks, expected_uri=URI, now=NOW)
    assert "INVALID" == e.value.reason


def test_lifetime_defaults_to_two_ttls_and_must_cover_one() -> None:
    """exp = iat + 2 ttl unless told; a lifetime shorter than the ttl is refused."""
    claims = StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=100)
    assert (NOW, NOW + 200, 100) == (claims["iat"], claims["exp"], claims["ttl"])
    with pytest.raises(ValueError, match="at least one ttl"):
        StatusList(8).claims(issuer=ISSUER, uri=URI, now=NOW, ttl=100, lifetime=50)


def test_reference_reads_the_status_claim() -> None:
    """A referenced token's `status.status_list` gives (uri, idx); none gives None."""
    claims = {"status": {"status_list": {"idx": 7, "uri": URI}}}
    assert ((URI, 7), None) == (reference(claims), reference({}))
    with pytest.raises(StatusListInvalid):
        reference({"status": {"status_list": {"idx": -1, "uri": URI}}})
