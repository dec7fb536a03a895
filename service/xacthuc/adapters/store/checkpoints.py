"""Checkpoint stores (the `xacthuc.ports.checkpoints` port): in memory and PostgreSQL.

The latest stored checkpoint decides what may be signed next: `append` is a compare-and-set
that stores a new checkpoint only if the latest stored one still has the tree size the
caller built on (and the new size is larger). Two replicas that race to sign therefore
never publish two checkpoints one after the other that the second did not check against
the first: the loser re-reads the winner's checkpoint instead.

Backends:

* `MemoryCheckpointStore`: a list per platform, each operation one synchronous block.
* `PostgresCheckpointStore`: the tables `checkpoints` and `checkpoint_heads` (migration
  0001); the compare-and-set is an `UPDATE` of the platform's head row in the same
  transaction as the insert. Checkpoints kept there outlive a Redis loss, so a log that lost
  records is never checkpointed smaller again (no fork): the checkpointer sees the larger
  latest checkpoint and refuses (`AuditLog`).

`checkpoint_store_for(store)` picks the backend that lives next to a given audit store.
Entries are JSON: `{"size": n, "root": <base64>, "time": <unix seconds>, "note": <signed note>}`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from xacthuc.adapters.store.cached import CachedStore
from xacthuc.ports.checkpoints import CheckpointStore, StoredCheckpoint
from xacthuc.ports.store import Store

if TYPE_CHECKING:  # asyncpg is loaded only when a database is configured
    from xacthuc.adapters.store.postgres import Database


class MemoryCheckpointStore:
    def __init__(self) -> None:
        self._lists: dict[str, list[StoredCheckpoint]] = defaultdict(list)

    async def latest(self, platform: str) -> StoredCheckpoint | None:
        entries = self._lists[platform]
        return entries[-1] if entries else None

    async def append(self, platform: str, checkpoint: StoredCheckpoint, *, after: int) -> bool:
        entries = self._lists[platform]
        size = entries[-1].tree_size if entries else 0
        if size != after or checkpoint.tree_size <= size:
            return False
        entries.append(checkpoint)
        return True

    async def history(self, platform: str) -> list[StoredCheckpoint]:
        return list(self._lists[platform])


class PostgresCheckpointStore:
    """Checkpoints in the system of record (PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def latest(self, platform: str) -> StoredCheckpoint | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT size, root, signed_at, note FROM checkpoints WHERE platform = $1"
                " ORDER BY size DESC LIMIT 1",
                platform,
            )
        return None if row is None else _from_row(row)

    async def append(self, platform: str, checkpoint: StoredCheckpoint, *, after: int) -> bool:
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO checkpoint_heads (platform) VALUES ($1) ON CONFLICT DO NOTHING",
                platform,
            )
            moved = await conn.fetchval(
                "UPDATE checkpoint_heads SET size = $3 WHERE platform = $1 AND size = $2"
                " AND $3 > size RETURNING size",
                platform,
                after,
                checkpoint.tree_size,
            )
            if moved is None:
                return False
            await conn.execute(
                "INSERT INTO checkpoints (platform, size, root, signed_at, note)"
                " VALUES ($1, $2, $3, $4, $5)",
                platform,
                checkpoint.tree_size,
                checkpoint.root_hash,
                checkpoint.signed_at,
                checkpoint.note,
            )
        return True

    async def history(self, platform: str) -> list[StoredCheckpoint]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT size, root, signed_at, note FROM checkpoints WHERE platform = $1"
                " ORDER BY size",
                platform,
            )
        return [_from_row(r) for r in rows]


def _from_row(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(
        int(row["size"]), bytes(row["root"]), float(row["signed_at"]), row["note"]
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def checkpoint_store_for(store: Store, database: Database | None = None) -> CheckpointStore:
    """The checkpoint store that lives where the audit log is kept: PostgreSQL when there is
    a database (the system of record; a pair store's own when not given), in process
    otherwise."""
    if isinstance(store, CachedStore):
        store = store.backend
    pair_module = sys.modules.get("xacthuc.adapters.store.pair")  # not loaded: not a PairStore
    if database is None and pair_module is not None and isinstance(store, pair_module.PairStore):
        database = store.database
    if database is not None:
        return PostgresCheckpointStore(database)
    return MemoryCheckpointStore()
