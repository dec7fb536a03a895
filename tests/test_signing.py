"""SigningKeys: the signer follows the keyring on disk without a restart (issue 5, rotation)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from xacthuc.adapters.keyring import MANIFEST, Keyring, KeyringError
from xacthuc.domain.b64 import b64url_decode
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.tokens import SigningKey, TokenSigner
from xacthuc.server import signing
from xacthuc.server.config import ConfigError, Settings
from xacthuc.server.signing import RECHECK_SECONDS, RETRY_SECONDS, SigningKeys

T0 = 1_800_000_000.0
ISSUER = "https://xacthuc.test"
TTL = 86_400


class Clocks:
    """The service clock (which keys are published) and the monotonic one (re-check pacing)."""

    def __init__(self) -> None:
        self.wall = FixedClock(T0)
        self.mono = FixedClock(0.0)


def kids(keys: SigningKeys, clocks: Clocks) -> set[str]:
    return {k["kid"] for k in json.loads(keys.current().jwks_json())["keys"]}


def make(tmp_path: Path, clocks: Clocks) -> SigningKeys:
    return SigningKeys(
        issuer=ISSUER,
        clock=clocks.wall,
        keys_dir=tmp_path,
        monotonic=clocks.mono,
        status_list=lambda platform, idx: {"idx": idx, "uri": f"https://x/{platform}"},
    )


def test_a_rotation_on_disk_is_picked_up_at_the_next_signature(tmp_path: Path) -> None:
    """No restart, no wait: the next call after `rotate` signs with the key that was next."""
    clocks = Clocks()
    ring = Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    assert ring.next is not None
    assert (ring.active.kid, 1, 0) == (keys.current().kid, keys.generation, keys.reloads)
    assert {ring.active.kid, ring.next.kid} == kids(keys, clocks)

    rotated = Keyring.rotate_dir(tmp_path, now=T0 + 10, token_ttl=TTL)

    assert (ring.next.kid, 2, 1) == (keys.current().kid, keys.generation, keys.reloads)
    assert {e.kid for e in rotated.entries} == kids(keys, clocks)


def test_the_status_claim_callable_survives_a_reload(tmp_path: Path) -> None:
    """Tokens signed after a rotation still carry the `status` reference."""
    clocks = Clocks()
    Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    Keyring.rotate_dir(tmp_path, now=T0 + 10, token_ttl=TTL)
    record = AttestationRecord("a", "phone_otp", "t", T0, T0, T0 + TTL, status_idx=7)
    claims = keys.current().claims("alpha", record)
    assert {"status_list": {"idx": 7, "uri": "https://x/alpha"}} == claims["status"]


def test_an_unchanged_keyring_is_not_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is a stat; the keyring is read only when the manifest changed, or its
    generation is re-read after RECHECK_SECONDS."""
    clocks = Clocks()
    Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    loads: list[Path] = []
    real = Keyring.load

    def counted(cls: type[Keyring], directory: Path) -> Keyring:
        loads.append(directory)
        return real(directory)

    monkeypatch.setattr(Keyring, "load", classmethod(counted))
    for _ in range(100):
        keys.current()
    clocks.mono.advance(RECHECK_SECONDS)
    keys.current()
    assert [] == loads


def test_a_rotation_a_stat_cannot_see_is_caught_by_the_recheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should (inode, mtime, ctime, size) repeat across a rotation, the generation re-read
    after RECHECK_SECONDS still finds it."""
    clocks = Clocks()
    Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    monkeypatch.setattr(keys, "_stat", lambda: keys._seen)  # the stat never changes
    ring = Keyring.rotate_dir(tmp_path, now=T0 + 10, token_ttl=TTL)
    assert 1 == keys.generation
    keys.current()
    assert 1 == keys.generation
    clocks.mono.advance(RECHECK_SECONDS)
    assert ring.active.kid == keys.current().kid
    assert 2 == keys.generation


def test_a_broken_keyring_keeps_the_keys_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest that does not load is logged once; signing goes on with the keys held; the
    load is retried after RETRY_SECONDS, and at once when the file changes again."""
    clocks = Clocks()
    ring = Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    good = (tmp_path / MANIFEST).read_bytes()
    (tmp_path / MANIFEST).write_text('{"version": 1, "generation": 9, "keys": "nope"}')

    def failures() -> int:
        return len([r for r in caplog.records if "did not load" in r.message])

    with caplog.at_level(logging.ERROR, logger="xacthuc.server.signing"):
        for _ in range(5):
            assert ring.active.kid == keys.current().kid
        assert (1, 1) == (failures(), keys.generation)
        clocks.mono.advance(RETRY_SECONDS)
        keys.current()
        assert 2 == failures()

        (tmp_path / MANIFEST).write_bytes(good)  # repaired
        rotated = Keyring.rotate_dir(tmp_path, now=T0 + 10, token_ttl=TTL)
        assert (rotated.active.kid, 2) == (keys.current().kid, keys.generation)
        assert 2 == failures()


def test_a_missing_keyring_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="keys init"):
        make(tmp_path / "none", Clocks())


def test_a_retired_key_leaves_the_jwks_at_the_end_of_its_window(tmp_path: Path) -> None:
    """Nothing changes on disk: the service clock passing retire_after drops the key."""
    clocks = Clocks()
    ring = Keyring.init(tmp_path, now=T0)
    Keyring.rotate_dir(tmp_path, now=T0, token_ttl=TTL, leeway=300)
    keys = make(tmp_path, clocks)
    assert ring.active.kid in kids(keys, clocks)
    clocks.wall.set(T0 + TTL + 299)
    assert ring.active.kid in kids(keys, clocks)
    clocks.wall.set(T0 + TTL + 300)
    assert ring.active.kid not in kids(keys, clocks)
    assert 2 == len(kids(keys, clocks))


def test_settings_pick_the_keyring_over_the_key_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """XACTHUC_SIGNING_KEYS_DIR wins over XACTHUC_SIGNING_KEY_FILE (with a warning); the
    file alone is a fixed key; neither is a generated key in dev mode."""
    ring = Keyring.init(tmp_path / "ring", now=T0)
    pem = tmp_path / "key.pem"
    single = SigningKey.generate()
    pem.write_bytes(single.to_pem())
    both = Settings.load(signing_keys_dir=tmp_path / "ring", signing_key_file=pem)
    with caplog.at_level(logging.WARNING, logger="xacthuc.server.signing"):
        keys = SigningKeys.from_settings(both, FixedClock(T0))
    assert (ring.active.kid, 1) == (keys.current().kid, keys.generation)
    assert any("is not used" in r.message for r in caplog.records)
    file_only = SigningKeys.from_settings(Settings.load(signing_key_file=pem), FixedClock(T0))
    assert (single.kid, 0, None) == (
        file_only.current().kid,
        file_only.generation,
        file_only.keyring,
    )
    generated = SigningKeys.from_settings(Settings.load(), FixedClock(T0))
    assert generated.current().kid not in {single.kid, ring.active.kid}


def test_production_accepts_a_keyring_or_a_key_file_and_refuses_neither(tmp_path: Path) -> None:
    """The keyring alone satisfies production's signing-key requirement."""

    def refused(**kw: object) -> bool:
        with pytest.raises(ConfigError) as e:  # other dev-only parts are refused too
            Settings.load(mode="production", **kw)
        return any("XACTHUC_SIGNING_KEYS_DIR nor" in p for p in e.value.problems)

    assert refused()
    assert not refused(signing_keys_dir=tmp_path)
    assert not refused(signing_key_file=tmp_path / "k.pem")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"wellknown_listen": "8080"}, "XACTHUC_WELLKNOWN_LISTEN"),
        ({"public_base_url": "xacthuc.example"}, "XACTHUC_PUBLIC_BASE_URL"),
        ({"public_base_url": "https://x.example/?a=1"}, "XACTHUC_PUBLIC_BASE_URL"),
        ({"jwks_ttl_seconds": 0}, "XACTHUC_JWKS_TTL_SECONDS"),
        ({"status_list_ttl_seconds": 0}, "XACTHUC_STATUS_LIST_TTL_SECONDS"),
    ],
)
def test_wellknown_settings_are_checked(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.load(**kw)
    assert any(p.startswith(field) for p in e.value.problems), e.value.problems


def test_public_base_url_defaults() -> None:
    """Explicit > the listener's own address > the issuer; a trailing slash is dropped."""
    from xacthuc.server.app import public_base_url

    assert "https://id.example" == public_base_url(
        Settings.load(public_base_url="https://id.example/", wellknown_listen="0.0.0.0:8080")
    )
    assert "http://127.0.0.1:8080" == public_base_url(
        Settings.load(wellknown_listen="127.0.0.1:8080")
    )
    assert "http://127.0.0.1:41234" == public_base_url(
        Settings.load(wellknown_listen="127.0.0.1:0"), 41234
    )
    assert "https://issuer.example" == public_base_url(
        Settings.load(issuer="https://issuer.example/")
    )


class CountingSigns:
    """Counts the signatures `TokenSigner.sign` makes (of any signer instance)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = TokenSigner.sign

        def sign(signer: TokenSigner, platform: str, record: AttestationRecord) -> str:
            self.count += 1
            return real(signer, platform, record)

        monkeypatch.setattr(TokenSigner, "sign", sign)


def record(token_id: str = "at_1", *, commercial_livestream: bool = False) -> AttestationRecord:
    return AttestationRecord(
        "acc-1",
        "phone_otp",
        token_id,
        T0,
        T0,
        T0 + TTL,
        commercial_livestream=commercial_livestream,
    )


def header(token: str) -> dict[str, str]:
    found: dict[str, str] = json.loads(b64url_decode(token.split(".")[0]))
    return found


def test_a_record_signed_again_by_the_same_key_is_the_same_token_and_no_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetAttestation's promise: the same bytes on every call until a rotation, kept so that a
    repeat costs no signature; per platform and per record (any field)."""
    signs = CountingSigns(monkeypatch)
    clocks = Clocks()
    Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    first = keys.sign("alpha", record())
    assert [first] * 3 == [keys.sign("alpha", record()) for _ in range(3)]
    assert 1 == signs.count
    others = {
        keys.sign("beta", record()),
        keys.sign("alpha", record("at_2")),
        keys.sign("alpha", record(commercial_livestream=True)),
    }
    assert (4, 3) == (signs.count, len(others - {first}))


def test_a_rotation_signs_the_same_claims_with_the_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signs = CountingSigns(monkeypatch)
    clocks = Clocks()
    ring = Keyring.init(tmp_path, now=T0)
    keys = make(tmp_path, clocks)
    before = keys.sign("alpha", record())
    Keyring.rotate_dir(tmp_path, now=T0 + 10, token_ttl=TTL)
    after = keys.sign("alpha", record())
    assert ring.next is not None
    assert (ring.active.kid, ring.next.kid) == (header(before)["kid"], header(after)["kid"])
    assert before.split(".")[1] == after.split(".")[1]  # the same claims
    assert (2, after) == (signs.count, keys.sign("alpha", record()))


def test_the_kept_tokens_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Least recently used out: the oldest record is signed again, a recent one is not."""
    monkeypatch.setattr(signing, "SIGNED_TOKENS", 3)
    signs = CountingSigns(monkeypatch)
    keys = SigningKeys(issuer=ISSUER, clock=FixedClock(T0), key=SigningKey.generate())
    for n in range(4):
        keys.sign("alpha", record(f"at_{n}"))
    keys.sign("alpha", record("at_3"))
    assert 4 == signs.count
    keys.sign("alpha", record("at_0"))  # evicted by at_3
    assert 5 == signs.count
