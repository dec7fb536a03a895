"""`xacthuc admin`: an operator's actions on the system of record (PostgreSQL,
XACTHUC_DATABASE_URL, as the servers read it; `--url` overrides it).

    xacthuc admin erase --platform P --account A --reference R
        Erase the contents of every audit record of platform P that names account A (its
        `account` field, a guardian link's `guardian_account`, an auditor query's
        `query_account`): P10, Law 91/2025 deletion on request within 72 hours, done at once.
        Each record keeps its index and leaf hash, so the Merkle tree and every checkpoint
        still verify (an export shows it as its hash and `"erased": true`). Audited in P's
        log as `records_erased` with the count, R and `by` "operator", never the account.
        Prints how many records were erased (0: none named the account any more).

Exit status: 0 done; 2 a usage error, a malformed value or no database configured; 1 the
database cannot be reached or its schema is not this build's (`xacthuc db migrate`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from xacthuc.domain.api_keys import PLATFORM_ID
from xacthuc.domain.errors import FieldInvalid
from xacthuc.domain.records import check_request_reference
from xacthuc.verifiers.phone_otp import check_account_id


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "admin",
        help="operator actions on the database: erase an account's audit records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    asub = p.add_subparsers(dest="admin_command", required=True)
    erase = asub.add_parser(
        "erase",
        help="erase the contents of every audit record of a platform naming an account",
    )
    erase.add_argument("--platform", required=True, help="platform id")
    erase.add_argument(
        "--account",
        required=True,
        help="the platform's account id (1-128 of A-Z a-z 0-9 . _ : @ -)",
    )
    erase.add_argument(
        "--reference",
        required=True,
        help="the erasure request's reference, recorded (1-128 of A-Z a-z 0-9 . _ : / -)",
    )
    erase.add_argument("--url", help="postgresql://... (default: XACTHUC_DATABASE_URL)")
    erase.add_argument(
        "--timeout", type=float, default=10.0, help="database timeout, seconds (default 10)"
    )
    erase.set_defaults(func=_erase)


def _fail(message: str, status: int) -> int:
    print(f"xacthuc admin: {message}", file=sys.stderr)
    return status


def _erase(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("XACTHUC_DATABASE_URL", "")
    if not url.startswith(("postgresql://", "postgres://")):
        return _fail("no database: set XACTHUC_DATABASE_URL (postgresql://...) or --url", 2)
    if not PLATFORM_ID.fullmatch(args.platform):
        return _fail("--platform: must be 1-63 of a-z 0-9 _ - (starting with a letter or digit)", 2)
    try:
        check_account_id(args.account, "--account")
        check_request_reference(args.reference, "--reference")
    except FieldInvalid as e:
        return _fail(f"{e.metadata['field']}: {e.message}", 2)
    return asyncio.run(_erase_in(url, args.platform, args.account, args.reference, args.timeout))


async def _erase_in(url: str, platform: str, account: str, reference: str, seconds: float) -> int:
    from xacthuc.adapters.store.pg_audit import PostgresAuditLog
    from xacthuc.adapters.store.postgres import Database, SchemaMismatch, redact
    from xacthuc.domain.errors import StoreUnavailable

    database = Database(url, min_size=0, max_size=1, timeout=seconds)
    try:
        await database.open()
        erased = await PostgresAuditLog(database).erase_account(
            platform, account, time.time(), request=reference, by="operator"
        )
    except StoreUnavailable:
        return _fail(f"cannot reach the database {redact(url)}; nothing was erased", 1)
    except SchemaMismatch as e:
        return _fail(f"{e}; nothing was erased", 1)
    finally:
        await database.aclose()
    print(f"erased {erased} audit record(s) of platform {platform} (request {reference})")
    return 0
