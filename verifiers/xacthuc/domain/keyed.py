"""Keyed hashes: pseudonyms for personal data (P9) and the one-time-code MAC (P1).

A pseudonym is HMAC-SHA256 under the pseudonym key, domain-separated by kind and cut to
128 bits: stable, so counters and links can be keyed on it, and useless without the key.
The same key (every process has it) derives the link id of a LinkGuardian call made with an
idempotency key, and the digest of that call's fields its retries are compared with: keyed,
so the digest of a request holding two dates of birth cannot be searched for them.
OTP codes are kept only as HMAC-SHA256(key, challenge id || code) so a leaked store gives
neither codes nor a table to look them up in; every configured key is tried on check so
keys rotate without dropping live challenges.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from xacthuc.domain.b64 import b64url_encode


def _hmac(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).digest()


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("pseudonym key must be at least 32 bytes")
        self._key = key

    def _make(self, kind: str, value: str) -> str:
        return f"{kind}_{_hmac(self._key, kind, value)[:16].hex()}"

    def phone(self, e164: str) -> str:
        return self._make("ph", e164)

    def personal_id(self, number: str, id_type: str = "citizen") -> str:
        """A citizen's number keeps the pseudonym it always had; a foreigner's identification
        number (R9) is keyed under its own domain, so equal digits of the two kinds never share
        a pseudonym (nor counters, locks or account slots). Both start `id_`."""
        if id_type == "citizen":
            return self._make("id", number)
        return f"id_{_hmac(self._key, 'id', id_type, number)[:16].hex()}"

    def client_ip(self, ip: str) -> str:
        """Pseudonym of the send-budget bucket of an address: the address for IPv4, its /64 for IPv6."""
        return self.client_address(ipaddress.ip_address(ip))

    def client_address(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        """`client_ip` of an address already parsed (the flows parse it once, to check it)."""
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            else:
                return self._make("ip", str(ipaddress.ip_network(f"{addr}/64", strict=False)))
        bucket = str(addr)
        return self._make("ip", bucket)

    def link_call(self, platform: str, idempotency_key: str) -> str:
        """The link id of a LinkGuardian call with `idempotency_key` on `platform`: `gl_` and
        22 base64url characters (128 bits), as a random one, the same in every process."""
        return "gl_" + b64url_encode(_hmac(self._key, "gl", platform, idempotency_key)[:16])

    def link_request(self, *fields: str) -> str:
        """The digest of a LinkGuardian call's fields (dates of birth among them): what a retry
        under the same idempotency key must match. Keyed, so it reveals none of them."""
        return "lr_" + _hmac(self._key, "lr", *fields)[:16].hex()


class OtpMac:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) < 32 for k in keys):
            raise ValueError("at least one OTP HMAC key of at least 32 bytes is required")
        self._keys = tuple(keys)

    def mac(self, challenge_id: str, code: str) -> str:
        """The MAC to store, under the current (first) key."""
        return _hmac(self._keys[0], challenge_id, code).hex()

    def candidates(self, challenge_id: str, code: str) -> list[str]:
        """The MACs of a submitted code under every key; the store compares each in constant time."""
        return [_hmac(k, challenge_id, code).hex() for k in self._keys]
