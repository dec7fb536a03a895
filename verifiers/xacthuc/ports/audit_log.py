"""What the verifiable audit log (`xacthuc.verifiers.auditlog.AuditLog`) reads from where
the log is kept (the port): its Merkle tree, its records by index range, by filter and by
time. Writing records stays with the `Store` port (each record in the same atomic step as
the state change it records).

Two adapters: `xacthuc.verifiers.log_reader.StoreLogReader`, an in-process tree over
`Store.audit_records` (the memory store, Redis without a database), and
`xacthuc.adapters.store.pg_audit.PostgresLogReader`, where PostgreSQL holds the leaf hashes
and the complete subtrees, so a root or a proof is O(log n) stored hashes and no process
reads the whole log (issue 10).

Record times never go backwards (every store moves a record's time up to the previous
one's), so the records of a time window are consecutive: `index_range` finds them without
a scan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored record: its index, its text exactly as stored (None once its contents
    were erased: retention, an erasure request) and its RFC 6962 leaf hash, the one the tree
    holds (for a record rewritten in storage after it was hashed, the hash of what it was)."""

    index: int
    record: str | None
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which records a query wants: an account id, an event name, a time window [since,
    until) in seconds since the epoch; each optional."""

    account: str = ""
    event: str = ""
    since: float | None = None
    until: float | None = None


class LogReader(Protocol):
    async def extend(self, platform: str) -> int:
        """Hash the records appended since the last call (by this process or, when the tree
        is shared, any) into the platform's tree; return the log's size, every record of
        which the tree now covers. A log shorter than before (records removed) returns its
        size: roots and proofs below it still answer."""
        ...

    async def hashed(self, platform: str) -> int:
        """How many records the tree covers now, without reading new ones: roots and proofs
        up to this size need no `extend` (a signed tree size always is)."""
        ...

    async def size(self, platform: str) -> int:
        """How many records the log holds now (every one of them hashed: an export ships
        each record with its leaf hash)."""
        ...

    async def root(self, platform: str, tree_size: int) -> bytes:
        """The Merkle tree hash of records [0, tree_size); tree_size <= `hashed`."""
        ...

    async def inclusion_proof(self, platform: str, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:tree_size]); 0 <= index < tree_size <= `hashed`."""
        ...

    async def consistency_proof(self, platform: str, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 PROOF(size1, D[0:size2]); 0 < size1 <= size2 <= `hashed`."""
        ...

    def entries(self, platform: str, start: int, stop: int) -> AsyncIterator[LogEntry]:
        """Records [start, stop) in index order, streamed (memory stays flat however many);
        stop <= `size`."""
        ...

    async def query(
        self,
        platform: str,
        where: LogFilter,
        *,
        after: int,
        before: int,
        limit: int,
    ) -> list[LogEntry]:
        """Records matching `where` with index in (after, before), in index order, at most
        `limit`; erased records never match (their contents are gone)."""
        ...

    async def index_range(
        self, platform: str, since: float | None, until: float | None, stop: int
    ) -> tuple[int, int]:
        """[first, end) of the records of [0, stop) whose time is in [since, until) (each
        bound optional); an empty range is (n, n)."""
        ...
