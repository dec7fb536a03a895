"""`pip install xacthuc` (no extras) is the SDK alone: the built wheel, in a fresh virtual
environment, gives the client and offline verification without any server dependency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import SigningKey, TokenSigner

ROOT = Path(__file__).resolve().parent.parent
PIP = ("-m", "pip", "--disable-pip-version-check", "-q")
ISSUER = "https://xacthuc.test"
# The server's dependencies (the `server` extra): none of them may come with the SDK.
SERVER_ONLY = ("redis", "aiohttp", "pydantic", "pydantic_settings", "prometheus_client")

# Runs inside the fresh environment: reads {"jwks", "token", "tampered", "now"} on stdin and
# prints what it found as JSON.
SCRIPT = """
import importlib.util, json, sys
import xacthuc.client as sdk
from xacthuc.client import AttestationVerifier, JwksCache, TokenInvalid, authorize_token

given = json.load(sys.stdin)
keys = JwksCache(lambda: given["jwks"], issuer=given["issuer"], audience="alpha")
verified = keys.verify(given["token"], now=given["now"])
decision = authorize_token(
    AttestationVerifier(given["jwks"], issuer=given["issuer"], audience="alpha"),
    given["token"], "post", now=given["now"],
)
try:
    keys.verify(given["tampered"], now=given["now"])
    refused = None
except TokenInvalid as e:
    refused = e.reason
print(json.dumps({
    "sdk": sdk.__file__,
    "missing": sorted(m for m in given["server_only"] if importlib.util.find_spec(m) is None),
    "account": verified.account_id,
    "allowed": decision.allowed,
    "refused": refused,
}))
"""


def tampered(token: str) -> str:
    """The same token with one payload character changed (a claim edited after signing)."""
    head, payload, signature = token.split(".")
    middle = len(payload) // 2
    swapped = "A" if payload[middle] != "A" else "B"
    return ".".join((head, payload[:middle] + swapped + payload[middle + 1 :], signature))


def test_the_wheel_alone_verifies_tokens_offline(tmp_path: Path) -> None:
    """The wheel hatchling builds carries the data files and py.typed markers; installed with
    no extras into a new venv, it has none of the server's dependencies, and the SDK there
    verifies a token this process signed with the server's code and refuses a tampered one."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, *PIP, "wheel", "--no-deps", "-w", str(dist), str(ROOT)], check=True
    )
    (wheel,) = dist.glob("xacthuc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "xacthuc/v1/verification.proto",
        "xacthuc/v1/audit.proto",
        "xacthuc/v1/errors.proto",
        "xacthuc/adapters/store/lua/check_code.lua",
        "xacthuc/adapters/store/lua/common.lua",
        "xacthuc/adapters/registry/data/sandbox_citizens.jsonl",
        "xacthuc/client/py.typed",
        "xacthuc/domain/py.typed",
        "xacthuc/v1/py.typed",
        "xacthuc/server/py.typed",
    } <= names
    console = {n for n in names if n.startswith("xacthuc/server/console_static/")}
    shipped = ROOT / "service/xacthuc/server/console_static"
    assert {f"xacthuc/server/console_static/{p.name}" for p in shipped.iterdir()} == console
    lua = {n for n in names if n.endswith(".lua")}
    assert len(lua) == len(list((ROOT / "service/xacthuc/adapters/store/lua").glob("*.lua")))
    assert not any(n == "xacthuc/__init__.py" for n in names)  # one PEP 420 namespace

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    subprocess.run(
        [python, *PIP, "install", "-c", str(ROOT / "constraints.txt"), str(wheel)], check=True
    )

    now = time.time()
    record = AttestationRecord(
        account_id="acct-sdk",
        method="phone_otp",
        token_id="tok-sdk",
        verified_at=now - 60,
        issued_at=now - 60,
        expires_at=now + 3600,
    )
    signer = TokenSigner(SigningKey.generate(), issuer=ISSUER)
    token = signer.sign("alpha", record)
    given = {
        "jwks": signer.jwks_json(),
        "issuer": ISSUER,
        "token": token,
        "tampered": tampered(token),
        "now": now,
        "server_only": SERVER_ONLY,
    }
    ran = subprocess.run(
        [python, "-c", SCRIPT],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        # Neither the repository nor this environment's paths: only the installed wheel.
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        check=False,
    )
    assert 0 == ran.returncode, ran.stderr
    found = json.loads(ran.stdout)
    assert Path(found.pop("sdk")).is_relative_to(env)
    assert {
        "missing": sorted(SERVER_ONLY),
        "account": "acct-sdk",
        "allowed": True,
        "refused": "BAD_SIGNATURE",
    } == found
