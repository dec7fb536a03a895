"""Offline verification of attestation tokens against a JWKS, with no call to xacthuc.

PyJWT reads the JWKS; the check itself is a short, strict path (see `verify`). Only
`EdDSA` over Ed25519 keys is accepted: the algorithm is fixed by the verifier, never
taken from the token, so `alg: none` and algorithm-confusion tokens fail. The token's `typ`
must be `xacthuc-attestation+jwt`, its `kid` must name a published key, and `iss`, `aud`,
`exp`, `iat`, `sub`, `jti` and `method` are required.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xacthuc.domain.b64 import b64url_decode as _b64decode
from xacthuc.domain.errors import InvalidArgument

TOKEN_TYPE = "xacthuc-attestation+jwt"  # noqa: S105  (a JOSE `typ`, not a secret)
_REQUIRED = ("iss", "aud", "sub", "iat", "exp", "jti", "method")
_HEADER_CACHE = 64


class TokenInvalid(InvalidArgument, ValueError):
    """The token does not verify; `reason` says why in a stable word (a local reason, not
    one of errors.proto)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedAttestation:
    account_id: str
    platform: str
    method: str
    token_id: str
    issued_at: datetime
    expires_at: datetime
    guardian_managed: bool
    commercial_livestream: bool
    claims: dict[str, Any]


class AttestationVerifier:
    """Verifies tokens for one platform (`audience`) from one issuer against a JWKS."""

    def __init__(
        self, jwks: str | dict[str, Any], *, issuer: str, audience: str, leeway: float = 30
    ) -> None:
        data = json.loads(jwks) if isinstance(jwks, str) else jwks
        self._keys: dict[str, Ed25519PublicKey] = {}
        for jwk in data.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                self._keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="EdDSA").key
        # Protected header (its base64url text) -> the key it names; headers repeat per key.
        self._headers: dict[str, Ed25519PublicKey] = {}
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, *, now: float | None = None) -> VerifiedAttestation:
        # A lean path, measured: PyJWT's generic decode ran at about half the raw Ed25519
        # verify rate; here one split, a cached header, one signature check, one json.loads.
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3:
            raise TokenInvalid("MALFORMED", "not a compact JWS")
        head, payload, signature = parts
        key = self._headers.get(head) or self._header_key(head)
        try:
            key.verify(_b64decode(signature), f"{head}.{payload}".encode("ascii"))
        except (InvalidSignature, ValueError, UnicodeEncodeError):
            raise TokenInvalid("BAD_SIGNATURE", "signature does not verify") from None
        try:
            claims = json.loads(_b64decode(payload))
        except ValueError:
            raise TokenInvalid("MALFORMED", "payload is not JSON") from None
        if not isinstance(claims, dict) or any(c not in claims for c in _REQUIRED):
            raise TokenInvalid("INVALID", f"claims {', '.join(_REQUIRED)} are required")
        if claims["iss"] != self._issuer:
            raise TokenInvalid("WRONG_ISSUER", "token is from another issuer")
        aud = claims["aud"]
        if aud != self._audience and not (isinstance(aud, list) and self._audience in aud):
            raise TokenInvalid("WRONG_AUDIENCE", "token is for another platform")
        exp, iat = claims["exp"], claims["iat"]
        if not _is_time(exp) or not _is_time(iat):
            raise TokenInvalid("INVALID", "exp and iat must be numbers")
        now = time.time() if now is None else now
        if exp + self._leeway <= now:
            raise TokenInvalid("EXPIRED", "token has expired")
        if iat - self._leeway > now:
            raise TokenInvalid("NOT_YET_VALID", "token was issued in the future")
        return VerifiedAttestation(
            account_id=claims["sub"],
            platform=self._audience,
            method=claims["method"],
            token_id=claims["jti"],
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            guardian_managed=bool(claims.get("guardian_managed", False)),
            commercial_livestream=bool(claims.get("commercial_livestream", False)),
            claims=claims,
        )

    def _header_key(self, head: str) -> Ed25519PublicKey:
        """Check a protected header once and remember which key it names."""
        try:
            header = json.loads(_b64decode(head))
        except ValueError:
            raise TokenInvalid("MALFORMED", "header is not JSON") from None
        if not isinstance(header, dict):
            raise TokenInvalid("MALFORMED", "header is not a JSON object")
        if header.get("alg") != "EdDSA":
            raise TokenInvalid("ALGORITHM_NOT_ALLOWED", "only EdDSA is accepted")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("WRONG_TYPE", f"typ must be {TOKEN_TYPE}")
        if "crit" in header:
            raise TokenInvalid("INVALID", "no critical header extension is understood")
        key = self._keys.get(header.get("kid", ""))
        if key is None:
            raise TokenInvalid("UNKNOWN_KEY", "kid is not in the JWKS")
        if len(self._headers) < _HEADER_CACHE:
            self._headers[head] = key
        return key


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
