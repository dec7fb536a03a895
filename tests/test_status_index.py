"""Status-list indices reveal no issuance order and are never reused (issue 13, defect 10).

The permutation (xacthuc.domain.status_index) is checked exhaustively on small blocks and by
property over keys and block sizes; the stores are checked to hand out exactly its values, in
memory and in Redis (Lua) alike, including cycle walking (odd powers of two), block growth,
a store that handed out sequential indices before, and a restart with other settings.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.records import Limits
from xacthuc.domain.status_index import INDEX_BLOCK, check_block, permuted_index
from xacthuc.ports.store import Store

from .test_store_contract import PLATFORM, check, client_n, new, phone_n, sent

KEY = "c3" * 32
OTHER_KEY = "7e" * 32
keys = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@pytest.mark.parametrize("block", [8, 16, 128, 2048, 4096])
def test_each_block_is_a_permutation_and_blocks_do_not_overlap(block: int) -> None:
    """Three blocks' worth of counters give three blocks' worth of distinct indices, each
    counter's index inside its own block (odd powers of two go through cycle walking)."""
    indices = [permuted_index(KEY, c, block) for c in range(3 * block)]

    assert list(range(3 * block)) == sorted(indices)
    assert all(c // block == i // block for c, i in enumerate(indices))


@settings(max_examples=60, deadline=None)
@given(key=keys, log_block=st.integers(3, 9), blocks=st.integers(1, 3))
def test_no_index_is_ever_handed_out_twice(key: str, log_block: int, blocks: int) -> None:
    """For any key and block size, every counter of several blocks has its own index."""
    block = 1 << log_block
    indices = [permuted_index(key, c, block) for c in range(blocks * block)]
    assert len(set(indices)) == len(indices) == blocks * block
    assert all(0 <= i < blocks * block for i in indices)


def test_indices_follow_no_order_of_issue() -> None:
    """Within a default block, issue order and index are unrelated: the first 2,000 tokens
    are far from sorted (about half of consecutive pairs go down) and the rank correlation
    between counter and index is near 0 (sequential indices would give 1)."""
    n = 2000
    indices = [permuted_index(KEY, c) for c in range(n)]
    downs = sum(b < a for a, b in itertools.pairwise(indices))
    ranks = {idx: r for r, idx in enumerate(sorted(indices))}
    d2 = sum((c - ranks[idx]) ** 2 for c, idx in enumerate(indices))
    spearman = 1 - 6 * d2 / (n * (n * n - 1))

    assert 0.45 < downs / (n - 1) < 0.55
    assert abs(spearman) < 0.1
    assert max(indices) > INDEX_BLOCK // 2  # spread over the block, not packed at its start


def test_other_keys_give_other_orders() -> None:
    """The order is the key's: another platform's key permutes differently."""
    mine = [permuted_index(KEY, c, 4096) for c in range(64)]
    theirs = [permuted_index(OTHER_KEY, c, 4096) for c in range(64)]
    assert sum(a == b for a, b in zip(mine, theirs, strict=True)) < 4


@pytest.mark.parametrize("bad", [0, 4, 12, 100])
def test_a_block_must_be_a_power_of_two_of_whole_bytes(bad: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_block(bad)
    with pytest.raises(ValueError, match="power of two"):
        permuted_index(KEY, 0, bad)
    with pytest.raises(ValueError, match="64 hex"):
        permuted_index("short", 0)


async def issue(store: Store, n: int) -> int:
    """The n-th test token of PLATFORM (own account, number and client: no budget is hit)."""
    challenge = f"ch-{n}"
    await sent(store, new(challenge, account=f"a-{n}", phone=phone_n(n), client=client_n(n)))
    record = await store.check_code(
        check(challenge, now=new().now + 1, account=f"a-{n}", token_id=f"t-{n}"), Limits()
    )
    return record.status_idx


def bits_set(bits: bytes) -> set[int]:
    return {i for i in range(len(bits) * 8) if bits[i // 8] & (0x80 >> (i % 8))}


@pytest.mark.parametrize("backend", ["memory", "pair"])
async def test_stores_hand_out_the_permutation_never_reusing_an_index(
    backend: str, redis_url: str, redis_namespace: str, database: Database
) -> None:
    """Three blocks and a bit of 128 (cycle walking in plpgsql too): every index is the
    permutation's, none repeats, they are not in issue order, the bitmap is four whole blocks,
    and revoking a token sets exactly its bit."""
    block, count = 128, 3 * 128 + 5
    store: Store = (
        MemoryStore(status_block=block, status_keys=lambda: KEY)
        if backend == "memory"
        else PairStore(
            redis_url,
            database,
            namespace=redis_namespace,
            status_block=block,
            status_keys=lambda: KEY,
        )
    )
    indices = [await issue(store, n) for n in range(count)]
    revoked = random.Random(13).sample(range(count), 7)
    for n in revoked:
        await store.revoke_attestation(PLATFORM, f"a-{n}", new().now + 2, "fraud")
    bits = await store.status_bits(PLATFORM)
    await store.aclose()

    assert [permuted_index(KEY, c, block) for c in range(count)] == indices
    assert len(set(indices)) == count
    assert indices != sorted(indices)
    assert 4 * block // 8 == len(bits)
    assert {indices[n] for n in revoked} == bits_set(bits)
