"""PostgreSQL: which driver, and what the audit log's gap-free numbering costs (issue 10).

    .venv/bin/python benchmarks/pg_driver.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--calls 2000] [--psycopg]

Creates a scratch database on the server at --url (dropped at the end), applies the
migrations, then measures, each as wall time per call and the process's CPU per call:

1. `--psycopg` only (needs `pip install 'psycopg[binary]'`): the two asyncio drivers, one
   connection each, sequential: `SELECT 1`, and a transaction that locks a counter row and
   inserts two rows (the shape of an audit append).
2. The audit append (`xacthuc_append_audit`, one record per call): sequential; 32 callers
   on 8 connections to one platform (they serialise on the platform's head row) and to 8
   platforms; and 32 callers through `GroupAppender` (group commit) on one platform.

Measured on the 2-core development machine (shared with other work, so compare within a
run), PostgreSQL 15 on loopback, 2000 calls each, 2026-11-29, three runs (wall / client CPU
per call, microseconds):

    driver     SELECT 1             lock + 2 inserts (transaction)
    asyncpg    106-317 / 57-61      595-1308 / 305-430
    psycopg 3  77-270 / 64-67       823-1672 / 433-550

    audit append, one record per call      wall   CPU    (two runs)
    sequential                             724-934   303-337
    32 callers, 1 platform (take turns)    533-914   310-333
    32 callers, 8 platforms                360-493   210-221
    32 callers, 1 platform, group commit    70-86     30-34   (2000 calls in 62 statements)

The drivers are close; asyncpg is never behind on client CPU (the service is CPU bound on
2 cores) and is ahead in two runs of three, and it has a pool, server-side cursors and
COPY built in, with the binary protocol. What matters far more is the number of round
trips: group commit cuts the audit append's cost by 6-10x, so asyncpg it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from xacthuc.adapters.store.pg_audit import GroupAppender, NewRecord, PostgresAuditLog
from xacthuc.adapters.store.postgres import Database, migrate

SETUP = (
    "CREATE TABLE bench_head (p text PRIMARY KEY, n bigint NOT NULL)",
    "CREATE TABLE bench_rows (p text, i bigint, r text, h bytea, PRIMARY KEY (p, i))",
    "INSERT INTO bench_head VALUES ('a', 0)",
)


async def timed(
    calls: int, one: Callable[[int], Awaitable[Any]], concurrency: int = 1
) -> dict[str, float]:
    """Wall and CPU microseconds per call of `one(i)`, `concurrency` callers at once."""
    cpu, wall = time.process_time(), time.perf_counter()
    per = calls // concurrency

    async def caller(c: int) -> None:
        for i in range(per):
            await one(c * per + i)

    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    done = per * concurrency
    return {
        "us_per_call": round((time.perf_counter() - wall) / done * 1e6, 1),
        "cpu_us_per_call": round((time.process_time() - cpu) / done * 1e6, 1),
    }


async def drivers(url: str, calls: int) -> dict[str, Any]:
    import psycopg  # only for this comparison; not a dependency of the service

    out: dict[str, Any] = {}
    a = await asyncpg.connect(url)
    for stmt in SETUP:
        await a.execute(stmt)

    async def a_tx(i: int) -> None:
        async with a.transaction():
            n = await a.fetchval("UPDATE bench_head SET n = n + 2 WHERE p = 'a' RETURNING n")
            await a.executemany(
                "INSERT INTO bench_rows VALUES ($1, $2, $3, $4)",
                [("a", n - 2, "x" * 300, b"h" * 32), ("a", n - 1, "y" * 300, b"h" * 32)],
            )

    async def a_sel(i: int) -> None:
        await a.fetchval("SELECT 1")

    out["asyncpg"] = {"select1": await timed(calls, a_sel), "tx": await timed(calls, a_tx)}
    await a.close()
    p = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def p_sel(i: int) -> None:
        await (await p.execute("SELECT 1")).fetchone()

    async def p_tx(i: int) -> None:
        async with p.transaction():
            row = await (
                await p.execute("UPDATE bench_head SET n = n + 2 WHERE p = 'a' RETURNING n")
            ).fetchone()
            assert row is not None
            n = row[0]
            async with p.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO bench_rows VALUES (%s, %s, %s, %s)",
                    [("a", n - 2, "x" * 300, b"h" * 32), ("a", n - 1, "y" * 300, b"h" * 32)],
                )

    out["psycopg"] = {"select1": await timed(calls, p_sel), "tx": await timed(calls, p_tx)}
    await p.close()
    return out


async def audit(url: str, calls: int) -> dict[str, Any]:
    db = Database(url, min_size=8, max_size=8)
    await db.open()
    log = PostgresAuditLog(db)
    now = time.time()

    def record(i: int) -> list[NewRecord]:
        return [NewRecord(now, f"acct-{i}", "code_sent", "ok", extra={"challenge": f"c{i}"})]

    out: dict[str, Any] = {}
    out["sequential"] = await timed(calls, lambda i: log.append("seq", record(i)))
    out["32_callers_1_platform"] = await timed(
        calls, lambda i: log.append("one", record(i)), concurrency=32
    )
    out["32_callers_8_platforms"] = await timed(
        calls, lambda i: log.append(f"p{i % 8}", record(i)), concurrency=32
    )
    group = GroupAppender(log)
    out["32_callers_1_platform_group_commit"] = await timed(
        calls, lambda i: group.append("grp", record(i)), concurrency=32
    )
    out["32_callers_1_platform_group_commit"]["statements"] = group.commits
    await db.aclose()
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--psycopg", action="store_true", help="also compare with psycopg 3")
    args = ap.parse_args()
    name = "xacthuc_bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.url)._replace(path="/" + name))
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
        report: dict[str, Any] = {}
        if args.psycopg:
            report["drivers"] = await drivers(url, args.calls)
        report["audit_append"] = await audit(url, args.calls)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
