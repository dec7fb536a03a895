"""C2SP tlog-checkpoint bodies and C2SP signed notes with Ed25519 signatures.

A checkpoint body (c2sp.org/tlog-checkpoint) is three or more non-empty lines::

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the 32-byte RFC 6962 root hash>
    [extension lines]

A signed note (c2sp.org/signed-note) is the body, a blank line, then signature lines
``— <key name> <base64(4-byte key id || signature)>``. For Ed25519 (signature type 0x01)
the key id is the first four bytes of SHA-256(key name || 0x0A || 0x01 || public key) and
the signature is over the body bytes. A verifier key is written as
``<name>+<8 hex digits key id>+<base64(0x01 || public key)>``.

`open_note` ignores signatures by keys it does not know (another name or another key id),
rejects the whole note if a signature by the known key fails, and requires at least one
valid signature by the known key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from xacthuc.domain.b64 import b64_decode_canonical, b64_encode

__all__ = [
    "ED25519_ALG",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "NoteError",
    "format_vkey",
    "key_id",
    "open_note",
    "parse_vkey",
    "sign_note",
]

ED25519_ALG = 0x01
MAX_SIGNATURES = 100
ROOT_HASH_SIZE = 32
_SIG_PREFIX = "\u2014 "  # em dash, space
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64


class NoteError(ValueError):
    """A signed note is malformed or carries no valid signature by the expected key."""


class CheckpointError(ValueError):
    """A checkpoint body is malformed."""


def _is_valid_name(name: str) -> bool:
    """A key name is non-empty with no Unicode spaces, no '+' and no control characters."""
    return bool(name) and "+" not in name and not any(ch.isspace() or ord(ch) < 0x20 for ch in name)


def _check_text(text: str, what: str) -> None:
    """Note text: valid (encodable) UTF-8, no ASCII controls other than newline."""
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise NoteError(f"{what} contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8") from exc


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: log origin, tree size and RFC 6962 root hash."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("origin must be non-empty and contain no newline")
        if any(ord(ch) < 0x20 for ch in self.origin):
            raise CheckpointError("origin contains a control character")
        if isinstance(self.tree_size, bool) or not isinstance(self.tree_size, int):
            raise CheckpointError("tree size must be an integer")
        if self.tree_size < 0:
            raise CheckpointError("tree size must not be negative")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            raise CheckpointError(f"root hash must be {ROOT_HASH_SIZE} bytes")
        for line in self.extensions:
            if not line or any(ord(ch) < 0x20 for ch in line):
                raise CheckpointError("extension lines must be non-empty single lines")

    def body(self) -> str:
        """Return the note text: origin, size, base64 root and extensions, each + newline."""
        lines = [self.origin, str(self.tree_size), b64_encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse and strictly validate a checkpoint body (the text of an opened note)."""
        if not body.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint body needs origin, size and root lines")
        origin, size_text, root_text, *extensions = lines
        if not size_text.isascii() or not size_text.isdigit():
            raise CheckpointError("tree size must be ASCII decimal digits")
        if size_text != "0" and size_text.startswith("0"):
            raise CheckpointError("tree size must not have leading zeros")
        try:
            root = b64_decode_canonical(root_text)
        except ValueError as exc:
            raise CheckpointError("root hash is not valid base64") from exc
        return cls(origin, int(size_text), root, tuple(extensions))


# ------------------------------------------------------------------------------ keys


def _public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Return the 4-byte C2SP key id SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    if not _is_valid_name(name):
        raise NoteError(f"invalid key name {name!r}")
    material = name.encode("utf-8") + b"\n" + bytes([ED25519_ALG]) + _public_key_bytes(public_key)
    return hashlib.sha256(material).digest()[:4]


def format_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """Return the verifier key string ``<name>+<hex key id>+<base64(0x01 || key)>``."""
    encoded = b64_encode(bytes([ED25519_ALG]) + _public_key_bytes(public_key))
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def parse_vkey(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key string into (name, public key), checking its key id."""
    parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3:
        raise NoteError("verifier key must be name+keyid+key")
    name, hex_id, key_text = parts
    if not _is_valid_name(name):
        raise NoteError(f"invalid key name {name!r}")
    if len(hex_id) != 8 or any(ch not in "0123456789abcdef" for ch in hex_id):
        raise NoteError("key id must be 8 lowercase hex digits")
    try:
        raw = b64_decode_canonical(key_text)
    except ValueError as exc:
        raise NoteError("verifier key is not valid base64") from exc
    if len(raw) != 1 + _ED25519_KEY_SIZE or raw[0] != ED25519_ALG:
        raise NoteError("verifier key is not an Ed25519 key")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_id(name, public_key).hex() != hex_id:
        raise NoteError("verifier key id does not match name and key")
    return name, public_key


# ----------------------------------------------------------------------------- notes


def sign_note(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Return the signed note: body, blank line, one Ed25519 signature line by `name`."""
    if not body or not body.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    _check_text(body, "note text")
    if not _is_valid_name(name):
        raise NoteError(f"invalid key name {name!r}")
    signature = private_key.sign(body.encode("utf-8"))
    blob = key_id(name, private_key.public_key()) + signature
    return f"{body}\n{_SIG_PREFIX}{name} {b64_encode(blob)}\n"


def open_note(note: str, name: str, public_key: Ed25519PublicKey) -> str:
    """Verify `note` against the key (`name`, `public_key`) and return its text (the body).

    Signatures by other keys are ignored; a signature by this key that fails to verify, a
    malformed note, or the absence of any valid signature by this key raises `NoteError`.
    """
    _check_text(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise NoteError("note signatures must be non-empty and end with a newline")

    want_id = key_id(name, public_key)
    message = text.encode("utf-8")
    verified = False
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("note has too many signatures")
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed signature line")
        sig_name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _is_valid_name(sig_name) or not b64:
            raise NoteError("malformed signature line")
        try:
            blob = b64_decode_canonical(b64)
        except ValueError as exc:
            raise NoteError("signature is not valid base64") from exc
        if len(blob) < 5:
            raise NoteError("signature is too short")
        if sig_name != name or blob[:4] != want_id:
            continue  # another key's signature: ignored, as the spec requires
        if len(blob) != 4 + _ED25519_SIG_SIZE:
            raise NoteError("Ed25519 signature has the wrong length")
        try:
            public_key.verify(blob[4:], message)
        except InvalidSignature as exc:
            raise NoteError(f"invalid signature by {name}") from exc
        verified = True
    if not verified:
        raise NoteError(f"note has no signature by {name}")
    return text
