"""`xacthuc db`: the system of record's schema (PostgreSQL, XACTHUC_DATABASE_URL).

    xacthuc db migrate   apply the migrations the database lacks (one transaction, under an
                         advisory lock: several replicas may run it at once), then make the
                         audit log's monthly partitions for this month and the next three
                         (worker 0's retention job does too); exit 0
    xacthuc db version   print the database's schema version and this build's; exit 0 when
                         they agree (the server starts), 1 when not

Both exit 2 when no database is configured and 1 when it cannot be reached or has a
schema newer than this build's. `--url` overrides XACTHUC_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "db",
        help="the PostgreSQL schema: migrate, version",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="db_command", required=True)
    for name, helptext in (
        ("migrate", "apply the migrations the database lacks"),
        ("version", "print the database's schema version and this build's"),
    ):
        c = dsub.add_parser(name, help=helptext)
        c.add_argument("--url", help="postgresql://... (default: XACTHUC_DATABASE_URL)")
        c.add_argument(
            "--timeout", type=float, default=10.0, help="connect timeout, seconds (default 10)"
        )
        c.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("XACTHUC_DATABASE_URL", "")
    if not url.startswith(("postgresql://", "postgres://")):
        print(
            "xacthuc db: no database: set XACTHUC_DATABASE_URL (postgresql://...) or --url",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_main(args.db_command, url, args.timeout))


async def _main(command: str, url: str, connect_seconds: float) -> int:
    import asyncpg

    from xacthuc.adapters.store.postgres import (
        UNAVAILABLE,
        SchemaMismatch,
        applied_versions,
        migrate,
        redact,
        schema_version,
    )

    try:
        conn = await asyncpg.connect(url, timeout=connect_seconds)
    except UNAVAILABLE as e:
        print(f"xacthuc db: cannot reach {redact(url)}: {e}", file=sys.stderr)
        return 1
    try:
        if command == "migrate":
            try:
                applied = await migrate(conn)
            except SchemaMismatch as e:
                print(f"xacthuc db: {e}", file=sys.stderr)
                return 1
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
            print(f"schema version {schema_version()}")
            return 0
        done = await applied_versions(conn)
        have = max(done, default=0)
        print(f"database schema version {have}; this build needs {schema_version()}")
        return 0 if done == list(range(1, schema_version() + 1)) else 1
    finally:
        await conn.close()
