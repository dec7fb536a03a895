"""C2SP tlog-checkpoint bodies and Ed25519 signed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from xacthuc.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    format_vkey,
    key_id,
    open_note,
    parse_vkey,
    sign_note,
)
from xacthuc.domain.merkle import EMPTY_ROOT, leaf_hash, root_from_leaf_hashes

ORIGIN = "xacthuc.example/audit"
ROOT = root_from_leaf_hashes([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])


def _seeded_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _spec_key_id(name: str, raw_public_key: bytes) -> bytes:
    """key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + raw_public_key).digest()[:4]


def _signed_checkpoint() -> tuple[str, Ed25519PrivateKey]:
    key = _seeded_key(7)
    return sign_note(Checkpoint(ORIGIN, 3, ROOT).body(), ORIGIN, key), key


def test_checkpoint_body_format() -> None:
    """A checkpoint body is origin, decimal size and base64 root, each ending in newline."""
    expected = f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}\n"
    assert expected == Checkpoint(ORIGIN, 3, ROOT).body()


def test_checkpoint_parse_round_trip() -> None:
    """Parsing a body gives back the same checkpoint, extension lines included."""
    for checkpoint in (
        Checkpoint(ORIGIN, 3, ROOT),
        Checkpoint(ORIGIN, 0, EMPTY_ROOT),
        Checkpoint(ORIGIN, 2**63, ROOT, ("ext one", "ext two")),
    ):
        assert checkpoint == Checkpoint.parse(checkpoint.body())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}", id="no-final-newline"),
        pytest.param(f"\n3\n{base64.b64encode(ROOT).decode()}\n", id="empty-origin"),
        pytest.param(f"{ORIGIN}\n03\n{base64.b64encode(ROOT).decode()}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n-3\n{base64.b64encode(ROOT).decode()}\n", id="negative"),
        pytest.param(f"{ORIGIN}\n+3\n{base64.b64encode(ROOT).decode()}\n", id="plus-sign"),
        pytest.param(f"{ORIGIN}\n 3\n{base64.b64encode(ROOT).decode()}\n", id="space-in-size"),
        pytest.param(f"{ORIGIN}\n\u0663\n{base64.b64encode(ROOT).decode()}\n", id="non-ascii"),
        pytest.param(f"{ORIGIN}\n\n{base64.b64encode(ROOT).decode()}\n", id="empty-size"),
        pytest.param(f"{ORIGIN}\n3\n{base64.b64encode(ROOT[:31]).decode()}\n", id="short-root"),
        pytest.param(f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()[:-1]}\n", id="bad-base64"),
        pytest.param(f"{ORIGIN}\n3\n", id="missing-root"),
        pytest.param(f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}\n\n", id="empty-ext"),
    ],
)
def test_checkpoint_parse_rejects_malformed(body: str) -> None:
    """Malformed checkpoint bodies are rejected with CheckpointError."""
    with pytest.raises(CheckpointError):
        Checkpoint.parse(body)


def test_checkpoint_constructor_validates() -> None:
    """The dataclass refuses a newline in the origin, a negative size and a short root."""
    with pytest.raises(CheckpointError):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT[:16])


def test_sign_open_round_trip() -> None:
    """A signed checkpoint opens with the signer's name and key and yields the body."""
    note, key = _signed_checkpoint()
    body = Checkpoint(ORIGIN, 3, ROOT).body()
    assert body == open_note(note, ORIGIN, key.public_key())
    assert Checkpoint(ORIGIN, 3, ROOT) == Checkpoint.parse(
        open_note(note, ORIGIN, key.public_key())
    )


def test_signed_note_layout() -> None:
    """The note is body, blank line, em dash line with base64(key id || 64-byte signature)."""
    note, key = _signed_checkpoint()
    body = Checkpoint(ORIGIN, 3, ROOT).body()
    prefix = f"{body}\n\u2014 {ORIGIN} "
    assert note.startswith(prefix)
    assert note.endswith("\n")
    blob = base64.b64decode(note[len(prefix) : -1])
    assert 68 == len(blob)
    assert _spec_key_id(ORIGIN, _raw(key)) == blob[:4]
    assert None is key.public_key().verify(blob[4:], body.encode())


def test_changed_byte_in_body_fails() -> None:
    """Changing any single character of the body makes the note fail to open."""
    note, key = _signed_checkpoint()
    body_len = len(Checkpoint(ORIGIN, 3, ROOT).body())
    for i in range(body_len - 1):
        replacement = "x" if note[i] != "x" else "y"
        if note[i] == "\n":
            continue
        tampered = note[:i] + replacement + note[i + 1 :]
        with pytest.raises(NoteError):
            open_note(tampered, ORIGIN, key.public_key())


def test_changed_signature_fails() -> None:
    """A corrupted signature by the expected key rejects the whole note."""
    note, key = _signed_checkpoint()
    head, _, b64 = note.rstrip("\n").rpartition(" ")
    blob = bytearray(base64.b64decode(b64))
    blob[10] ^= 0x01
    tampered = f"{head} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(tampered, ORIGIN, key.public_key())


def test_wrong_key_fails() -> None:
    """A note signed by one key does not open with another key under the same name."""
    note, _ = _signed_checkpoint()
    with pytest.raises(NoteError, match="no signature"):
        open_note(note, ORIGIN, _seeded_key(8).public_key())


def test_signature_by_other_key_name_is_ignored() -> None:
    """A valid signature under another key name does not count for the expected name."""
    key = _seeded_key(7)
    note = sign_note(Checkpoint(ORIGIN, 3, ROOT).body(), "witness.example", key)
    with pytest.raises(NoteError, match="no signature"):
        open_note(note, ORIGIN, key.public_key())


def test_unknown_signatures_do_not_block_a_valid_one() -> None:
    """Extra signature lines by unknown keys are skipped when the known key has signed."""
    body = Checkpoint(ORIGIN, 3, ROOT).body()
    log_key, witness_key = _seeded_key(7), _seeded_key(9)
    witness_line = sign_note(body, "witness.example", witness_key).split("\n\n", 1)[1]
    note = sign_note(body, ORIGIN, log_key) + witness_line
    assert body == open_note(note, ORIGIN, log_key.public_key())
    assert body == open_note(note, "witness.example", witness_key.public_key())


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda n: n.replace("\n\n", "\n"), id="no-blank-line"),
        pytest.param(lambda n: n.rstrip("\n"), id="no-final-newline"),
        pytest.param(lambda n: n.replace("\u2014 ", "- "), id="hyphen-not-em-dash"),
        pytest.param(lambda n: n.replace("\u2014 ", "\u2014"), id="no-space-after-dash"),
        pytest.param(lambda n: n[:-2] + "!\n", id="bad-base64"),
        pytest.param(lambda n: n.replace("audit ", "audit  "), id="double-space"),
        pytest.param(lambda n: n.replace("3\n", "3\r\n", 1), id="control-char"),
        pytest.param(lambda n: n + "\n", id="trailing-blank-line"),
    ],
)
def test_malformed_notes_rejected(mangle: object) -> None:
    """Malformed notes and signature lines are rejected with NoteError."""
    note, key = _signed_checkpoint()
    assert callable(mangle)
    with pytest.raises(NoteError):
        open_note(mangle(note), ORIGIN, key.public_key())


def test_sign_note_rejects_bad_input() -> None:
    """Signing needs a body ending in newline and a valid key name."""
    key = _seeded_key(7)
    with pytest.raises(NoteError):
        sign_note("no newline", ORIGIN, key)
    for name in ("", "has space", "has+plus"):
        with pytest.raises(NoteError):
            sign_note("text\n", name, key)


def test_vkey_round_trip() -> None:
    """format_vkey and parse_vkey round-trip the name and public key."""
    key = _seeded_key(7)
    vkey = format_vkey(ORIGIN, key.public_key())
    name, public_key = parse_vkey(vkey)
    assert ORIGIN == name
    assert _raw(key) == public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    encoded_key = base64.b64encode(bytes([1]) + _raw(key)).decode()
    expected = f"{ORIGIN}+{_spec_key_id(ORIGIN, _raw(key)).hex()}+{encoded_key}"
    assert expected == vkey


def test_parse_vkey_rejects_mismatches() -> None:
    """A vkey with a wrong key id, algorithm byte or shape is rejected."""
    key = _seeded_key(7)
    name, hex_id, key_b64 = format_vkey(ORIGIN, key.public_key()).split("+")
    wrong_id = f"{int(hex_id, 16) ^ 1:08x}"
    wrong_alg = base64.b64encode(b"\x02" + _raw(key)).decode()
    for bad in (
        f"{name}+{wrong_id}+{key_b64}",
        f"{name}+{hex_id.upper()}+{key_b64}",
        f"{name}+{hex_id}+{wrong_alg}",
        f"{name}+{hex_id}",
        f"other.example+{hex_id}+{key_b64}",
    ):
        with pytest.raises(NoteError):
            parse_vkey(bad)


def test_key_id_matches_spec_definition() -> None:
    """key_id equals SHA-256(name || 0x0A || 0x01 || public key)[:4] computed independently."""
    for seed, name in ((1, "a"), (7, ORIGIN), (42, "sum.golang.org")):
        key = _seeded_key(seed)
        assert _spec_key_id(name, _raw(key)) == key_id(name, key.public_key())
