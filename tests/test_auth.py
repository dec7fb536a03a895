"""API keys: stored hashed, bound to a platform and role, checked in constant time."""

from __future__ import annotations

from pathlib import Path

import pytest

from xacthuc.domain import errors
from xacthuc.domain.api_keys import ApiKeyChanges, StoredApiKey
from xacthuc.server.auth import ApiKeys, KeyEntry, KeyWatcher, Role, new_key, new_stored_key


def test_a_created_key_authenticates_its_platform_and_role(tmp_path: Path) -> None:
    """A key written to the file and loaded back identifies its platform and role."""
    key, entry = new_key("net-1", Role.AUDITOR)
    path = tmp_path / "keys.json"
    ApiKeys.append_to_file(path, entry)
    caller = ApiKeys.load(path).authenticate(f"Bearer {key}")
    assert ("net-1", Role.AUDITOR) == (caller.platform, caller.role)
    assert key.split("_", 2)[2] not in path.read_text()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "bearer "])
def test_missing_credentials(header: str | None) -> None:
    """No usable Authorization header is CREDENTIAL_MISSING."""
    with pytest.raises(errors.CredentialMissing):
        ApiKeys().authenticate(header)


def test_wrong_secret_or_unknown_id_is_invalid() -> None:
    """A known id with another secret, or an unknown id, is CREDENTIAL_INVALID."""
    key, entry = new_key("net-1", Role.PLATFORM)
    keys = ApiKeys([entry])
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    for attempt in (forged, "xk_ffffffffffff_" + "A" * 43, "garbage"):
        with pytest.raises(errors.CredentialInvalid):
            keys.authenticate(f"Bearer {attempt}")


@pytest.mark.parametrize("platform", ["", "Upper", "has space", "{tag}", "a" * 64])
def test_platform_ids_are_restricted(platform: str) -> None:
    """Platform ids are short lowercase slugs: they become Redis hash tags."""
    with pytest.raises(ValueError, match="platform id"):
        new_key(platform, Role.PLATFORM)


# The key store (issue 12 item 5): changes applied to the table at run time.

STORE_NOW = 1_800_000_000.0


def _stored(entry: KeyEntry, *, revoked: bool = False) -> StoredApiKey:
    return StoredApiKey(
        entry.key_id,
        entry.platform,
        entry.role.value,
        entry.sha256,
        STORE_NOW,
        revoked_at=STORE_NOW + 1 if revoked else None,
        revoke_reason="leaked" if revoked else "",
    )


def test_a_revoked_key_is_refused_though_its_header_was_remembered() -> None:
    """The header of a key that authenticated is remembered; a change of the table that
    revokes the key forgets it, so the next call is CREDENTIAL_INVALID."""
    key, entry = new_key("net-1", Role.PLATFORM)
    keys = ApiKeys()
    keys.apply(ApiKeyChanges(1, (_stored(entry),), full=True))
    header = f"Bearer {key}"
    assert "net-1" == keys.authenticate(header).platform
    assert header in keys._seen  # remembered: the next call computes no hash
    keys.apply(ApiKeyChanges(2, (_stored(entry, revoked=True),), full=False))
    with pytest.raises(errors.CredentialInvalid):
        keys.authenticate(header)
    assert 2 == keys.version


def test_the_store_wins_over_the_keys_file() -> None:
    """A file key revoked in the store is refused; the file's other keys still work; a
    platform whose keys are all revoked is still listed (its log and status list go on)."""
    kept, kept_entry = new_key("net-1", Role.PLATFORM)
    gone, gone_entry = new_key("net-2", Role.AUDITOR)
    keys = ApiKeys([kept_entry, gone_entry])
    assert "net-2" == keys.authenticate(f"Bearer {gone}").platform
    keys.apply(ApiKeyChanges(1, (_stored(gone_entry, revoked=True),), full=True))
    with pytest.raises(errors.CredentialInvalid):
        keys.authenticate(f"Bearer {gone}")
    assert "net-1" == keys.authenticate(f"Bearer {kept}").platform
    assert {"net-1", "net-2"} == keys.platforms()


def test_a_full_snapshot_replaces_the_stored_keys_but_not_the_file() -> None:
    """A full answer (the store lost its data) drops stored keys it no longer holds."""
    file_key, file_entry = new_key("net-1", Role.PLATFORM)
    stored_key, stored_entry = new_key("net-2", Role.PLATFORM)
    keys = ApiKeys([file_entry])
    keys.apply(ApiKeyChanges(3, (_stored(stored_entry),), full=True))
    assert "net-2" == keys.authenticate(f"Bearer {stored_key}").platform
    keys.apply(ApiKeyChanges(0, (), full=True))
    with pytest.raises(errors.CredentialInvalid):
        keys.authenticate(f"Bearer {stored_key}")
    assert "net-1" == keys.authenticate(f"Bearer {file_key}").platform


async def test_the_watcher_follows_the_memory_store() -> None:
    """KeyWatcher.refresh takes in a created key, then its revocation (memory store path);
    nothing changed: no work, False."""
    from xacthuc.adapters.store.memory import MemoryStore
    from xacthuc.adapters.store.memory_api_keys import MemoryApiKeyStore

    store = MemoryApiKeyStore(MemoryStore())
    keys = ApiKeys()
    watcher = KeyWatcher(keys, store, interval=1)
    key, record = new_stored_key("net-1", Role.AUDITOR, STORE_NOW, "label")
    assert await watcher.refresh()  # version 0: the (empty) full table
    assert not await watcher.refresh()  # still empty: nothing to apply, headers kept
    with pytest.raises(errors.CredentialInvalid):
        keys.authenticate(f"Bearer {key}")
    await store.create(record)
    assert await watcher.refresh()
    assert Role.AUDITOR == keys.authenticate(f"Bearer {key}").role
    assert not await watcher.refresh()
    await store.revoke(record.key_id, STORE_NOW + 1, "leaked")
    assert await watcher.refresh()
    with pytest.raises(errors.CredentialInvalid):
        keys.authenticate(f"Bearer {key}")


async def test_the_watcher_keeps_the_table_while_the_store_fails() -> None:
    """A store that raises on a poll leaves the keys as they were; the poll goes on."""
    import asyncio

    key, entry = new_key("net-1", Role.PLATFORM)

    polled_three_times = asyncio.Event()

    class Broken:
        calls = 0

        async def changes_since(self, version: int) -> ApiKeyChanges:
            Broken.calls += 1
            if Broken.calls == 3:
                polled_three_times.set()
            raise errors.StoreUnavailable()

    keys = ApiKeys([entry])
    watcher = KeyWatcher(keys, Broken(), interval=0.01)  # type: ignore[arg-type]
    watcher.start()
    await asyncio.wait_for(polled_three_times.wait(), 5)
    await watcher.stop()
    assert "net-1" == keys.authenticate(f"Bearer {key}").platform
