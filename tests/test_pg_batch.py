"""Group commit of the pair's durable steps (pg_batch.py, migration 0006 `xacthuc_batch`).

Batches are made deterministic by holding the platform's status head (or another row) in a
transaction of the test's own: the first batch waits on it, the calls made meanwhile queue
up and go together in the next batch, whose commit the test then lets through or breaks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import ChallengeAlreadyUsed, StoreUnavailable
from xacthuc.domain.records import AttestationRecord

from .conftest import nth_index, pair_store
from .test_store_contract import LIMITS, NOW, PLATFORM, check, client_n, new, phone_n, sent


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for `condition` (a state the test set up, never a duration), 30 s at most."""
    for _ in range(3000):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


# The platform's status head, which every batch with an issuing step locks first.
HEAD = "SELECT 1 FROM status_heads WHERE platform = 'alpha' FOR UPDATE"


@asynccontextmanager
async def holding(url: str, sql: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A transaction of the test's own holding the row lock `sql` takes, until the block
    ends (then rolled back)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(sql)
            yield conn
    finally:
        await conn.close()


assert "alpha" == PLATFORM


def queued(store: PairStore) -> int:
    return len(store._batch._calls.get(PLATFORM, []))


async def waiting_batches(conn: asyncpg.Connection[Any]) -> list[int]:
    """The backends whose xacthuc_batch waits for a lock (as they are now: a transaction
    sees the activity it read first unless it clears that snapshot)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE '%xacthuc_batch%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return [r["pid"] for r in rows]


async def started(store: PairStore, accounts: range) -> None:
    for i in accounts:
        await sent(store, new(f"ch-{i}", account=f"acc-{i}", phone=phone_n(i), client=client_n(i)))


def confirm(store: PairStore, i: int, now: float = NOW + 10) -> Awaitable[AttestationRecord]:
    return store.check_code(check(f"ch-{i}", account=f"acc-{i}", now=now, token_id=f"t{i}"), LIMITS)


async def events(store: PairStore) -> list[dict[str, Any]]:
    return [json.loads(r) for r in await store.audit_records(PLATFORM)]


def gap_free(records: list[dict[str, Any]]) -> None:
    assert list(range(len(records))) == [r["seq"] for r in records]
    times = [r["time"] for r in records]
    assert sorted(times) == times  # never backwards


async def test_concurrent_confirms_commit_together(pair: PairStore, database_url: str) -> None:
    n = 12
    await started(pair, range(n + 1))
    await confirm(pair, n)  # the platform's status head exists now
    commits = pair._batch.commits
    async with holding(database_url, HEAD) as holder:
        first = asyncio.ensure_future(confirm(pair, 0))
        await until(lambda: _true(waiting_batches(holder)), "the first batch waits")
        rest = [asyncio.ensure_future(confirm(pair, i)) for i in range(1, n)]
        await until(lambda: _now(queued(pair) == n - 1), "the others queue up")
    issued = [await first, *await asyncio.gather(*rest)]

    assert 2 == pair._batch.commits - commits  # 12 confirms, 2 transactions
    indices = sorted(a.status_idx for a in issued)
    assert sorted(nth_index(k) for k in range(1, n + 1)) == indices
    records = await events(pair)
    gap_free(records)
    assert n + 1 == [r["event"] for r in records].count("attestation_issued")
    for a in issued:  # each call's own two records, in order
        mine = [r["event"] for r in records if r["account"] == a.account_id]
        assert ["verification_started", "code_sent", "check_ok", "attestation_issued"] == mine


async def test_a_refused_call_does_not_fail_the_others_of_its_batch(
    pair: PairStore, database_url: str
) -> None:
    await started(pair, range(6))
    await confirm(pair, 5)
    await pair.revoke_attestation(PLATFORM, "acc-5", NOW + 11, "fraud")  # ch-5: used up
    async with holding(database_url, HEAD) as holder:
        first = asyncio.ensure_future(confirm(pair, 0))
        await until(lambda: _true(waiting_batches(holder)), "the first batch waits")
        calls = [asyncio.ensure_future(confirm(pair, i, NOW + 20)) for i in (1, 5, 2, 3)]
        bogus = asyncio.ensure_future(pair._batch.run(PLATFORM, {"op": "nonsense"}))
        await until(lambda: _now(queued(pair) == 5), "the others queue up")
    zero = await first
    results = await asyncio.gather(*calls, bogus, return_exceptions=True)

    assert isinstance(results[1], ChallengeAlreadyUsed)  # refused, audited
    assert isinstance(results[4], asyncpg.PostgresError)  # a step that raised: only its own
    for i, r in zip((1, 2, 3), (results[0], results[2], results[3]), strict=True):
        assert isinstance(r, AttestationRecord)
        assert f"acc-{i}" == r.account_id
    records = await events(pair)
    gap_free(records)
    refused = [r for r in records if r["account"] == "acc-5" and r["event"] == "check_failed"]
    assert ["CHALLENGE_ALREADY_USED"] == [r["reason"] for r in refused]
    # The batch's counters (kept in memory, the head written once: migration 0007) went on
    # from the head, one per token issued, none for the refusal or the failed op.
    issued = [zero, *(r for r in results if isinstance(r, AttestationRecord))]
    assert sorted(nth_index(k) for k in range(1, 5)) == sorted(a.status_idx for a in issued)
    async with pair.database.connection() as conn:
        assert 5 == await conn.fetchval(
            "SELECT next FROM status_heads WHERE platform = $1", PLATFORM
        )
    # Each issue's records, rendered by the store (0007), are the check's then the token's.
    for i in (0, 1, 2, 3):
        mine = [r["event"] for r in records if r["account"] == f"acc-{i}"][-2:]
        assert ["check_ok", "attestation_issued"] == mine


async def test_a_failed_commit_fails_its_whole_batch_and_the_retries_issue_once(
    pair: PairStore, database_url: str
) -> None:
    n = 5
    await started(pair, range(n + 1))
    await confirm(pair, n)
    size = len(await pair.audit_records(PLATFORM))
    async with holding(database_url, HEAD) as holder:
        first = asyncio.ensure_future(confirm(pair, 0))
        await until(lambda: _true(waiting_batches(holder)), "the first batch waits")
        rest = [asyncio.ensure_future(confirm(pair, i)) for i in range(1, n)]
        await until(lambda: _now(queued(pair) == n - 1), "the others queue up")
        # PostgreSQL loses the first batch's connection, then the second's, mid-batch.
        (pid,) = await waiting_batches(holder)
        await holder.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailable):
            await first
        await until(lambda: _true(waiting_batches(holder)), "the second batch waits")
        (pid,) = await waiting_batches(holder)
        await holder.execute("SELECT pg_terminate_backend($1)", pid)
        failed = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(e, StoreUnavailable) for e in failed)
    assert size == len(await pair.audit_records(PLATFORM))  # nothing of either batch
    for i in range(n):
        assert None is await pair.get_attestation(PLATFORM, f"acc-{i}")

    retried = await asyncio.gather(*(confirm(pair, i, NOW + 30) for i in range(n)))
    again = await asyncio.gather(*(confirm(pair, i, NOW + 31) for i in range(n)))

    assert retried == again  # the same attestation to every retry
    assert sorted(nth_index(k) for k in range(1, n + 1)) == sorted(a.status_idx for a in retried)
    records = await events(pair)
    gap_free(records)
    assert n + 1 == [r["event"] for r in records].count("attestation_issued")


async def test_two_stores_on_separate_pools_never_hand_out_an_index_twice(
    pair: PairStore, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    other_db = Database(database_url, min_size=0, max_size=4)
    other = pair_store(redis_url, redis_namespace, other_db)
    n = 40
    try:
        await started(pair, range(n))
        commits = pair._batch.commits
        tasks = [confirm(pair if i % 2 else other, i) for i in range(n)]
        revokes = [
            (pair if i % 2 else other).revoke_attestation(PLATFORM, f"acc-{i}", NOW + 20, "fraud")
            for i in range(0, n, 4)
        ]
        issued = await asyncio.gather(*tasks)
        await asyncio.gather(*revokes)
    finally:
        await other.aclose()
        await other_db.aclose()

    calls = n // 2 + n // 8  # this store's confirms and revocations
    assert pair._batch.commits - commits < calls
    assert sorted(nth_index(k) for k in range(n)) == sorted(a.status_idx for a in issued)
    records = await events(pair)
    gap_free(records)
    kinds = [r["event"] for r in records]
    assert (n, n, n // 4) == (
        kinds.count("attestation_issued"),
        kinds.count("check_ok"),
        kinds.count("attestation_revoked"),
    )


async def _true(pids: Awaitable[list[int]]) -> bool:
    return bool(await pids)


async def _now(value: bool) -> bool:
    return value
