"""The audit log in PostgreSQL (issue 10): the same bytes as the other stores, gap-free
indices under concurrent writers, all-or-nothing with the caller's transaction, indexed
queries and a streaming export. Against a real PostgreSQL (the session's database)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.adapters.store import pg_audit
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pg_audit import (
    NODES_QUERY,
    AuditRow,
    GroupAppender,
    NewRecord,
    PostgresAuditLog,
    PostgresMerkle,
)
from xacthuc.adapters.store.postgres import Conn, Database
from xacthuc.domain import merkle
from xacthuc.domain.audit_verify import verify_export
from xacthuc.domain.checkpoint import Checkpoint, format_vkey, sign_note
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.verifiers.auditlog import erased_line, export_line

T0 = 1_800_000_000.0
P = "alpha"


async def test_records_are_byte_for_byte_those_of_the_memory_store(database: Database) -> None:
    """Same calls, same records: index inside, sorted keys, extras, and a time that never
    goes backwards (the third call's clock is behind the second's)."""
    log = PostgresAuditLog(database)
    memory = MemoryStore()
    calls: list[tuple[float, dict[str, str | int]]] = [
        (T0, {"account": "a1", "event": "code_sent", "outcome": "ok"}),
        (T0 + 5.5, {"account": "a2", "event": "otp_failed", "outcome": "refused", "reason": "X"}),
        (T0 + 2, {"account": "a1", "event": "attestation_issued", "outcome": "ok", "n": 7}),
        (T0 + 9, {"account": 'tiếng việt "q"', "event": "e", "outcome": "ok", "ref": "r"}),
    ]
    for now, fields in calls:
        f = dict(fields)
        account, event, outcome = str(f.pop("account")), str(f.pop("event")), str(f.pop("outcome"))
        reason = str(f.pop("reason", ""))
        got = await log.append_audit(
            P, now, account=account, event=event, outcome=outcome, reason=reason, **f
        )
        want = await memory.append_audit(
            P, now, account=account, event=event, outcome=outcome, reason=reason, **f
        )
        assert want == got
    stored = await log.audit_records(P)
    assert await memory.audit_records(P) == stored
    assert rfc3339(T0 + 5.5) == json.loads(stored[2])["time"]  # moved up, not back
    rows = await log.rows(P, 0, 4)
    assert [merkle.leaf_hash(r.encode()) for r in stored] == [r.leaf_hash for r in rows]
    assert [merkle.leaf_hash(r.encode()) for r in stored] == await log.leaf_hashes(P, 0, 4)
    assert stored[1:3] == await log.audit_records(P, 1, 3)
    assert stored[-2:] == await log.audit_records(P, -2)
    assert [] == await log.audit_records("beta")


async def test_concurrent_writers_get_gap_free_unique_indices(database_url: str) -> None:
    """Eight writers on eight connections append batches at once: indices 0..n-1, each
    exactly once, every record's seq its index, times never going backwards."""
    db = Database(database_url, min_size=8, max_size=8)
    await db.open()
    log = PostgresAuditLog(db)
    rng = random.Random(7)
    plan = [[rng.randint(1, 3) for _ in range(20)] for _ in range(8)]

    async def writer(w: int) -> list[tuple[int, int]]:
        got = []
        for b, n in enumerate(plan[w]):
            batch = [
                NewRecord(T0 + rng.random(), f"w{w}", "e", "ok", extra={"b": b, "k": k})
                for k in range(n)
            ]
            got.append((await log.append("conc", batch), n))
        return got

    try:
        ranges = [r for rs in await asyncio.gather(*(writer(w) for w in range(8))) for r in rs]
        total = sum(n for rs in plan for n in rs)
        covered = sorted(i for first, n in ranges for i in range(first, first + n))
        assert list(range(total)) == covered
        assert total == await log.size("conc")
        records = [json.loads(r) for r in await log.audit_records("conc")]
        assert list(range(total)) == [r["seq"] for r in records]
        times = [r["time"] for r in records]
        assert sorted(times) == times
    finally:
        await db.aclose()


async def test_an_append_commits_or_rolls_back_with_the_callers_transaction(
    database: Database,
) -> None:
    log = PostgresAuditLog(database)

    async def refused_after_appending() -> None:
        async with database.transaction() as conn:
            assert 0 == await log.append(P, [NewRecord(T0, "a", "e", "ok")] * 3, conn=conn)
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await refused_after_appending()
    assert 0 == await log.size(P)
    assert [] == await log.audit_records(P)
    async with database.transaction() as conn:
        assert 0 == await log.append(P, [NewRecord(T0, "a", "e", "ok")], conn=conn)
        await conn.execute("INSERT INTO checkpoint_heads (platform, size) VALUES ($1, 0)", P)
    assert 1 == await log.size(P)  # the indices given back were taken again, no gap
    assert 1 == await log.append_audit(P, T0, account="b", event="e", outcome="ok")


async def test_queries_by_account_event_and_time_page_in_index_order(database: Database) -> None:
    log = PostgresAuditLog(database)
    for i in range(30):
        await log.append_audit(
            P, T0 + i, account=f"acc-{i % 3}", event=("a", "b")[i % 2], outcome="ok"
        )
    await log.append_audit("beta", T0, account="acc-0", event="a", outcome="ok")
    by_account = await log.query(P, account="acc-0")
    assert list(range(0, 30, 3)) == [r.index for r in by_account]
    page = await log.query(P, account="acc-0", after=9, limit=2)
    assert [12, 15] == [r.index for r in page]
    assert [0, 6, 12, 18, 24] == [r.index for r in await log.query(P, account="acc-0", event="a")]
    assert [10, 11, 12] == [r.index for r in await log.query(P, since=T0 + 10, until=T0 + 13)]
    assert all(
        json.loads(r.body or "")["account"] == "acc-0"
        for r in await log.query(P, account="acc-0", limit=1000)
    )
    async with database.connection() as conn:
        for where, index in (
            ("account = 'acc-0' AND idx > 5 ORDER BY idx", "audit_records_account"),
            ("event = 'a'", "audit_records_event"),
            ("recorded_at >= now()", "audit_records_time"),
        ):
            assert await indexes_used(conn, where) <= await index_family(conn, index), where


async def index_family(conn: Conn, index: str) -> set[str]:
    """A partitioned table's index and its copies on every partition (migration 0005)."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        index,
    )
    return {index, *(str(r["relname"]) for r in rows)}


async def indexes_used(conn: Conn, where: str) -> set[str]:
    """The indexes the plan of a query of audit_records (platform alpha) reads, sequential
    scans off; a sequential scan anyway (no index fits) fails."""
    await conn.execute("SET enable_seqscan = off")
    try:
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT idx FROM audit_records WHERE platform = 'alpha' AND "  # noqa: S608 (constants)
                + where
            )
        )
    finally:
        await conn.execute("RESET enable_seqscan")
    assert "Seq Scan" not in plan, plan
    used = set(re.findall(r" using (\S+)", plan))
    assert used, plan
    return used


async def test_export_streams_through_a_cursor_in_index_order(database: Database) -> None:
    log = PostgresAuditLog(database)
    await log.append(P, [NewRecord(T0 + i, f"a{i}", "e", "ok") for i in range(25)])
    streamed = [r async for r in log.export(P, 3, 20, prefetch=4)]
    assert await log.rows(P, 3, 20) == streamed
    assert list(range(3, 20)) == [r.index for r in streamed]


async def test_roots_and_proofs_from_stored_hashes_equal_the_in_memory_tree(
    database: Database,
) -> None:
    """Extended in uneven steps (a batch smaller than the step too), the stored subtrees give
    the same roots and proofs as `MerkleCache` over the same leaves, and they verify."""
    log = PostgresAuditLog(database)
    tree = PostgresMerkle(database, batch=7)
    cache = merkle.MerkleCache()
    total = 0
    for step in (1, 4, 11, 1, 33, 14):
        await log.append(P, [NewRecord(T0 + total + i, f"a{i}", "e", "ok") for i in range(step)])
        total += step
        assert total == await tree.extend(P)
        assert total == await tree.extend(P)  # nothing new: nothing stored twice
        for leaf in await log.leaf_hashes(P, cache.size, total):
            cache.append(leaf)
        for size in {1, total // 2 or 1, total - 1 or 1, total}:
            root = await tree.root(P, size)
            assert cache.root(size) == root
            for index in {0, size // 3, size - 1}:
                proof = await tree.inclusion_proof(P, index, size)
                assert cache.inclusion_proof(index, size) == proof
                merkle.verify_inclusion(cache.leaf(index), index, size, proof, root)
            for older in {1, size // 2 or 1, size}:
                proof = await tree.consistency_proof(P, older, size)
                assert cache.consistency_proof(older, size) == proof
                merkle.verify_consistency(older, size, proof, cache.root(older), root)
    with pytest.raises(ValueError, match="beyond the hashed part"):
        await tree.root(P, total + 1)
    async with database.connection() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM merkle_nodes WHERE platform = $1", P)
    assert total - bin(total).count("1") == stored  # every complete subtree above the leaves


async def test_a_proof_reads_a_logarithmic_number_of_hashes_by_index(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proof asks for O(log n) stored hashes, in one query that the planner answers
    through the primary keys: the whole log is never read."""
    log = PostgresAuditLog(database)
    tree = PostgresMerkle(database)
    n = 1000
    await log.append(P, [NewRecord(T0, f"a{i}", "e", "ok") for i in range(n)])
    await tree.extend(P)
    asked: list[int] = []
    fetch = pg_audit._fetch_nodes

    async def counting(conn: Conn, platform: str, keys: Sequence[tuple[int, int]]) -> Any:
        asked.append(len(keys))
        return await fetch(conn, platform, keys)

    monkeypatch.setattr(pg_audit, "_fetch_nodes", counting)
    await tree.inclusion_proof(P, 517, n)
    await tree.consistency_proof(P, 300, n)
    await tree.root(P, n)
    assert 3 == len(asked)  # one query each
    assert all(k <= 2 * n.bit_length() for k in asked), asked
    async with database.connection() as conn:
        await conn.execute("ANALYZE audit_records, merkle_nodes")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch("EXPLAIN " + NODES_QUERY, P, [516, 517], [1, 2, 3], [1, 2, 3])
        )
        # Partitioned by month (migration 0005): the month that holds the records is read
        # through its primary key; the planner may scan an empty month's partition instead.
        for scanned in re.findall(r"Seq Scan on (\S+)", plan):
            assert 0 == await conn.fetchval(f'SELECT count(*) FROM "{scanned}"'), plan  # noqa: S608 (a name from the plan)
        records_pkeys = await index_family(conn, "audit_records_pkey")
    used = set(re.findall(r" using (\S+)", plan))
    assert used & records_pkeys, plan
    assert used <= {*records_pkeys, "merkle_nodes_pkey"}, plan
    assert "merkle_nodes_pkey" in used, plan


async def test_group_commit_sends_concurrent_appends_together(database: Database) -> None:
    """64 concurrent calls, far fewer statements; each call gets its own consecutive
    indices and its records are where it was told."""
    log = PostgresAuditLog(database)
    group = GroupAppender(log, max_records=50)

    async def call(c: int) -> tuple[int, int]:
        records = [NewRecord(T0, f"c{c}", "e", "ok", extra={"k": k}) for k in range(c % 3 + 1)]
        return await group.append(P, records), len(records)

    got = await asyncio.gather(*(call(c) for c in range(64)))
    total = sum(n for _, n in got)
    assert list(range(total)) == sorted(i for first, n in got for i in range(first, first + n))
    assert group.commits < 64 // 4
    stored = [json.loads(r) for r in await log.audit_records(P)]
    for c, (first, n) in enumerate(got):
        assert [(f"c{c}", k) for k in range(n)] == [
            (r["account"], r["k"]) for r in stored[first : first + n]
        ]


async def test_group_commit_fails_a_whole_batch_with_unavailable_and_writes_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PostgresAuditLog(database)
    group = GroupAppender(log)
    fail = True
    append = log.append

    async def flaky(platform: str, records: Sequence[NewRecord], **kw: Any) -> int:
        if fail:
            raise StoreUnavailable()
        return await append(platform, records, **kw)

    monkeypatch.setattr(log, "append", flaky)
    results = await asyncio.gather(
        *(group.append(P, [NewRecord(T0, "a", "e", "ok")]) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert 0 == await log.size(P)
    fail = False
    assert 0 == await group.append(P, [NewRecord(T0, "a", "e", "ok")])  # serves again


def export_of(rows: Sequence[AuditRow]) -> list[bytes]:
    """Export lines as the service writes them, erased records as their hash and marker."""
    return [
        export_line(r.index, r.body, r.leaf_hash)
        if r.body is not None
        else erased_line(r.index, r.leaf_hash)
        for r in rows
    ]


async def test_erasing_an_account_keeps_the_tree_and_the_export_verifies(
    database: Database,
) -> None:
    """Law 91/2025: the records naming the account lose their contents, keep their leaf
    hashes; the erasure is audited; the export, erased lines marked, still verifies against
    a checkpoint signed before the erasure, and the verdict counts them."""
    log = PostgresAuditLog(database)
    tree = PostgresMerkle(database)
    await log.append(P, [NewRecord(T0 + i, f"acc-{i % 3}", "code_sent", "ok") for i in range(12)])
    await tree.extend(P)
    key = Ed25519PrivateKey.generate()
    origin = f"xacthuc.test/log/{P}"
    note = sign_note(Checkpoint(origin, 12, await tree.root(P, 12)).body(), origin, key)
    vkey = format_vkey(origin, key.public_key())

    assert 4 == await log.erase_account(P, "acc-1", T0 + 100, request="ticket-7")
    assert 0 == await log.erase_account(P, "acc-1", T0 + 101, request="ticket-8")  # none left
    rows = await log.rows(P, 0, 13)
    assert [1, 4, 7, 10] == [r.index for r in rows if r.body is None]
    assert all("acc-1" not in (r.body or "") for r in rows)
    erasure = json.loads(rows[12].body or "")
    assert ("records_erased", "", 4, "ticket-7") == (
        erasure["event"],
        erasure["account"],
        erasure["count"],
        erasure["request"],
    )
    async with database.connection() as conn:
        assert 4 == await conn.fetchval(
            "SELECT count(*) FROM audit_records WHERE erased_at IS NOT NULL"
        )
    verdict = verify_export(export_of(rows[:12]), note, vkey)
    assert verdict.ok, verdict.summary
    assert 4 == verdict.erased
    assert any("4 erased record(s)" in n for n in verdict.notes)
    # An erased line whose leaf hash was changed breaks the root; one without it, its line.
    forged = export_of(rows[:12])
    forged[4] = erased_line(4, bytes(32))
    assert not verify_export(forged, note, vkey).ok
    forged[4] = b'{"index":4,"erased":true}\n'
    bad = verify_export(forged, note, vkey)
    assert (False, 4) == (bad.ok, bad.first_bad_index)
    assert "lacks its 32-byte `leaf_hash`" in bad.summary


async def test_retention_erases_records_older_than_the_cut_off(database: Database) -> None:
    log = PostgresAuditLog(database)
    await log.append(P, [NewRecord(T0 + i * 86_400, "a", "e", "ok") for i in range(5)])
    assert 2 == await log.erase_before(P, T0 + 2 * 86_400, T0 + 10 * 86_400)
    rows = await log.rows(P, 0, 6)
    assert [None, None] == [r.body for r in rows[:2]]
    assert all(r.body is not None for r in rows[2:])
    expired = json.loads(rows[5].body or "")
    assert ("records_expired", 2, rfc3339(T0 + 2 * 86_400)) == (
        expired["event"],
        expired["count"],
        expired["before"],
    )
    assert 0 == await log.erase_before(P, T0 + 2 * 86_400, T0 + 11 * 86_400)
