"""Processes SIGKILLed in the middle of the pair store's calls (issue 10): confirmations by
phone code and by personal ID (their PostgreSQL step, after their Redis step), guardian
links (link, withdrawal, the age-out sweep), account locks (lock, unlock) and revocations.

Each call runs in a real process of its own (tests/crash_worker.py), against the real
PostgreSQL and Redis; the test holds a lock the call's transaction needs, waits until the
call's backend waits for it, and SIGKILLs the process:

* `sent`: before the call wrote anything in PostgreSQL (an advisory or row lock it takes
  first);
* `writing`: its transaction open, its rows written and uncommitted, its audit records next
  (the test holds the platform's log head).

Then, `rolled_back`: the backend notices its client is gone (client_connection_check_interval)
and rolls back while it waits: NOTHING of the call is left, not a row; or `committed`: the
lock is released and the backend runs the call to its end with no one to answer (as
PostgreSQL does by default): ALL of it is there, its audit records with it;
`retried_meanwhile`: the same, with the retry already waiting behind the orphaned backend.
Redis is flushed after the kill (after the retry, for a confirmation: its retry needs the
challenge or attempt, or the user starts again). The same call, retried from a fresh process,
completes: the effect once, one status bit, no record twice. Before and after, the audit
log verifies: indices without gaps, every pair of signed checkpoints consistent, the export
accepted offline against them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.locks import AccountLock
from xacthuc.domain.records import LinkResult

from .conftest import nth_index
from .crash_worker import (
    Worker,
    killed_while_waiting,
    log_verifies,
    pack,
    snapshot,
    started,
    unpack,
    waiting_backend,
)
from .test_pair_crash import bit, flush
from .test_store_contract import LIMITS, NOW, PLATFORM, attestation, check, new, sent
from .test_store_contract_guardian import link, phone_guardian
from .test_store_contract_id import attempt, pending
from .test_store_contract_locks import lock

ATTEMPT = attempt()
LINK = link()
LOCK = lock()
LOG_HEAD = ("SELECT 1 FROM log_heads WHERE platform = $1 FOR UPDATE", (PLATFORM,))


@dataclass(frozen=True)
class Case:
    method: str  # of the pair store
    args: tuple[Any, ...]
    first_lock: tuple[str, tuple[Any, ...]]  # the lock the call takes before any write
    events: list[str]  # the records it appends
    again: list[str]  # the records the same call appends when retried once it took effect
    redis_step: bool = False  # it has one (before its PostgreSQL step)


def _advisory(kind: str, name: str) -> tuple[str, tuple[Any, ...]]:
    return "SELECT xacthuc_lock_link($1, $2, $3)", (PLATFORM, kind, name)


CASES = {
    "confirm": Case(
        "check_code",
        (check(now=NOW + 30), LIMITS),
        ("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(30) || 'ch-1', 0))", (PLATFORM,)),
        ["check_ok", "attestation_issued"],
        [],
        redis_step=True,
    ),
    "confirm_id": Case(
        "finish_id_check",
        (ATTEMPT, "match", pending(), LIMITS),
        ("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(30) || 'at-1', 0))", (PLATFORM,)),
        ["id_check", "attestation_issued"],
        [],
        redis_step=True,
    ),
    "link": Case(
        "link_guardian",
        (LINK, LIMITS),
        _advisory("child", LINK.child_account_id),
        ["guardian_link_created", "consent_recorded", "consent_recorded", "attestation_issued"],
        [],
    ),
    "withdraw": Case(
        "end_guardian_link",
        (PLATFORM, LINK.link_id, NOW + 20, "withdrawn"),
        _advisory("child", LINK.child_account_id),
        ["guardian_link_ended", "attestation_revoked"],
        ["guardian_link_ended"],  # refused LINK_ALREADY_ENDED: a retry is audited
    ),
    "age_out": Case(
        "sweep_aged_out",
        (PLATFORM, LINK.aged_out_at + 1, 10),
        _advisory("sweep", ""),
        ["guardian_link_ended"],
        [],
    ),
    "lock": Case("lock_account", (LOCK,), _advisory("lock", "acc-1"), ["account_locked"], []),
    "unlock": Case(
        "unlock_account",
        (PLATFORM, "acc-1", NOW + 20, "appeal_upheld"),
        _advisory("lock", "acc-1"),
        ["account_unlocked"],
        [],
    ),
    "revoke": Case(
        "revoke_attestation",
        (PLATFORM, "acc-1", NOW + 20, "fraud"),
        (
            "SELECT 1 FROM attestations WHERE platform = $1 AND account = 'acc-1' FOR UPDATE",
            (PLATFORM,),
        ),
        ["attestation_revoked"],
        [],
    ),
}


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    yield from started()


async def _before(name: str, pair: PairStore) -> None:
    """What the call finds: a phone-verified guardian and, to withdraw, its link; a
    phone-verified account and, to unlock, its lock."""
    if name == "confirm":
        await sent(pair, new())
        return
    if name == "confirm_id":
        await pair.begin_id_check(ATTEMPT, LIMITS)
        return
    if name in ("link", "withdraw", "age_out"):
        await phone_guardian(pair)
        if name != "link":
            await pair.link_guardian(LINK, LIMITS)
        return
    await sent(pair, new())
    await pair.check_code(check(now=NOW + 1), LIMITS)
    if name == "unlock":
        await pair.lock_account(LOCK)


async def _events(pair: PairStore, start: int) -> list[str]:
    return [json.loads(r)["event"] for r in await pair.audit_records(PLATFORM, start)]


async def _outcome(name: str, pair: PairStore, reply: Any, committed: bool) -> None:
    """The call took effect, and its retry answered what it answers then."""
    if name in ("confirm", "confirm_id"):
        issued = await pair.get_attestation(PLATFORM, "acc-1")
        assert issued is not None
        assert reply == issued
        if name == "confirm":
            assert attestation(now=NOW + 30) == issued
        else:
            assert ("personal_id", "tok-id", "active") == (
                issued.method,
                issued.token_id,
                issued.status,
            )
        assert nth_index(0) == issued.status_idx
        assert not bit(await pair.status_bits(PLATFORM), issued.status_idx)
        return
    if name in ("link", "withdraw", "age_out"):
        kid = await pair.get_attestation(PLATFORM, LINK.child_account_id)
        assert kid is not None
        if name == "link":
            assert LinkResult(LINK.link_id, kid, False) == reply
            assert ("active", True) == (kid.status, kid.guardian_managed)
        elif name == "withdraw":
            assert "revoked" == kid.status
            assert ("LINK_ALREADY_ENDED" if committed else kid) == reply
            assert bit(await pair.status_bits(PLATFORM), kid.status_idx)
        else:
            assert ("aged_out", 0 if committed else 1) == (kid.status, reply)
            assert not bit(await pair.status_bits(PLATFORM), kid.status_idx)
        aging = await pair.list_aging_out(PLATFORM, 0, LINK.aged_out_at + 1, 9)
        assert ([LINK.child_account_id] if name == "link" else []) == [a.account_id for a in aging]
        return
    account, held = await pair.account_state(PLATFORM, "acc-1")
    assert account is not None
    if name == "revoke":
        assert ("revoked", account) == (account.status, reply)
        assert bit(await pair.status_bits(PLATFORM), account.status_idx)
        return
    assert held is not None
    if name == "lock":
        assert (held, not committed) == reply  # changed, unless the retry found it done
        assert isinstance(reply[0], AccountLock)
        assert [account.status_idx] == await pair.locked_status_indexes(PLATFORM, NOW + 30)
    else:
        assert (None if committed else held) == reply
        assert (NOW + 20, "appeal_upheld") == (held.ended_at, held.unlock_reason)
        assert [] == await pair.locked_status_indexes(PLATFORM, NOW + 30)


@pytest.mark.parametrize(
    ("point", "mode"),
    [
        ("sent", "committed"),
        ("writing", "rolled_back"),
        ("writing", "committed"),
        ("writing", "retried_meanwhile"),
    ],
)
@pytest.mark.parametrize("name", list(CASES))
async def test_a_process_killed_mid_call_leaves_all_or_nothing_and_the_retry_completes(
    worker: Worker,
    pair: PairStore,
    database: Database,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    name: str,
    point: str,
    mode: str,
) -> None:
    """`retried_meanwhile`: as `committed`, but the retry comes while the orphaned backend
    still holds the call's locks: it waits for them, then finds the call done."""
    case = CASES[name]
    await _before(name, pair)
    await log_verifies(database, PLATFORM, NOW + 100)
    before = await snapshot(database)
    start = len(await pair.audit_records(PLATFORM))
    call = {
        "db": database_url,
        "redis": redis_url,
        "ns": redis_namespace,
        "store": case.method,
        "args": pack(case.args),
    }

    async def retry_waiting(holder: int, orphan: int) -> int:
        pid: int = (await worker.run(**call, tag="retry-meanwhile", detach=True))["pid"]
        await waiting_backend(database, "retry-meanwhile", holder, orphan)
        return pid

    killed = await killed_while_waiting(
        worker,
        database,
        LOG_HEAD if point == "writing" else case.first_lock,
        call,
        notice=mode == "rolled_back",
        meanwhile=retry_waiting if mode == "retried_meanwhile" else None,
    )
    if not case.redis_step:
        await flush(pair)  # Redis lost too (a confirm's retry needs its challenge: below)

    assert (point == "writing") == killed.wrote  # killed with rows written, uncommitted
    done = await snapshot(database)
    if mode == "rolled_back":
        assert before == done  # not a row of it
        assert [] == await _events(pair, start)
        reply = await worker.result(**call, tag="retry")
    elif mode == "committed":
        assert case.events == await _events(pair, start)  # all of it, its records with it
        reply = await worker.result(**call, tag="retry")
    else:
        answer = await worker.run(reap=killed.meanwhile)
        assert 0 == answer.pop("signal")
        reply = unpack(answer["ok"]) if "ok" in answer else answer["refused"]
    if case.redis_step:  # Redis lost after the retry: the same call answers the same
        await flush(pair)
        assert reply == await worker.result(**call, tag="retry-after-flush")

    retried = await _events(pair, start)
    assert case.events + (case.again if mode != "rolled_back" else []) == retried
    if mode != "rolled_back" and not case.again:
        assert done == await snapshot(database)  # the retry wrote nothing
    await _outcome(name, pair, reply, mode != "rolled_back")
    history = await log_verifies(database, PLATFORM, NOW + 200)
    assert [start, start + len(retried)] == [c.tree_size for c in history]


async def test_a_revocation_killed_twice_then_retried_sets_its_status_bit_once(
    worker: Worker,
    pair: PairStore,
    database: Database,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
) -> None:
    """Killed with its transaction open and rolled back, then killed again and committed
    by its backend, then retried: one revocation, one status bit, one record, and the
    attestation revoked at the time of the call that took effect."""
    await _before("revoke", pair)
    issued = await pair.get_attestation(PLATFORM, "acc-1")
    assert issued is not None
    case = CASES["revoke"]
    call = {
        "db": database_url,
        "redis": redis_url,
        "ns": redis_namespace,
        "store": case.method,
        "args": pack(case.args),
    }
    for notice in (True, False):
        await killed_while_waiting(worker, database, LOG_HEAD, call, notice=notice)
        await flush(pair)
    revoked = await worker.result(**call, tag="retry")

    assert dataclasses.replace(issued, status="revoked", revoked_at=NOW + 20) == revoked
    async with database.connection() as conn:
        tokens = await conn.fetch(
            "SELECT idx, revoked FROM status_tokens WHERE platform = $1", PLATFORM
        )
    assert [(issued.status_idx, True)] == [(t["idx"], t["revoked"]) for t in tokens]
    assert 1 == (await _events(pair, 0)).count("attestation_revoked")
    await log_verifies(database, PLATFORM, NOW + 200)


async def test_a_confirm_killed_and_rolled_back_then_redis_lost_asks_for_a_new_code(
    worker: Worker,
    pair: PairStore,
    database: Database,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
) -> None:
    """Killed with its PostgreSQL step open, rolled back, then Redis lost: nothing was
    issued, so the retry is CHALLENGE_NOT_FOUND (the user asks for a new code), and the
    new code's attestation takes the status index the killed call had drawn (it was never
    handed out)."""
    await _before("confirm", pair)
    case = CASES["confirm"]
    call = {
        "db": database_url,
        "redis": redis_url,
        "ns": redis_namespace,
        "store": case.method,
        "args": pack(case.args),
    }
    killed = await killed_while_waiting(worker, database, LOG_HEAD, call, notice=True)
    assert killed.wrote
    await flush(pair)

    assert "CHALLENGE_NOT_FOUND" == await worker.result(**call, tag="retry")
    assert None is await pair.get_attestation(PLATFORM, "acc-1")
    await sent(pair, new("ch-2", now=NOW + 60))
    issued = await pair.check_code(check("ch-2", now=NOW + 61), LIMITS)
    assert nth_index(0) == issued.status_idx
    assert 1 == (await _events(pair, 0)).count("attestation_issued")
    await log_verifies(database, PLATFORM, NOW + 200)
