"""API key store contract (`xacthuc.ports.api_keys`), memory and PostgreSQL alike, down to
the audit bytes: each change is one atomic step with its audit record, and bumps the version
that servers poll. Then what only PostgreSQL has to show: concurrent writers and pollers,
the poll served by an index, a database out of reach."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

import asyncpg
import pytest

from xacthuc.adapters.store.api_keys import api_key_store_for
from xacthuc.adapters.store.memory_api_keys import MemoryApiKeyStore
from xacthuc.adapters.store.pg_api_keys import PostgresApiKeyStore
from xacthuc.adapters.store.pg_audit import PostgresAuditLog
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.api_keys import ApiKeyChanges, ApiKeyExists, ApiKeyNotFound, StoredApiKey
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.api_keys import ApiKeyStore

from .conftest import emptied_database, memory_store
from .test_store_contract import NOW, PLATFORM, rec

SHA = hashlib.sha256(b"secret-of-the-key").hexdigest()


class AuditLog(Protocol):
    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]: ...


def key(
    key_id: str = "0123456789ab", *, platform: str = PLATFORM, role: str = "platform"
) -> StoredApiKey:
    return StoredApiKey(key_id, platform, role, SHA, NOW, "ops team A")


@pytest.fixture(params=["memory", "postgres"])
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[ApiKeyStore, AuditLog]]:
    """Each key store in turn, empty, with the audit log it writes to."""
    if request.param == "memory":
        store = memory_store()
        yield MemoryApiKeyStore(store), store
        return
    db = await emptied_database(request.getfixturevalue("database_url"))
    yield PostgresApiKeyStore(db), PostgresAuditLog(db)
    await db.aclose()


@pytest.fixture
def keys(backend: tuple[ApiKeyStore, AuditLog]) -> ApiKeyStore:
    return backend[0]


@pytest.fixture
def log(backend: tuple[ApiKeyStore, AuditLog]) -> AuditLog:
    return backend[1]


async def test_a_created_key_is_listed_audited_and_bumps_the_version(
    log: AuditLog, keys: ApiKeyStore
) -> None:
    """create stores the key, returns version 1 and audits api_key_created (id and role,
    never the hash); changes_since(0) is the whole table."""
    assert 1 == await keys.create(key())
    assert [key()] == await keys.list()
    assert [key()] == await keys.list(PLATFORM)
    assert [] == await keys.list("beta")
    changes = await keys.changes_since(0)
    assert (1, (key(),), True) == (changes.version, changes.keys, changes.full)
    expected = rec(
        0, NOW, "api_key_created", "ok", account="", key_id="0123456789ab", role="platform"
    )
    assert [expected] == await log.audit_records(PLATFORM)
    assert SHA not in expected
    assert "ops team" not in expected


async def test_a_key_id_is_created_once(log: AuditLog, keys: ApiKeyStore) -> None:
    """A second create of the same id is ApiKeyExists and changes nothing, audit included."""
    await keys.create(key())
    with pytest.raises(ApiKeyExists):
        await keys.create(key(role="auditor"))
    assert [key()] == await keys.list()
    assert 1 == (await keys.changes_since(0)).version
    assert 1 == len(await log.audit_records(PLATFORM))


async def test_revoke_is_stored_audited_and_idempotent(log: AuditLog, keys: ApiKeyStore) -> None:
    """revoke marks the key (time, reason), audits api_key_revoked once; a second revoke
    changes nothing and returns the key as revoked the first time."""
    await keys.create(key(role="auditor"))
    revoked = await keys.revoke("0123456789ab", NOW + 5, "leaked")
    assert replace(key(role="auditor"), revoked_at=NOW + 5, revoke_reason="leaked") == revoked
    assert revoked == await keys.revoke("0123456789ab", NOW + 9, "again")
    assert [revoked] == await keys.list()
    assert 2 == (await keys.changes_since(0)).version
    assert [
        rec(0, NOW, "api_key_created", "ok", account="", key_id="0123456789ab", role="auditor"),
        rec(
            1,
            NOW + 5,
            "api_key_revoked",
            "ok",
            "leaked",
            account="",
            key_id="0123456789ab",
            role="auditor",
        ),
    ] == await log.audit_records(PLATFORM)


async def test_changes_since_a_version_are_only_the_keys_changed_after_it(
    keys: ApiKeyStore,
) -> None:
    """Each key once, with its latest state, in the order of its latest change; nothing
    after the current version; a version above the store's is answered in full."""
    a, b, c = key("aaaaaaaaaaaa"), key("bbbbbbbbbbbb"), key("cccccccccccc", platform="beta")
    for k in (a, b, c):
        await keys.create(k)
    revoked_a = await keys.revoke(a.key_id, NOW + 1, "leaked")
    since_1 = await keys.changes_since(1)
    assert (4, (b, c, revoked_a), False) == (since_1.version, since_1.keys, since_1.full)
    assert (4, (), False) == (
        (now := await keys.changes_since(4)).version,
        now.keys,
        now.full,
    )
    ahead = await keys.changes_since(99)  # a store that lost its data, or another one
    assert (4, True) == (ahead.version, ahead.full)
    assert {a.key_id, b.key_id, c.key_id} == {k.key_id for k in ahead.keys}


async def test_revoke_of_an_unknown_key_is_not_found_unless_a_file_key_is_given(
    log: AuditLog, keys: ApiKeyStore
) -> None:
    """An id the store does not hold is ApiKeyNotFound; with the keys file's entry as
    fallback it is stored revoked (the store then wins over the file) and audited."""
    with pytest.raises(ApiKeyNotFound):
        await keys.revoke("ffffffffffff", NOW, "leaked")
    with pytest.raises(ApiKeyNotFound):  # a fallback for another id does not count
        await keys.revoke("ffffffffffff", NOW, "leaked", fallback=key())
    assert [] == await keys.list()
    from_file = replace(key("ffffffffffff"), label="")
    revoked = await keys.revoke("ffffffffffff", NOW + 2, "leaked", fallback=from_file)
    assert replace(from_file, revoked_at=NOW + 2, revoke_reason="leaked") == revoked
    assert [revoked] == await keys.list()
    assert [
        rec(
            0,
            NOW + 2,
            "api_key_revoked",
            "ok",
            "leaked",
            account="",
            key_id="ffffffffffff",
            role="platform",
        )
    ] == await log.audit_records(PLATFORM)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (key("0123"), "key id"),
        (key(platform="Has Space"), "platform id"),
        (key(platform="{tag}"), "platform id"),
        (key(role="admin"), "role"),
        (replace(key(), sha256="00"), "sha256"),
        (replace(key(), label='a"b'), "label"),
        (replace(key(), revoked_at=NOW), "not revoked"),
    ],
)
async def test_bad_keys_are_refused_before_anything_is_written(
    log: AuditLog, keys: ApiKeyStore, bad: StoredApiKey, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await keys.create(bad)
    assert [] == await keys.list()
    assert 0 == (await keys.changes_since(0)).version
    assert [] == await log.audit_records(bad.platform if "{" not in bad.platform else PLATFORM)


@pytest.mark.parametrize("reason", ["", "Has Space", "x" * 65, "leak\nfake"])
async def test_a_revoke_reason_is_a_code(log: AuditLog, keys: ApiKeyStore, reason: str) -> None:
    """The reason goes into the audit log: 1-64 of a-z 0-9 _, so no personal data fits."""
    await keys.create(key())
    with pytest.raises(ValueError, match="reason"):
        await keys.revoke(key().key_id, NOW, reason)
    assert [key()] == await keys.list()
    assert 1 == len(await log.audit_records(PLATFORM))


async def test_audit_times_never_go_backwards(log: AuditLog, keys: ApiKeyStore) -> None:
    """A change stamped before the log's last record takes that record's time (as every
    other append does)."""
    await keys.create(key())
    await keys.revoke(key().key_id, NOW - 10, "leaked")
    times = [json.loads(r)["time"] for r in await log.audit_records(PLATFORM)]
    assert times[0] == times[1]


async def test_with_a_database_the_key_store_is_postgresql(database: Database) -> None:
    """A deployment with a database keeps its keys there (every replica and the CLI see
    them); without one, inside the process."""
    assert isinstance(api_key_store_for(memory_store(), database), PostgresApiKeyStore)
    assert isinstance(api_key_store_for(memory_store()), MemoryApiKeyStore)


async def test_concurrent_changes_are_numbered_in_commit_order_and_no_poll_misses_one(
    database: Database,
) -> None:
    """Writers on several connections while a server polls: versions 1..n, one per change,
    and the poller's table, built only from `changes_since(its version)`, ends with every
    key in its latest state (a change numbered below one already seen would be missed)."""
    writers = [PostgresApiKeyStore(database) for _ in range(4)]
    ids = [f"{i:012x}" for i in range(24)]
    seen: dict[str, StoredApiKey] = {}
    version = 0
    done = False

    async def poll() -> None:
        nonlocal version
        changes = await PostgresApiKeyStore(database).changes_since(version)
        assert not changes.full or version == 0
        seen.update({k.key_id: k for k in changes.keys})
        version = changes.version

    async def poller() -> None:
        while not done:
            await poll()
            await asyncio.sleep(0)

    async def write(n: int) -> None:
        store = writers[n % len(writers)]
        await store.create(key(ids[n]))
        if n % 3 == 0:
            await store.revoke(ids[n], NOW + 1, "leaked")

    polling = asyncio.create_task(poller())
    await asyncio.gather(*(write(n) for n in range(len(ids))))
    done = True
    await polling
    await poll()
    final = await writers[0].changes_since(0)
    assert len(ids) + len(ids[::3]) == final.version
    assert sorted(final.keys, key=lambda k: k.key_id) == sorted(
        seen.values(), key=lambda k: k.key_id
    )
    assert {k.key_id for k in final.keys if k.revoked} == set(ids[::3])
    records = await PostgresAuditLog(database).audit_records(PLATFORM)
    assert len(ids) + len(ids[::3]) == len(records)


async def test_a_poll_is_one_query_served_by_the_version_index(database: Database) -> None:
    """What every server runs each XACTHUC_API_KEYS_POLL_SECONDS: one statement, the store's
    version from the unique index on `version` and the keys above the caller's from a range
    scan of it (sequential scans off, so the plan shows what the index can serve)."""
    from xacthuc.adapters.store.pg_api_keys import _CHANGES

    store = PostgresApiKeyStore(database)
    for n in range(3):
        await store.create(key(f"{n:012x}"))
    async with database.transaction() as conn:
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + _CHANGES, 2)
    assert "Seq Scan" not in plan
    assert "api_keys_version_key" in plan
    changes = await store.changes_since(2)
    assert (3, ("000000000002",), False) == (
        changes.version,
        tuple(k.key_id for k in changes.keys),
        changes.full,
    )


async def _break_the_audit_log(database: Database, platform: str) -> None:
    """Put records where the platform's next one goes, at each time the next appends below
    take (the key is (platform, idx, recorded_at) since migration 0005): they fail (unique
    index)."""
    async with database.connection() as conn:
        head = await conn.fetchrow(
            "SELECT size, last_time FROM log_heads WHERE platform = $1", platform
        )
        size, last = (
            (0, rfc3339(NOW)) if head is None else (head["size"], json.loads(head["last_time"]))
        )
        for at in {last, rfc3339(NOW + 1)}:
            await conn.execute(
                "INSERT INTO audit_records (platform, idx, recorded_at, event, body, leaf_hash)"
                " VALUES ($1, $2, $3::text::timestamptz, 'squatter', '{}', sha256('x'))",
                platform,
                size,
                at,
            )


async def test_a_key_change_whose_audit_record_fails_does_not_happen(database: Database) -> None:
    """The key's row and its record commit together: when the record cannot be appended,
    neither a create nor a revoke changes anything, version included."""
    store = PostgresApiKeyStore(database)
    await store.create(key())
    await _break_the_audit_log(database, PLATFORM)
    with pytest.raises(asyncpg.UniqueViolationError, match=r"audit_records_\w*pkey"):
        await store.create(key("bbbbbbbbbbbb"))
    with pytest.raises(asyncpg.UniqueViolationError, match=r"audit_records_\w*pkey"):
        await store.revoke(key().key_id, NOW + 1, "leaked")
    with pytest.raises(asyncpg.UniqueViolationError, match=r"audit_records_\w*pkey"):
        await store.revoke("ffffffffffff", NOW + 1, "leaked", fallback=key("ffffffffffff"))
    assert [key()] == await store.list()
    assert ApiKeyChanges(1, (key(),), True) == await store.changes_since(0)


async def test_a_database_out_of_reach_is_store_unavailable() -> None:
    """Nothing listens: every call is StoreUnavailable (UNAVAILABLE to a caller, the CLI's
    'does not answer'), never another error."""
    db = Database("postgresql://postgres@127.0.0.1:1/none", timeout=1)
    store = PostgresApiKeyStore(db)
    for call in (
        store.create(key()),
        store.revoke(key().key_id, NOW, "leaked"),
        store.list(),
        store.changes_since(0),
    ):
        with pytest.raises(StoreUnavailable):
            await call
    await db.aclose()


async def test_only_hashes_are_stored(database: Database) -> None:
    """The row holds the 32 bytes of the secret's SHA-256 (the key itself never reaches
    the store), given back as the same hex."""
    store = PostgresApiKeyStore(database)
    await store.create(key())
    async with database.connection() as conn:
        stored = await conn.fetchval("SELECT sha256 FROM api_keys")
    assert bytes.fromhex(SHA) == bytes(stored)
    assert [SHA] == [k.sha256 for k in await store.list()]
