"""Retention and erasure of the audit log in PostgreSQL (issue 10; P10, Law 91/2025): the
monthly partitions of migration 0005 (from an empty database and from one with records on
0001), an account's erasure (every record naming it, nothing else), retention in bounded
batches with its watermark, and the job that runs both. Against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from xacthuc.adapters.store import pg_audit
from xacthuc.adapters.store.pg_audit import NewRecord, PostgresAuditLog, PostgresMerkle
from xacthuc.adapters.store.pg_retention import DAY, AuditRetention
from xacthuc.adapters.store.postgres import (
    PARTITIONS_AHEAD,
    Conn,
    Database,
    check_schema,
    migrate,
    schema_version,
)
from xacthuc.domain import merkle
from xacthuc.domain.clock import FixedClock, rfc3339
from xacthuc.domain.errors import StoreUnavailable

from .test_pg_audit import index_family

T0 = 1_800_000_000.0  # 2027-01-15
P = "alpha"
COLUMNS = "platform, idx, recorded_at, event, account, body, leaf_hash, erased_at"


def month_of(t: datetime) -> str:
    return f"audit_records_{t.year:04d}_{t.month:02d}"


def months_from(t: datetime, n: int) -> list[str]:
    names, year, month = [], t.year, t.month
    for _ in range(n):
        names.append(f"audit_records_{year:04d}_{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return names


async def partitions(conn: Conn) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_records'::regclass"
    )
    return {str(r["relname"]) for r in rows}


async def placed(conn: Conn) -> dict[tuple[str, int], str]:
    """(platform, index) -> the partition holding the record."""
    rows = await conn.fetch(
        "SELECT platform, idx, tableoid::regclass::text AS part FROM audit_records"
    )
    return {(str(r["platform"]), int(r["idx"])): str(r["part"]) for r in rows}


# ------------------------------------------------------------------------------ migration


async def test_a_fresh_database_has_this_month_and_the_next_ones_and_an_empty_default(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await migrate(conn)
        now = await conn.fetchval("SELECT now()")
        have = await partitions(conn)
        assert set(months_from(now.astimezone(UTC), PARTITIONS_AHEAD + 1)) <= have
        assert "audit_records_default" in have
        assert 0 == await conn.fetchval("SELECT count(*) FROM audit_records_default")
        primary = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'audit_records'::regclass AND contype = 'p'"
        )
        assert "PRIMARY KEY (platform, idx, recorded_at)" == primary
    finally:
        await conn.close()


async def test_migrating_a_database_with_records_on_0001_keeps_every_record(
    new_database: Callable[[], str],
) -> None:
    """Records of several months and platforms, one erased the 0001 way: after 0004 every
    row is there byte for byte, in its month's partition, the default partition is empty, the
    tree's root is the same and the log goes on from the next index."""
    url = new_database()
    conn = await asyncpg.connect(url, timeout=5)
    try:
        assert [1] == [m.version for m in await migrate(conn, 1)]
        db = Database(url, min_size=0, max_size=2, check=False)
        try:
            log = PostgresAuditLog(db)
            times = [T0 - 400 * DAY, T0 - 330 * DAY, T0 - 40 * DAY, T0, T0 + 1, T0 + 90 * DAY]
            await log.append(
                P, [NewRecord(t, f"acc-{i % 2}", "code_sent", "ok") for i, t in enumerate(times)]
            )
            await log.append("beta", [NewRecord(T0 - 40 * DAY, "acc-0", "code_sent", "ok")])
            await conn.execute(  # the 0001 way: body NULL, erased_at set
                "UPDATE audit_records SET body = NULL, erased_at = now() WHERE platform = $1 AND idx = 1",
                P,
            )
            before = await conn.fetch(f"SELECT {COLUMNS} FROM audit_records ORDER BY platform, idx")  # noqa: S608 (constants)
            leaves = [bytes(r["leaf_hash"]) for r in before if r["platform"] == P]

            applied = await migrate(conn)

            assert list(range(2, schema_version() + 1)) == [m.version for m in applied]
            await check_schema(conn)
            after = await conn.fetch(f"SELECT {COLUMNS} FROM audit_records ORDER BY platform, idx")  # noqa: S608 (constants)
            assert [tuple(r) for r in before] == [tuple(r) for r in after]
            where = await placed(conn)
            for r in after:
                assert (
                    month_of(r["recorded_at"].astimezone(UTC)) == where[(r["platform"], r["idx"])]
                )
            assert 0 == await conn.fetchval("SELECT count(*) FROM audit_records_default")
            assert await conn.fetchval("SELECT to_regclass('audit_records_0001')") is None

            assert 6 == await log.append_audit(P, T0 + 2, account="acc-9", event="e", outcome="ok")
            tree = PostgresMerkle(db)
            assert 7 == await tree.extend(P)
            cache = merkle.MerkleCache()
            for h in [*leaves, (await log.leaf_hashes(P, 6, 7))[0]]:
                cache.append(h)
            assert cache.root() == await tree.root(P, 7)
        finally:
            await db.aclose()
    finally:
        await conn.close()


async def test_a_record_of_a_month_without_partition_lands_in_the_default_then_moves(
    database: Database,
) -> None:
    """No append can fail for want of a partition; `ensure_partitions` (the job, `xacthuc db
    migrate`) makes the month's partition and moves the record into it."""
    log = PostgresAuditLog(database)
    far = datetime(2031, 5, 20, tzinfo=UTC).timestamp()
    await log.append(P, [NewRecord(T0, "a", "e", "ok"), NewRecord(far, "b", "e", "ok")])
    async with database.connection() as conn:
        assert "audit_records_default" == (await placed(conn))[(P, 1)]
    assert 1 <= await log.ensure_partitions(T0, 0)
    async with database.connection() as conn:
        assert "audit_records_2031_05" == (await placed(conn))[(P, 1)]
        assert 0 == await conn.fetchval("SELECT count(*) FROM audit_records_default")
    assert [r.index for r in await log.rows(P, 0, 2)] == [0, 1]
    assert 0 == await log.ensure_partitions(T0, 0)  # nothing left to make


async def test_partition_maintenance_waits_at_most_its_lock_timeout(
    database: Database, database_url: str
) -> None:
    """A reader holding the default partition (a long export) delays the job by at most its
    lock timeout, then the job gives up for this round (StoreUnavailable), appends unharmed."""
    log = PostgresAuditLog(database)
    reader = await asyncpg.connect(database_url, timeout=5)
    try:
        async with reader.transaction():
            await reader.execute("LOCK TABLE audit_records_default IN ACCESS SHARE MODE")
            with pytest.raises(StoreUnavailable):
                await log.ensure_partitions(
                    datetime(2035, 1, 1, tzinfo=UTC).timestamp(), 0, lock_timeout=0.2
                )
            assert 0 == await log.append_audit(P, T0, account="a", event="e", outcome="ok")
    finally:
        await reader.close()
    assert 1 == await log.ensure_partitions(datetime(2035, 1, 1, tzinfo=UTC).timestamp(), 0)


# -------------------------------------------------------------------------------- erasure


async def test_erasing_an_account_erases_every_record_naming_it_and_nothing_else(
    database: Database,
) -> None:
    """Its own records, a guardian link naming it as the guardian, an auditor's query about
    it: contents and account field gone, leaf hashes kept. Another account, the same account
    id on another platform and the erasure record itself keep theirs; the erasure record
    names no account."""
    log = PostgresAuditLog(database)
    link = {"guardian": "g_x", "guardian_account": "acc-1", "relationship": "parent"}
    await log.append(
        P,
        [
            NewRecord(T0, "acc-1", "code_sent", "ok"),
            NewRecord(T0, "acc-2", "code_sent", "ok"),
            NewRecord(T0, "child-1", "guardian_link_created", "ok", extra=link),
            NewRecord(T0, "child-1", "consent_recorded", "ok", extra={"party": "guardian"}),
            NewRecord(
                T0, "", "auditor_query_audit_records", "ok", extra={"query_account": "acc-1"}
            ),
            NewRecord(
                T0, "", "auditor_query_audit_records", "ok", extra={"query_account": "acc-2"}
            ),
            NewRecord(T0, "acc-1", "attestation_issued", "ok", extra={"method": "phone_otp"}),
        ],
    )
    await log.append("beta", [NewRecord(T0, "acc-1", "code_sent", "ok")])
    hashes = await log.leaf_hashes(P, 0, 7)

    assert 4 == await log.erase_account(P, "acc-1", T0 + 9, request="DSR-7", by="operator")

    rows = await log.rows(P, 0, 8)
    assert [0, 2, 4, 6] == [r.index for r in rows if r.body is None]
    assert hashes == [r.leaf_hash for r in rows[:7]]
    assert all("acc-1" not in (r.body or "") for r in rows)
    erasure = json.loads(rows[7].body or "")
    assert {
        "event": "records_erased",
        "account": "",
        "count": 4,
        "request": "DSR-7",
        "by": "operator",
    }.items() <= erasure.items()
    async with database.connection() as conn:
        accounts = await conn.fetch(
            "SELECT idx, account FROM audit_records WHERE platform = $1 AND erased_at IS NOT NULL",
            P,
        )
        assert {""} == {r["account"] for r in accounts}
    assert (await log.audit_records("beta"))[0] != ""
    assert 0 == await log.erase_account(P, "acc-1", T0 + 10, request="DSR-7")  # retry: nothing
    assert 8 == await log.size(P)  # and no second record
    with pytest.raises(ValueError, match="names an account"):
        await log.erase_account(P, "", T0, request="DSR-8")


async def test_an_erasure_reads_only_through_indexes(database: Database) -> None:
    """The account's records and the two kinds of records naming it elsewhere are found by
    migration 0005's indexes (a bitmap OR of the three), never by a scan of the log; only
    empty partitions may be scanned."""
    log = PostgresAuditLog(database)
    for _ in range(4):
        await log.append(P, [NewRecord(T0, f"acc-{i}", "code_sent", "ok") for i in range(500)])
    async with database.connection() as conn:
        await conn.execute("ANALYZE audit_records")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + pg_audit._ERASE_ACCOUNT, P, "acc-1")
        )
        for scanned in re.findall(r"Seq Scan on (\S+)", plan):
            assert 0 == await conn.fetchval(f'SELECT count(*) FROM "{scanned}"'), plan  # noqa: S608 (a name from the plan)
        families = [
            await index_family(conn, name)
            for name in (
                "audit_records_account",
                "audit_records_guardian_account",
                "audit_records_query_account",
            )
        ]
    for family in families:
        assert any(f" on {name} " in plan + " " for name in family), plan


# ------------------------------------------------------------------------------ retention


async def test_retention_erases_in_bounded_batches_and_keeps_a_watermark(
    database: Database,
) -> None:
    log = PostgresAuditLog(database)
    await log.append(P, [NewRecord(T0 + i * DAY, f"acc-{i}", "code_sent", "ok") for i in range(25)])
    assert 1 == await log.erase_account(P, "acc-3", T0 + 30 * DAY, request="DSR-1")  # record 3
    cut = T0 + 10 * DAY
    batches: list[int] = []
    while not batches or batches[-1] == 4:
        batches.append(await log.erase_before(P, cut, T0 + 40 * DAY, limit=4))
    assert [4, 4, 1] == batches  # records 0-9 but 3, already erased
    rows = await log.rows(P, 0, 25)
    assert [r.body is None for r in rows] == [True] * 10 + [False] * 15
    async with database.connection() as conn:
        mark = await conn.fetchval("SELECT expired_before FROM log_heads WHERE platform = $1", P)
    assert datetime.fromtimestamp(cut, UTC) == mark
    expired = [json.loads(t) for t in await log.audit_records(P, 26)]
    assert [(e["event"], e["count"], e["before"], e["account"]) for e in expired] == [
        ("records_expired", n, rfc3339(cut), "") for n in (4, 4, 1)
    ]
    assert 0 == await log.erase_before(P, cut, T0 + 41 * DAY)  # nothing more, no record
    assert 29 == await log.size(P)


async def test_the_retention_job_erases_only_records_past_retention_on_every_platform(
    database: Database,
) -> None:
    log = PostgresAuditLog(database)
    for platform in ("alpha", "beta"):
        await log.append(
            platform, [NewRecord(T0 + i * DAY, "acc", "code_sent", "ok") for i in range(10)]
        )
    now = T0 + 40 * DAY
    kept = AuditRetention(log, FixedClock(now), days=0)
    assert 0 == await kept.run_once()  # 0 keeps everything
    assert all(await log.audit_records("alpha"))
    job = AuditRetention(log, FixedClock(now), days=35, batch=2)
    assert 10 == await job.run_once()  # 5 of each: days 0-4 are more than 35 days old
    for platform in ("alpha", "beta"):
        rows = await log.rows(platform, 0, 10)
        assert [r.body is None for r in rows] == [True] * 5 + [False] * 5
        expired = [json.loads(t) for t in await log.audit_records(platform, 10)]
        assert [2, 2, 1] == [e["count"] for e in expired]
    assert 0 == await job.run_once()
    async with database.connection() as conn:  # partitions ahead of the job's clock
        made = await partitions(conn)
    assert set(months_from(datetime.fromtimestamp(now, UTC), PARTITIONS_AHEAD + 1)) <= made


async def test_two_retention_passes_at_once_erase_and_count_each_record_once(
    database: Database,
) -> None:
    """Two machines' worker 0 run the job together: every old record erased once, the
    counts of their `records_expired` records add up to the records erased."""
    log = PostgresAuditLog(database)
    await log.append(P, [NewRecord(T0 + i, "acc", "code_sent", "ok") for i in range(200)])
    now = T0 + 100 * DAY
    jobs = [AuditRetention(log, FixedClock(now), days=30, batch=16) for _ in range(2)]
    erased = await asyncio.gather(*(j.run_once() for j in jobs))
    assert 200 == sum(erased)
    expired = [json.loads(t) for t in await log.audit_records(P, 200)]
    assert 200 == sum(e["count"] for e in expired)
    assert all(r.body is None for r in await log.rows(P, 0, 200))


def test_production_keeps_records_at_least_24_months() -> None:
    from xacthuc.server.config import ConfigError, Settings

    with pytest.raises(
        ConfigError, match="XACTHUC_AUDIT_RETENTION_DAYS needs XACTHUC_DATABASE_URL"
    ):
        Settings.load(audit_retention_days=800)
    with pytest.raises(ConfigError, match="XACTHUC_AUDIT_RETENTION_DAYS=30 is under 730 days"):
        Settings.load(
            mode="production",
            audit_retention_days=30,
            store_url="redis://127.0.0.1:6379/0",
            database_url="postgresql://x@127.0.0.1/db",
        )
