"""The pair (Redis + PostgreSQL, issue 10) across Redis losses and crashes between its two
steps: Redis keeps only what may be lost at the price of a user asking for a new code.

* Redis flushed (FLUSHALL) at each step of a confirmation and of a revocation, or replaced
  by a redis-server restarted empty (one this test owns): no attestation, revocation,
  status bit or P8 count is lost, no status index is handed out twice, a revoked token
  stays revoked online and in the status list, and a confirm retried after a lost reply
  gets the same attestation;
* a process that dies between the Redis step and the PostgreSQL step (the PostgreSQL step
  failed, cancelled, or the process SIGKILLed while it waits) leaves a state from which the
  same call, retried, issues once and returns that attestation to every retry.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import (
    ChallengeAlreadyUsed,
    ChallengeNotFound,
    PhoneAccountLimit,
    StoreUnavailable,
)
from xacthuc.domain.records import AttestationRecord, Limits

from .conftest import STATUS_BLOCK, nth_index, pair_store
from .test_health import OwnRedis
from .test_store_contract import LIMITS, NOW, PHONE, PLATFORM, attestation, check, new, sent


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


async def flush(store: PairStore) -> None:
    """Everything Redis held is gone (only this test's namespace: the Redis is shared)."""
    client = store.client
    pattern = f"{store.redis_half._namespace}:*"
    keys = [k async for k in client.scan_iter(pattern, count=1000)]  # a shared, full Redis
    if keys:
        await client.delete(*keys)


def bit(bits: bytes, idx: int) -> bool:
    return bool(bits[idx // 8] & (0x80 >> (idx % 8)))


async def events(store: PairStore) -> list[str]:
    return [json.loads(r)["event"] for r in await store.audit_records(PLATFORM)]


# ---- Redis flushed at each step --------------------------------------------------------------


async def test_flushed_before_the_code_the_user_asks_for_a_new_one(pair: PairStore) -> None:
    await sent(pair, new())
    await flush(pair)
    with pytest.raises(ChallengeNotFound):
        await pair.check_code(check(now=NOW + 30), LIMITS)
    assert None is await pair.get_attestation(PLATFORM, "acc-1")
    await sent(pair, new("ch-2", now=NOW + 60))  # a new code: nothing stands in the way
    issued = await pair.check_code(check("ch-2", now=NOW + 61), LIMITS)
    assert nth_index(0) == issued.status_idx


async def test_flushed_after_the_confirmation_a_retry_gets_the_same_attestation(
    pair: PairStore,
) -> None:
    await sent(pair, new())
    issued = await pair.check_code(check(now=NOW + 30), LIMITS)
    await flush(pair)

    again = await pair.check_code(check(now=NOW + 40, token_id="tok-retry"), LIMITS)

    assert attestation(now=NOW + 30) == issued == again
    assert issued == await pair.get_attestation(PLATFORM, "acc-1")
    assert 1 == (await events(pair)).count("attestation_issued")
    with pytest.raises(ChallengeNotFound):  # another account cannot take it
        await pair.check_code(check(now=NOW + 41, account="acc-2"), LIMITS)


async def test_no_status_index_is_handed_out_twice_across_a_flush(pair: PairStore) -> None:
    await sent(pair, new())
    first = await pair.check_code(check(now=NOW + 1), LIMITS)
    await flush(pair)
    await sent(pair, new("ch-2", now=NOW + 2, account="acc-2"))
    second = await pair.check_code(check("ch-2", now=NOW + 3, account="acc-2"), LIMITS)
    assert [nth_index(0), nth_index(1)] == [first.status_idx, second.status_idx]


async def test_a_revocation_outlives_a_flush_online_and_in_the_status_list(
    pair: PairStore,
) -> None:
    await sent(pair, new())
    issued = await pair.check_code(check(now=NOW + 1), LIMITS)
    await flush(pair)  # between the confirmation and the revocation
    revoked = await pair.revoke_attestation(PLATFORM, "acc-1", NOW + 5, "fraud")
    await flush(pair)  # and after it

    assert "revoked" == revoked.status
    assert revoked == await pair.get_attestation(PLATFORM, "acc-1")
    state, _ = await pair.account_state(PLATFORM, "acc-1")
    assert state is not None
    assert "revoked" == state.status
    bits = await pair.status_bits(PLATFORM)
    assert STATUS_BLOCK // 8 == len(bits)
    assert bit(bits, issued.status_idx)
    assert revoked == await pair.revoke_attestation(PLATFORM, "acc-1", NOW + 9, "fraud")
    assert 1 == (await events(pair)).count("attestation_revoked")
    with pytest.raises(ChallengeAlreadyUsed):  # the old confirm cannot bring it back
        await pair.check_code(check(now=NOW + 10), LIMITS)


async def test_p8_counts_outlive_a_flush(pair: PairStore) -> None:
    limits = Limits(max_accounts_per_phone=1)
    await sent(pair, new(), limits)
    await pair.check_code(check(now=NOW + 1), limits)
    await flush(pair)
    with pytest.raises(PhoneAccountLimit):
        await pair.start_challenge(new("ch-2", now=NOW + 60, account="acc-2"), limits)


async def test_a_redis_restarted_empty_keeps_every_durable_fact(
    own_redis: OwnRedis, database: Database
) -> None:
    store = pair_store(own_redis.url, "crash", database)
    try:
        await sent(store, new())
        issued = await store.check_code(check(now=NOW + 1), LIMITS)
        await sent(store, new("ch-2", now=NOW + 100, account="acc-2"))
        other = await store.check_code(check("ch-2", now=NOW + 101, account="acc-2"), LIMITS)
        await store.revoke_attestation(PLATFORM, "acc-2", NOW + 102, "fraud")
    finally:
        await store.aclose()

    own_redis.stop()  # killed; it keeps nothing on disk
    own_redis.start()

    store = pair_store(own_redis.url, "crash", database)
    try:
        assert issued == await store.check_code(check(now=NOW + 103), LIMITS)  # a late retry
        bits = await store.status_bits(PLATFORM)
        assert (False, True) == (bit(bits, issued.status_idx), bit(bits, other.status_idx))
        await sent(store, new("ch-3", now=NOW + 200, account="acc-3"))
        third = await store.check_code(check("ch-3", now=NOW + 201, account="acc-3"), LIMITS)
        assert nth_index(2) == third.status_idx
        assert [
            "verification_started",
            "code_sent",
            "check_ok",
            "attestation_issued",
        ] * 2 + ["attestation_revoked"] == (await events(store))[:9]
    finally:
        await store.aclose()


# ---- killed between the Redis step and the PostgreSQL step -----------------------------------


class _FailingDatabase:
    """The pair's database, whose next connection fails once (`mode`): the PostgreSQL step
    of a call after its Redis step, as when the process died in between."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.mode = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        mode, self.mode = self.mode, ""
        if mode == "unavailable":
            raise StoreUnavailable()
        if mode == "cancel":
            raise asyncio.CancelledError()
        async with self._db.connection() as conn:
            yield conn


@pytest.mark.parametrize("mode", ["unavailable", "cancel"])
async def test_a_confirm_whose_postgres_step_died_completes_when_retried(
    pair: PairStore, mode: str
) -> None:
    await sent(pair, new())
    failing = _FailingDatabase(pair.database)
    pair._db = failing  # type: ignore[assignment]
    failing.mode = mode
    with pytest.raises((StoreUnavailable, asyncio.CancelledError)):
        await pair.check_code(check(now=NOW + 30, token_id="tok-lost"), LIMITS)
    assert None is await pair.get_attestation(PLATFORM, "acc-1")  # nothing half done

    retried = await asyncio.gather(
        *(pair.check_code(check(now=NOW + 40 + i), LIMITS) for i in range(3))
    )

    assert [attestation(now=NOW + 40)] * 3 == retried  # the first retry issued it, once
    assert nth_index(0) == retried[0].status_idx
    assert (1, 1) == (
        (await events(pair)).count("attestation_issued"),
        (await events(pair)).count("check_ok"),
    )


async def test_a_revocation_whose_call_failed_is_all_or_nothing(pair: PairStore) -> None:
    await sent(pair, new())
    issued = await pair.check_code(check(now=NOW + 1), LIMITS)
    failing = _FailingDatabase(pair.database)
    pair._db = failing  # type: ignore[assignment]
    failing.mode = "unavailable"
    with pytest.raises(StoreUnavailable):
        await pair.revoke_attestation(PLATFORM, "acc-1", NOW + 2, "fraud")
    assert issued == await pair.get_attestation(PLATFORM, "acc-1")
    revoked = await pair.revoke_attestation(PLATFORM, "acc-1", NOW + 3, "fraud")
    assert bit(await pair.status_bits(PLATFORM), revoked.status_idx)


ROOT = Path(__file__).resolve().parent.parent
_KILLED_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from xacthuc.adapters.store.pair import PairStore
    from xacthuc.adapters.store.postgres import Database
    from tests.conftest import pair_store
    from tests.test_store_contract import LIMITS, NOW, check

    async def main() -> None:
        db = Database(sys.argv[3], min_size=0)
        store = pair_store(sys.argv[1], sys.argv[2], db)
        real = db.connection

        def hang():  # the PostgreSQL step never comes: the process is killed first
            print("redis step done", flush=True)
            return asyncio.get_running_loop().create_future()

        class Hanging:
            async def __aenter__(self):
                await hang()
            async def __aexit__(self, *exc):
                return False

        db.connection = lambda: Hanging()
        await store.check_code(check(now=NOW + 30, token_id="tok-killed"), LIMITS)

    asyncio.run(main())
    """
)


async def test_a_process_killed_between_the_two_steps_leaves_a_retryable_confirm(
    pair: PairStore, redis_url: str, redis_namespace: str, database_url: str
) -> None:
    await sent(pair, new())
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_CHILD,
        redis_url,
        redis_namespace,
        database_url,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert b"redis step done" == line.strip()
    finally:
        child.kill()  # SIGKILL: no cleanup of any kind
        await asyncio.wait_for(child.wait(), 10)
    # Redis says consumed; PostgreSQL has nothing. The same call retried completes, once.
    client = pair.client
    assert await client.exists(pair.redis_half._challenge_key(PLATFORM, "ch-1")[0])
    assert None is await pair.get_attestation(PLATFORM, "acc-1")
    retried: AttestationRecord = await pair.check_code(check(now=NOW + 40), LIMITS)
    assert attestation(now=NOW + 40) == retried
    assert retried == await pair.check_code(check(now=NOW + 41, token_id="t2"), LIMITS)
    assert PHONE == (await pair.attestation_subject(PLATFORM, "acc-1") or (None, ""))[1]
