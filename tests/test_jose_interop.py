"""Interoperability: attestation and status list tokens verify with independent JOSE libraries
(jwcrypto in Python, npm `jose` on Node.js), and forged algorithms are refused everywhere.

The Node.js test installs a pinned `jose` with npm into a temporary folder (npm's cache makes
later runs fast) and fetches the keys and the status list from the real well-known listener,
as a platform written in JavaScript would. It fails, never skips, when Node.js or npm is
missing: interoperability is a requirement (issue 5), not a nicety.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws
from jwcrypto import jwt as jc_jwt

from xacthuc.adapters.keyring import Keyring
from xacthuc.adapters.wellknown import (
    bound_port,
    make_wellknown_app,
    start_wellknown,
    stop_wellknown,
)
from xacthuc.client.verify import AttestationVerifier, TokenInvalid
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.statuslist import INVALID, StatusList, status_list_uri
from xacthuc.domain.tokens import TOKEN_TYPE

JOSE_VERSION = "6.2.18"
ISSUER = "xacthuc-interop"
REVOKED = (0, 9, 77)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class World:
    """A keyring after one rotation (three published keys), tokens of both generations, and
    a status list with a few revocations: real time, since the other libraries read the clock."""

    def __init__(self, directory: Path) -> None:
        self.now = time.time()
        ring = Keyring.init(directory, now=self.now - 7200)
        self.old_token = self.attestation(ring, "tok-old")
        self.ring = ring.rotate(now=self.now - 3600, token_ttl=86_400)
        self.token = self.attestation(self.ring, "tok-new")
        self.jwks = self.ring.published_jwks(self.now)
        self.list = StatusList(128)
        for i in REVOKED:
            self.list.set(i, INVALID)
        self.uri = "https://xacthuc.example/statuslists/alpha/0"

    def attestation(self, ring: Keyring, token_id: str) -> str:
        now = int(self.now)
        record = AttestationRecord(
            account_id="acct-9",
            method="personal_id",
            token_id=token_id,
            verified_at=now - 60,
            issued_at=now - 60,
            expires_at=now + 3600,
            commercial_livestream=True,
        )
        return ring.signer(ISSUER).sign("alpha", record)

    def status_token(self, uri: str | None = None) -> str:
        return self.list.sign(
            self.ring.active, issuer=ISSUER, uri=uri or self.uri, now=self.now, ttl=300
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# ---- jwcrypto ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["token", "old_token"])
def test_jwcrypto_verifies_attestations(world: World, which: str) -> None:
    """jwcrypto verifies tokens of the active key and of the retired key with our JWKS."""
    keyset = jc_jwk.JWKSet.from_json(json.dumps(world.jwks))
    token = jc_jwt.JWT(
        jwt=getattr(world, which),
        key=keyset,
        algs=["EdDSA"],
        check_claims={"iss": ISSUER, "aud": "alpha", "exp": None},
        expected_type="JWS",
    )
    claims = json.loads(token.claims)
    header = json.loads(token.header)
    assert ("acct-9", "personal_id", TOKEN_TYPE, "EdDSA") == (
        claims["sub"],
        claims["method"],
        header["typ"],
        header["alg"],
    )


def test_jwcrypto_computes_the_same_kid(world: World) -> None:
    """Our kid is the RFC 7638 thumbprint jwcrypto computes for the same key."""
    for key in world.jwks["keys"]:
        public = {k: key[k] for k in ("kty", "crv", "x")}
        assert key["kid"] == jc_jwk.JWK(**public).thumbprint()


def test_jwcrypto_verifies_the_status_list(world: World) -> None:
    """jwcrypto verifies the statuslist+jwt; zlib and plain bit arithmetic read it back."""
    keyset = jc_jwk.JWKSet.from_json(json.dumps(world.jwks))
    token = jc_jwt.JWT(
        jwt=world.status_token(),
        key=keyset,
        algs=["EdDSA"],
        check_claims={"sub": world.uri, "exp": None},
    )
    header, claims = json.loads(token.header), json.loads(token.claims)
    raw = zlib.decompress(base64.urlsafe_b64decode(claims["status_list"]["lst"] + "=="))
    revoked = [i for i in range(len(raw) * 8) if raw[i // 8] >> (i % 8) & 1]
    assert ("statuslist+jwt", 1, list(REVOKED)) == (
        header["typ"],
        claims["status_list"]["bits"],
        revoked,
    )


def test_jwcrypto_refuses_a_tampered_token(world: World) -> None:
    """A token with an edited payload fails in jwcrypto too."""
    head, body, sig = world.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["commercial_livestream"] = False
    forged = f"{head}.{b64(json.dumps(claims).encode())}.{sig}"
    # jwcrypto reports "no key of the set verifies it" when given a JWKS.
    with pytest.raises((jc_jws.InvalidJWSSignature, jc_jwt.JWTMissingKey)):
        jc_jwt.JWT(jwt=forged, key=jc_jwk.JWKSet.from_json(json.dumps(world.jwks)), algs=["EdDSA"])


# ---- forged algorithms: refused by AttestationVerifier (and by jwcrypto) --------------------


def _claims(world: World) -> dict[str, Any]:
    return jwt.decode(world.token, options={"verify_signature": False})


def alg_none_token(world: World) -> str:
    header = {"alg": "none", "typ": TOKEN_TYPE, "kid": world.ring.active.kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(_claims(world)).encode())}."


def hs256_tokens(world: World) -> dict[str, str]:
    """HS256 tokens whose HMAC secret is the Ed25519 public key in every form a confused
    verifier might use as a shared secret: raw bytes, the JWK `x`, the PEM, the JWK JSON."""
    public = world.ring.active.private_key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = next(k for k in world.jwks["keys"] if k["kid"] == world.ring.active.kid)
    header = {"alg": "HS256", "typ": TOKEN_TYPE, "kid": world.ring.active.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(_claims(world)).encode())}"
    tokens = {}
    for name, secret in {
        "raw": raw,
        "x": jwk["x"].encode(),
        "pem": pem,
        "jwk": json.dumps(jwk).encode(),
    }.items():
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        tokens[name] = f"{signing_input}.{b64(mac)}"
    return tokens


def verifier(world: World) -> AttestationVerifier:
    return AttestationVerifier(world.jwks, issuer=ISSUER, audience="alpha")


def test_alg_none_is_refused(world: World) -> None:
    """An unsigned `alg: none` token with valid claims is ALGORITHM_NOT_ALLOWED."""
    with pytest.raises(TokenInvalid) as e:
        verifier(world).verify(alg_none_token(world))
    assert "ALGORITHM_NOT_ALLOWED" == e.value.reason


@pytest.mark.parametrize("form", ["raw", "x", "pem", "jwk"])
def test_algorithm_confusion_is_refused(world: World, form: str) -> None:
    """HS256 keyed with the Ed25519 public key (any encoding) is ALGORITHM_NOT_ALLOWED."""
    with pytest.raises(TokenInvalid) as e:
        verifier(world).verify(hs256_tokens(world)[form])
    assert "ALGORITHM_NOT_ALLOWED" == e.value.reason


def test_the_genuine_token_verifies_in_the_same_setup(world: World) -> None:
    """Control: the refusals above are about the algorithm, not a broken setup."""
    assert "tok-new" == verifier(world).verify(world.token).token_id


def test_jwcrypto_refuses_the_forged_algorithms(world: World) -> None:
    """The independent library refuses both forgeries when told EdDSA is the only algorithm."""
    keyset = jc_jwk.JWKSet.from_json(json.dumps(world.jwks))
    for token in [alg_none_token(world), *hs256_tokens(world).values()]:
        with pytest.raises(Exception):  # noqa: B017,PT011 - jwcrypto raises several types
            jc_jwt.JWT(jwt=token, key=keyset, algs=["EdDSA"])


# ---- npm jose on Node.js ----------------------------------------------------------------------

NODE_SCRIPT = r"""
import * as jose from "jose";
import { inflateSync } from "node:zlib";
import { readFileSync } from "node:fs";

const input = JSON.parse(readFileSync(0, "utf8"));
const out = {};
// Keys by URL, as a platform would configure them.
const JWKS = jose.createRemoteJWKSet(new URL(input.jwksUrl));
for (const [name, token] of Object.entries(input.tokens)) {
  const { payload, protectedHeader } = await jose.jwtVerify(token, JWKS, {
    issuer: input.issuer, audience: input.audience, algorithms: ["EdDSA"],
    typ: "xacthuc-attestation+jwt", requiredClaims: ["jti", "method"],
  });
  out[name] = { sub: payload.sub, jti: payload.jti, kid: protectedHeader.kid };
}
// The status list at its URI, checked as draft-ietf-oauth-status-list section 8.3 says.
const response = await fetch(input.statusUri, { headers: { accept: "application/statuslist+jwt" } });
out.statusContentType = response.headers.get("content-type");
out.statusCacheControl = response.headers.get("cache-control");
const { payload } = await jose.jwtVerify((await response.text()).trim(), JWKS, {
  algorithms: ["EdDSA"], typ: "statuslist+jwt", subject: input.statusUri,
  requiredClaims: ["iat", "exp", "status_list"],
});
const bytes = inflateSync(Buffer.from(payload.status_list.lst, "base64url"));
out.revoked = [];
for (let i = 0; i < bytes.length * 8; i++) if ((bytes[i >> 3] >> (i & 7)) & 1) out.revoked.push(i);
out.ttl = payload.ttl;
// Every forgery must be refused.
out.refused = {};
for (const [name, token] of Object.entries(input.forged)) {
  try {
    await jose.jwtVerify(token, JWKS, { issuer: input.issuer, audience: input.audience, algorithms: ["EdDSA"] });
    out.refused[name] = "ACCEPTED";
  } catch (e) {
    out.refused[name] = e.code || e.name;
  }
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="session")
def node_jose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the pinned npm `jose` installed and the verification script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js and npm are required for the npm `jose` interoperability test "
            "(apt-get install nodejs npm)",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("node-jose")
    (folder / "package.json").write_text(json.dumps({"private": True, "type": "module"}))
    (folder / "verify.mjs").write_text(NODE_SCRIPT)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", f"jose@{JOSE_VERSION}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm install jose@{JOSE_VERSION} failed:\n{done.stderr}", pytrace=False)
    return folder


@pytest.fixture
async def listener(world: World) -> AsyncIterator[str]:
    base = ""

    async def status_list(platform: str, n: int) -> str | None:
        if (platform, n) != ("alpha", 0):
            return None
        return world.status_token(status_list_uri(base, platform, n))

    app = make_wellknown_app(
        lambda: json.dumps(world.jwks), status_list, jwks_ttl=300, status_ttl=300
    )
    runner = await start_wellknown(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        yield base
    finally:
        await stop_wellknown(runner)


async def test_npm_jose_verifies_tokens_and_status_list(
    world: World, node_jose: Path, listener: str
) -> None:
    """Node's `jose` fetches our JWKS by URL, verifies old and new tokens and the status list,
    reads the revoked indices with its own zlib, and refuses alg none and HS256 confusion."""
    payload = {
        "jwksUrl": f"{listener}/.well-known/jwks.json",
        "statusUri": f"{listener}/statuslists/alpha/0",
        "issuer": ISSUER,
        "audience": "alpha",
        "tokens": {"new": world.token, "old": world.old_token},
        "forged": {"none": alg_none_token(world), **hs256_tokens(world)},
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "verify.mjs",
        cwd=node_jose,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), 60)
    assert 0 == proc.returncode, stderr.decode()
    out = json.loads(stdout)
    assert {
        "new": {"sub": "acct-9", "jti": "tok-new", "kid": world.ring.active.kid},
        "old": {"sub": "acct-9", "jti": "tok-old", "kid": world.ring.entries[0].kid},
    } == {"new": out["new"], "old": out["old"]}
    assert (
        "application/statuslist+jwt",
        "public, max-age=300",
        list(REVOKED),
        300,
    ) == (
        out["statusContentType"].split(";")[0],
        out["statusCacheControl"],
        out["revoked"],
        out["ttl"],
    )
    assert {name: "ERR_JOSE_ALG_NOT_ALLOWED" for name in ("none", "raw", "x", "pem", "jwk")} == out[
        "refused"
    ]
