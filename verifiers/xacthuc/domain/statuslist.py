"""IETF Token Status List (draft-ietf-oauth-status-list): revocation that verifiers read offline.

A status list is a byte array holding `bits` (1, 2, 4 or 8) status bits per referenced token.
Index `i` is the block `i` of the array, blocks packed from the least significant bit of
byte 0 upwards (index 0 is bit 0 of byte 0, index 8 is bit 0 of byte 1; draft section 4.1).
The array travels ZLIB-compressed (RFC 1950/1951) and base64url-encoded in `lst`:

    {"bits": 1, "lst": "eNrbuRgAAhcBXQ"}     # the draft's example: bytes b9 a3

A status list token is a JWT with `typ: statuslist+jwt` and the claims `sub` (the list's
URI, equal to the `uri` a referenced token names), `iat`, `exp`, `ttl` (how long a verifier
may cache it) and `status_list` (section 5.1). A referenced token (our attestation) carries
`"status": {"status_list": {"idx": N, "uri": "..."}}` (section 6.2).

Status values (section 7): 0 VALID, 1 INVALID (revoked), 2 SUSPENDED.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xacthuc.domain.b64 import b64url_decode, b64url_encode
from xacthuc.domain.errors import InvalidArgument
from xacthuc.domain.tokens import SigningKey

TYP = "statuslist+jwt"
MEDIA_TYPE = "application/statuslist+jwt"
ALGORITHM = "EdDSA"

VALID = 0x00
INVALID = 0x01
SUSPENDED = 0x02

BITS = (1, 2, 4, 8)
# A decompression bomb guard: 16 MiB is 134 million entries at one bit each.
MAX_BYTES = 16 * 1024 * 1024


LIST_NO = 0  # one list per platform


def status_list_uri(base_url: str, platform: str, list_no: int) -> str:
    """The `uri` tokens carry for list `list_no` of `platform` (the well-known listener's path
    `/statuslists/<platform>/<list>`): named here so the token signer, the publisher and the
    listener agree without knowing each other."""
    return f"{base_url.rstrip('/')}/statuslists/{platform}/{list_no}"


class StatusListNames:
    """Where each platform's status list lives: `<base>/statuslists/<platform>/0`.

    Built first at composition and handed to both sides: the token signer names a token's
    list with `reference` (a `tokens.StatusListRef`), the publisher signs the list under `uri`.
    So neither needs the other, and both always say the same URI.
    """

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._uris: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        """The one late fact: the well-known listener's port when it was asked to bind port 0
        and no public base URL is configured. Set when it binds, before the server starts
        (so before any token is signed)."""
        self._base_url = value.rstrip("/")
        self._uris.clear()

    def uri(self, platform: str) -> str:
        """The URI of the platform's list, and the `sub` of its status list token."""
        uri = self._uris.get(platform)
        if uri is None:
            uri = self._uris[platform] = status_list_uri(self._base_url, platform, LIST_NO)
        return uri

    def reference(self, platform: str, idx: int) -> dict[str, Any]:
        """The `status_list` member of a token's `status` claim (section 6.2)."""
        return {"idx": idx, "uri": self.uri(platform)}


class StatusListInvalid(InvalidArgument, ValueError):
    """A status list or status list token is unusable; `reason` says why in a stable word
    (a local reason, not one of errors.proto: this is never sent by the server)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class StatusList:
    """`size` statuses of `bits` bits each, all VALID at first."""

    __slots__ = ("_bits", "_data", "_mask", "_per_byte")

    def __init__(self, size: int, *, bits: int = 1) -> None:
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, not {bits}")
        if size < 0:
            raise ValueError("size must not be negative")
        nbytes = -(-size * bits // 8)
        if nbytes > MAX_BYTES:
            raise ValueError(f"a status list holds at most {MAX_BYTES} bytes")
        self._bits = bits
        self._per_byte = 8 // bits
        self._mask = (1 << bits) - 1
        self._data = bytearray(nbytes)

    @classmethod
    def from_bytes(cls, data: bytes, *, bits: int = 1) -> StatusList:
        """A list over an existing uncompressed byte array (its size is whole bytes)."""
        sl = cls(0, bits=bits)
        if len(data) > MAX_BYTES:
            raise ValueError(f"a status list holds at most {MAX_BYTES} bytes")
        sl._data = bytearray(data)
        return sl

    @property
    def bits(self) -> int:
        return self._bits

    def __len__(self) -> int:
        """How many statuses the list holds (whole bytes: may exceed the size asked for)."""
        return len(self._data) * self._per_byte

    def to_bytes(self) -> bytes:
        """The uncompressed byte array."""
        return bytes(self._data)

    def _where(self, idx: int) -> tuple[int, int]:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self):
            raise IndexError(f"status index {idx!r} is outside 0..{len(self) - 1}")
        byte, slot = divmod(idx, self._per_byte)
        return byte, slot * self._bits

    def get(self, idx: int) -> int:
        byte, shift = self._where(idx)
        return (self._data[byte] >> shift) & self._mask

    def set(self, idx: int, value: int) -> None:
        if not 0 <= value <= self._mask:
            raise ValueError(f"status {value} does not fit in {self._bits} bit(s)")
        byte, shift = self._where(idx)
        self._data[byte] = (self._data[byte] & ~(self._mask << shift) & 0xFF) | (value << shift)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusList):
            return NotImplemented
        return self._bits == other._bits and self._data == other._data

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"StatusList(size={len(self)}, bits={self._bits})"

    # ---- JSON form (section 4.2) ---------------------------------------------------------

    def encode(self) -> dict[str, Any]:
        """`{"bits": ..., "lst": base64url(zlib(bytes))}` at the highest compression level."""
        return {"bits": self._bits, "lst": b64url_encode(zlib.compress(bytes(self._data), 9))}

    @classmethod
    def decode(cls, obj: Any, *, max_bytes: int = MAX_BYTES) -> StatusList:
        """The list an encoded `{"bits", "lst"}` object holds; StatusListInvalid if malformed."""
        if not isinstance(obj, dict):
            raise StatusListInvalid("MALFORMED", "status_list must be an object")
        bits = obj.get("bits")
        if isinstance(bits, bool) or bits not in BITS:
            raise StatusListInvalid("MALFORMED", f"bits must be one of {BITS}")
        try:
            lst = obj.get("lst")
            if not isinstance(lst, str):
                raise ValueError("lst is not text")
            compressed = b64url_decode(lst)
        except ValueError:
            raise StatusListInvalid("MALFORMED", "lst must be unpadded base64url text") from None
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(compressed, max_bytes + 1)
        except zlib.error:
            raise StatusListInvalid("MALFORMED", "lst is not ZLIB data") from None
        if len(data) > max_bytes:
            raise StatusListInvalid("TOO_LARGE", f"status list over {max_bytes} bytes")
        if not inflater.eof or inflater.unused_data:
            raise StatusListInvalid("MALFORMED", "lst is truncated or has trailing data")
        return cls.from_bytes(data, bits=bits)

    # ---- the token (section 5.1) ---------------------------------------------------------

    def claims(
        self, *, issuer: str, uri: str, now: float, ttl: int, lifetime: int | None = None
    ) -> dict[str, Any]:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        lifetime = 2 * ttl if lifetime is None else lifetime
        if lifetime < ttl:
            raise ValueError("the token must live at least one ttl")
        return {
            "iss": issuer,
            "sub": uri,
            "iat": int(now),
            "exp": int(now) + lifetime,
            "ttl": ttl,
            "status_list": self.encode(),
        }

    def sign(
        self,
        signing_key: SigningKey | Ed25519PrivateKey,
        *,
        kid: str | None = None,
        issuer: str,
        uri: str,
        now: float,
        ttl: int,
        lifetime: int | None = None,
    ) -> str:
        """The status list token (compact JWS, EdDSA). `exp` is `now + lifetime`, two `ttl`s
        by default: a verifier that cannot refresh keeps a copy one more `ttl`, then stops."""
        if isinstance(signing_key, SigningKey):
            kid = kid or signing_key.kid
            private = signing_key.private_key
        else:
            private = signing_key
        if not kid:
            raise ValueError("kid is required with a bare private key")
        return jwt.encode(
            self.claims(issuer=issuer, uri=uri, now=now, ttl=ttl, lifetime=lifetime),
            private,
            algorithm=ALGORITHM,
            headers={"kid": kid, "typ": TYP},
        )


@dataclass(frozen=True, slots=True)
class StatusListToken:
    """A verified status list token."""

    status_list: StatusList
    uri: str
    issued_at: float
    expires_at: float
    ttl: float | None
    claims: dict[str, Any]


def reference(claims: dict[str, Any]) -> tuple[str, int] | None:
    """The (uri, idx) a referenced token's `status` claim names; None when it has none."""
    status = claims.get("status")
    if status is None:
        return None
    ref = status.get("status_list") if isinstance(status, dict) else None
    if not isinstance(ref, dict):
        raise StatusListInvalid("MALFORMED", "status claim without a status_list object")
    uri, idx = ref.get("uri"), ref.get("idx")
    if not isinstance(uri, str) or not uri:
        raise StatusListInvalid("MALFORMED", "status_list.uri must be a string")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise StatusListInvalid("MALFORMED", "status_list.idx must be a non-negative integer")
    return uri, idx


def _keys(jwks: str | dict[str, Any] | Ed25519PublicKey) -> dict[str | None, Any]:
    if isinstance(jwks, Ed25519PublicKey):
        return {None: jwks}
    data = json.loads(jwks) if isinstance(jwks, str) else jwks
    keys: dict[str | None, Any] = {}
    for jwk in data.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
            keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
    return keys


def _typ_ok(typ: Any) -> bool:
    # RFC 7515 4.1.9: "application/" may be left out of a `typ`, and media types are caseless.
    if not isinstance(typ, str):
        return False
    typ = typ.lower()
    return typ in (TYP, MEDIA_TYPE)


def read_status_list_token(
    token: str,
    jwks: str | dict[str, Any] | Ed25519PublicKey,
    *,
    expected_uri: str,
    now: float,
    issuer: str | None = None,
    leeway: float = 30,
    max_bytes: int = MAX_BYTES,
) -> StatusListToken:
    """Verify a status list token (section 8.3 step 3-5): EdDSA only, `typ` statuslist+jwt, a
    known `kid` (any key when given a bare public key), `sub` equal to `expected_uri`, `exp`
    present and not passed at `now` (our lists always carry it: a list without one could be
    replayed forever), `iat` not in the future, `ttl` positive; then decode the list."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise StatusListInvalid("MALFORMED", "not a compact JWS") from None
    if header.get("alg") != ALGORITHM:
        raise StatusListInvalid("ALGORITHM_NOT_ALLOWED", "only EdDSA is accepted")
    if not _typ_ok(header.get("typ")):
        raise StatusListInvalid("WRONG_TYPE", f"typ must be {TYP}")
    keys = _keys(jwks)
    key = keys.get(None) or keys.get(header.get("kid", ""))
    if key is None:
        raise StatusListInvalid("UNKNOWN_KEY", "kid is not in the JWKS")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={
                "require": ["sub", "iat", "exp", "status_list"],
                "verify_iss": issuer is not None,
                "verify_aud": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise StatusListInvalid("BAD_SIGNATURE", "signature does not verify") from None
    except jwt.InvalidIssuerError:
        raise StatusListInvalid("WRONG_ISSUER", "token is from another issuer") from None
    except jwt.PyJWTError as e:
        raise StatusListInvalid("INVALID", type(e).__name__) from None
    if claims["sub"] != expected_uri:
        raise StatusListInvalid("WRONG_URI", "sub is not the URI the token names")
    iat, exp, ttl = claims["iat"], claims.get("exp"), claims.get("ttl")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or iat - leeway > now:
        raise StatusListInvalid("NOT_YET_VALID", "iat is in the future")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp + leeway <= now:
        raise StatusListInvalid("EXPIRED", "status list token has expired")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise StatusListInvalid("MALFORMED", "ttl must be a positive number")
    return StatusListToken(
        status_list=StatusList.decode(claims["status_list"], max_bytes=max_bytes),
        uri=claims["sub"],
        issued_at=float(iat),
        expires_at=float(exp),
        ttl=None if ttl is None else float(ttl),
        claims=claims,
    )


def verify_status_list_token(
    token: str,
    jwks: str | dict[str, Any] | Ed25519PublicKey,
    *,
    expected_uri: str,
    now: float,
    issuer: str | None = None,
    leeway: float = 30,
) -> StatusList:
    """The status list a verified token holds (see `read_status_list_token`)."""
    return read_status_list_token(
        token, jwks, expected_uri=expected_uri, now=now, issuer=issuer, leeway=leeway
    ).status_list
