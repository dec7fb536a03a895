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
from prometheus_client import REGISTRY

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store import pg_audit
from xacthuc.adapters.store.checkpoints import PostgresCheckpointStore
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pg_audit import (
    NODES_QUERY,
    AuditRow,
    GroupAppender,
    NewRecord,
    PostgresAuditLog,
    PostgresLogReader,
    PostgresMerkle,
)
from xacthuc.adapters.store.postgres import Conn, Database
from xacthuc.domain import merkle
from xacthuc.domain.audit_verify import verify_export
from xacthuc.domain.b64 import b64url_decode, b64url_encode
from xacthuc.domain.checkpoint import (
    Checkpoint,
    format_vkey,
    open_note,
    parse_vkey,
    sign_note,
)
from xacthuc.domain.clock import FixedClock, rfc3339
from xacthuc.domain.errors import FieldInvalid, StoreUnavailable
from xacthuc.ports.audit_log import LogFilter
from xacthuc.verifiers.auditlog import AuditLog, erased_line, export_line, record_time

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


# ------------------------------------------------------ the reader side (AuditLog on PG)


def pg_audit_log(
    database: Database, key: Ed25519PrivateKey, *, at: float = 3600, every_records: int = 1000
) -> tuple[AuditLog, PostgresLogReader]:
    """A fresh process's AuditLog over PostgreSQL (nothing cached), `at` seconds after T0."""
    reader = PostgresLogReader(database)
    log = AuditLog(
        reader,
        PostgresCheckpointStore(database),
        key,
        FixedClock(T0 + at),
        origin="xacthuc.test/log",
        every_records=every_records,
        platforms=lambda: [P],
        metrics=PrometheusLogMetrics(),
    )
    return log, reader


async def test_a_fresh_process_answers_proofs_from_stored_hashes_without_reading_the_log(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process signs a checkpoint from the stored subtrees; a fresh one answers
    inclusion and consistency proofs reading O(log n) stored hashes and no record, and they
    verify against the signed checkpoints."""
    log = PostgresAuditLog(database)
    key = Ed25519PrivateKey.generate()
    n = 1500
    await log.append(P, [NewRecord(T0 + i, f"a{i}", "e", "ok") for i in range(1000)])
    bound = 2 * n.bit_length()  # hashes a root or a proof may read
    signer, signer_reader = pg_audit_log(database, key)
    older = await signer.current_checkpoint(P)
    # Each leaf hash read once (by extend), then the root's few subtrees.
    assert 1000 <= signer_reader.tree.hashes_read <= 1000 + bound
    await log.append(P, [NewRecord(T0 + i, f"a{i}", "e", "ok") for i in range(1000, n)])
    signer, signer_reader = pg_audit_log(database, key, at=7200)
    newer = await signer.current_checkpoint(P)
    assert (1000, n) == (older.tree_size, newer.tree_size)
    # Only the new leaves, then the roots and the consistency proof: not the log.
    assert 500 <= signer_reader.tree.hashes_read <= 500 + 3 * bound
    for cp in (older, newer):
        name, vkey = parse_vkey(signer.verifier_key(P))
        assert cp.tree_size == Checkpoint.parse(open_note(cp.note, name, vkey)).tree_size

    fresh, reader = pg_audit_log(database, key)
    extend = reader.tree.extend

    async def no_extension(platform: str) -> int:
        raise AssertionError("a signed tree size needs no extension")

    monkeypatch.setattr(reader.tree, "extend", no_extension)
    leaves = await log.leaf_hashes(P, 0, n)  # the reference, read by the test
    for index, size, cp in ((517, n, newer), (999, 1000, older), (0, 1000, older)):
        assert n == await fresh.tree_size(P, size)  # what is hashed: enough
        before = reader.tree.hashes_read
        proof = await fresh.inclusion_proof(P, index, size)
        assert reader.tree.hashes_read - before <= bound
        merkle.verify_inclusion(leaves[index], index, size, proof, cp.root_hash)
    before = reader.tree.hashes_read
    proof = await fresh.consistency_proof(P, 1000, n)
    assert reader.tree.hashes_read - before <= bound
    merkle.verify_consistency(1000, n, proof, older.root_hash, newer.root_hash)
    assert 0 == reader.log.rows_read  # no record read
    assert reader.tree.hashes_read <= 4 * bound
    monkeypatch.setattr(reader.tree, "extend", extend)
    await log.append(P, [NewRecord(T0 + n, "late", "e", "ok")])
    assert n + 1 == await fresh.tree_size(P, n + 1)  # beyond: the new leaf hashed, only it


async def test_a_log_found_shorter_than_its_checkpoint_is_refused(database: Database) -> None:
    """PostgreSQL restored from a backup older than the latest checkpoint: the checkpointer
    refuses (no fork), and goes on refusing once the log is written again over other
    records (they do not extend the signed tree)."""
    log = PostgresAuditLog(database)
    key = Ed25519PrivateKey.generate()
    await log.append(P, [NewRecord(T0 + i, f"a{i}", "e", "ok") for i in range(39)])
    signed = await pg_audit_log(database, key)[0].current_checkpoint(P)
    async with database.transaction() as conn:  # the backup of size 17
        await conn.execute("DELETE FROM audit_records WHERE idx >= 17")
        await conn.execute("DELETE FROM merkle_nodes WHERE (idx + 1) << level > 17")
        await conn.execute("UPDATE log_heads SET size = 17")
        await conn.execute("UPDATE merkle_heads SET size = 17")
    replica = pg_audit_log(database, key, at=7200)[0]
    assert signed == await replica.current_checkpoint(P)
    assert "the log has 17 records but checkpoint 39 was signed" in (replica.problem(P) or "")
    await log.append(P, [NewRecord(T0 + 100 + i, f"b{i}", "e", "ok") for i in range(30)])
    replica = pg_audit_log(database, key, at=7200)[0]
    assert signed == await replica.current_checkpoint(P)
    assert "no longer hash to the root of the signed checkpoint of tree size 39" in (
        replica.problem(P) or ""
    )
    assert [39] == [c.tree_size for c in await PostgresCheckpointStore(database).history(P)]


async def test_a_text_rewritten_in_postgres_keeps_its_hash_and_the_export_names_it(
    database: Database,
) -> None:
    """PostgreSQL stores each leaf hash with its record: a text rewritten behind the
    service's back changes no hash, so checkpoints go on extending the signed tree (never
    covering the new text), and the export ships the stored hash beside the new text:
    counted, and `audit verify` names the record."""
    log = PostgresAuditLog(database)
    key = Ed25519PrivateKey.generate()
    await log.append(P, [NewRecord(T0 + i, f"acc-{i}", "e", "ok") for i in range(6)])
    first = await pg_audit_log(database, key)[0].current_checkpoint(P)
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE audit_records SET body = replace(body, 'acc-2', 'acc-X') WHERE idx = 2"
        )
    await log.append(P, [NewRecord(T0 + 10, "acc-9", "e", "ok")])
    replica = pg_audit_log(database, key, at=7200)[0]
    second = await replica.current_checkpoint(P)
    assert (7, None) == (second.tree_size, replica.problem(P))
    merkle.verify_consistency(
        6, 7, await replica.consistency_proof(P, 6, 7), first.root_hash, second.root_hash
    )
    before = REGISTRY.get_sample_value("xacthuc_audit_leaf_mismatches_total", {"platform": P})
    lines = b"".join([c async for c in replica.export(P, 0, 7)]).splitlines(keepends=True)
    verdict = verify_export(lines, second.note, replica.verifier_key(P))
    assert (False, 2) == (verdict.ok, verdict.first_bad_index)
    after = REGISTRY.get_sample_value("xacthuc_audit_leaf_mismatches_total", {"platform": P})
    assert 1 == (after or 0) - (before or 0)


async def test_queries_by_account_event_and_time_return_exactly_the_matching_records(
    database: Database,
) -> None:
    """Every combination of filters, paged in small pages through opaque tokens, returns
    exactly the records a scan would, in index order; erased records never match; a page
    token continues only its own query."""
    log = PostgresAuditLog(database)
    key = Ed25519PrivateKey.generate()
    events = ("code_sent", "check_ok", "rare")
    records = [
        NewRecord(
            T0 + i * 7, f"acc-{i % 5}", events[0 if i % 9 else 2] if i % 2 else events[1], "ok"
        )
        for i in range(120)
    ]
    await log.append(P, records)
    await log.append("beta", records[:10])
    await log.erase_account(P, "acc-3", T0 + 10_000, request="T-1")
    audit = pg_audit_log(database, key)[0]
    stored = [(r.index, json.loads(r.body)) for r in await log.rows(P, 0, 200) if r.body]

    def expected(where: LogFilter) -> list[int]:
        return [
            i
            for i, rec in stored
            if (not where.account or rec["account"] == where.account)
            and (not where.event or rec["event"] == where.event)
            and (where.since is None or record_time(rec["time"]) >= where.since)
            and (where.until is None or record_time(rec["time"]) < where.until)
        ]

    filters = [
        LogFilter(account=a, event=e, since=s, until=u)
        for a in ("", "acc-1", "acc-3")
        for e in ("", "rare", "check_ok")
        for s, u in ((None, None), (T0 + 100, None), (None, T0 + 500.5), (T0 + 70, T0 + 400))
    ]
    for where in filters:
        got: list[int] = []
        token = ""
        for _ in range(200):
            page, token = await audit.query(P, where, page_size=4, page_token=token)
            assert len(page) <= 4
            got += [e.index for e in page]
            if not token:
                break
        assert expected(where) == got, where
    first, token = await audit.query(P, LogFilter(event="check_ok"), page_size=2)
    assert token
    for other_platform, other in (("beta", LogFilter(event="check_ok")), (P, LogFilter())):
        with pytest.raises(FieldInvalid) as e:
            await audit.query(other_platform, other, page_size=2, page_token=token)
        assert "page_token" == e.value.metadata["field"]
    forged = b64url_encode(b64url_decode(token)[:15] + b"\x09" + b64url_decode(token)[16:])
    with pytest.raises(FieldInvalid):
        await audit.query(P, LogFilter(event="check_ok"), page_size=2, page_token=forged)
    # Another replica (the same log key) continues the query.
    replica = pg_audit_log(database, key)[0]
    rest, _ = await replica.query(P, LogFilter(event="check_ok"), page_size=2, page_token=token)
    assert [first[-1].index + 2] == [rest[0].index]


async def test_a_report_reads_only_the_records_of_its_window(database: Database) -> None:
    """GetReport over a day reads that day's records (the time index), each once; the
    per-day report adds up."""
    log = PostgresAuditLog(database)
    day = 86_400.0
    await log.append(
        P,
        [
            NewRecord(
                T0 + i * 3600, f"acc-{i}", "attestation_issued", "ok", extra={"method": "phone_otp"}
            )
            for i in range(24 * 5)
        ],
    )
    audit, reader = pg_audit_log(database, Ed25519PrivateKey.generate())
    counts = await audit.report(P, T0 + 2 * day, T0 + 3 * day)
    assert (24, 24, 24) == (counts["records"], counts["attestations"], reader.log.rows_read)
    reader.log.rows_read = 0
    total, days = await audit.daily_report(P, T0 + day, T0 + 3 * day)
    assert 48 == total["records"] == sum(c["records"] for _, c in days)
    assert 48 == reader.log.rows_read
    reader.log.rows_read = 0
    assert 0 == (await audit.report(P, T0 + 10 * day, T0 + 11 * day))["records"]
    assert 0 == reader.log.rows_read
    assert (48, 72) == await audit.index_range(P, T0 + 2 * day, T0 + 3 * day, 120)
    assert (120, 120) == await audit.index_range(P, T0 + 10 * day, None, 120)


async def test_an_export_with_erased_records_verifies_and_marks_them(database: Database) -> None:
    """Erasure keeps the leaf hashes: the export (streamed through the cursor) shows each
    erased record as its hash and the marker, verifies against checkpoints signed before and
    after the erasure, and a report leaves the erased records out."""
    log = PostgresAuditLog(database)
    key = Ed25519PrivateKey.generate()
    await log.append(P, [NewRecord(T0 + i, f"acc-{i % 4}", "code_sent", "ok") for i in range(20)])
    audit = pg_audit_log(database, key)[0]
    before = await audit.current_checkpoint(P)
    assert 5 == await log.erase_account(P, "acc-2", T0 + 100, request="t-1")
    audit = pg_audit_log(database, key, at=7200)[0]
    after = await audit.current_checkpoint(P)
    assert 21 == after.tree_size
    lines = b"".join([c async for c in audit.export(P, 0, 21)]).splitlines(keepends=True)
    erased = [json.loads(line) for line in lines if b'"erased":true' in line]
    assert [2, 6, 10, 14, 18] == [e["index"] for e in erased]
    assert all("record" not in e for e in erased)
    for note, size in ((before.note, 20), (after.note, 21)):
        verdict = verify_export(lines[:size], note, audit.verifier_key(P))
        assert (True, 5) == (verdict.ok, verdict.erased), verdict.summary
    assert 15 == (await audit.report(P, None, None))["event:code_sent"]  # 20 - 5 erased
