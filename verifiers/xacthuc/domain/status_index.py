"""Status-list indices that reveal no issuance order (issue 13, defect 10).

A token's index is public: it is in the token, and the platform's status list is served to
anyone. Handed out in sequence, an index would tell how many tokens the platform issued
before it, and the list which issuance periods the revoked tokens came from. The Token Status
List draft's privacy considerations (Unlinkability) recommend non-sequential, pseudo-random
indices; this module makes them without ever handing out an index twice.

Each platform counts its tokens (0, 1, 2 ...) as before. Counter `c` lies in block
`b = c // block` (131,072 tokens, one 16 KiB chunk of the published list, by default) and
becomes index `b * block + P(b, c % block)`, where `P(b, .)` is a keyed pseudorandom
permutation of `[0, block)`: a Feistel network with `ROUNDS` rounds over `2h` bits
(`h = ceil(log2(block) / 2)`) whose round function is HMAC-SHA1 under the platform's secret
index key, cycle-walked back into `[0, block)` when `2h` bits are more than the block needs.
A permutation never maps two counters to one index, and blocks do not overlap, so no index
is ever reused; without the key, the indices within a block are in no recognisable order.

The key is 64 hex characters drawn at random by the store the first time the platform
allocates an index and kept with the counter (with the block size, which can then never
change for that platform); it never leaves the store. HMAC-SHA1 because the Redis scripts
that first allocated indices had SHA-1 and nothing newer; PostgreSQL now runs the same
arithmetic (migration 0002, `xacthuc_permuted_index`) with identical results: HMAC-SHA1 is a
sound PRF.

What stays visible. Block `b + 1` opens only when block `b` is full, so an index tells in
which block of 131,072 tokens it was issued (all of block 0 came before all of block 1), and
the list's length tells how many blocks the platform has opened: its issued tokens to within
131,072. Within a block, nothing. The number of set bits (revoked tokens) is visible, and a
watcher who diffs successive lists sees how many flipped between them; only decoy bits could
blur that, and there are none yet.
"""

from __future__ import annotations

import hashlib
import hmac

INDEX_BLOCK = 131_072  # tokens per block: one 16 KiB chunk of the published list
ROUNDS = 8
KEY_HEX_CHARS = 64  # the HMAC key: exactly SHA-1's block size, so it is used as is


def check_block(block: int) -> int:
    """A block size must be a power of two of at least 8 (whole bytes of the bitmap)."""
    if block < 8 or block & (block - 1):
        raise ValueError("the status index block must be a power of two, at least 8")
    return block


def _half_bits(block: int) -> int:
    return block.bit_length() // 2  # ceil(log2(block) / 2) for a power of two


def _round(key: bytes, block_no: int, r: int, right: int, modulus: int) -> int:
    digest = hmac.new(key, f"{block_no}:{r}:{right}".encode(), hashlib.sha1).hexdigest()
    return int(digest[:8], 16) % modulus


def permuted_index(key: str, counter: int, block: int = INDEX_BLOCK) -> int:
    """The status-list index of the platform's `counter`-th token (from 0)."""
    if len(key) != KEY_HEX_CHARS:
        raise ValueError("the status index key must be 64 hex characters")
    check_block(block)
    block_no, x = divmod(counter, block)
    h = _half_bits(block)
    modulus = 1 << h
    raw = key.encode()
    while True:  # cycle walking: ends, since x's cycle under the permutation returns to x
        left, right = x >> h, x % modulus
        for r in range(ROUNDS):
            left, right = right, left ^ _round(raw, block_no, r, right, modulus)
        x = (left << h) | right
        if x < block:
            return block_no * block + x


def first_counter(legacy_next: int, block: int) -> int:
    """Where permuted allocation starts on a store that handed out `legacy_next` sequential
    indices before it (0..legacy_next-1): at the next whole block, so none is reused."""
    return -(-legacy_next // block) * block
