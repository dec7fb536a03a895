"""The system of record's plumbing (issue 10): migrations from an empty database, the schema
check that keeps a server off a database it was not built for, `xacthuc db`, and PostgreSQL
out of reach answering STORE_UNAVAILABLE (never INTERNAL, nothing written)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from xacthuc.adapters.store.checkpoints import PostgresCheckpointStore
from xacthuc.adapters.store.postgres import (
    Database,
    SchemaMismatch,
    applied_versions,
    check_schema,
    migrate,
    migrations,
    redact,
    schema_version,
)
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.checkpoints import StoredCheckpoint
from xacthuc.server.app import build_app
from xacthuc.server.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent

TABLES = {
    "schema_migrations",
    "log_heads",
    "audit_records",
    "checkpoint_heads",
    "merkle_heads",
    "merkle_nodes",
    "checkpoints",
}


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in migrations()] == list(range(1, schema_version() + 1))
    assert "audit_log" == migrations()[0].name


async def test_migrate_builds_the_schema_from_an_empty_database_once(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    assert set() == await tables(url)
    conn = await asyncpg.connect(url, timeout=5)
    try:
        with pytest.raises(SchemaMismatch, match="no xacthuc schema: run `xacthuc db migrate`"):
            await check_schema(conn)
        applied = await migrate(conn)
        assert [m.version for m in applied] == list(range(1, schema_version() + 1))
        await check_schema(conn)
        assert [] == await migrate(conn)  # a second run applies nothing
        assert list(range(1, schema_version() + 1)) == await applied_versions(conn)
    finally:
        await conn.close()
    assert TABLES <= await tables(url)


async def test_concurrent_migrators_apply_each_migration_once(
    new_database: Callable[[], str],
) -> None:
    """Replicas starting together may all run `db migrate`: the advisory lock serialises."""
    url = new_database()
    conns = [await asyncpg.connect(url, timeout=5) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert [schema_version()] == [sum(len(r) for r in results)]
    finally:
        for c in conns:
            await c.close()


async def test_a_database_newer_than_the_build_is_refused(new_database: Callable[[], str]) -> None:
    url = new_database()
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await migrate(conn)
        newer = schema_version() + 1
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", newer
        )
        with pytest.raises(SchemaMismatch, match=f"schema version {newer}, newer than"):
            await check_schema(conn)
        with pytest.raises(SchemaMismatch, match="upgrade xacthuc"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_an_older_database_is_refused_until_migrated(new_database: Callable[[], str]) -> None:
    url = new_database()
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await migrate(conn)
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", schema_version())
        if schema_version() > 1:
            with pytest.raises(SchemaMismatch, match="run `xacthuc db migrate`"):
                await check_schema(conn)
    finally:
        await conn.close()
    db = Database(url)
    with pytest.raises(SchemaMismatch):
        await db.open()
    await db.aclose()


async def test_the_server_refuses_to_start_on_an_unmigrated_database(
    new_database: Callable[[], str], redis_url: str, redis_namespace: str
) -> None:
    url = new_database()
    app = build_app(
        Settings.load(database_url=url, store_url=redis_url, store_namespace=redis_namespace)
    )
    assert "database" in app.probes
    with pytest.raises(SchemaMismatch, match="xacthuc db migrate"):
        await app.open()
    await app.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_out_of_reach_is_store_unavailable(
    redis_url: str, redis_namespace: str
) -> None:
    """Refused connections answer STORE_UNAVAILABLE (UNAVAILABLE), never something else."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/xacthuc"
    db = Database(url, timeout=2)
    with pytest.raises(StoreUnavailable):
        await db.open()
    with pytest.raises(StoreUnavailable):
        await db.ping()
    with pytest.raises(StoreUnavailable):
        await PostgresCheckpointStore(db).latest("alpha")
    app = build_app(
        Settings.load(
            database_url=url,
            database_timeout_seconds=2,
            store_url=redis_url,
            store_namespace=redis_namespace,
        )
    )
    with pytest.raises(OSError, match="cannot reach the database"):
        await app.open()
    await app.aclose()


async def test_a_lost_connection_mid_call_is_store_unavailable_and_writes_nothing(
    database: Database, database_url: str
) -> None:
    """The server ends the session under a transaction: STORE_UNAVAILABLE, nothing committed."""
    cps = PostgresCheckpointStore(database)
    async with database.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    admin = await asyncpg.connect(database_url, timeout=5)

    async def write_while_the_server_ends_the_session() -> None:
        async with database.transaction() as conn:
            assert pid == await conn.fetchval("SELECT pg_backend_pid()")  # the idle one
            await conn.execute("INSERT INTO checkpoint_heads (platform, size) VALUES ('alpha', 9)")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await conn.fetchval("SELECT 1")

    try:
        with pytest.raises(StoreUnavailable):
            await write_while_the_server_ends_the_session()
    finally:
        await admin.close()
    assert None is await cps.latest("alpha")
    assert True is await cps.append("alpha", StoredCheckpoint(1, b"\1" * 32, 1.0, "n"), after=0)


async def test_a_released_connection_costs_no_reset_round_trip(database: Database) -> None:
    """The pool hands a connection back without asyncpg's reset query (one round trip per
    call saved): a session setting survives the release (so code must only use
    transaction-local settings), while a transaction left open is still rolled back."""
    async with database.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("SET application_name = 'kept'")
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE left_open (x int)")
    async with database.connection() as conn:
        assert pid == await conn.fetchval("SELECT pg_backend_pid()")
        assert "kept" == await conn.fetchval("SHOW application_name")
        assert None is await conn.fetchval("SELECT to_regclass('pg_temp.left_open')")


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])  # deadlock, serialization failure
async def test_a_transaction_rolled_back_by_the_server_is_store_unavailable(
    database: Database, sqlstate: str
) -> None:
    """A deadlock or serialization failure rolls the whole transaction back: the call may
    be tried again (UNAVAILABLE, STORE_UNAVAILABLE), never INTERNAL, and nothing is written."""

    async def write_then_roll_back() -> None:
        async with database.transaction() as conn:
            await conn.execute("INSERT INTO checkpoint_heads (platform, size) VALUES ('beta', 3)")
            await conn.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'rolled back' USING ERRCODE = '{sqlstate}'; END $$"
            )

    with pytest.raises(StoreUnavailable):
        await write_then_roll_back()
    async with database.connection() as conn:
        assert None is await conn.fetchval(
            "SELECT size FROM checkpoint_heads WHERE platform = 'beta'"
        )


def test_database_url_is_checked_and_secret() -> None:
    with pytest.raises(ConfigError, match="XACTHUC_DATABASE_URL: must start with postgresql://"):
        Settings.load(database_url="mysql://x")
    with pytest.raises(ConfigError, match="POOL_MIN_SIZE must not exceed"):
        Settings.load(database_pool_min_size=5, database_pool_max_size=2)
    with pytest.raises(ConfigError, match="XACTHUC_DATABASE_URL needs a Redis store"):
        Settings.load(database_url="postgresql://db.example/x")  # memory:// by default
    s = Settings.load(
        database_url="postgresql://u:hunter2@db.example:5432/x?sslmode=verify-full",
        store_url="redis://127.0.0.1:6379/0",
    )
    assert "hunter2" not in repr(s)
    assert "postgresql://u:***@db.example:5432/x" == redact(
        "postgresql://u:hunter2@db.example:5432/x"
    )
    assert None is Settings.load(database_url="").database_url


def test_production_refuses_to_start_without_postgres() -> None:
    def problems(**kw: object) -> str:
        with pytest.raises(ConfigError) as e:  # other dev-only parts are refused too
            Settings.load(mode="production", **kw)
        return " ".join(e.value.problems)

    assert "XACTHUC_DATABASE_URL is unset" in problems()
    assert "XACTHUC_DATABASE_URL" not in problems(
        database_url="postgresql://db.example/x", store_url="redis://127.0.0.1:6379/0"
    )


def xacthuc(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}
    if url is not None:
        env["XACTHUC_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "xacthuc.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_db_cli_migrates_and_reports_the_version(new_database: Callable[[], str]) -> None:
    url = new_database()
    before = xacthuc("db", "version", url=url)
    assert (1, f"database schema version 0; this build needs {schema_version()}\n") == (
        before.returncode,
        before.stdout,
    )
    done = xacthuc("db", "migrate", url=url)
    assert 0 == done.returncode, done.stderr
    assert "applied 0001_audit_log" in done.stdout
    again = xacthuc("db", "migrate", url=url)
    assert (0, f"schema version {schema_version()}\n") == (again.returncode, again.stdout)
    after = xacthuc("db", "version", url=url)
    assert 0 == after.returncode
    none = xacthuc("db", "migrate", url=None)
    assert 2 == none.returncode
    assert "XACTHUC_DATABASE_URL" in none.stderr
    down = xacthuc(
        "db", "migrate", "--url", f"postgresql://postgres:pw@127.0.0.1:{free_port()}/x", url=None
    )
    assert 1 == down.returncode
    assert "cannot reach postgresql://postgres:***@127.0.0.1" in down.stderr
    assert "pw@" not in down.stderr
