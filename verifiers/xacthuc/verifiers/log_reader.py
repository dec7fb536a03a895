"""The audit log's reader side kept in process (`xacthuc.ports.audit_log.LogReader` over the
`Store` port): what the memory store and Redis without a database use.

**Tree cache.** `merkle.MerkleCache` keeps, per platform and in process, the leaf hashes and
the hash of every complete power-of-two subtree (about 64 bytes per record), so a proof costs
O(log^2 n) hash operations instead of a pass over the log. `extend` reads the records from
the cached size to the current end of the stored list, in batches (another replica may have
appended in between), and hashes the stored bytes: leaf `i` is `merkle.leaf_hash(<record i
as UTF-8>)`. Records are append-only, so a cached prefix never needs re-reading; a record
rewritten in storage after this process read it is noticed by any process that reads it
afresh (another replica, a restart: the checkpointer then refuses to sign) and by the
export, which ships the cached leaf hash next to the stored record. A fresh process reads
the whole log once: the price of keeping the tree nowhere else (with a database, the tree
is kept in PostgreSQL: `pg_audit.PostgresLogReader`).

**Queries** scan the index range they are given, in batches. **Time windows** need no scan:
record times never go backwards, so the first record at or after a time is found by a
binary search, O(log n) single-record reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from xacthuc.domain.merkle import MerkleCache, leaf_hash
from xacthuc.ports.audit_log import LogEntry, LogFilter
from xacthuc.ports.store import Store
from xacthuc.verifiers.auditlog import record_time


class StoreLogReader:
    """The reader side of every platform's log, from the store's records and a tree cached
    in this process (see the module docstring)."""

    def __init__(self, store: Store, *, read_batch: int = 5000) -> None:
        self._store = store
        self._batch = read_batch
        self._trees: dict[str, MerkleCache] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _tree(self, platform: str) -> MerkleCache:
        return self._trees.setdefault(platform, MerkleCache())

    async def extend(self, platform: str) -> int:
        async with self._locks.setdefault(platform, asyncio.Lock()):
            tree = self._tree(platform)
            while True:
                start = tree.size
                batch = await self._store.audit_records(platform, start, start + self._batch)
                for record in batch:
                    tree.append(leaf_hash(record.encode("utf-8")))
                if len(batch) < self._batch:
                    return tree.size

    async def hashed(self, platform: str) -> int:
        return self._tree(platform).size

    async def size(self, platform: str) -> int:
        return await self.extend(platform)  # an export ships the hash this process read

    async def root(self, platform: str, tree_size: int) -> bytes:
        return self._tree(platform).root(tree_size)

    async def inclusion_proof(self, platform: str, index: int, tree_size: int) -> list[bytes]:
        return self._tree(platform).inclusion_proof(index, tree_size)

    async def consistency_proof(self, platform: str, size1: int, size2: int) -> list[bytes]:
        return self._tree(platform).consistency_proof(size1, size2)

    async def entries(self, platform: str, start: int, stop: int) -> AsyncIterator[LogEntry]:
        tree = self._tree(platform)
        if stop > tree.size:
            await self.extend(platform)
        index = start
        while index < stop:
            batch = await self._store.audit_records(platform, index, min(index + self._batch, stop))
            if not batch:
                raise RuntimeError(f"audit log {platform} ends before record {index}")
            for record in batch:
                yield LogEntry(index, record, tree.leaf(index))
                index += 1

    async def query(
        self,
        platform: str,
        where: LogFilter,
        *,
        after: int,
        before: int,
        limit: int,
    ) -> list[LogEntry]:
        found: list[LogEntry] = []
        index = after + 1
        if where.since is not None or where.until is not None:
            first, end = await self.index_range(platform, where.since, where.until, before)
            index, before = max(index, first), end
        tree = self._tree(platform)
        while index < before and len(found) < limit:
            batch = await self._store.audit_records(
                platform, index, min(index + self._batch, before)
            )
            if not batch:
                break
            for record in batch:
                rec = json.loads(record)
                if (not where.account or rec["account"] == where.account) and (
                    not where.event or rec["event"] == where.event
                ):
                    leaf = tree.leaf(index) if index < tree.size else leaf_hash(record.encode())
                    found.append(LogEntry(index, record, leaf))
                    if len(found) == limit:
                        break
                index += 1
        return found

    async def index_range(
        self, platform: str, since: float | None, until: float | None, stop: int
    ) -> tuple[int, int]:
        first = 0 if since is None else await self._first_at(platform, since, 0, stop)
        end = stop if until is None else await self._first_at(platform, until, first, stop)
        return first, max(first, end)

    async def _first_at(self, platform: str, t: float, lo: int, hi: int) -> int:
        """The first index of [lo, hi) whose record's time is t or later (hi if none)."""
        while lo < hi:
            mid = (lo + hi) // 2
            [record] = await self._store.audit_records(platform, mid, mid + 1)
            if record_time(json.loads(record)["time"]) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo
