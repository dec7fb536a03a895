"""The signing keyring: publish before signing, keep retired keys for their tokens' lifetime,
write atomically, and the `keys init|rotate` commands."""

from __future__ import annotations

import argparse
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xacthuc.adapters.keyring import DEFAULT_LEEWAY, MANIFEST, Keyring, KeyringError
from xacthuc.cli import keys as cli_keys
from xacthuc.client.verify import AttestationVerifier, TokenInvalid
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import SigningKey

T0 = 1_800_000_000.0
TTL = 30 * 86_400
ISSUER = "xacthuc-test"


def record(now: float, ttl: float = TTL, token_id: str = "tok-1") -> AttestationRecord:
    return AttestationRecord(
        account_id="acct-1",
        method="phone_otp",
        token_id=token_id,
        verified_at=now,
        issued_at=now,
        expires_at=now + ttl,
    )


def verifier(ring: Keyring, now: float | None = None) -> AttestationVerifier:
    return AttestationVerifier(ring.published_jwks(now), issuer=ISSUER, audience="alpha")


def kids(jwks: dict[str, Any]) -> list[str]:
    return [k["kid"] for k in jwks["keys"]]


def test_init_creates_an_active_and_a_published_next_key(tmp_path: Path) -> None:
    """A new keyring signs with its active key and already publishes the next one."""
    ring = Keyring.init(tmp_path / "keys", now=T0)
    assert ring.next is not None
    assert [ring.active.kid, ring.next.kid] == kids(ring.published_jwks(T0))
    signer = ring.signer(ISSUER)
    token = signer.sign("alpha", record(T0))
    assert "acct-1" == verifier(ring).verify(token, now=T0).account_id
    assert json.loads(signer.jwks_json()) == ring.published_jwks(T0)


def test_the_signer_uses_the_active_kid(tmp_path: Path) -> None:
    """Tokens carry the active key's kid in their header."""
    import jwt

    ring = Keyring.init(tmp_path, now=T0)
    token = ring.signer(ISSUER).sign("alpha", record(T0))
    assert ring.active.kid == jwt.get_unverified_header(token)["kid"]


def test_files_are_private_and_named_by_kid(tmp_path: Path) -> None:
    """Each key is `<kid>.pem`, readable by its owner only; the manifest lists both keys."""
    ring = Keyring.init(tmp_path, now=T0)
    assert ring.next is not None
    pems = sorted(p.name for p in tmp_path.glob("*.pem"))
    assert sorted([f"{ring.active.kid}.pem", f"{ring.next.kid}.pem"]) == pems
    for name in pems:
        assert 0o600 == stat.S_IMODE((tmp_path / name).stat().st_mode)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert (1, 1, ["active", "next"]) == (
        manifest["version"],
        manifest["generation"],
        [k["state"] for k in manifest["keys"]],
    )


def test_rotation_sequence_next_is_published_before_it_signs(tmp_path: Path) -> None:
    """Every key is in the JWKS one full rotation before it signs, then signs, then retires."""
    ring = Keyring.init(tmp_path, now=T0)
    assert ring.next is not None
    first_active, first_next = ring.active.kid, ring.next.kid

    ring2 = ring.rotate(now=T0 + 100, token_ttl=TTL)
    assert ring2.next is not None
    assert first_next == ring2.active.kid  # the published next key now signs
    assert [first_next, ring2.next.kid, first_active] == kids(ring2.published_jwks(T0 + 100))
    assert {e.kid: e.state for e in ring2.entries} == {
        first_active: "retired",
        first_next: "active",
        ring2.next.kid: "next",
    }
    retired = next(e for e in ring2.entries if e.state == "retired")
    assert T0 + 100 + TTL + DEFAULT_LEEWAY == retired.retire_after

    ring3 = Keyring.load(tmp_path).rotate(now=T0 + 200, token_ttl=TTL)
    assert ring2.next.kid == ring3.active.kid
    assert 3 == ring3.generation


def test_tokens_signed_before_a_rotation_verify_after_it(tmp_path: Path) -> None:
    """A token signed by the old active key verifies with the JWKS published after rotating."""
    ring = Keyring.init(tmp_path, now=T0)
    old_token = ring.signer(ISSUER).sign("alpha", record(T0))
    rotated = ring.rotate(now=T0 + 3600, token_ttl=TTL)
    new_token = rotated.signer(ISSUER).sign("alpha", record(T0 + 3600, token_id="tok-2"))
    after = verifier(Keyring.load(tmp_path), T0 + 3600)
    assert ("tok-1", "tok-2") == (
        after.verify(old_token, now=T0 + 3600).token_id,
        after.verify(new_token, now=T0 + 3600).token_id,
    )


def test_verifiers_holding_the_old_jwks_accept_new_tokens(tmp_path: Path) -> None:
    """A verifier that cached the JWKS before the rotation already knows the new signing key."""
    ring = Keyring.init(tmp_path, now=T0)
    cached = verifier(ring, T0)
    rotated = ring.rotate(now=T0 + 60, token_ttl=TTL)
    token = rotated.signer(ISSUER).sign("alpha", record(T0 + 60))
    assert "acct-1" == cached.verify(token, now=T0 + 60).account_id


def test_retired_keys_leave_the_jwks_after_their_window(tmp_path: Path) -> None:
    """A retired key is published until retire_after, then dropped; prune removes its file."""
    ring = Keyring.init(tmp_path, now=T0)
    old = ring.active.kid
    ring = ring.rotate(now=T0, token_ttl=TTL, leeway=60)
    end = T0 + TTL + 60
    assert old in kids(ring.published_jwks(end - 1))
    assert old not in kids(ring.published_jwks(end))
    assert old in kids(ring.published_jwks())  # None: whatever the manifest still holds

    pruned = ring.prune(now=end)
    assert old not in [e.kid for e in pruned.entries]
    assert not (tmp_path / f"{old}.pem").exists()
    assert old not in kids(Keyring.load(tmp_path).published_jwks())
    assert pruned.generation == pruned.prune(now=end).generation  # nothing left to drop


def test_a_rotation_drops_retired_keys_past_their_window(tmp_path: Path) -> None:
    """Rotating long after the previous rotation also forgets keys whose tokens have expired."""
    ring = Keyring.init(tmp_path, now=T0)
    first = ring.active.kid
    ring = ring.rotate(now=T0, token_ttl=10, leeway=0)
    ring = ring.rotate(now=T0 + 11, token_ttl=10, leeway=0)
    assert first not in [e.kid for e in ring.entries]
    assert 3 == len(ring.entries)


def test_token_of_a_pruned_key_no_longer_verifies(tmp_path: Path) -> None:
    """After pruning, a (long-expired) token of the dropped key is an unknown kid."""
    ring = Keyring.init(tmp_path, now=T0)
    token = ring.signer(ISSUER).sign("alpha", record(T0, ttl=10))
    ring = ring.rotate(now=T0, token_ttl=10, leeway=0).prune(now=T0 + 10)
    with pytest.raises(TokenInvalid) as e:
        verifier(ring).verify(token, now=T0 + 5)
    assert "UNKNOWN_KEY" == e.value.reason


def test_signer_publishes_next_and_retired_keys(tmp_path: Path) -> None:
    """`signer()` signs with the active key and its JWKS is the keyring's."""
    ring = Keyring.init(tmp_path, now=T0).rotate(now=T0, token_ttl=TTL)
    signer = ring.signer(ISSUER, now=T0)
    assert ring.published_jwks(T0) == json.loads(signer.jwks_json())
    assert 3 == len(json.loads(signer.jwks_json())["keys"])


def test_first_rotation_of_an_empty_directory_initialises(tmp_path: Path) -> None:
    """`rotate_dir` on a directory without a keyring creates active + next."""
    ring = Keyring.rotate_dir(tmp_path / "new", now=T0, token_ttl=TTL)
    assert (1, ["active", "next"]) == (ring.generation, [e.state for e in ring.entries])


def test_init_refuses_an_existing_keyring(tmp_path: Path) -> None:
    """`init` never overwrites keys."""
    Keyring.init(tmp_path, now=T0)
    with pytest.raises(KeyringError, match="already has a keyring"):
        Keyring.init(tmp_path, now=T0)


def test_rotate_refuses_a_stale_copy(tmp_path: Path) -> None:
    """A Keyring object older than the disk cannot rotate (someone else rotated meanwhile)."""
    ring = Keyring.init(tmp_path, now=T0)
    Keyring.load(tmp_path).rotate(now=T0 + 1, token_ttl=TTL)
    with pytest.raises(KeyringError, match="changed on disk"):
        ring.rotate(now=T0 + 2, token_ttl=TTL)


def test_min_next_age_protects_slow_caches(tmp_path: Path) -> None:
    """A next key published too recently is not activated when min_next_age says so."""
    ring = Keyring.init(tmp_path, now=T0)
    with pytest.raises(KeyringError, match="published 60 s ago"):
        ring.rotate(now=T0 + 60, token_ttl=TTL, min_next_age=3600)
    assert 2 == ring.rotate(now=T0 + 3600, token_ttl=TTL, min_next_age=3600).generation


def test_keyring_without_next_only_gains_one(tmp_path: Path) -> None:
    """Rotating a hand-made keyring with no next key adds one and keeps the active key."""
    key = SigningKey.generate()
    (tmp_path / f"{key.kid}.pem").write_bytes(key.to_pem())
    manifest = {
        "version": 1,
        "generation": 7,
        "keys": [{"kid": key.kid, "state": "active", "created_at": T0}],
    }
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    ring = Keyring.load(tmp_path).rotate(now=T0 + 1, token_ttl=TTL)
    assert ring.next is not None
    assert (key.kid, 8, ["active", "next"]) == (
        ring.active.kid,
        ring.generation,
        [e.state for e in ring.entries],
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m, k: m["keys"][0].update(state="next"), "exactly one active"),
        (lambda m, k: m["keys"][1].update(state="active"), "exactly one active"),
        (lambda m, k: m["keys"][1].update(kid=m["keys"][0]["kid"]), "twice"),
        (lambda m, k: m.update(version=2), "unsupported manifest"),
        (lambda m, k: m["keys"][0].update(kid="../../etc/passwd"), "bad kid"),
        (lambda m, k: m["keys"][0].update(state="retired"), "needs retire_after"),
        (lambda m, k: (k / f"{m['keys'][0]['kid']}.pem").unlink(), "cannot load"),
        (
            lambda m, k: (k / f"{m['keys'][0]['kid']}.pem").write_bytes(
                SigningKey.generate().to_pem()
            ),
            "holds key",
        ),
    ],
    ids=[
        "no-active",
        "two-active",
        "duplicate",
        "version",
        "path-kid",
        "retired-no-window",
        "missing-pem",
        "wrong-pem",
    ],
)
def test_load_refuses_an_inconsistent_keyring(
    tmp_path: Path, mutate: Callable[[dict[str, Any], Path], object], message: str
) -> None:
    """A keyring whose manifest and files disagree is refused at load, with a clear message."""
    Keyring.init(tmp_path, now=T0)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    mutate(manifest, tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KeyringError, match=message):
        Keyring.load(tmp_path)


def test_load_of_a_missing_keyring_says_how_to_create_one(tmp_path: Path) -> None:
    """No manifest: the error names the init command."""
    with pytest.raises(KeyringError, match="xacthuc keys init"):
        Keyring.load(tmp_path)


def test_a_crash_while_writing_the_manifest_leaves_the_old_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the manifest rename fails, the old keyring loads unchanged and no temp file stays."""
    ring = Keyring.init(tmp_path, now=T0)
    before = (tmp_path / MANIFEST).read_bytes()
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if Path(dst).name == MANIFEST:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ring.rotate(now=T0 + 1, token_ttl=TTL)
    monkeypatch.setattr(os, "replace", real_replace)

    assert before == (tmp_path / MANIFEST).read_bytes()
    reloaded = Keyring.load(tmp_path)
    assert (1, ring.active.kid) == (reloaded.generation, reloaded.active.kid)
    assert [] == [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert 2 == reloaded.rotate(now=T0 + 2, token_ttl=TTL).generation  # and it still rotates


def test_concurrent_rotations_serialise(tmp_path: Path) -> None:
    """Eight rotations from eight threads at once give generation 9 and a consistent keyring."""
    Keyring.init(tmp_path, now=T0)
    errors: list[BaseException] = []

    def rotate(i: int) -> None:
        try:
            Keyring.rotate_dir(tmp_path, now=T0 + 1, token_ttl=TTL)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ring = Keyring.load(tmp_path)
    states = [e.state for e in ring.entries]
    assert ([], 9, 1, 1, 8) == (
        errors,
        ring.generation,
        states.count("active"),
        states.count("next"),
        states.count("retired"),
    )
    assert {f"{e.kid}.pem" for e in ring.entries} == {p.name for p in tmp_path.glob("*.pem")}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="xacthuc")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys").add_subparsers(dest="keys_command", required=True)
    cli_keys.register(keys)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_init_and_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`keys init` then `keys rotate --token-ttl` move the keyring through two generations."""
    d = str(tmp_path / "ring")
    assert 0 == cli("keys", "init", "--dir", d)
    first = Keyring.load(d)
    assert 0 == cli("keys", "rotate", "--dir", d, "--token-ttl", "600", "--min-next-age", "0")
    second = Keyring.load(d)
    assert first.next is not None
    assert (2, first.next.kid) == (second.generation, second.active.kid)
    retired = next(e for e in second.entries if e.state == "retired")
    assert retired.retire_after is not None
    assert retired.retired_at is not None
    assert 600 + DEFAULT_LEEWAY == pytest.approx(retired.retire_after - retired.retired_at)
    assert "rotated keyring" in capsys.readouterr().err


def test_cli_init_twice_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `keys init` exits 2 and says why."""
    assert 0 == cli("keys", "init", "--dir", str(tmp_path))
    assert 2 == cli("keys", "init", "--dir", str(tmp_path))
    assert "already has a keyring" in capsys.readouterr().err


def test_cli_show_prints_the_jwks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`keys show` prints the published JWKS as JSON."""
    cli("keys", "init", "--dir", str(tmp_path))
    capsys.readouterr()
    assert 0 == cli("keys", "show", "--dir", str(tmp_path))
    assert 2 == len(json.loads(capsys.readouterr().out)["keys"])


def test_cli_rotate_refuses_a_young_next_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default `keys rotate` exits 2 while the next key is under an hour old."""
    cli("keys", "init", "--dir", str(tmp_path))
    assert 2 == cli("keys", "rotate", "--dir", str(tmp_path))
    assert "verifiers may not have it yet" in capsys.readouterr().err
    assert 1 == Keyring.load(tmp_path).generation


def test_cli_rotate_without_a_keyring_fails_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys rotate` on a directory with no keyring (a mistyped path) exits 2 pointing at
    `keys init`, and creates neither the directory nor keys: servers read the real one, so a
    silent new keyring would look like a rotation that never reached them."""
    missing = tmp_path / "typo"
    assert 2 == cli("keys", "rotate", "--dir", str(missing), "--min-next-age", "0")
    assert "keys init" in capsys.readouterr().err
    assert not missing.exists()
