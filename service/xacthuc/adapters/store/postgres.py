"""PostgreSQL, the system of record (issue 10; docs/design/system-of-record.md).

`Database` owns a bounded asyncpg pool and turns every way PostgreSQL can be out of reach
(refused or lost connection, timeout, pool exhausted, server shutting down or read-only)
into `StoreUnavailable` (gRPC UNAVAILABLE, reason STORE_UNAVAILABLE), never INTERNAL. Work is
done in transactions (`Database.transaction()`): a failure commits nothing.

Migrations are the files `migrations/NNNN_<name>.sql` beside this module, applied in order
by `migrate()` (`xacthuc db migrate`) in one transaction under an advisory lock, each
recorded in `schema_migrations`; then `migrate()` makes the audit log's monthly partitions
ahead (migration 0005), so running it again is also their maintenance. `Database.open()` refuses a database whose applied
migrations are not exactly those of this build (`SchemaMismatch`): older means "run
xacthuc db migrate", newer means this build is too old for it.

Driver: asyncpg, chosen by measurement (benchmarks/pg_driver.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from xacthuc.domain.errors import StoreUnavailable

# A connection of its own (the CLI) or one lent by the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Errors that mean "PostgreSQL cannot be reached or cannot take writes now": retry later.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, DNS, TLS
    TimeoutError,  # connect, pool acquire, command
    asyncpg.PostgresConnectionError,  # connection lost or failed, cannot connect now
    asyncpg.InterfaceError,  # connection closed under us, pool closing
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, or a read-only primary
    # Class 40: a deadlock or serialization failure rolled the transaction back whole;
    # nothing was written, and the call succeeds when tried again.
    asyncpg.exceptions.TransactionRollbackError,
)

# pg_advisory_xact_lock key of the migrator ('xacthuc' as an integer): one migrator at a time.
MIGRATION_LOCK = 0x7861637468756301

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


async def _keep_session(conn: object) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback of
    a transaction left open. asyncpg's default sends a reset query (UNLISTEN, RESET ALL,
    advisory unlock) on every release: a second round trip per call, ~6% of a confirm's
    event-loop time. Nothing here keeps session state: settings are transaction-local
    (`set_config(..., true)`), advisory locks transaction-scoped, LISTEN on its own
    connection outside the pool."""


class SchemaMismatch(ValueError):
    """The database's schema is not the one this build was made for."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """This build's migrations, in order (versions 1, 2, ... without gaps)."""
    folder = resources.files("xacthuc.adapters.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m is not None:
            found.append(Migration(int(m[1]), m[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {[m.version for m in found]}")
    return tuple(found)


def schema_version() -> int:
    """The schema version this build needs: the number of its latest migration."""
    return migrations()[-1].version


async def applied_versions(conn: Conn) -> list[int]:
    """Versions recorded in the database ([] for a database never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [int(r["version"]) for r in rows]


# Months of audit_records partitions kept ahead of the current one (migration 0005):
# `migrate` and the retention job (pg_audit.AuditRetention) create them.
PARTITIONS_AHEAD = 3


async def migrate(conn: Conn, target: int | None = None) -> list[Migration]:
    """Apply the migrations the database lacks (up to version `target`, default this
    build's), in one transaction; return those applied. Then make sure the audit log's
    monthly partitions exist for this month and the next PARTITIONS_AHEAD (when the schema
    has them), so running it again is also the partitions' maintenance. Refuses
    (SchemaMismatch) a database that has migrations this build does not know."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = set(await applied_versions(conn))
        known = {m.version for m in migrations()}
        if done - known:
            raise SchemaMismatch(
                f"the database has schema version {max(done)}, newer than this build's "
                f"{schema_version()}: upgrade xacthuc"
            )
        applied = []
        for m in migrations():
            if m.version in done or (target is not None and m.version > target):
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
            applied.append(m)
        if await conn.fetchval(
            "SELECT to_regprocedure('xacthuc_ensure_audit_partitions(timestamptz, integer)')"
            " IS NOT NULL"
        ):
            await conn.execute(
                "SELECT xacthuc_ensure_audit_partitions(now(), $1)", PARTITIONS_AHEAD
            )
        return applied


async def check_schema(conn: Conn) -> None:
    """Raise SchemaMismatch unless the database has exactly this build's migrations."""
    done = await applied_versions(conn)
    want = [m.version for m in migrations()]
    if done == want:
        return
    if not done:
        raise SchemaMismatch("the database has no xacthuc schema: run `xacthuc db migrate`")
    if set(done) - set(want):
        raise SchemaMismatch(
            f"the database has schema version {max(done)}, newer than this build's "
            f"{schema_version()}: upgrade xacthuc"
        )
    raise SchemaMismatch(
        f"the database has schema version {max(done)}, this build needs {schema_version()}: "
        "run `xacthuc db migrate`"
    )


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Database:
    """A bounded pool of connections to the system of record, opened by `open()`."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        check: bool = True,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("the database URL must start with postgresql://")
        self._url = url
        self._min, self._max = min_size, max_size
        self._timeout = timeout
        self._check = check
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Database({redact(self._url)!r})"

    async def open(self) -> None:
        """Create the pool and check the schema (idempotent). Raises StoreUnavailable when
        PostgreSQL cannot be reached, SchemaMismatch when its schema is not this build's."""
        await self._get_pool()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                try:
                    pool = await asyncpg.create_pool(
                        self._url,
                        min_size=self._min,
                        max_size=self._max,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        reset=_keep_session,
                    )
                except UNAVAILABLE as e:
                    raise StoreUnavailable() from e
                if self._check:
                    try:
                        async with pool.acquire(timeout=self._timeout) as conn:
                            await check_schema(conn)
                    except BaseException:
                        await pool.close()
                        raise
                self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection (autocommit); PostgreSQL out of reach -> StoreUnavailable."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except UNAVAILABLE as e:
            raise StoreUnavailable() from e

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[Conn]:
        """A pooled connection inside one transaction: committed when the block ends,
        rolled back (nothing written) when it raises."""
        async with self.connection() as conn, conn.transaction(**options):
            yield conn

    async def connect(self) -> asyncpg.Connection[asyncpg.Record]:
        """A connection of its own, outside the pool, for a session that must not be shared
        or reset (the state cache's LISTEN: pg_invalidations.py); the caller closes it.
        Raises what asyncpg raises (the caller decides what a failure means)."""
        return await asyncpg.connect(self._url, timeout=self._timeout)

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
