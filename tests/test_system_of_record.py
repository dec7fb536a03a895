"""What must outlive a Redis failure does (issue 10), against a real PostgreSQL and a
redis-server this test owns and restarts empty (never the shared one).

Here: the audit log and its checkpoints, in PostgreSQL with the pair store, lose no record
when Redis restarts empty (tests/test_pair_crash.py: attestations, revocations, the status
list and P8 counts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store.cached import CachedStore
from xacthuc.adapters.store.checkpoints import (
    PostgresCheckpointStore,
)
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.pg_audit import GroupAppender, PostgresLogReader
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.locks import LockKind, LockRequest
from xacthuc.ports.audit_log import LogReader
from xacthuc.ports.checkpoints import CheckpointStore
from xacthuc.server.app import build_app
from xacthuc.server.config import ConfigError, Settings
from xacthuc.verifiers.auditlog import AuditLog
from xacthuc.verifiers.log_reader import StoreLogReader

from .conftest import pair_store
from .test_health import OwnRedis

T0 = 1_800_000_000.0
P = "alpha"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def audit_log(
    reader: LogReader,
    checkpoints: CheckpointStore,
    key: Ed25519PrivateKey,
    at: float = 3600,
) -> AuditLog:
    """A fresh process's view of the log (nothing cached), `at` seconds after T0."""
    return AuditLog(
        reader,
        checkpoints,
        key,
        FixedClock(T0 + at),
        origin="xacthuc.test/log",
        platforms=lambda: [P],
        metrics=PrometheusLogMetrics(),
    )


async def append(store: PairStore, n: int) -> None:
    for i in range(n):
        await store.append_audit(P, T0 + i, account=f"acc-{i}", event="code_sent", outcome="ok")


async def test_with_a_database_the_service_keeps_its_state_in_postgres(
    database_url: str, redis_url: str, redis_namespace: str
) -> None:
    app = build_app(
        Settings.load(
            database_url=database_url, store_url=redis_url, store_namespace=redis_namespace
        )
    )
    try:
        await app.open()
        assert isinstance(app.audit_log._checkpoints, PostgresCheckpointStore)
        assert isinstance(app.audit_log._reader, PostgresLogReader)  # the tree, proofs
        pair = app.store.backend if isinstance(app.store, CachedStore) else app.store
        assert isinstance(pair, PairStore)
        assert isinstance(pair.audit, GroupAppender)
        assert {"store", "database"} == set(app.probes)
        await app.probes["database"]()
    finally:
        await app.aclose()
    dev = build_app(Settings.load())
    assert None is dev.database
    assert isinstance(dev.audit_log._reader, StoreLogReader)
    assert {"store"} == set(dev.probes)
    await dev.aclose()


def test_a_redis_store_without_a_database_is_refused_at_start(redis_url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"XACTHUC_STORE_URL=redis://\.\.\. needs XACTHUC_DATABASE_URL"
    ):
        Settings.load(store_url=redis_url)


async def test_with_the_audit_log_in_postgres_a_redis_restarted_empty_loses_no_record(
    own_redis: OwnRedis, database: Database
) -> None:
    """The pair: records written by PostgreSQL's steps (a lock) and by the service
    (append_audit) are in PostgreSQL, none in Redis; Redis restarted empty, the log goes on
    at the next index, nothing is lost, and the next checkpoint extends the old one."""
    key = Ed25519PrivateKey.generate()
    checkpoints = PostgresCheckpointStore(database)

    def pair() -> PairStore:
        return pair_store(own_redis.url, "sor", database)

    store = pair()
    try:
        await append(store, 38)
        lock = LockRequest(P, "acc-x", LockKind.PERMANENT, None, "court_order", "ref-1", T0 + 50)
        await store.lock_account(lock)
        assert [] == [k async for k in store.client.scan_iter(match="sor:*audit*")]
        first = await audit_log(PostgresLogReader(database), checkpoints, key).current_checkpoint(P)
        assert 39 == first.tree_size
        before = await store.audit_records(P)
        assert "account_locked" == json.loads(before[38])["event"]
    finally:
        await store.aclose()

    own_redis.stop()
    own_redis.start()

    store = pair()
    try:
        assert before == await store.audit_records(P)  # nothing lost
        await append(store, 17)
        records = await store.audit_records(P)
        assert 56 == len(records)
        assert list(range(56)) == [json.loads(r)["seq"] for r in records]  # no restart at 0
        log = audit_log(PostgresLogReader(database), checkpoints, key, at=7200)  # one is due
        latest = await log.current_checkpoint(P)
        assert None is log.problem(P)
        assert [39, 56] == [c.tree_size for c in await checkpoints.history(P)]
        assert 56 == latest.tree_size  # consistent with 39: checked before it was signed
    finally:
        await store.aclose()
