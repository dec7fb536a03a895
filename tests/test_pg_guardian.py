"""Guardian links (R1, P6) and account locks (R7) in PostgreSQL (`PgGuardianLocks`, migration
0003), against the reference store: the same calls give the same outcomes, the same audit
records byte for byte, the same attestations, links, locks and status bits.

The guardian and lock contract suites need operations `PgGuardianLocks` does not have (a
verified guardian comes from `check_code`, built by the pair store). Here they run on
`Mirrored`: every operation of `PgGuardianLocks` runs on a MemoryStore and on PostgreSQL and
must agree (outcome, new records, every attestation, link and lock, the status bits); every
other operation runs on the MemoryStore and its effect is copied into PostgreSQL's tables and
log (`PgLinks.adopt`), so what the suites read comes from PostgreSQL. Further tests: a link
retried under its id, concurrent calls (a second call held on the first's locks until it
commits), plans that use the indexes, PostgreSQL out of reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pg_audit import PostgresAuditLog
from xacthuc.adapters.store.pg_guardian import PgGuardianLocks
from xacthuc.adapters.store.pg_state import attestation_record, lock_record, time_j
from xacthuc.adapters.store.postgres import Conn, Database
from xacthuc.domain.errors import (
    ChildAlreadyLinked,
    GuardianChildLimit,
    GuardianNotVerified,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    StoreUnavailable,
    XacthucError,
)
from xacthuc.domain.locks import AccountLock, LockKind, LockRequest
from xacthuc.domain.records import (
    AgingOut,
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    GuardianLink,
    IdAttempt,
    Limits,
    LinkResult,
    NewChallenge,
    PendingAttestation,
)
from xacthuc.ports.store import Store

from . import test_store_contract_guardian as guardian_suite
from . import test_store_contract_locks as locks_suite
from .conftest import STATUS_BLOCK, STATUS_KEY, memory_store, nth_index
from .test_store_contract import LIMITS, NOW, PHONE, PHONE_2, PLATFORM, phone_n
from .test_store_contract_guardian import AGED, link, phone_guardian
from .test_store_contract_locks import lock

T = TypeVar("T")


def _fields(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row.items())


class PgLinks(PgGuardianLocks):
    """PgGuardianLocks with the reads the suites need, and `adopt` (the test's stand-in for
    the operations of the pair store that are not links or locks)."""

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        found = await self.attestation_subject(platform, account_id)
        return found[0] if found else None

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM attestations WHERE platform = $1 AND account = $2",
                platform,
                account_id,
            )
        return None if row is None else (attestation_record(_fields(row)), row["subject"])

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM account_locks WHERE platform = $1 AND account = $2",
                platform,
                account_id,
            )
        return await self.get_attestation(platform, account_id), (
            None if row is None else lock_record(_fields(row))
        )

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return await PostgresAuditLog(self._db).audit_records(platform, start, stop)

    async def status_bits(self, platform: str) -> bytes:
        async with self._db.connection() as conn:
            size = await conn.fetchval("SELECT xacthuc_status_bytes($1)", platform)
            revoked = await conn.fetch(
                "SELECT idx FROM status_tokens WHERE platform = $1 AND revoked", platform
            )
        bits = bytearray(int(size))
        for r in revoked:
            bits[r["idx"] // 8] |= 0x80 >> (r["idx"] % 8)
        return bytes(bits)

    async def state(
        self, platform: str, accounts: frozenset[str] | None = None
    ) -> dict[str, object]:
        """Everything these operations own or read (of `accounts` only, when given), for
        comparison with the memory store (`memory_state`)."""
        only = None if accounts is None else sorted(accounts)
        async with self._db.connection() as conn:
            atts = await conn.fetch(
                "SELECT * FROM attestations WHERE platform = $1"
                " AND ($2::text[] IS NULL OR account = ANY($2))",
                platform,
                only,
            )
            links = await conn.fetch(
                "SELECT * FROM guardian_links WHERE platform = $1"
                " AND ($2::text[] IS NULL OR child = ANY($2))",
                platform,
                only,
            )
            locks = await conn.fetch(
                "SELECT * FROM account_locks WHERE platform = $1"
                " AND ($2::text[] IS NULL OR account = ANY($2))",
                platform,
                only,
            )
            slots = await conn.fetch(
                "SELECT subject, account FROM subject_accounts WHERE platform = $1"
                " AND ($2::text[] IS NULL OR account = ANY($2))",
                platform,
                only,
            )
            head = await conn.fetchval(
                "SELECT next FROM status_heads WHERE platform = $1", platform
            )
        return {
            "attestations": {
                r["account"]: (attestation_record(_fields(r)), r["subject"]) for r in atts
            },
            "links": {
                r["link_id"]: (
                    r["child"],
                    r["guardian_account"],
                    r["guardian"],
                    r["relationship"],
                    r["method"],
                    r["child_consent"],
                    r["created"],
                    r["renewed"],
                    r["aged_out_at"],
                    r["ended"],
                    r["end_reason"],
                )
                for r in links
            },
            "locks": {r["account"]: lock_record(_fields(r)) for r in locks},
            "slots": {(r["subject"], r["account"]) for r in slots},
            "status_next": 0 if head is None else head,
            "status_bits": await self.status_bits(platform),
        }

    async def adopt(self, memory: MemoryStore, platform: str) -> None:
        """Copy what an operation of the memory store changed into PostgreSQL: new records,
        the status-index head, tokens and their bits, attestations, P8 slots."""
        p = memory._platforms[platform]
        async with self._db.transaction() as conn:
            size = await conn.fetchval(
                "SELECT coalesce((SELECT size FROM log_heads WHERE platform = $1), 0)", platform
            )
            if len(p.audit) > size:
                await PostgresAuditLog(self._db).append(platform, p.audit[size:], conn=conn)
            if p.status_key:
                await conn.execute(
                    "INSERT INTO status_heads (platform, next, key, block) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (platform) DO UPDATE SET next = excluded.next",
                    platform,
                    p.status_next,
                    p.status_key,
                    p.status_block,
                )
            tokens = [(a, i) for a, idxs in p.account_idxs.items() for i in idxs]
            await conn.executemany(
                "INSERT INTO status_tokens (platform, idx, account, token_id, issued_by)"
                " VALUES ($1, $2, $3, 'mirrored', 'mirrored:' || $2::bigint::text) ON CONFLICT DO NOTHING",
                [(platform, i, a) for a, i in tokens],
            )
            await conn.executemany(
                "UPDATE status_tokens SET revoked = $3 WHERE platform = $1 AND idx = $2",
                [(platform, i, _bit(p.status_bits, i) == 1) for _, i in tokens],
            )
            await _put_attestations(conn, platform, p.attestations)
            await conn.execute("DELETE FROM subject_accounts WHERE platform = $1", platform)
            await conn.executemany(
                "INSERT INTO subject_accounts (platform, subject, account) VALUES ($1, $2, $3)",
                [(platform, s, a) for s, accounts in p.subject_accounts.items() for a in accounts],
            )


async def _put_attestations(
    conn: Conn, platform: str, attestations: dict[str, tuple[AttestationRecord, str]]
) -> None:
    rows = []
    for record, subject in attestations.values():
        d = dataclasses.asdict(record)
        d["account"] = d.pop("account_id")
        rows.append((platform, json.dumps(d), subject))
    await conn.executemany(
        "INSERT INTO attestations SELECT a.* FROM jsonb_populate_record(NULL::attestations,"
        " $2::jsonb || jsonb_build_object('platform', $1::text, 'subject', $3::text,"
        " 'issued_by', 'mirrored')) AS a"
        " ON CONFLICT (platform, account) DO UPDATE SET method = excluded.method,"
        " token_id = excluded.token_id, verified_at = excluded.verified_at,"
        " issued_at = excluded.issued_at, expires_at = excluded.expires_at,"
        " status = excluded.status, guardian_managed = excluded.guardian_managed,"
        " commercial_livestream = excluded.commercial_livestream, age_band = excluded.age_band,"
        " guardian_ref = excluded.guardian_ref, aged_out_at = excluded.aged_out_at,"
        " link_id = excluded.link_id, status_idx = excluded.status_idx,"
        " revoked_at = excluded.revoked_at, id_type = excluded.id_type,"
        " subject = excluded.subject"
        " WHERE (attestations.*) IS DISTINCT FROM (excluded.*)",
        rows,
    )


def _bit(bits: bytes | bytearray, idx: int) -> int:
    return (bits[idx // 8] >> (7 - idx % 8)) & 1 if idx // 8 < len(bits) else 0


def memory_state(
    memory: MemoryStore, platform: str, accounts: frozenset[str] | None = None
) -> dict[str, object]:
    p = memory._platforms[platform]

    def of(account: str) -> bool:
        return accounts is None or account in accounts

    return {
        "attestations": {a: v for a, v in p.attestations.items() if of(a)},
        "links": {
            i: (
                lk.child,
                lk.guardian_account,
                lk.guardian,
                lk.relationship,
                lk.method,
                lk.child_consent,
                lk.created,
                lk.renewed,
                lk.aged_out_at,
                lk.ended,
                lk.end_reason,
            )
            for i, lk in p.links.items()
            if of(lk.child)
        },
        "locks": {a: v for a, v in p.locks.items() if of(a)},
        "slots": {(s, a) for s, slot in p.subject_accounts.items() for a in slot if of(a)},
        "status_next": p.status_next,
        "status_bits": bytes(p.status_bits),
    }


async def _outcome(call: Awaitable[T]) -> tuple[str, object]:
    try:
        return ("ok", await call)
    except XacthucError as e:
        return ("err", (type(e), e.reason))


async def _reason(call: Awaitable[object]) -> str:
    try:
        await call
    except XacthucError as e:
        return e.reason
    return "ok"


class Mirrored:
    """The Store the suites see: links and locks on PostgreSQL, checked against the memory
    store at every call; the other operations on the memory store, copied to PostgreSQL."""

    def __init__(self, memory: MemoryStore, pg: PgLinks) -> None:
        self.memory, self.pg = memory, pg

    async def _other(self, platform: str, call: Awaitable[T]) -> T:
        try:
            return await call
        finally:
            await self.pg.adopt(self.memory, platform)

    async def _both(
        self,
        platform: str,
        on_memory: Awaitable[T],
        on_pg: Callable[[], Awaitable[T]],
        accounts: frozenset[str] | None = None,
    ) -> T:
        """`on_memory`, then `on_pg`: the same outcome, the same new records, the same state
        after (of `accounts` only, when given: the accounts the call may change)."""
        start = len(self.memory._platforms[platform].audit)
        expected = await _outcome(on_memory)
        error: XacthucError | None = None
        try:
            actual = await on_pg()
        except XacthucError as e:
            error = e
        assert memory_state(self.memory, platform, accounts) == (
            await self.pg.state(platform, accounts)
        )
        assert await self.memory.audit_records(platform, start) == (
            await self.pg.audit_records(platform, start)
        )
        if error is not None:
            assert expected == ("err", (type(error), error.reason))
            raise error
        assert expected == ("ok", actual)
        return actual

    # ---- on both ----------------------------------------------------------------------------

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        return await self._both(
            link.platform,
            self.memory.link_guardian(link, limits),
            lambda: self.pg.link_guardian(link, limits),
            frozenset({link.child_account_id, link.guardian_account_id}),
        )

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        return await self._both(
            platform,
            self.memory.end_guardian_link(platform, link_id, now, reason),
            lambda: self.pg.end_guardian_link(platform, link_id, now, reason),
        )

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        return await self._both(
            platform,
            self.memory.sweep_aged_out(platform, now, limit),
            lambda: self.pg.sweep_aged_out(platform, now, limit),
        )

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        return await self._both(
            platform,
            self.memory.list_aging_out(platform, from_time, to_time, limit, after),
            lambda: self.pg.list_aging_out(platform, from_time, to_time, limit, after),
            frozenset(),
        )

    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        return await self._both(
            request.platform,
            self.memory.lock_account(request),
            lambda: self.pg.lock_account(request),
            frozenset({request.account_id}),
        )

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        return await self._both(
            platform,
            self.memory.unlock_account(platform, account_id, now, reason),
            lambda: self.pg.unlock_account(platform, account_id, now, reason),
            frozenset({account_id}),
        )

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        return await self._both(
            platform,
            self.memory.locked_status_indexes(platform, now),
            lambda: self.pg.locked_status_indexes(platform, now),
            frozenset(),
        )

    # ---- reads: from PostgreSQL, equal to the memory store's ---------------------------------

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        found = await self.pg.get_attestation(platform, account_id)
        assert found == await self.memory.get_attestation(platform, account_id)
        return found

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        found = await self.pg.attestation_subject(platform, account_id)
        assert found == await self.memory.attestation_subject(platform, account_id)
        return found

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        found = await self.pg.account_state(platform, account_id)
        assert found == await self.memory.account_state(platform, account_id)
        return found

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        found = await self.pg.audit_records(platform, start, stop)
        assert found == await self.memory.audit_records(platform, start, stop)
        return found

    async def status_bits(self, platform: str) -> bytes:
        found = await self.pg.status_bits(platform)
        assert found == await self.memory.status_bits(platform)
        return found

    # ---- the other operations: on the memory store, copied ----------------------------------

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        return await self._other(new.platform, self.memory.start_challenge(new, limits))

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self._other(
            platform, self.memory.confirm_sent(platform, challenge_id, account_id, now)
        )

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self._other(
            platform, self.memory.abort_challenge(platform, challenge_id, account_id, now)
        )

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        return await self._other(check.platform, self.memory.check_code(check, limits))

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        await self._other(attempt.platform, self.memory.begin_id_check(attempt, limits))

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        return await self._other(
            attempt.platform, self.memory.finish_id_check(attempt, answer, pending, limits)
        )

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        return await self._other(
            platform, self.memory.revoke_attestation(platform, account_id, now, reason)
        )

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        return await self._other(
            platform,
            self.memory.append_audit(
                platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
            ),
        )

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def pg_links(database: Database) -> PgLinks:
    return PgLinks(database, status_block=STATUS_BLOCK, status_keys=lambda: STATUS_KEY)


@pytest.fixture
def store(database: Database) -> Store:
    """The contract suites' stores, here: PostgreSQL checked against memory (`Mirrored`)."""
    mirrored: Store = Mirrored(memory_store(), pg_links(database))
    return mirrored


# The contract suites' tests that take a `store`, run here on `Mirrored`.
for _suite in (guardian_suite, locks_suite):
    for _name, _test in vars(_suite).items():
        if _name.startswith("test_") and "store" in inspect.signature(_test).parameters:
            assert _name not in globals(), _name
            globals()[_name] = _test


# --- a link retried under its id --------------------------------------------------------------


async def _log_size(db: Database, platform: str = PLATFORM) -> int:
    async with db.connection() as conn:
        return int(
            await conn.fetchval(
                "SELECT coalesce((SELECT size FROM log_heads WHERE platform = $1), 0)", platform
            )
        )


async def test_a_link_retried_under_its_id_returns_what_it_did(database: Database) -> None:
    """The same call again (a lost reply): the same link and attestation, no second token,
    no record; after a renewal by another call it answers the link as it is now; once the
    link ended, LINK_ALREADY_ENDED (not audited: the call itself was). A refused call
    retried is decided (and audited) again. Memory and PostgreSQL alike (Mirrored)."""
    store = Mirrored(memory_store(), pg_links(database))
    refused = link(token="tok-stale")
    with pytest.raises(GuardianNotVerified):
        await store.link_guardian(refused, LIMITS)
    await phone_guardian(store)
    call = link(link_id=refused.link_id)
    first = await store.link_guardian(call, LIMITS)
    size = await _log_size(database)

    assert first == await store.link_guardian(call, LIMITS)
    assert size == await _log_size(database)
    async with database.connection() as conn:
        assert 2 == await conn.fetchval(
            "SELECT next FROM status_heads WHERE platform = $1", PLATFORM
        )

    renewal = await store.link_guardian(link(now=NOW + 20), LIMITS)
    assert (first.link_id, True) == (renewal.link_id, renewal.renewed)
    replay = await store.link_guardian(call, LIMITS)
    assert (first.link_id, renewal.attestation, False) == (
        replay.link_id,
        replay.attestation,
        replay.renewed,
    )
    assert renewal == await store.link_guardian(link(now=NOW + 20), LIMITS)

    await store.end_guardian_link(PLATFORM, first.link_id, NOW + 30)
    size = await _log_size(database)
    with pytest.raises(LinkAlreadyEnded):
        await store.link_guardian(call, LIMITS)
    assert size == await _log_size(database)


# --- boundaries the contract suites do not reach ---------------------------------------------


async def test_children_born_the_same_day_age_out_in_account_id_byte_order(
    database: Database,
) -> None:
    """Sweeps of one link at a time end equal birthdays in account-id byte order (not the
    database's text collation), as the memory store does."""
    store = Mirrored(memory_store(), pg_links(database))
    limits = Limits(max_children_per_guardian=10)
    await phone_guardian(store, limits=limits)
    children = ["b", "a", "é", "Z", "😀", "ｚ", "a-1"]
    for n, child in enumerate(children):
        await store.link_guardian(link(child, now=NOW + 10 + n, aged_out_at=NOW + 100), limits)
    for _ in children:
        assert 1 == await store.sweep_aged_out(PLATFORM, NOW + 100, 1)
    ended = [json.loads(r)["account"] for r in await store.audit_records(PLATFORM)][-7:]
    assert sorted(children, key=lambda c: c.encode()) == ended


async def test_attestations_end_at_their_expiry_for_linking(database: Database) -> None:
    """At the instant a token expires it is no longer active: the child's own token is not
    revoked by a link made then (nothing live to supersede), and a guardian's token that
    expires then no longer makes a guardian."""
    store = Mirrored(memory_store(), pg_links(database))
    own = await phone_guardian(store, "kid-1", phone=PHONE_2)
    mum = await phone_guardian(store, now=NOW + 100)
    result = await store.link_guardian(link(now=own.expires_at), LIMITS)
    assert "active" == result.attestation.status
    assert 0 == _bit(await store.status_bits(PLATFORM), own.status_idx)
    with pytest.raises(GuardianNotVerified):
        await store.link_guardian(link("kid-2", now=mum.expires_at), LIMITS)


# --- concurrency: a second call waits for the first's locks and then decides -----------------


async def _held_then(
    database: Database,
    first: Callable[[Conn], Awaitable[object]],
    second: Callable[[], Awaitable[T]],
    then: Callable[[Conn], Awaitable[object]] | None = None,
) -> T:
    """Run `first` in a transaction left open, start `second` (its own connection), see it
    wait for the first's locks, run `then` in the first's transaction, commit it; return what
    `second` answers."""
    async with database.connection() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await first(holder)
            task = asyncio.ensure_future(second())
            pid = None
            for _ in range(2000):
                async with database.connection() as probe:
                    rows = await probe.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                found = {r["pid"] for r in rows} - {holder.get_server_pid()}
                if found or task.done():
                    pid = next(iter(found), None)
                    break
                await asyncio.sleep(0.005)
            assert pid is not None, "the second call did not wait for the first"
            if then is not None:
                await then(holder)
        finally:
            await tx.commit()
        return await task


_LINK_19 = (
    "SELECT * FROM xacthuc_link_guardian($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
    " $12, $13, $14, $15, $16, $17, $18, $19)"
)
_LINK_20 = _LINK_19[:-1] + ", $20)"


def _link_sql(pg: PgLinks, lk: GuardianLink, limits: Limits) -> Callable[[Conn], Awaitable[object]]:
    """The link function called as the store calls it; without a request digest with the 19
    arguments of the release before migration 0008 (its 20th parameter defaults to '')."""
    digest = (lk.request_digest,) if lk.request_digest else ()

    async def run(conn: Conn) -> object:
        a = lk.attestation
        return await conn.fetchrow(
            _LINK_20 if digest else _LINK_19,
            lk.platform,
            lk.link_id,
            lk.child_account_id,
            lk.guardian_account_id,
            lk.guardian_subject,
            lk.guardian_token_id,
            lk.guardian_ref,
            lk.relationship,
            lk.child_consent,
            lk.aged_out_at,
            lk.now,
            time_j(lk.now),
            a.token_id,
            a.issued_at,
            a.expires_at,
            a.method,
            limits.max_children_per_guardian,
            STATUS_KEY,
            STATUS_BLOCK,
            *digest,
        )

    return run


async def _guardians(database: Database, limits: Limits = LIMITS) -> PgLinks:
    store = Mirrored(memory_store(), pg_links(database))
    await phone_guardian(store, limits=limits)
    await phone_guardian(store, "dad", phone=PHONE_2, limits=limits)
    return store.pg


async def test_two_guardians_linking_one_child_at_once_cannot_both_pass(
    database: Database,
) -> None:
    """The second waits for the first's commit, then sees the child linked."""
    pg = await _guardians(database)
    by_dad = link(guardian="dad", subject=PHONE_2, token="tok-dad", now=NOW + 11)
    with pytest.raises(ChildAlreadyLinked):
        await _held_then(
            database, _link_sql(pg, link(), LIMITS), lambda: pg.link_guardian(by_dad, LIMITS)
        )
    assert ["kid-1"] == [e.account_id for e in await pg.list_aging_out(PLATFORM, 0, AGED + 1, 9)]


async def test_a_keyed_call_and_its_retry_at_once_issue_one_token(database: Database) -> None:
    """The retry (same call id and request digest) waits for the first call's locks, then
    answers what it did; the digest is kept with the token, and another one is refused."""
    pg = await _guardians(database)
    call = link(link_id="gl_key", digest="lr_" + "1" * 32)
    again = await _held_then(
        database, _link_sql(pg, call, LIMITS), lambda: pg.link_guardian(call, LIMITS)
    )
    assert ("gl_key", False) == (again.link_id, again.renewed)
    assert again.attestation == await pg.get_attestation(PLATFORM, "kid-1")
    async with database.connection() as conn:
        assert [("link:gl_key", call.request_digest)] == [
            tuple(r)
            for r in await conn.fetch(
                "SELECT issued_by, request_digest FROM status_tokens WHERE account = 'kid-1'"
            )
        ]
    with pytest.raises(IdempotencyKeyReused):
        await pg.link_guardian(dataclasses.replace(call, request_digest="lr_2"), LIMITS)


async def test_one_guardian_linking_two_children_at_once_keeps_the_cap(
    database: Database,
) -> None:
    """Cap 1: the second child's link waits, then finds the cap reached."""
    limits = Limits(max_children_per_guardian=1)
    pg = await _guardians(database, limits)
    with pytest.raises(GuardianChildLimit):
        await _held_then(
            database,
            _link_sql(pg, link("kid-1"), limits),
            lambda: pg.link_guardian(link("kid-2", now=NOW + 11), limits),
        )


async def test_a_withdrawal_during_a_renewal_ends_the_renewed_link(database: Database) -> None:
    """The withdrawal waits for the renewal, then ends the link and revokes the new token."""
    pg = await _guardians(database)
    first = await pg.link_guardian(link(), LIMITS)
    revoked = await _held_then(
        database,
        _link_sql(pg, link(now=NOW + 20), LIMITS),
        lambda: pg.end_guardian_link(PLATFORM, first.link_id, NOW + 21),
    )
    assert revoked is not None
    assert ("revoked", f"tok-kid-1-{NOW + 20}") == (revoked.status, revoked.token_id)


async def test_a_link_waits_for_an_issuing_step_without_deadlock(database: Database) -> None:
    """An issuing step (check_code, finish_id_check) takes the status head, then its
    account's row: a link of that account as guardian waits at the status head, holding no
    row the issuing step needs, and goes on once it commits (no deadlock)."""
    pg = await _guardians(database)

    async def issuing(conn: Conn) -> object:
        return await conn.fetchval(
            "SELECT xacthuc_next_status_idx($1, $2, $3)", PLATFORM, STATUS_KEY, STATUS_BLOCK
        )

    async def its_row(conn: Conn) -> object:
        return await conn.execute(
            "UPDATE attestations SET verified_at = verified_at WHERE platform = $1"
            " AND account = 'mum'",
            PLATFORM,
        )

    result = await _held_then(
        database, issuing, lambda: pg.link_guardian(link(), LIMITS), then=its_row
    )
    assert nth_index(3) == result.attestation.status_idx


async def test_two_first_locks_of_an_account_at_once_count_both(database: Database) -> None:
    """The second lock waits for the first, then replaces it and counts two temporary locks."""
    pg = pg_links(database)
    first = lock()

    async def hold(conn: Conn) -> object:
        return await conn.fetchrow(
            "SELECT * FROM xacthuc_lock_account($1, $2, $3, $4, $5, $6, $7, $8)",
            PLATFORM,
            first.account_id,
            first.kind.value,
            first.until,
            first.reason,
            first.request_reference,
            first.now,
            time_j(first.now),
        )

    second, changed = await _held_then(
        database, hold, lambda: pg.lock_account(lock(now=NOW + 1, days=30))
    )
    assert (2, True) == (second.temporary_locks, changed)


async def test_many_links_at_once_keep_every_rule(database: Database) -> None:
    """Twelve link calls at once (two guardians, each also a child of the other, cap 3): no
    deadlock, no error, each guardian has at most 3 children, each child at most one link,
    every issued index distinct, the log gap-free."""
    limits = Limits(max_children_per_guardian=3)
    pg = await _guardians(database, limits)
    calls = []
    for n in range(12):
        g, subject = ("mum", PHONE) if n % 2 else ("dad", PHONE_2)
        child = ["dad", "mum", *(f"kid-{k}" for k in range(5))][n % 7]
        if child == g:
            child = "kid-9"
        calls.append(
            pg.link_guardian(
                link(child, guardian=g, subject=subject, token=f"tok-{g}", now=NOW + 10 + n),
                limits,
            )
        )
    reasons = await asyncio.gather(*(_reason(c) for c in calls))
    assert set(reasons) <= {"ok", *_RACE_REFUSALS}, reasons
    assert "ok" in reasons
    async with database.connection() as conn:
        per_guardian = await conn.fetch(
            "SELECT guardian, count(*) AS n FROM guardian_links WHERE ended IS NULL"
            " GROUP BY guardian"
        )
        per_child = await conn.fetchval(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM guardian_links WHERE ended IS NULL"
            " GROUP BY child) AS c"
        )
        idx = await conn.fetch("SELECT idx FROM status_tokens")
        log = await conn.fetch("SELECT idx FROM audit_records ORDER BY idx")
    assert all(r["n"] <= 3 for r in per_guardian)
    assert 1 == per_child
    assert len(idx) == len({r["idx"] for r in idx})
    assert [r["idx"] for r in log] == list(range(len(log)))


_RACE_REFUSALS = {
    "GUARDIAN_CHILD_LIMIT",
    "CHILD_ALREADY_LINKED",
    "GUARDIAN_NOT_VERIFIED",  # a guardian who became a linked child meanwhile
}


# --- plans, unreachable server -----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "locked_status_indexes",
        "list_aging_out",
        "list_aging_out_after",
    ],
)
async def test_the_reads_are_index_scans(database: Database, query: str) -> None:
    """Each read can be answered from its indexes alone (no sequential scan even when the
    planner is told to avoid them)."""
    from xacthuc.adapters.store import pg_guardian as module

    sql, args = {
        "locked_status_indexes": (module._LOCKED_INDEXES, [PLATFORM, NOW]),
        "list_aging_out": (module._AGING_ALL, [PLATFORM, NOW, NOW + 1, 10]),
        "list_aging_out_after": (module._AGING_AFTER, [PLATFORM, NOW, NOW + 1, 10, NOW, "k"]),
    }[query]
    async with database.transaction() as conn:
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
    assert "Seq Scan" not in plan, plan


async def test_postgresql_out_of_reach_is_store_unavailable() -> None:
    """A refused connection: every operation raises StoreUnavailable (never INTERNAL)."""
    db = Database("postgresql://postgres@127.0.0.1:1/none", timeout=2)
    pg = pg_links(db)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: pg.link_guardian(link(), LIMITS),
        lambda: pg.end_guardian_link(PLATFORM, "gl-1", NOW),
        lambda: pg.sweep_aged_out(PLATFORM, NOW, 10),
        lambda: pg.list_aging_out(PLATFORM, 0, NOW, 10),
        lambda: pg.lock_account(lock()),
        lambda: pg.unlock_account(PLATFORM, "acc-1", NOW, "appeal_upheld"),
        lambda: pg.locked_status_indexes(PLATFORM, NOW),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()
    finally:
        await db.aclose()


# --- random histories -----------------------------------------------------------------------


async def test_random_histories_agree_with_the_memory_store(database: Database) -> None:
    """Random interleavings of links, renewals, withdrawals, sweeps, revocations, lists,
    phone verifications, locks and unlocks, with account ids that sort differently as text
    and as bytes: every call agrees with the memory store (Mirrored checks each)."""
    store = Mirrored(memory_store(), pg_links(database))
    rnd = random.Random(1471)
    limits = Limits(max_children_per_guardian=2, resend_cooldown_seconds=0)
    guardians = {"g-1": PHONE, "g-2": PHONE_2}
    children = ["c-1", "c-2", "Ｃ-3", "c-é", "c-😀", "C-0"]
    link_ids = ["gl-missing"]
    for account, phone in guardians.items():
        await phone_guardian(store, account, phone=phone, limits=limits)
    now = NOW + 10
    for step in range(300):
        now += rnd.choice([0, 1, 5, 60])
        kind = rnd.random()
        call: Awaitable[object]
        if kind < 0.35:
            g = rnd.choice(list(guardians))
            lk = link(
                rnd.choice(children),
                guardian=g,
                subject=guardians[g],
                token=f"tok-{g}" if rnd.random() < 0.9 else "tok-stale",
                now=now,
                link_id=f"gl-{step}",
                aged_out_at=now + rnd.choice([3, 30, 300, 3000]),
                child_consent=rnd.random() < 0.7,
            )
            link_ids.append(lk.link_id)
            call = store.link_guardian(lk, limits)
        elif kind < 0.45:
            call = store.end_guardian_link(PLATFORM, rnd.choice(link_ids), now)
        elif kind < 0.52:
            call = store.sweep_aged_out(PLATFORM, now, rnd.randint(0, 3))
        elif kind < 0.6:
            call = store.revoke_attestation(PLATFORM, rnd.choice([*children, "g-1"]), now, "fraud")
        elif kind < 0.68:
            lo = now + rnd.choice([-100, 0, 50])
            after = None
            if rnd.random() < 0.5:
                after = AgingOut(rnd.choice(children), lo + rnd.choice([0, 100]))
            call = store.list_aging_out(
                PLATFORM, lo, lo + rnd.choice([1, 500, 5000]), rnd.randint(1, 4), after
            )
        elif kind < 0.76:
            n = rnd.randint(0, 40)
            call = phone_guardian(store, rnd.choice(children), phone=phone_n(n), now=now)
        elif kind < 0.86:
            who = rnd.choice([*children, "g-1"])
            k = rnd.choice(list(LockKind))
            call = store.lock_account(
                dataclasses.replace(
                    lock(k, account=who, now=now, days=rnd.choice([7, 30])),
                    reason=rnd.choice(["unlawful_content_5_in_30_days", "national_security"]),
                )
            )
        elif kind < 0.93:
            call = store.unlock_account(
                PLATFORM, rnd.choice([*children, "g-1"]), now, "appeal_upheld"
            )
        else:
            call = store.locked_status_indexes(PLATFORM, now + rnd.choice([0, 8 * 86_400]))
        await _outcome(call)
    assert memory_state(store.memory, PLATFORM) == await store.pg.state(PLATFORM)
    assert await store.memory.audit_records(PLATFORM) == await store.pg.audit_records(PLATFORM)
