"""`xacthuc keys create|revoke|list` against the key store in PostgreSQL (XACTHUC_DATABASE_URL,
as the servers read it; Redis is not needed): every running server takes a change in within
XACTHUC_API_KEYS_POLL_SECONDS, with no restart. Each change is audited in the key's
platform's log (key id and role, never the key). `create` prints the key once; nothing prints
a secret or a hash, only key ids.

    xacthuc keys create --platform P [--role platform|auditor] [--label L]
    xacthuc keys revoke KEY_ID [--reason R] [--file KEYS_FILE]
    xacthuc keys list [--platform P] [--json]

`keys create --file F` writes the read-only keys file instead (XACTHUC_API_KEYS_FILE, read at
start). A key from that file is revoked without a restart by `keys revoke KEY_ID --file F`:
the store records it revoked, and the store's word wins over the file's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from xacthuc.domain.api_keys import ApiKeyExists, ApiKeyNotFound, StoredApiKey
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.api_keys import ApiKeyStore
from xacthuc.server.app import make_database
from xacthuc.server.auth import ApiKeys, Role, new_stored_key
from xacthuc.server.config import ConfigError, Settings

T = TypeVar("T")
DEFAULT_REASON = "revoked_by_operator"


def _fail(message: str, status: int = 2) -> int:
    print(f"xacthuc: {message}", file=sys.stderr)
    return status


def _with_store(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    """Run `action` on the key store of the settings (PostgreSQL); ConfigError, ValueError
    without a database (the servers then keep keys inside each process) or with one whose
    schema is not this build's (SchemaMismatch)."""
    settings = Settings.load()
    database = make_database(settings)
    if database is None:
        raise ValueError(
            "XACTHUC_DATABASE_URL is unset: without a database each server keeps its keys "
            "inside its own process; set it as the servers have it, or use --file"
        )

    async def run() -> T:
        import asyncpg

        from xacthuc.adapters.store.pg_api_keys import PostgresApiKeyStore

        try:
            return await action(PostgresApiKeyStore(database))
        except asyncpg.PostgresError as e:  # refused login, no such database, ...
            raise ValueError(f"{database!r}: {type(e).__name__}: {e}") from e
        finally:
            await database.aclose()

    return asyncio.run(run())


def _iso(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def create(args: argparse.Namespace) -> int:
    try:
        key, record = new_stored_key(args.platform, Role(args.role), time.time(), args.label)
        version = _with_store(lambda store: store.create(record))
    except (ConfigError, ValueError, ApiKeyExists) as e:
        return _fail(str(e))
    except StoreUnavailable:
        return _fail("the key store does not answer; nothing was created", 1)
    print(
        f"created {record.role} key {record.key_id} for platform {record.platform} "
        f"(key store version {version})",
        file=sys.stderr,
    )
    print(key)  # shown once: only its hash is stored
    return 0


def revoke(args: argparse.Namespace) -> int:
    fallback: StoredApiKey | None = None
    try:
        if args.file is not None:
            entry = ApiKeys.load(args.file).entry(args.key_id)
            if entry is not None:
                created = datetime.fromisoformat(entry.created).timestamp() if entry.created else 0
                fallback = StoredApiKey(
                    entry.key_id, entry.platform, entry.role.value, entry.sha256, created
                )
        now = time.time()
        key = _with_store(
            lambda store: store.revoke(args.key_id, now, args.reason, fallback=fallback)
        )
    except ApiKeyNotFound:
        where = "the key store" + (" or the keys file" if args.file else "")
        return _fail(f"no key {args.key_id} in {where}")
    except (ConfigError, ValueError, OSError, KeyError) as e:
        return _fail(str(e))
    except StoreUnavailable:
        return _fail("the key store does not answer; nothing was revoked", 1)
    if key.revoked_at is not None and key.revoked_at < now:
        print(f"key {key.key_id} was revoked already at {_iso(key.revoked_at)}", file=sys.stderr)
    else:
        print(f"revoked {key.role} key {key.key_id} of platform {key.platform}", file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    try:
        keys = _with_store(lambda store: store.list(args.platform))
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except StoreUnavailable:
        return _fail("the key store does not answer", 1)
    rows = [
        {
            "key_id": k.key_id,
            "platform": k.platform,
            "role": k.role,
            "created": _iso(k.created_at),
            "status": "revoked" if k.revoked else "active",
            "revoked": _iso(k.revoked_at),
            "revoke_reason": k.revoke_reason,
            "label": k.label,
        }
        for k in keys
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    for row in rows:
        print(
            f"{row['key_id']}  {row['platform']:<20} {row['role']:<8} {row['status']:<7} "
            f"{row['created']}  {row['revoked'] or '-':<25} {row['label']}".rstrip()
        )
    return 0


def register(keys_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `revoke` and `list` under the `keys` command (`create` is in main.py)."""
    rv = keys_subparsers.add_parser(
        "revoke", help="revoke a platform API key on every server (no restart)"
    )
    rv.add_argument("key_id", help="the key id (the 12 hex digits after xk_)")
    rv.add_argument(
        "--reason", default=DEFAULT_REASON, help="1-64 of a-z 0-9 _ (default: %(default)s)"
    )
    rv.add_argument(
        "--file",
        type=Path,
        help="keys file (XACTHUC_API_KEYS_FILE): revoke a key it lists, in the store",
    )
    rv.set_defaults(func=revoke)
    ls = keys_subparsers.add_parser("list", help="list the key store's API keys (no secrets)")
    ls.add_argument("--platform", help="only this platform's keys")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=list_keys)
