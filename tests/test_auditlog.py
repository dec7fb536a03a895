"""The verifiable audit log: tree cache, proofs, checkpoints (CAS, never inconsistent), export,
offline verification and reports. Stores run once per backend (memory and real Redis)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store.checkpoints import (
    MemoryCheckpointStore,
    PostgresCheckpointStore,
    checkpoint_store_for,
)
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.pg_audit import PostgresLogReader
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain import merkle
from xacthuc.domain.audit_verify import UsageError, verify_export
from xacthuc.domain.checkpoint import Checkpoint, format_vkey, open_note, parse_vkey
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import FieldInvalid
from xacthuc.domain.merkle import MerkleCache
from xacthuc.domain.tokens import SigningKey
from xacthuc.ports.audit_log import LogFilter, LogReader
from xacthuc.ports.checkpoints import CheckpointStore, StoredCheckpoint
from xacthuc.ports.store import Store
from xacthuc.verifiers.auditlog import (
    EXPORT_CHUNK_BYTES,
    AuditLog,
    ReportCounter,
    export_line,
)
from xacthuc.verifiers.log_reader import StoreLogReader

from .conftest import emptied_database

T0 = 1_800_000_000.0
P = "alpha"


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"leaf {i}".encode()) for i in range(n)]


def make_log(
    store: Store,
    checkpoints: CheckpointStore | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    clock: FixedClock | None = None,
    every_records: int = 1000,
    every_seconds: float = 60,
    read_batch: int = 5000,
) -> AuditLog:
    return AuditLog(
        log_reader(store, read_batch),
        checkpoints if checkpoints is not None else checkpoint_store_for(store),
        key or Ed25519PrivateKey.generate(),
        clock or FixedClock(T0),
        origin="xacthuc.test/log",
        every_records=every_records,
        every_seconds=every_seconds,
        platforms=lambda: [P],
        metrics=PrometheusLogMetrics(),
    )


def log_reader(store: Store, read_batch: int = 5000) -> LogReader:
    """A fresh process's reader of the store's log, as the service composes it: from
    PostgreSQL for the pair store, else a tree in process over the records."""
    db = audit_database(store)
    if db is not None:
        return PostgresLogReader(db)
    return StoreLogReader(store, read_batch=read_batch)


async def append(store: Store, n: int, platform: str = P, event: str = "code_sent") -> None:
    for i in range(n):
        await store.append_audit(platform, T0 + i, account=f"acc-{i}", event=event, outcome="ok")


def audit_database(store: Store) -> Database | None:
    """The database holding the store's audit log (the pair store), if any."""
    store = getattr(store, "inner", store)  # conftest.ServiceIds: the pair on a cluster
    if isinstance(store, PairStore):
        return store.database
    return None


async def rewrite(store: Store, index: int, record: str, platform: str = P) -> None:
    """Change a stored record behind the store's back (what an intruder in Redis or in
    PostgreSQL could do)."""
    db = audit_database(store)
    if db is not None:
        async with db.connection() as conn:
            await conn.execute(
                "UPDATE audit_records SET body = $3 WHERE platform = $1 AND idx = $2",
                platform,
                index,
                record,
            )
    else:
        assert isinstance(store, MemoryStore)
        store._platforms[platform].audit[index] = record


async def rewrite_history(store: Store, index: int, record: str, platform: str = P) -> None:
    """Rewrite a stored record so that the log's hashes say so too: in Redis or memory the
    record (the process hashes what it reads), in PostgreSQL the record with its leaf hash
    and the stored subtrees rebuilt over it (a database restored from another history)."""
    db = audit_database(store)
    if db is None:
        await rewrite(store, index, record, platform)
        return
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE audit_records SET body = $3, leaf_hash = $4 WHERE platform = $1 AND idx = $2",
            platform,
            index,
            record,
            merkle.leaf_hash(record.encode()),
        )
        await conn.execute("DELETE FROM merkle_nodes WHERE platform = $1", platform)
        await conn.execute("UPDATE merkle_heads SET size = 0 WHERE platform = $1", platform)


async def drop_last(store: Store, platform: str = P) -> None:
    db = audit_database(store)
    if db is not None:
        async with db.transaction() as conn:
            size = await conn.fetchval(
                "UPDATE log_heads SET size = size - 1 WHERE platform = $1 RETURNING size", platform
            )
            await conn.execute(
                "DELETE FROM audit_records WHERE platform = $1 AND idx = $2", platform, size
            )
    else:
        assert isinstance(store, MemoryStore)
        store._platforms[platform].audit.pop()


def metric(name: str, platform: str = P) -> float:
    return REGISTRY.get_sample_value(name, {"platform": platform}) or 0.0


# ------------------------------------------------------------------------- tree cache


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33])
def test_cache_proofs_equal_the_reference_and_verify(size: int) -> None:
    """Roots, inclusion and consistency proofs from the cache equal merkle.py's and verify."""
    hashes = leaves(size)
    cache = MerkleCache(hashes)
    root = merkle.root_from_leaf_hashes(hashes)
    assert root == cache.root()
    for i in range(size):
        proof = cache.inclusion_proof(i, size)
        assert merkle.inclusion_proof(hashes, i, size) == proof
        merkle.verify_inclusion(hashes[i], i, size, proof, root)
    for m in range(1, size + 1):
        proof = cache.consistency_proof(m, size)
        assert merkle.consistency_proof(hashes, m, size) == proof
        merkle.verify_consistency(m, size, proof, cache.root(m), root)


def test_proof_ranges_are_subtrees() -> None:
    """Every range a proof needs starts at a multiple of a power of two covering it, so the
    cache (and the offline verifier's accumulators) can build it from complete subtrees."""
    for n in range(1, 41):
        ranges = [r for i in range(n) for r in merkle.inclusion_ranges(i, n)]
        ranges += [r for m in range(1, n + 1) for r in merkle.consistency_ranges(m, n)]
        for start, end in ranges:
            width = 1 << (end - start - 1).bit_length()  # a power of two >= end - start
            assert (0, True) == (start % width, 0 <= start < end <= n)


# ---------------------------------------------------------------------- AuditLog, store


async def test_the_tree_extends_from_its_size_to_the_current_end(store: Store) -> None:
    """Records appended by anyone after an extension (another replica) are hashed by the
    next one; roots and proofs cover them."""
    log = make_log(store, read_batch=3)
    await append(store, 4)
    assert 4 == await log.tree_size(P)
    await append(store, 6)
    assert 4 == await log.tree_size(P, at_least=4)  # hashed already: nothing read
    assert 10 == await log.tree_size(P, at_least=5)
    records = await store.audit_records(P)
    hashes = [merkle.leaf_hash(r.encode()) for r in records]
    root = merkle.root_from_leaf_hashes(hashes)
    assert root == await log.root(P, 10)
    for i in (0, 4, 9):
        merkle.verify_inclusion(hashes[i], i, 10, await log.inclusion_proof(P, i, 10), root)
    assert merkle.root_from_leaf_hashes(hashes[:4]) == await log.root(P, 4)


async def test_checkpoint_proofs_verify_against_the_signed_note(store: Store) -> None:
    """Checkpoints open with the log's vkey; inclusion and consistency proofs verify against them."""
    clock = FixedClock(T0)
    log = make_log(store, clock=clock)
    await append(store, 5)
    first = await log.current_checkpoint(P)
    name, key = parse_vkey(log.verifier_key(P))
    body = Checkpoint.parse(open_note(first.note, name, key))
    assert ("xacthuc.test/log/alpha", 5, first.root_hash) == (
        body.origin,
        body.tree_size,
        body.root_hash,
    )
    for i, record in enumerate(await store.audit_records(P)):
        proof = await log.inclusion_proof(P, i, 5)
        merkle.verify_inclusion(merkle.leaf_hash(record.encode()), i, 5, proof, first.root_hash)
    await append(store, 4)
    clock.advance(60)
    second = await log.current_checkpoint(P)
    assert 9 == second.tree_size
    merkle.verify_consistency(
        5, 9, await log.consistency_proof(P, 5, 9), first.root_hash, second.root_hash
    )


async def test_checkpoints_are_due_every_n_records_or_t_seconds(store: Store) -> None:
    """The checkpointer signs after N new records, or T seconds after the latest with new ones."""
    clock = FixedClock(T0)
    cps = checkpoint_store_for(store)
    log = make_log(store, cps, clock=clock, every_records=3, every_seconds=60)
    await append(store, 2)
    await log.run_once()
    assert [] == [c.tree_size for c in await cps.history(P)]
    await append(store, 1)
    await log.run_once()
    assert [3] == [c.tree_size for c in await cps.history(P)]
    await append(store, 1)
    clock.advance(59)
    await log.run_once()
    assert [3] == [c.tree_size for c in await cps.history(P)]
    clock.advance(1)
    await log.run_once()
    assert [3, 4] == [c.tree_size for c in await cps.history(P)]
    clock.advance(600)
    await log.run_once()
    assert [3, 4] == [c.tree_size for c in await cps.history(P)]


async def test_first_checkpoint_waits_t_seconds_unless_asked_for(store: Store) -> None:
    """A first checkpoint comes T seconds after records appear, or at once when an auditor asks."""
    clock = FixedClock(T0)
    cps = checkpoint_store_for(store)
    log = make_log(store, cps, clock=clock, every_seconds=60)
    await append(store, 1)
    await log.run_once()
    assert None is await cps.latest(P)
    clock.advance(60)
    await log.run_once()
    assert 1 == (await cps.latest(P) or StoredCheckpoint(0, b"", 0, "")).tree_size
    await append(store, 1, platform="beta")
    assert 1 == (await log.current_checkpoint("beta")).tree_size


async def test_empty_log_gets_an_unstored_checkpoint_of_the_empty_tree(store: Store) -> None:
    """An auditor of an empty log gets a signed size-0 checkpoint; nothing is stored."""
    cps = checkpoint_store_for(store)
    log = make_log(store, cps)
    cp = await log.current_checkpoint(P)
    assert (0, merkle.EMPTY_ROOT) == (cp.tree_size, cp.root_hash)
    assert [] == await cps.history(P)


async def test_rewritten_record_is_never_covered_by_a_new_checkpoint(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A rewritten record makes a replica refuse to sign: error logged, counted, explained.
    (In PostgreSQL, a record whose hash and stored subtrees were rewritten with it; its text
    alone rewritten is the next test.)"""
    clock = FixedClock(T0)
    cps = checkpoint_store_for(store)
    signer = Ed25519PrivateKey.generate()
    first = make_log(store, cps, key=signer, clock=clock)
    await append(store, 6)
    signed = await first.current_checkpoint(P)
    records = await store.audit_records(P)
    await rewrite_history(store, 2, records[2].replace("acc-2", "acc-X"))
    await append(store, 3)
    clock.advance(120)
    replica = make_log(store, cps, key=signer, clock=clock)
    before = metric("xacthuc_audit_checkpoint_refusals_total")
    with caplog.at_level(logging.ERROR, logger="xacthuc.audit"):
        latest = await replica.current_checkpoint(P)
    assert signed == latest
    assert [signed] == await cps.history(P)
    assert 1 == metric("xacthuc_audit_checkpoint_refusals_total") - before
    assert "no longer hash to the root of the signed checkpoint of tree size 6" in (
        replica.problem(P) or ""
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert 1 == len([r for r in errors if "not signing a checkpoint" in r.getMessage()])


async def test_removed_record_is_never_covered_by_a_new_checkpoint(store: Store) -> None:
    """A log shorter than its latest checkpoint (records deleted) is refused too."""
    cps = checkpoint_store_for(store)
    signer = Ed25519PrivateKey.generate()
    await append(store, 4)
    signed = await make_log(store, cps, key=signer).current_checkpoint(P)
    await drop_last(store)
    replica = make_log(store, cps, key=signer)
    assert signed == await replica.current_checkpoint(P)
    assert "the log has 3 records but checkpoint 4 was signed" in (replica.problem(P) or "")


async def test_replica_that_loses_the_race_adopts_the_winners_checkpoint(store: Store) -> None:
    """Of two replicas signing at once, the CAS loser checks and returns the winner's checkpoint."""
    signer = Ed25519PrivateKey.generate()
    inner = checkpoint_store_for(store)

    class Racing:
        """Lets the other replica publish between our read of the latest and our append."""

        def __init__(self) -> None:
            self.other: AuditLog | None = None

        async def latest(self, platform: str) -> StoredCheckpoint | None:
            return await inner.latest(platform)

        async def history(self, platform: str) -> list[StoredCheckpoint]:
            return await inner.history(platform)

        async def append(self, platform: str, cp: StoredCheckpoint, *, after: int) -> bool:
            if self.other is not None:
                other, self.other = self.other, None
                await other.current_checkpoint(platform)
            return await inner.append(platform, cp, after=after)

    racing = Racing()
    await append(store, 5)
    loser = make_log(store, racing, key=signer)
    winner = make_log(store, inner, key=signer)
    racing.other = winner
    adopted = await loser.current_checkpoint(P)
    assert [adopted] == await inner.history(P)
    assert None is loser.problem(P)


# ------------------------------------------------------------------- checkpoint stores


@pytest.fixture(params=["memory", "postgres"])
async def checkpoints(request: pytest.FixtureRequest) -> AsyncIterator[CheckpointStore]:
    """Each checkpoint store backend in turn, empty."""
    if request.param == "memory":
        yield MemoryCheckpointStore()
        return
    if request.param == "postgres":
        db = await emptied_database(request.getfixturevalue("database_url"))
        yield PostgresCheckpointStore(db)
        await db.aclose()


def _cp(size: int) -> StoredCheckpoint:
    return StoredCheckpoint(size, bytes([size]) * 32, T0 + size, f"note {size}\n")


async def test_checkpoint_store_appends_only_on_top_of_the_expected_latest(
    checkpoints: CheckpointStore,
) -> None:
    """append() is a compare-and-set on the latest stored size and only ever grows the log."""
    assert None is await checkpoints.latest(P)
    assert True is await checkpoints.append(P, _cp(3), after=0)
    assert False is await checkpoints.append(P, _cp(5), after=0)  # built on a stale view
    assert False is await checkpoints.append(P, _cp(3), after=3)  # not larger
    assert False is await checkpoints.append(P, _cp(2), after=3)  # smaller
    assert True is await checkpoints.append(P, _cp(7), after=3)
    assert _cp(7) == await checkpoints.latest(P)
    assert [_cp(3), _cp(7)] == await checkpoints.history(P)
    assert [] == await checkpoints.history("beta")


async def test_concurrent_appends_store_exactly_one(checkpoints: CheckpointStore) -> None:
    """Of many replicas appending on top of the same latest at once, exactly one wins."""
    results = await asyncio.gather(*(checkpoints.append(P, _cp(4 + i), after=0) for i in range(8)))
    assert 1 == sum(results)
    assert 1 == len(await checkpoints.history(P))


# ------------------------------------------------------------------ queries, reports


async def test_queries_page_through_exactly_the_matching_records(store: Store) -> None:
    """By account, event and time window, in pages of 3 through opaque tokens: exactly the
    records a scan finds, oldest first; a token continues only its own query."""
    for i in range(40):
        await store.append_audit(
            P, T0 + i, account=f"acc-{i % 4}", event=("a", "b")[i % 3 == 0], outcome="ok"
        )
    log = make_log(store, read_batch=7)
    stored = [json.loads(r) for r in await store.audit_records(P)]
    for where in (
        LogFilter(),
        LogFilter(account="acc-1"),
        LogFilter(event="b"),
        LogFilter(account="acc-2", event="a", since=T0 + 5, until=T0 + 31),
        LogFilter(since=T0 + 38.5),
        LogFilter(until=T0 + 0.5),
        LogFilter(account="nobody"),
    ):
        want = [
            r["seq"]
            for r in stored
            if where.account in ("", r["account"])
            and where.event in ("", r["event"])
            and (where.since is None or T0 + r["seq"] >= where.since)
            and (where.until is None or T0 + r["seq"] < where.until)
        ]
        got: list[int] = []
        page, token = await log.query(P, where, page_size=3)
        got += [e.index for e in page]
        while token:
            page, token = await log.query(P, where, page_size=3, page_token=token)
            assert page
            got += [e.index for e in page]
        assert want == got, where
    _, token = await log.query(P, LogFilter(event="b"), page_size=3)
    with pytest.raises(FieldInvalid) as e:
        await log.query(P, LogFilter(event="a"), page_size=3, page_token=token)
    assert "page_token" == e.value.metadata["field"]


async def test_a_report_reads_the_records_of_its_window_once_the_tree_is_built(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records of a time window are consecutive (times never go backwards): a report
    finds them without a scan (the time index, or a binary search) and parses each once;
    the per-day report adds up to the total."""
    await append(store, 64)
    log = make_log(store, read_batch=8)
    assert 64 == await log.tree_size(P)  # the in-process tree reads the log once
    read: list[int] = []
    inner = store.audit_records

    async def counting(platform: str, start: int = 0, stop: int | None = None) -> list[str]:
        got = await inner(platform, start, stop)
        read.append(len(got))
        return got

    monkeypatch.setattr(store, "audit_records", counting)
    assert (10, 20) == await log.index_range(P, T0 + 10, T0 + 20, 64)
    assert (0, 5) == await log.index_range(P, None, T0 + 4.5, 64)
    assert (64, 64) == await log.index_range(P, T0 + 100, None, 64)
    read.clear()
    assert 10 == (await log.report(P, T0 + 10, T0 + 20))["records"]
    if audit_database(store) is None:  # through the store: the window and 2 log2(n) probes
        assert sum(read) <= 10 + 2 * 7, read
    total, days = await log.daily_report(P, T0, T0 + 64)
    assert 64 == total["records"] == sum(c["records"] for _, c in days)
    assert 64 == (await log.report(P, None, None))["event:code_sent"]


# ---------------------------------------------------------------------------- export


async def test_export_lines_carry_the_stored_record_and_its_leaf_hash(store: Store) -> None:
    """Each line is {index, leaf_hash, record}: the record byte for byte, chunks ~64 KiB."""
    await append(store, 600)
    log = make_log(store, read_batch=100)
    chunks = [c async for c in log.export(P, 0, 600)]
    records = await store.audit_records(P)
    lines = b"".join(chunks).splitlines()
    parsed = [json.loads(line) for line in lines]
    assert list(range(600)) == [p["index"] for p in parsed]
    assert records == [p["record"] for p in parsed]
    assert [merkle.leaf_hash(r.encode()).hex() for r in records] == [p["leaf_hash"] for p in parsed]
    assert [True] * len(chunks) == [c.endswith(b"\n") for c in chunks]
    assert [True] * len(chunks) == [len(c) < EXPORT_CHUNK_BYTES + 1024 for c in chunks]
    assert 1 < len(chunks)


async def test_export_exposes_a_record_rewritten_after_it_was_read(store: Store) -> None:
    """The export ships the leaf hash read first, so a later rewrite in storage is pinpointed."""
    log = make_log(store)
    await append(store, 5)
    cp = await log.current_checkpoint(P)
    records = await store.audit_records(P)
    await rewrite(store, 3, records[3].replace("acc-3", "acc-9"))
    before = metric("xacthuc_audit_leaf_mismatches_total")
    lines = b"".join([c async for c in log.export(P, 0, 5)]).splitlines(keepends=True)
    verdict = verify_export(lines, cp.note, log.verifier_key(P))
    assert (False, 3) == (verdict.ok, verdict.first_bad_index)
    assert 1 == metric("xacthuc_audit_leaf_mismatches_total") - before


# ---------------------------------------------------------------- offline verification


class Exported:
    """A log of `n` records with a checkpoint at `size` (and older ones), exported."""

    def __init__(
        self,
        n: int = 10,
        size: int = 10,
        older: tuple[int, ...] = (4,),
        times: list[float] | None = None,
    ) -> None:
        from xacthuc.domain.records import audit_record

        self.key = Ed25519PrivateKey.generate()
        self.origin = "xacthuc.test/log/alpha"
        self.vkey = format_vkey(self.origin, self.key.public_key())
        self.records = [
            audit_record(
                seq=i,
                now=times[i] if times is not None else T0 + i,
                platform=P,
                account=f"acc-{i}",
                event="code_sent",
                outcome="ok",
            )
            for i in range(n)
        ]
        self.cache = MerkleCache(merkle.leaf_hash(r.encode()) for r in self.records)
        self.note = self.sign(size)
        self.older = [self.sign(s) for s in older]

    def sign(self, size: int) -> str:
        from xacthuc.domain.checkpoint import sign_note

        body = Checkpoint(self.origin, size, self.cache.root(size)).body()
        return sign_note(body, self.origin, self.key)

    def lines(self) -> list[bytes]:
        return [export_line(i, r, self.cache.leaf(i)) for i, r in enumerate(self.records)]

    def verify(self, lines: list[bytes], older: list[str] | None = None) -> tuple[bool, int | None]:
        verdict = verify_export(lines, self.note, self.vkey, self.older if older is None else older)
        return verdict.ok, verdict.first_bad_index


def _changed_byte(lines: list[bytes]) -> list[bytes]:
    lines[3] = lines[3].replace(b"acc-3", b"acc-8")
    return lines


def _removed(lines: list[bytes]) -> list[bytes]:
    del lines[3]
    return lines


def _swapped(lines: list[bytes]) -> list[bytes]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


def _truncated(lines: list[bytes]) -> list[bytes]:
    return lines[:3]


def _cut_mid_line(lines: list[bytes]) -> list[bytes]:
    return [*lines[:3], lines[3][:40]]


def _renumbered_removal(lines: list[bytes]) -> list[bytes]:
    """Remove record 3 and rewrite the later lines' index fields to hide the gap."""
    del lines[3]
    out = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        obj["index"] = i
        out.append((json.dumps(obj, separators=(",", ":")) + "\n").encode())
    return out


def _reseq_swap(lines: list[bytes]) -> list[bytes]:
    """Swap records 3 and 4 but keep every line's index, so only the records move."""
    a, b = json.loads(lines[3]), json.loads(lines[4])
    a["record"], b["record"], a["leaf_hash"], b["leaf_hash"] = (
        b["record"],
        a["record"],
        b["leaf_hash"],
        a["leaf_hash"],
    )
    lines[3] = (json.dumps(a, separators=(",", ":")) + "\n").encode()
    lines[4] = (json.dumps(b, separators=(",", ":")) + "\n").encode()
    return lines


@pytest.mark.parametrize(
    "tamper",
    [
        _changed_byte,
        _removed,
        _swapped,
        _truncated,
        _cut_mid_line,
        _renumbered_removal,
        _reseq_swap,
    ],
)
def test_verify_reports_the_first_bad_record(
    tamper: Callable[[list[bytes]], list[bytes]],
) -> None:
    """Every tampering of an export is rejected naming record 3, the first one touched."""
    exported = Exported()
    assert (True, None) == exported.verify(exported.lines())
    assert (False, 3) == exported.verify(tamper(exported.lines()))


def test_change_with_a_matching_leaf_hash_is_narrowed_by_older_checkpoints() -> None:
    """A record changed together with its leaf hash fails at the root, between checkpoints."""
    exported = Exported(older=(4,))
    lines = exported.lines()
    obj = json.loads(lines[6])
    obj["record"] = obj["record"].replace("acc-6", "acc-0")
    obj["leaf_hash"] = merkle.leaf_hash(obj["record"].encode()).hex()
    lines[6] = (json.dumps(obj) + "\n").encode()
    verdict = verify_export(lines, exported.note, exported.vkey, exported.older)
    assert (False, None) == (verdict.ok, verdict.first_bad_index)
    assert "root mismatch at tree size 10" in verdict.summary
    assert "at an index in 4..9" in verdict.summary


def test_older_checkpoint_consistency_is_checked_with_a_recomputed_proof() -> None:
    """An older checkpoint of the same log is consistent; one of a rewritten log is not."""
    exported = Exported(older=(1, 4, 8, 10))
    verdict = verify_export(exported.lines(), exported.note, exported.vkey, exported.older)
    assert True is verdict.ok
    assert 4 == sum("consistent with tree size 10" in n for n in verdict.notes)
    forked = Exported()
    forked.key, forked.vkey, forked.origin = exported.key, exported.vkey, exported.origin
    forked.records[2] = forked.records[2].replace("acc-2", "acc-Z")
    forked.cache = MerkleCache(merkle.leaf_hash(r.encode()) for r in forked.records)
    verdict = verify_export(exported.lines(), exported.note, exported.vkey, [forked.sign(6)])
    assert False is verdict.ok
    assert "older checkpoint of tree size 6 is not consistent" in verdict.summary


def test_checkpoint_signed_by_another_key_fails() -> None:
    """A checkpoint that does not verify with the given key fails verification (exit 1)."""
    exported = Exported()
    other = Exported()
    verdict = verify_export(exported.lines(), exported.note, other.vkey)
    assert (False, None) == (verdict.ok, verdict.first_bad_index)
    assert "checkpoint: note has no signature" in verdict.summary


def test_unusable_inputs_are_usage_errors() -> None:
    """A malformed verifier key or an 'older' checkpoint larger than the newer one: UsageError."""
    exported = Exported(n=12)
    with pytest.raises(UsageError):
        verify_export(exported.lines(), exported.note, "not a key")
    with pytest.raises(UsageError):
        verify_export(exported.lines(), exported.note, exported.vkey, [exported.sign(12)])


def _forged_tail(exported: Exported) -> list[bytes]:
    """The export cut at the checkpoint plus a forged attestation whose leaf hash is right."""
    from xacthuc.domain.records import audit_record

    size = 10
    forged = audit_record(
        seq=size,
        now=T0 + size,
        platform=P,
        account="acc-forged",
        event="attestation_issued",
        outcome="ok",
        method="phone_otp",
    )
    return [*exported.lines()[:size], export_line(size, forged, merkle.leaf_hash(forged.encode()))]


def test_records_beyond_the_checkpoint_fail_naming_the_first_uncovered_index() -> None:
    """Records past the checkpoint's tree size are covered by no signature: verification fails."""
    exported = Exported(n=12, size=10, older=())
    for lines in (exported.lines(), _forged_tail(exported)):
        verdict = verify_export(lines, exported.note, exported.vkey)
        assert (False, None, 10) == (
            verdict.ok,
            verdict.first_bad_index,
            verdict.first_uncovered_index,
        )
        assert verdict.summary.startswith("FAILED: record 10 is not covered by the checkpoint")


def test_an_allowed_unverified_tail_is_listed_and_only_the_prefix_decides() -> None:
    """--allow-unverified-tail: the tail is listed as UNVERIFIED; a bad prefix still fails."""
    exported = Exported(n=12, size=10, older=(4,))
    verdict = verify_export(
        _forged_tail(exported), exported.note, exported.vkey, allow_unverified_tail=True
    )
    assert (True, 10) == (verdict.ok, verdict.first_uncovered_index)
    assert verdict.summary.startswith("OK: xacthuc.test/log/alpha: records 0..9 match")
    assert [
        "UNVERIFIED record 10: attestation_issued at 2027-01-15T08:00:10.000Z "
        "(past the checkpoint: no signature covers it)"
    ] == verdict.unverified
    bad = _swapped(exported.lines())
    verdict = verify_export(bad, exported.note, exported.vkey, allow_unverified_tail=True)
    assert (False, 3, []) == (verdict.ok, verdict.first_bad_index, verdict.unverified)


def test_record_times_that_go_backwards_fail_naming_the_index() -> None:
    """A record older than the one before it, even signed, is reported with its index."""
    times = [T0 + i for i in range(10)]
    times[6] = T0 + 2.5
    exported = Exported(times=times, older=())
    verdict = verify_export(exported.lines(), exported.note, exported.vkey)
    assert (False, 6) == (verdict.ok, verdict.first_bad_index)
    assert (
        "FAILED: first bad record index 6: record 6 has time 2027-01-15T08:00:02.500Z, "
        "before record 5's 2027-01-15T08:00:05.000Z"
    ) == verdict.summary
    times[6] = times[5]  # equal times (records of one step) are in order
    same = Exported(times=times, older=())
    assert (True, None) == same.verify(same.lines())


# --------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xacthuc.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_key_prints_the_verifier_key_of_the_key_file(tmp_path: Path) -> None:
    """`xacthuc audit log-key` prints `<origin>/<platform>+<id>+<key>` for the PEM key."""
    key = SigningKey.generate()
    pem = tmp_path / "log.pem"
    pem.write_bytes(key.to_pem())
    run = _cli("log-key", "--platform", "alpha", "--key-file", str(pem), "--origin", "ex.org/log")
    assert 0 == run.returncode
    assert format_vkey("ex.org/log/alpha", key.private_key.public_key()) == run.stdout.strip()


def test_verify_cli_exit_codes(tmp_path: Path) -> None:
    """`audit verify` exits 0 when the export verifies, 1 naming the index, 2 on usage errors."""
    exported = Exported()
    (tmp_path / "cp").write_text(exported.note)
    (tmp_path / "vkey").write_text(exported.vkey + "\n")
    (tmp_path / "ok.jsonl").write_bytes(b"".join(exported.lines()))
    (tmp_path / "bad.jsonl").write_bytes(b"".join(_swapped(exported.lines())))
    args = ("--checkpoint", str(tmp_path / "cp"), "--key", str(tmp_path / "vkey"))
    ok = _cli("verify", str(tmp_path / "ok.jsonl"), *args)
    bad = _cli("verify", str(tmp_path / "bad.jsonl"), *args)
    usage = _cli("verify", str(tmp_path / "ok.jsonl"), "--checkpoint", str(tmp_path / "cp"))
    missing = _cli("verify", str(tmp_path / "ok.jsonl"), *args[:2], "--key", str(tmp_path / "no"))
    assert (0, 1, 2, 2) == (ok.returncode, bad.returncode, usage.returncode, missing.returncode)
    assert (
        "OK: xacthuc.test/log/alpha: records 0..9 match the checkpoint" == ok.stdout.split(" (")[0]
    )
    assert "FAILED: first bad record index 3:" in bad.stdout


def test_verify_cli_fails_on_an_uncovered_tail_unless_allowed(tmp_path: Path) -> None:
    """A record past the checkpoint: exit 1 naming its index; with the flag, listed, exit 0."""
    exported = Exported(n=12, size=10, older=())
    (tmp_path / "cp").write_text(exported.note)
    (tmp_path / "vkey").write_text(exported.vkey + "\n")
    (tmp_path / "tail.jsonl").write_bytes(b"".join(_forged_tail(exported)))
    cp, vkey = str(tmp_path / "cp"), str(tmp_path / "vkey")
    args = (str(tmp_path / "tail.jsonl"), "--checkpoint", cp, "--key", vkey)
    strict = _cli("verify", *args)
    allowed = _cli("verify", *args, "--allow-unverified-tail")
    assert (1, 0) == (strict.returncode, allowed.returncode)
    assert strict.stdout.startswith("FAILED: record 10 is not covered by the checkpoint")
    assert "--allow-unverified-tail" in strict.stdout
    assert allowed.stdout.startswith("OK: xacthuc.test/log/alpha: records 0..9 match")
    assert "UNVERIFIED record 10: attestation_issued" in allowed.stdout


def _report(
    tmp_path: Path, exported: Exported, lines: list[bytes], *extra: str
) -> tuple[int, Any, str]:
    (tmp_path / "cp").write_text(exported.note)
    (tmp_path / "vkey").write_text(exported.vkey + "\n")
    (tmp_path / "log.jsonl").write_bytes(b"".join(lines))
    run = _cli("report", str(tmp_path / "log.jsonl"), *extra)
    return run.returncode, json.loads(run.stdout) if run.stdout else None, run.stderr


def test_report_with_a_checkpoint_counts_only_covered_verified_records(tmp_path: Path) -> None:
    """`report --checkpoint --key` counts records 0..n-1 after verifying them, never the tail."""
    exported = Exported(n=12, size=10, older=())
    cp = ("--checkpoint", str(tmp_path / "cp"), "--key", str(tmp_path / "vkey"))
    code, out, err = _report(tmp_path, exported, _forged_tail(exported), *cp)
    assert (0, True) == (
        code,
        err.startswith(
            "xacthuc audit: counts over records 0..9 of xacthuc.test/log/alpha, verified against "
            "its checkpoint of tree size 10 (signature valid); record 10 is past it and not "
            "counted"
        ),
    )
    assert {
        "verified": True,
        "origin": "xacthuc.test/log/alpha",
        "tree_size": 10,
        "counted": [0, 9],
        "not_counted": [10, 10],
        "from": None,
        "to": None,
    } == {k: v for k, v in out.items() if k != "counts"}
    assert (10, 10, 0) == (
        out["counts"]["records"],
        out["counts"]["event:code_sent"],
        out["counts"]["attestations"],
    )
    code, out, err = _report(tmp_path, exported, _swapped(exported.lines()), *cp)
    assert (1, None) == (code, out)
    assert "FAILED: first bad record index 3" in err
    assert "no counts" in err


def test_report_without_a_checkpoint_says_its_figures_are_unverified(tmp_path: Path) -> None:
    """Without --checkpoint the report still counts, and says loudly that nothing was verified."""
    exported = Exported(n=12, size=10, older=())
    code, out, err = _report(tmp_path, exported, _forged_tail(exported))
    assert (0, False, None, [0, 10], 1) == (
        code,
        out["verified"],
        out["tree_size"],
        out["counted"],
        out["counts"]["attestations"],
    )
    assert "UNVERIFIED" in out["warning"]
    assert err.startswith("xacthuc audit: WARNING: UNVERIFIED figures")
    code, _, err = _report(tmp_path, exported, exported.lines(), "--checkpoint", "cp")
    assert (2, True) == (code, "--checkpoint and --key go together" in err)


# ----------------------------------------------------------------------------- report


def test_report_counts_by_event_outcome_method_flags_and_lockouts() -> None:
    """Counts cover [from, to): events, outcomes, attestations by method and flag, lockouts."""
    from xacthuc.domain.records import audit_record

    def rec(seq: int, when: float, event: str, outcome: str = "ok", **extra: str | int) -> str:
        return audit_record(
            seq=seq,
            now=when,
            platform=P,
            account="a",
            event=event,
            outcome=outcome,
            reason="",
            **extra,
        )

    records = [
        rec(0, T0 - 1, "attestation_issued", method="phone_otp"),  # before the range
        rec(1, T0, "attestation_issued", method="phone_otp"),
        rec(2, T0 + 1, "attestation_issued", method="personal_id", commercial_livestream=1),
        rec(3, T0 + 2, "attestation_issued", method="phone_otp", guardian_managed=1),
        rec(4, T0 + 3, "phone_locked", "locked"),
        rec(5, T0 + 4, "id_locked", "locked"),
        rec(6, T0 + 5, "check_failed", "failed"),
        rec(7, T0 + 10, "attestation_issued", method="phone_otp"),  # at the end: excluded
    ]
    counter = ReportCounter(T0, T0 + 10)
    for r in records:
        counter.add(r)
    assert {
        "attestations": 3,
        "commercial_livestream": 1,
        "event:attestation_issued": 3,
        "event:check_failed": 1,
        "event:id_locked": 1,
        "event:phone_locked": 1,
        "guardian_managed": 1,
        "lockouts": 2,
        "method:personal_id": 1,
        "method:phone_otp": 2,
        "outcome:failed": 1,
        "outcome:locked": 2,
        "outcome:ok": 3,
        "records": 6,
    } == counter.counts()


def test_verifier_keys_whose_base64_holds_a_plus_parse() -> None:
    """parse_vkey splits on the first two '+' only: about half of all keys have one in base64."""
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    vkeys = [format_vkey("xacthuc.test/log/alpha", k.public_key()) for k in keys]
    assert True is any(v.count("+") > 2 for v in vkeys)
    assert [format_vkey(*parse_vkey(v)) for v in vkeys] == vkeys
