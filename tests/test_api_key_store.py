"""API key store contract (`xacthuc.ports.api_keys`), memory and Redis alike, down to the
audit bytes: each change is one atomic step with its audit record, and bumps the version
that servers poll."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from xacthuc.adapters.store.api_keys import api_key_store_for
from xacthuc.domain.api_keys import ApiKeyExists, ApiKeyNotFound, StoredApiKey
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.api_keys import ApiKeyStore
from xacthuc.ports.store import Store

from .conftest import redis_store
from .test_store_contract import NOW, PLATFORM, rec

SHA = hashlib.sha256(b"secret-of-the-key").hexdigest()


def key(
    key_id: str = "0123456789ab", *, platform: str = PLATFORM, role: str = "platform"
) -> StoredApiKey:
    return StoredApiKey(key_id, platform, role, SHA, NOW, "ops team A")


@pytest.fixture
def keys(store: Store) -> ApiKeyStore:
    return api_key_store_for(store)


async def test_a_created_key_is_listed_audited_and_bumps_the_version(
    store: Store, keys: ApiKeyStore
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
    assert [expected] == await store.audit_records(PLATFORM)
    assert SHA not in expected
    assert "ops team" not in expected


async def test_a_key_id_is_created_once(store: Store, keys: ApiKeyStore) -> None:
    """A second create of the same id is ApiKeyExists and changes nothing, audit included."""
    await keys.create(key())
    with pytest.raises(ApiKeyExists):
        await keys.create(key(role="auditor"))
    assert [key()] == await keys.list()
    assert 1 == (await keys.changes_since(0)).version
    assert 1 == len(await store.audit_records(PLATFORM))


async def test_revoke_is_stored_audited_and_idempotent(store: Store, keys: ApiKeyStore) -> None:
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
    ] == await store.audit_records(PLATFORM)


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
    store: Store, keys: ApiKeyStore
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
    ] == await store.audit_records(PLATFORM)


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
    store: Store, keys: ApiKeyStore, bad: StoredApiKey, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await keys.create(bad)
    assert [] == await keys.list()
    assert 0 == (await keys.changes_since(0)).version
    assert [] == await store.audit_records(bad.platform if "{" not in bad.platform else PLATFORM)


@pytest.mark.parametrize("reason", ["", "Has Space", "x" * 65, "leak\nfake"])
async def test_a_revoke_reason_is_a_code(store: Store, keys: ApiKeyStore, reason: str) -> None:
    """The reason goes into the audit log: 1-64 of a-z 0-9 _, so no personal data fits."""
    await keys.create(key())
    with pytest.raises(ValueError, match="reason"):
        await keys.revoke(key().key_id, NOW, reason)
    assert [key()] == await keys.list()
    assert 1 == len(await store.audit_records(PLATFORM))


async def test_audit_times_never_go_backwards(store: Store, keys: ApiKeyStore) -> None:
    """A change stamped before the log's last record takes that record's time (as every
    other append does)."""
    await keys.create(key())
    await keys.revoke(key().key_id, NOW - 10, "leaked")
    times = [json.loads(r)["time"] for r in await store.audit_records(PLATFORM)]
    assert times[0] == times[1]


async def test_the_key_store_is_the_shared_one_behind_the_state_cache(
    redis_url: str, redis_namespace: str
) -> None:
    """The servers' store (Redis behind the cache of account state) gives the Redis key
    store, which another process sees; the memory store gives the in-process one."""
    from xacthuc.adapters.store.api_keys import shared_across_processes
    from xacthuc.adapters.store.cached import CachedStore
    from xacthuc.adapters.store.redis_api_keys import RedisApiKeyStore
    from xacthuc.server.app import make_store
    from xacthuc.server.config import Settings

    store = make_store(Settings.load(store_url=redis_url, store_namespace=redis_namespace))
    try:
        assert isinstance(store, CachedStore)
        assert isinstance(api_key_store_for(store), RedisApiKeyStore)
        assert shared_across_processes(api_key_store_for(store))
    finally:
        await store.aclose()
    memory = make_store(Settings.load(store_url="memory://"))
    assert not shared_across_processes(api_key_store_for(memory))


class _DownSink:
    """An audit sink known to be out of reach (PostgreSQL down): `ready` refuses."""

    appended: list[str]

    def __init__(self) -> None:
        self.appended = []

    async def ready(self) -> None:
        raise StoreUnavailable()

    async def append(self, platform: str, records: Sequence[str]) -> int:
        self.appended.extend(records)
        raise StoreUnavailable()

    async def append_audit(self, platform: str, now: float, **fields: Any) -> int:
        raise StoreUnavailable()

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        raise StoreUnavailable()


async def test_with_the_audit_log_known_down_a_key_change_is_refused_before_redis(
    redis_url: str, redis_namespace: str
) -> None:
    """A change whose audit record could not be stored must not happen: with the audit
    log's PostgreSQL known to be out of reach, create and revoke are StoreUnavailable and
    Redis keeps no trace of them (as RedisStore refuses its own state changes)."""
    sink = _DownSink()
    store = redis_store(redis_url, redis_namespace, audit=sink)
    plain = api_key_store_for(redis_store(redis_url, redis_namespace))
    keys = api_key_store_for(store)
    try:
        with pytest.raises(StoreUnavailable):
            await keys.create(key())
        assert [] == await plain.list()
        await plain.create(key())
        with pytest.raises(StoreUnavailable):
            await keys.revoke(key().key_id, NOW + 1, "compromised")
        assert [key()] == await plain.list()
        assert 1 == (await plain.changes_since(0)).version
        assert [] == sink.appended
    finally:
        await store.aclose()
