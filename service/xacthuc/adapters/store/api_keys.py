"""`api_key_store_for(store)`: the API key store that lives next to a given store's audit
log (the same Redis connection and namespace for a RedisStore, cached or not; in process
otherwise)."""

from __future__ import annotations

import sys

from xacthuc.adapters.store.cached import CachedStore
from xacthuc.adapters.store.memory_api_keys import MemoryApiKeyStore
from xacthuc.ports.api_keys import ApiKeyStore
from xacthuc.ports.store import Store


def api_key_store_for(store: Store) -> ApiKeyStore:
    if isinstance(store, CachedStore):  # the cache of account state is not in the way here
        store = store.backend
    redis_module = sys.modules.get("xacthuc.adapters.store.redis")  # not loaded: not a RedisStore
    if redis_module is not None and isinstance(store, redis_module.RedisStore):
        from xacthuc.adapters.store.redis_api_keys import RedisApiKeyStore

        return RedisApiKeyStore(
            store.client,
            namespace=store._namespace,
            once_client=store.once_client,
            audit=store._audit,
        )
    return MemoryApiKeyStore(store)


def shared_across_processes(keys: ApiKeyStore) -> bool:
    """Whether another process (the CLI, another replica) sees this store's keys."""
    return not isinstance(keys, MemoryApiKeyStore)
