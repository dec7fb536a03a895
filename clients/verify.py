"""Offline verification of attestation tokens against a JWKS, with no call to xacthuc.

Only `EdDSA` over Ed25519 keys is accepted: the algorithm is fixed by the verifier, never
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

TOKEN_TYPE = "xacthuc-attestation+jwt"  # noqa: S105  (a JOSE `typ`, not a secret)
_REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti", "method"]


class TokenInvalid(ValueError):
    """The token does not verify; `reason` says why in a stable word."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


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
        self._keys: dict[str, Any] = {}
        for jwk in data.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                self._keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="EdDSA").key
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, *, now: float | None = None) -> VerifiedAttestation:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenInvalid("MALFORMED", "not a compact JWS") from None
        if header.get("alg") != "EdDSA":
            raise TokenInvalid("ALGORITHM_NOT_ALLOWED", "only EdDSA is accepted")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("WRONG_TYPE", f"typ must be {TOKEN_TYPE}")
        key = self._keys.get(header.get("kid", ""))
        if key is None:
            raise TokenInvalid("UNKNOWN_KEY", "kid is not in the JWKS")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=self._audience,
                issuer=self._issuer,
                # Time is checked below against `now`, so tests and replays can pin the clock.
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenInvalid("BAD_SIGNATURE", "signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("WRONG_AUDIENCE", "token is for another platform") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("WRONG_ISSUER", "token is from another issuer") from None
        except jwt.PyJWTError as e:
            raise TokenInvalid("INVALID", type(e).__name__) from None
        now = time.time() if now is None else now
        if not isinstance(claims["exp"], int | float) or claims["exp"] + self._leeway <= now:
            raise TokenInvalid("EXPIRED", "token has expired")
        if not isinstance(claims["iat"], int | float) or claims["iat"] - self._leeway > now:
            raise TokenInvalid("NOT_YET_VALID", "token was issued in the future")
        return VerifiedAttestation(
            account_id=claims["sub"],
            platform=claims["aud"],
            method=claims["method"],
            token_id=claims["jti"],
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            guardian_managed=bool(claims.get("guardian_managed", False)),
            commercial_livestream=bool(claims.get("commercial_livestream", False)),
            claims=claims,
        )
