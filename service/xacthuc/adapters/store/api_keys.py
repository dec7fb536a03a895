"""`api_key_store_for(store, database)`: the API key store of a deployment. With a database
(XACTHUC_DATABASE_URL) the keys live in PostgreSQL, the system of record, shared by every
replica and the CLI and kept whatever happens to Redis; without one, inside the server
process (embedded and dev setups), audited in `store`'s log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xacthuc.adapters.store.memory_api_keys import MemoryApiKeyStore
from xacthuc.ports.api_keys import ApiKeyStore
from xacthuc.ports.store import Store

if TYPE_CHECKING:  # asyncpg is loaded only when a database is configured
    from xacthuc.adapters.store.postgres import Database


def api_key_store_for(store: Store, database: Database | None = None) -> ApiKeyStore:
    if database is not None:
        from xacthuc.adapters.store.pg_api_keys import PostgresApiKeyStore

        return PostgresApiKeyStore(database)
    return MemoryApiKeyStore(store)
