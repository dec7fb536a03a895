"""The status list publisher: the store's bitmap, in the draft's bit order, padded, signed."""

from __future__ import annotations

import asyncio

import pytest

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.statuslist import (
    INVALID,
    SUSPENDED,
    VALID,
    StatusList,
    StatusListNames,
    read_status_list_token,
)
from xacthuc.domain.tokens import SigningKey, TokenSigner
from xacthuc.verifiers.status_publisher import (
    CHUNK_BYTES,
    StatusListPublisher,
    build_list,
    draft_order,
    widen,
)

NOW = 1_800_000_000.0
ISSUER = "https://xacthuc.test"
BASE = "https://id.example"
KEY = SigningKey.generate()
JWKS = TokenSigner(KEY, issuer=ISSUER).jwks_json()


def redis_order(revoked: set[int], nbytes: int) -> bytes:
    """A bitmap as Redis SETBIT writes it: index i is bit 7 - i % 8 of byte i // 8."""
    data = bytearray(nbytes)
    for i in revoked:
        data[i // 8] |= 0x80 >> (i % 8)
    return bytes(data)


def test_every_index_keeps_its_status_through_the_bit_reversal() -> None:
    """Index i revoked in Redis order is index i revoked in the draft's order, and only it."""
    revoked = {0, 1, 7, 8, 13, 63, 64, 1000, 8191}
    sl = StatusList.from_bytes(draft_order(redis_order(revoked, 1024)))
    assert revoked == {i for i in range(1024 * 8) if sl.get(i) == INVALID}


def test_padding_is_whole_chunks_of_zeros() -> None:
    """At least one chunk; a bitmap one byte over a chunk takes two; the padding is VALID."""
    assert CHUNK_BYTES == len(draft_order(b""))
    assert CHUNK_BYTES == len(draft_order(b"\xff" * CHUNK_BYTES))
    assert 2 * CHUNK_BYTES == len(draft_order(b"\x80" * (CHUNK_BYTES + 1)))
    sl = StatusList.from_bytes(draft_order(b"\x80"))
    assert (INVALID, VALID, VALID) == (sl.get(0), sl.get(1), sl.get(CHUNK_BYTES * 8 - 1))


class Bits(MemoryStore):
    """A store whose status bits are set by the test, the locked indexes, and how often the bitmap was read."""

    def __init__(self) -> None:
        super().__init__()
        self.bits: dict[str, bytes] = {"alpha": redis_order({3}, 2)}
        self.locked: dict[str, list[int]] = {}
        self.lock_reads: list[float] = []
        self.reads = 0

    async def status_bits(self, platform: str) -> bytes:
        self.reads += 1
        await asyncio.sleep(0)
        return self.bits.get(platform, b"")

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        self.lock_reads.append(now)
        return self.locked.get(platform, [])


World = tuple[StatusListPublisher, Bits, FixedClock]


@pytest.fixture
def world() -> World:
    store, clock = Bits(), FixedClock(NOW)
    publisher = StatusListPublisher(
        store,
        names=StatusListNames(BASE + "/"),
        clock=clock,
        signing_key=lambda: KEY,
        issuer=ISSUER,
        ttl=300,
        platforms=lambda: {"alpha", "beta"},
    )
    return publisher, store, clock


async def test_the_signed_list_verifies_with_the_draft_claims(world: World) -> None:
    publisher, _, _ = world
    uri = f"{BASE}/statuslists/alpha/0"
    assert ({"idx": 5, "uri": uri}, uri) == (
        publisher.names.reference("alpha", 5),
        publisher.uri("alpha"),
    )
    token = read_status_list_token(
        await publisher.token("alpha"), JWKS, expected_uri=uri, now=NOW, issuer=ISSUER
    )
    assert (NOW, NOW + 600, 300.0) == (token.issued_at, token.expires_at, token.ttl)
    assert (2, INVALID, VALID) == (
        token.status_list.bits,
        token.status_list.get(3),
        token.status_list.get(4),
    )
    assert CHUNK_BYTES * 8 == len(token.status_list)  # one chunk: 131,072 entries


def test_widening_keeps_every_entry() -> None:
    """Every entry of the 1-bit list has the same value in the 2-bit one, for every byte."""
    one = bytes(range(256))
    narrow, wide = StatusList.from_bytes(one), StatusList.from_bytes(widen(one), bits=2)
    assert [narrow.get(i) for i in range(len(narrow))] == [wide.get(i) for i in range(len(wide))]


def test_locked_entries_are_suspended_unless_revoked() -> None:
    """R7: a locked account's tokens read SUSPENDED; a revoked one stays INVALID (final)."""
    sl = build_list(redis_order({3, 9}, 2), [4, 9, 100])
    assert [VALID, INVALID, SUSPENDED, INVALID, SUSPENDED, VALID] == [
        sl.get(i) for i in (0, 3, 4, 9, 100, 101)
    ]


async def test_the_published_list_marks_the_locks_holding_at_build_time(world) -> None:  # type: ignore[no-untyped-def]
    """The store is asked for the locks holding at the clock's now, at every build."""
    publisher, store, _ = world
    store.locked["alpha"] = [7]
    token = read_status_list_token(
        await publisher.token("alpha"), JWKS, expected_uri=publisher.uri("alpha"), now=NOW
    )
    assert ([NOW], SUSPENDED, INVALID) == (
        store.lock_reads,
        token.status_list.get(7),
        token.status_list.get(3),
    )


async def test_the_list_is_cached_briefly_and_shared(world: World) -> None:
    """Concurrent misses share one build; the copy serves for a few seconds, then is rebuilt."""
    publisher, store, now = world
    tokens = await asyncio.gather(*(publisher.token("alpha") for _ in range(20)))
    assert (1, 1, 1) == (len(set(tokens)), store.reads, publisher.builds)
    now.advance(4.9)
    await publisher.token("alpha")
    assert 1 == store.reads
    now.advance(0.1)
    await publisher.token("alpha")
    assert 2 == store.reads


async def test_a_revocation_through_this_process_drops_the_copy(world: World) -> None:
    publisher, store, _ = world
    await publisher.token("alpha")
    store.bits["alpha"] = redis_order({3, 4}, 2)
    publisher.invalidate("alpha")
    token = read_status_list_token(
        await publisher.token("alpha"), JWKS, expected_uri=publisher.uri("alpha"), now=NOW
    )
    assert INVALID == token.status_list.get(4)


async def test_a_build_that_raced_a_revocation_is_not_kept(world: World) -> None:
    """A list read before a revocation may be answered once, never cached after it."""
    publisher, store, _ = world
    build = asyncio.create_task(publisher.token("alpha"))
    await asyncio.sleep(0)  # the build has read the old bitmap
    publisher.invalidate("alpha")
    await build
    await publisher.token("alpha")
    assert 2 == store.reads


async def test_unknown_platforms_and_lists_are_not_served(world: World) -> None:
    publisher, _, _ = world
    assert None is await publisher.serve("gamma", 0)
    assert None is await publisher.serve("alpha", 1)
    assert (await publisher.serve("beta", 0) or "").count(".") == 2


def test_the_base_url_may_be_set_once_the_port_is_known(world: World) -> None:
    publisher, _, _ = world
    publisher.uri("alpha")
    publisher.names.base_url = "http://127.0.0.1:41234"
    assert "http://127.0.0.1:41234/statuslists/alpha/0" == publisher.uri("alpha")


async def test_an_unchanged_list_is_the_same_bytes_within_its_window(world: World) -> None:
    """Rebuilt after the short cache, or by another process, within one ttl window: the same
    token bytes (so the same strong ETag); changed bits, or the next window: other bytes."""
    publisher, store, clock = world
    first = await publisher.token("alpha")
    clock.advance(299)  # the in-process copy is long gone: a rebuild, same window
    again = await publisher.token("alpha")
    other_process = StatusListPublisher(
        store,
        names=StatusListNames(BASE + "/"),
        clock=FixedClock(NOW + 150),
        signing_key=lambda: KEY,
        issuer=ISSUER,
        ttl=300,
        platforms=lambda: {"alpha"},
    )
    assert (2, first, first) == (publisher.builds, again, await other_process.token("alpha"))

    store.bits["alpha"] = redis_order({3, 4}, 2)
    publisher.invalidate("alpha")
    changed = await publisher.token("alpha")
    clock.advance(1)  # NOW + 300: the next window
    publisher.invalidate("alpha")
    next_window = await publisher.token("alpha")
    assert len({first, changed, next_window}) == 3
    read = read_status_list_token(
        next_window, JWKS, expected_uri=publisher.uri("alpha"), now=clock.now()
    )
    assert (NOW + 300, NOW + 900) == (read.issued_at, read.expires_at)


@pytest.mark.parametrize("offset", [0.0, 0.5, 149.0, 299.0, 299.999])
async def test_every_copy_served_has_more_than_a_ttl_left(world: World, offset: float) -> None:
    """`iat` is the window's start, never after now; `exp` is more than one ttl away, so a
    copy cached for max-age = ttl is still valid when its cache lifetime ends."""
    publisher, _, clock = world
    clock.advance(offset)
    token = read_status_list_token(
        await publisher.token("alpha"), JWKS, expected_uri=publisher.uri("alpha"), now=NOW
    )
    assert token.issued_at == NOW <= clock.now()
    assert token.expires_at - clock.now() > 300
