"""What must outlive a Redis failure does (issue 10), against a real PostgreSQL and a
redis-server this test owns and restarts empty (never the shared one).

So far: the audit log's checkpoints. With them in PostgreSQL, a log that lost records with
Redis is never checkpointed smaller again: the checkpointer refuses instead of forking (the
failure seen: a checkpoint of size 17 signed after one of size 39)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store.checkpoints import (
    PostgresCheckpointStore,
    RedisCheckpointStore,
    checkpoint_store_for,
)
from xacthuc.adapters.store.postgres import Database
from xacthuc.adapters.store.redis import RedisStore
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.checkpoints import CheckpointStore
from xacthuc.server.app import build_app
from xacthuc.server.config import Settings
from xacthuc.verifiers.auditlog import AuditLog

from .test_health import OwnRedis

T0 = 1_800_000_000.0
P = "alpha"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def audit_log(store: RedisStore, checkpoints: CheckpointStore, key: Ed25519PrivateKey) -> AuditLog:
    """A fresh process's view of the log (nothing cached)."""
    return AuditLog(
        store,
        checkpoints,
        key,
        FixedClock(T0 + 3600),
        origin="xacthuc.test/log",
        platforms=lambda: [P],
        metrics=PrometheusLogMetrics(),
    )


async def append(store: RedisStore, n: int) -> None:
    for i in range(n):
        await store.append_audit(P, T0 + i, account=f"acc-{i}", event="code_sent", outcome="ok")


async def test_a_redis_restarted_empty_never_forks_the_log(
    own_redis: OwnRedis, database: Database
) -> None:
    key = Ed25519PrivateKey.generate()
    checkpoints = PostgresCheckpointStore(database)
    store = RedisStore(own_redis.url, namespace="sor")
    try:
        await append(store, 39)
        signed = await audit_log(store, checkpoints, key).current_checkpoint(P)
        assert 39 == signed.tree_size
    finally:
        await store.aclose()

    own_redis.stop()  # killed; it keeps nothing on disk
    own_redis.start()

    store = RedisStore(own_redis.url, namespace="sor")
    try:
        await append(store, 17)
        log = audit_log(store, checkpoints, key)
        latest = await log.current_checkpoint(P)
        await log.run_once()
        assert 39 == latest.tree_size  # the old checkpoint stands, nothing smaller is signed
        assert [39] == [c.tree_size for c in await checkpoints.history(P)]
        problem = log.problem(P)
        assert problem is not None
        assert "records were removed" in problem
    finally:
        await store.aclose()


async def test_checkpoints_kept_in_redis_would_fork(own_redis: OwnRedis) -> None:
    """The failure the test above guards against, shown with checkpoints kept in Redis."""
    key = Ed25519PrivateKey.generate()
    store = RedisStore(own_redis.url, namespace="sor")
    try:
        await append(store, 39)
        cps = checkpoint_store_for(store)
        assert isinstance(cps, RedisCheckpointStore)
        assert 39 == (await audit_log(store, cps, key).current_checkpoint(P)).tree_size
    finally:
        await store.aclose()
    own_redis.stop()
    own_redis.start()
    store = RedisStore(own_redis.url, namespace="sor")
    try:
        await append(store, 17)
        cps = checkpoint_store_for(store)
        assert 17 == (await audit_log(store, cps, key).current_checkpoint(P)).tree_size
    finally:
        await store.aclose()


async def test_with_a_database_the_service_keeps_checkpoints_in_postgres(
    database_url: str,
) -> None:
    app = build_app(Settings.load(database_url=database_url))
    try:
        await app.open()
        assert isinstance(app.audit_log._checkpoints, PostgresCheckpointStore)
        assert {"store", "database"} == set(app.probes)
        await app.probes["database"]()
    finally:
        await app.aclose()
    dev = build_app(Settings.load())
    assert None is dev.database
    assert {"store"} == set(dev.probes)
    await dev.aclose()
