"""The two base64 forms the project's formats use, each written once.

* base64url without padding (RFC 4648 section 5, as RFC 7515 section 2 uses it): the parts
  of a JWS, JWK members, a status list's `lst`, page tokens.
* standard base64 with padding, canonical only (RFC 4648 section 4): signed notes and
  checkpoints (C2SP), where one value must have exactly one text.

Decoding is strict: text outside the alphabet, padding where none belongs, a length no
encoder produces, or unused bits set (so each value has one text) raises `ValueError` (never
decoded "leniently" by skipping characters).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64_decode_canonical", "b64_encode", "b64url_decode", "b64url_encode"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """base64url, without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """base64url without padding, strictly; `ValueError` for anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url text")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # binascii.Error: ValueError
    if b64url_encode(raw) != text:  # unused bits set: one value, one text
        raise ValueError("non-canonical base64url text")
    return raw


def b64_encode(data: bytes) -> str:
    """Standard base64, padded."""
    return base64.b64encode(data).decode("ascii")


def b64_decode_canonical(text: str) -> bytes:
    """Standard padded base64, rejecting anything that does not re-encode identically."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64") from exc
    if b64_encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw
