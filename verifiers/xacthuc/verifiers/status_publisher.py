"""Each platform's status list, signed and served (IETF Token Status List; issue 5).

One list per platform, list number 0, at `<public base URL>/statuslists/<platform>/0`: every
attestation token of the platform names it in `"status": {"status_list": {"idx", "uri"}}`,
with the index the store gave the token (`AttestationRecord.status_idx`). The URI comes from
`StatusListNames` (the domain's naming, shared with the token signer), not from here.

The list has 2 bits per token (`bits` 2), with the draft's status values: 0 VALID, 1 INVALID
(revoked), 2 SUSPENDED (the account is locked now, rule R7). It is built from the store's
revocation bitmap (`Store.status_bits`, 1 = revoked) put in the draft's order: the store keeps
Redis SETBIT order (index 0 is the MOST significant bit of byte 0), the draft packs from the
LEAST significant bit, so the bits of every byte are reversed, then every entry widened to 2
bits. The indexes of every token of an account whose lock holds at build time
(`Store.locked_status_indexes`) are then set to SUSPENDED unless revoked (revocation is final
and wins, as in the decision table). A temporary lock's end is thus seen by the first list
built after it, and by an offline verifier within the list's `ttl`, like a revocation. The
store's bitmap covers every index it has handed out (opening a block of indices writes the
block's zero bits), so a token's index is always inside the list.

Indices reveal no order (issue 13; `xacthuc.domain.status_index`). The store hands out
indices in blocks of 131,072, each block a keyed pseudorandom permutation of the platform's
token counter, so neither a token's index nor the positions of the non-valid entries tell
when a token was issued within its block, and no index is ever reused.

Size, for herd privacy. The list is padded with zeros to a whole number of chunks of 131,072
tokens (`CHUNK_BYTES` of the 1-bit bitmap, 32 KiB of the 2-bit list; one index block), at
least one chunk; the store's bitmap is itself whole blocks long. What the length reveals: how
many blocks the platform has opened, that is its issued tokens to within 131,072, and nothing
finer; every token of a platform hides among at least 131,072 entries (the herd privacy the
draft's privacy considerations discuss). The number of non-valid entries is the number of
revoked or suspended tokens of the platform, and comparing two fetches shows how many changed
between them; only decoy entries could blur that (not done). Zeros cost next to nothing once
compressed.

Signing. The active attestation key signs the list (`typ` statuslist+jwt, EdDSA), `iss` the
service's issuer, `sub` the list's URI, `ttl` XACTHUC_STATUS_LIST_TTL_SECONDS, `iat` the start
of the current ttl-long window of the clock (`issued_at`: a multiple of the ttl since the
epoch) and `exp` two ttls after it. So the same list signed by the same key within one
window is the same bytes, whichever build or process signs it (Ed25519 is deterministic):
its strong ETag (the hash of the bytes) stays the same and a conditional GET is a 304 until
the list changes, the key rotates or the window turns. An ETag over the bits alone would not
do: a 304 would keep a client on its older token, whose `exp` may pass while its HTTP cache
still calls it fresh. Every copy served has more than one ttl of validity left (`exp` minus
now is between one and two ttls), so a copy cached for `max-age` = ttl never outlives its
`exp`. A signed list is kept in process for `cache_seconds` (5 s by default, never more
than the ttl) so a burst of fetches costs two Redis reads and one signature; a revocation,
lock or unlock made through this process drops the copy at once. Concurrent misses of a platform share one build.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xacthuc.domain.clock import Clock
from xacthuc.domain.status_index import INDEX_BLOCK
from xacthuc.domain.statuslist import LIST_NO, SUSPENDED, VALID, StatusList, StatusListNames
from xacthuc.domain.tokens import SigningKey
from xacthuc.ports.store import Store

CHUNK_BYTES = INDEX_BLOCK // 8  # 16 KiB of the 1-bit bitmap: lists grow by one index block
CACHE_SECONDS = 5.0

# Bit reversal of every byte value: Redis SETBIT order -> the draft's order.
_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


# Widening 1-bit entries to 2 bits: byte b's entries 0-3 go to the low output byte, 4-7 to the
# high one, each entry i of a half at bit 2i (a set bit becomes the value 1, INVALID).
_LOW = bytes(sum(1 << 2 * i for i in range(4) if b >> i & 1) for b in range(256))
_HIGH = bytes(sum(1 << 2 * i for i in range(4) if b >> (i + 4) & 1) for b in range(256))


def draft_order(redis_bits: bytes, *, chunk: int = CHUNK_BYTES) -> bytes:
    """The store's bitmap as the draft's 1-bit byte array: each byte's bits reversed, padded
    with zero bytes to a whole number of `chunk`s (at least one)."""
    size = max(chunk, -(-len(redis_bits) // chunk) * chunk)
    return redis_bits.translate(_REVERSED) + bytes(size - len(redis_bits))


def widen(one_bit: bytes) -> bytes:
    """A draft-order 1-bit array as the 2-bit array of the same entries (1 stays 1)."""
    out = bytearray(2 * len(one_bit))
    out[0::2] = one_bit.translate(_LOW)
    out[1::2] = one_bit.translate(_HIGH)
    return bytes(out)


def build_list(redis_bits: bytes, locked: list[int], *, chunk: int = CHUNK_BYTES) -> StatusList:
    """The published 2-bit list: revoked entries INVALID, `locked` ones SUSPENDED unless
    revoked, every other entry VALID."""
    sl = StatusList.from_bytes(widen(draft_order(redis_bits, chunk=chunk)), bits=2)
    for idx in locked:
        if 0 <= idx < len(sl) and sl.get(idx) == VALID:
            sl.set(idx, SUSPENDED)
    return sl


def issued_at(now: float, ttl: int) -> int:
    """The `iat` of a list signed at `now`: the start of its ttl-long window (see the module
    doc), so that equal lists signed in one window are equal bytes."""
    return int(now // ttl) * ttl


class StatusListPublisher:
    """Builds, signs, caches and names the platforms' status lists."""

    def __init__(
        self,
        store: Store,
        *,
        names: StatusListNames,
        clock: Clock,
        signing_key: Callable[[], SigningKey],
        issuer: str,
        ttl: int,
        platforms: Callable[[], set[str]],
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._store = store
        self._names = names
        self._clock = clock
        self._signing_key = signing_key
        self._issuer = issuer
        self._ttl = ttl
        self._platforms = platforms
        self._cache_seconds = min(cache_seconds, float(ttl))
        self._cached: dict[str, tuple[str, float]] = {}  # platform -> (token, built at)
        self._locks: dict[str, asyncio.Lock] = {}
        self._versions: dict[str, int] = {}  # bumped by invalidate: a build then in flight
        self.builds = 0  # lists signed, for tests and metrics

    @property
    def names(self) -> StatusListNames:
        return self._names

    @property
    def ttl(self) -> int:
        return self._ttl

    def uri(self, platform: str) -> str:
        """`<base>/statuslists/<platform>/0`: the list's URI and the `sub` of its token."""
        return self._names.uri(platform)

    def invalidate(self, platform: str) -> None:
        """Forget the cached list (a revocation, lock or unlock went through this process)."""
        self._cached.pop(platform, None)
        self._versions[platform] = self._versions.get(platform, 0) + 1

    async def token(self, platform: str) -> str:
        """The platform's signed status list token, from the cache while it is fresh."""
        now = self._clock.now()
        hit = self._fresh(platform, now)
        if hit is not None:
            return hit
        async with self._locks.setdefault(platform, asyncio.Lock()):
            now = self._clock.now()
            hit = self._fresh(platform, now)
            if hit is not None:
                return hit
            version = self._versions.get(platform, 0)
            bits = await self._store.status_bits(platform)
            locked = await self._store.locked_status_indexes(platform, now)
            token = build_list(bits, locked).sign(
                self._signing_key(),
                issuer=self._issuer,
                uri=self.uri(platform),
                now=issued_at(now, self._ttl),
                ttl=self._ttl,
            )
            if version == self._versions.get(platform, 0):  # else it may predate a revocation
                self._cached[platform] = (token, now)
            self.builds += 1
            return token

    def _fresh(self, platform: str, now: float) -> str | None:
        hit = self._cached.get(platform)
        if hit is not None and 0 <= now - hit[1] < self._cache_seconds:
            return hit[0]
        return None

    async def serve(self, platform: str, list_no: int) -> str | None:
        """For the well-known listener: the token, or None for an unknown platform or list."""
        if list_no != LIST_NO or platform not in self._platforms():
            return None
        return await self.token(platform)
