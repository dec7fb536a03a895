"""Checkpoint stores (the `xacthuc.ports.checkpoints` port): in memory and in Redis.

The latest stored checkpoint decides what may be signed next: `append` is a compare-and-set
that stores a new checkpoint only if the latest stored one still has the tree size the
caller built on (and the new size is larger). Two replicas that race to sign therefore
never publish two checkpoints one after the other that the second did not check against
the first: the loser re-reads the winner's checkpoint instead.

Backends:

* `MemoryCheckpointStore`: a list per platform, each operation one synchronous block.
* `RedisCheckpointStore`: a list per platform at `<ns>:{<platform>}:checkpoints`, under the
  platform's hash tag (the same slot as its audit list), appended by the Lua script
  `lua/append_checkpoint.lua` (one round trip, atomic).

`checkpoint_store_for(store)` picks the backend that lives next to a given audit store.
Entries are JSON: `{"size": n, "root": <base64>, "time": <unix seconds>, "note": <signed note>}`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from importlib import resources
from typing import Any

from xacthuc.adapters.store.cached import CachedStore
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.checkpoints import CheckpointStore, StoredCheckpoint
from xacthuc.ports.store import Store


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


class RedisCheckpointStore:
    """Checkpoints in Redis, next to the audit list they commit to (same hash tag)."""

    def __init__(self, client: Any, *, namespace: str, once_client: Any = None) -> None:
        """`once_client` sends each command once (`without_retries(client)` when not given):
        the compare-and-set runs on it, never twice however `client` retries."""
        from redis.exceptions import BusyLoadingError, ReadOnlyError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._unavailable = (
            RedisConnectionError,
            RedisTimeoutError,
            ReadOnlyError,
            BusyLoadingError,
        )
        self._redis = client
        self._namespace = namespace
        source = (
            resources.files("xacthuc.adapters.store") / "lua" / "append_checkpoint.lua"
        ).read_text("utf-8")
        from xacthuc.adapters.store.redis import LuaScript, without_retries

        self._once = once_client if once_client is not None else without_retries(client)
        self._append = LuaScript(source)

    def _key(self, platform: str) -> str:
        return f"{self._namespace}:{{{platform}}}:checkpoints"

    async def latest(self, platform: str) -> StoredCheckpoint | None:
        try:
            raw = await self._redis.lindex(self._key(platform), -1)
        except self._unavailable as e:
            raise StoreUnavailable() from e
        return None if raw is None else StoredCheckpoint.from_json(_text(raw))

    async def append(self, platform: str, checkpoint: StoredCheckpoint, *, after: int) -> bool:
        try:
            stored, _ = await self._append.run(
                self._once,
                [self._key(platform)],
                [str(after), str(checkpoint.tree_size), checkpoint.to_json()],
            )
        except self._unavailable as e:
            raise StoreUnavailable() from e
        return int(stored) == 1

    async def history(self, platform: str) -> list[StoredCheckpoint]:
        try:
            raw = await self._redis.lrange(self._key(platform), 0, -1)
        except self._unavailable as e:
            raise StoreUnavailable() from e
        return [StoredCheckpoint.from_json(_text(r)) for r in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def checkpoint_store_for(store: Store) -> CheckpointStore:
    """The checkpoint store that lives where `store` keeps the audit log: the same Redis
    connection and namespace for a RedisStore (cached or not), in process otherwise."""
    if isinstance(store, CachedStore):
        store = store.backend
    redis_module = sys.modules.get("xacthuc.adapters.store.redis")  # not loaded: not a RedisStore
    if redis_module is not None and isinstance(store, redis_module.RedisStore):
        return RedisCheckpointStore(
            store.client, namespace=store._namespace, once_client=store.once_client
        )
    return MemoryCheckpointStore()
