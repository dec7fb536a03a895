"""The audit log in PostgreSQL (issue 10; docs/design/system-of-record.md).

Records are rendered exactly as the other stores render them (`audit_record`, sorted keys),
around their index, which PostgreSQL assigns: `xacthuc_append_audit` (migration 0001) locks
the platform's `log_heads` row, numbers the records from its `size`, moves each record's
time up to the previous one's when earlier, stores each with its RFC 6962 leaf hash and
advances the head, in one statement. The row lock is held until the transaction commits, so
concurrent writers (tasks, processes, replicas) get gap-free, unique, commit-ordered indices;
a rolled-back append gives its indices back.

`append(..., conn=...)` joins the caller's transaction: the durable effect of an operation
and its records commit together or not at all. Reads never load the whole log: ranges,
leaf hashes and queries by account pseudonym, event and time go through the primary key and
the indexes of migration 0001; `export` streams through a server-side cursor.
`PostgresLogReader` is the reader side of the verifiable log (`xacthuc.ports.audit_log`)
over these: the tree from `PostgresMerkle`'s stored subtrees, records, queries and time
windows from `PostgresAuditLog`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from xacthuc.adapters.store.postgres import Conn, Database
from xacthuc.domain.clock import Clock, MonotonicClock, rfc3339
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.domain.merkle import EMPTY_ROOT, consistency_ranges, inclusion_ranges, node_hash
from xacthuc.domain.records import audit_record, split_audit_record
from xacthuc.ports.audit_log import LogEntry, LogFilter


@dataclass(frozen=True, slots=True)
class NewRecord:
    """One record to append (its index and final time are assigned by the append)."""

    now: float
    account: str
    event: str
    outcome: str
    reason: str = ""
    extra: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A stored record: its index, its text (None once erased) and its leaf hash."""

    index: int
    body: str | None
    leaf_hash: bytes


# Erasure (P10) sets `body` = NULL, `account` = '' (it names the account) and `erased_at`;
# the leaf hash, index, time and event stay. A record names an account in its `account` field, and a
# guardian link's also in `guardian_account`, an auditor query's in `query_account` (migration
# 0004 indexes exactly these expressions, partial on exactly these events).
_ERASE_ACCOUNT = (
    "WITH e AS (UPDATE audit_records SET body = NULL, account = '', erased_at = now()"
    " WHERE platform = $1 AND body IS NOT NULL AND (account = $2"
    " OR (event IN ('guardian_link_created', 'guardian_link_renewed')"
    " AND (body::jsonb) ->> 'guardian_account' = $2)"
    " OR (event = 'auditor_query_audit_records' AND (body::jsonb) ->> 'query_account' = $2))"
    " RETURNING 1)"
    " SELECT count(*) FROM e"
)
# One batch of retention: the oldest `$4` records not yet erased in [$2, $3) (from the
# platform's watermark to the cut-off), through the (platform, recorded_at) index; the
# partitions after the cut-off are never read.
_ERASE_BEFORE = (
    "WITH b AS (SELECT idx, recorded_at FROM audit_records"
    " WHERE platform = $1 AND recorded_at >= $2 AND recorded_at < $3 AND body IS NOT NULL"
    " ORDER BY recorded_at LIMIT $4),"
    " e AS (UPDATE audit_records a SET body = NULL, account = '', erased_at = now() FROM b"
    " WHERE a.platform = $1 AND a.idx = b.idx AND a.recorded_at = b.recorded_at"
    " AND a.recorded_at < $3 AND a.body IS NOT NULL RETURNING 1)"
    " SELECT (SELECT count(*) FROM e) AS erased, (SELECT count(*) FROM b) AS seen,"
    " (SELECT max(recorded_at) FROM b) AS last"
)
_ROW = "SELECT idx, body, leaf_hash FROM audit_records WHERE platform = $1"


def _render(platform: str, r: NewRecord) -> str:
    return audit_record(
        seq=0,
        now=r.now,
        platform=platform,
        account=r.account,
        event=r.event,
        outcome=r.outcome,
        reason=r.reason,
        **r.extra,
    )


def append_args(
    platform: str, records: Sequence[NewRecord | str]
) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """The arguments of `xacthuc_append_audit` after the platform: each record's text before
    and after its index, its time (JSON text), event and account."""
    heads, tails, times, events, accounts = [], [], [], [], []
    for r in records:
        text = _render(platform, r) if isinstance(r, NewRecord) else r
        fields = json.loads(text)
        head, tail = split_audit_record(text)
        heads.append(head)
        tails.append(tail)
        times.append(json.dumps(fields["time"]))
        events.append(str(fields["event"]))
        accounts.append(str(fields["account"]))
    return heads, tails, times, events, accounts


def _row(r: asyncpg.Record) -> AuditRow:
    return AuditRow(int(r["idx"]), r["body"], bytes(r["leaf_hash"]))


class PostgresAuditLog:
    """Every platform's audit log, kept in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.rows_read = 0  # records read by rows, export and query (tests, measurements)

    async def append(
        self,
        platform: str,
        records: Sequence[NewRecord | str],
        *,
        conn: Conn | None = None,
    ) -> int:
        """Append `records` in order; return the index of the first. A record is a
        NewRecord, or a record already rendered (`audit_record` format, any `seq`: the Redis
        scripts' outbox). With `conn`, inside the caller's transaction; otherwise in a
        transaction of its own (one round trip)."""
        query = "SELECT xacthuc_append_audit($1, $2, $3, $4, $5, $6)"
        args = (platform, *append_args(platform, records))
        if conn is not None:
            first = await conn.fetchval(query, *args)
        else:
            async with self._db.connection() as own:
                first = await own.fetchval(query, *args)
        return int(first)

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        """One record (the Store port's `append_audit`); returns its index."""
        return await self.append(platform, [NewRecord(now, account, event, outcome, reason, extra)])

    async def erase_account(
        self, platform: str, account: str, now: float, *, request: str, **extra: str
    ) -> int:
        """Erase the contents of every record of `platform` naming `account` (an erasure
        request, Law 91/2025): in its `account` field, or as a guardian link's guardian or an
        auditor query's subject. The text and the account field go, the leaf hash and index
        stay, so the tree and every checkpoint still verify. In the same transaction, audit
        `records_erased` naming no account: the count, the `request` reference and `extra`
        (who asked). Returns how many records were erased (0: none left, nothing audited)."""
        if not account:
            raise ValueError("an erasure names an account")
        async with self._db.transaction() as conn:
            erased = int(await conn.fetchval(_ERASE_ACCOUNT, platform, account))
            if erased:
                fields: dict[str, str | int] = {"count": erased, "request": request, **extra}
                record = NewRecord(now, "", "records_erased", "ok", extra=fields)
                await self.append(platform, [record], conn=conn)
        return erased

    async def erase_before(
        self, platform: str, before: float, now: float, *, limit: int = 10_000
    ) -> int:
        """Erase the contents of at most `limit` records older than `before` (P10
        retention), the oldest first, in one transaction audited `records_expired` with the
        count and the cut-off time. Returns how many; fewer than `limit` means none is left.
        The platform's watermark (log_heads.expired_before) moves up to what is done, so the
        next pass does not walk the erased rows again."""
        cut = _ts(before)
        async with self._db.transaction() as conn:
            mark = await conn.fetchval(
                "SELECT expired_before FROM log_heads WHERE platform = $1", platform
            )
            if mark is None:  # no log, nothing to erase
                return 0
            row = await conn.fetchrow(_ERASE_BEFORE, platform, mark, cut, limit)
            assert row is not None  # one row, always
            erased, seen = int(row["erased"]), int(row["seen"])
            if erased:
                record = NewRecord(
                    now,
                    "",
                    "records_expired",
                    "ok",
                    extra={"before": rfc3339(before), "count": erased},
                )
                await self.append(platform, [record], conn=conn)
            done = cut if seen < limit else row["last"]
            if done is not None:
                await conn.execute(
                    "UPDATE log_heads SET expired_before = greatest(expired_before, $2)"
                    " WHERE platform = $1",
                    platform,
                    done,
                )
        return erased

    async def platforms(self) -> list[str]:
        """Every platform with a log."""
        async with self._db.connection() as conn:
            rows = await conn.fetch("SELECT platform FROM log_heads ORDER BY platform")
        return [str(r["platform"]) for r in rows]

    async def ensure_partitions(self, now: float, ahead: int, *, lock_timeout: float = 2.0) -> int:
        """Create the monthly partitions of audit_records for the month of `now` and the
        `ahead` months after it, and for any month with rows in the default partition;
        return how many were made. Waits at most `lock_timeout` seconds for a lock (a long
        export holding the default partition): StoreUnavailable then, for the next round."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true)", f"{int(lock_timeout * 1000)}ms"
            )
            try:
                made = await conn.fetchval(
                    "SELECT xacthuc_ensure_audit_partitions($1, $2)", _ts(now), ahead
                )
            except asyncpg.exceptions.LockNotAvailableError as e:
                raise StoreUnavailable() from e
        return int(made)

    async def size(self, platform: str) -> int:
        async with self._db.connection() as conn:
            size = await conn.fetchval("SELECT size FROM log_heads WHERE platform = $1", platform)
        return 0 if size is None else int(size)

    async def rows(self, platform: str, start: int, stop: int) -> list[AuditRow]:
        """Stored records [start, stop), by index."""
        async with self._db.connection() as conn:
            found = await conn.fetch(
                _ROW + " AND idx >= $2 AND idx < $3 ORDER BY idx", platform, start, stop
            )
        self.rows_read += len(found)
        return [_row(r) for r in found]

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        """The Store port's `audit_records`: texts [start, stop) (Python slice bounds)."""
        if start < 0 or stop is None or stop < 0:
            size = await self.size(platform)
            start, stop, _ = slice(start, stop).indices(size)
        if stop <= start:
            return []
        return [
            r.body if r.body is not None else "" for r in await self.rows(platform, start, stop)
        ]

    async def leaf_hashes(self, platform: str, start: int, stop: int) -> list[bytes]:
        async with self._db.connection() as conn:
            found = await conn.fetch(
                "SELECT leaf_hash FROM audit_records WHERE platform = $1 AND idx >= $2"
                " AND idx < $3 ORDER BY idx",
                platform,
                start,
                stop,
            )
        return [bytes(r["leaf_hash"]) for r in found]

    async def query(
        self,
        platform: str,
        *,
        account: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: int = -1,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Records naming `account` (a pseudonym), of `event`, with time in [since, until),
        index in (after, before), in index order, at most `limit` (each filter optional);
        erased records never match (nothing of them is left to match).

        Each shape is served by an index, never by reading the records in between: by
        account, the account index in index order; by event or time, the event or time
        index in time order, which is index order (times never go backwards: the append
        moves a record's time up to the previous one's), from the time of record `after`;
        with no filter, the primary key."""
        sql = [_ROW, "AND idx > $2 AND body IS NOT NULL"]
        args: list[object] = [platform, after]
        for column, op, value in (
            ("idx", "<", before),
            ("account", "=", account),
            ("event", "=", event),
            ("recorded_at", ">=", _ts(since)),
            ("recorded_at", "<", _ts(until)),
        ):
            if value is not None:
                args.append(value)
                sql.append(f"AND {column} {op} ${len(args)}")
        if account is None and (event is not None or since is not None or until is not None):
            if after >= 0:  # the records after it are no older: the index scan starts there
                sql.append(
                    "AND recorded_at >= (SELECT recorded_at FROM audit_records"
                    " WHERE platform = $1 AND idx = $2)"
                )
            order = "recorded_at, idx"
        else:
            order = "idx"
        args.append(limit)
        sql.append(f"ORDER BY {order} LIMIT ${len(args)}")
        async with self._db.connection() as conn:
            found = await conn.fetch(" ".join(sql), *args)
        self.rows_read += len(found)
        return [_row(r) for r in found]

    async def first_at(self, platform: str, t: float, stop: int) -> int:
        """The index of the first record whose time is `t` or later, `stop` when there is
        none below `stop` (the time index: one lookup; the records of a time window are
        consecutive, times never going backwards)."""
        async with self._db.connection() as conn:
            found = await conn.fetchval(
                "SELECT idx FROM audit_records WHERE platform = $1 AND recorded_at >= $2"
                " ORDER BY recorded_at, idx LIMIT 1",
                platform,
                _ts(t),
            )
        return stop if found is None else min(int(found), stop)

    async def export(
        self, platform: str, start: int, stop: int, *, prefetch: int = 1000
    ) -> AsyncIterator[AuditRow]:
        """Records [start, stop) through a server-side cursor, `prefetch` rows at a time,
        from one snapshot (a read-only repeatable-read transaction)."""
        async with self._db.transaction(isolation="repeatable_read", readonly=True) as conn:
            cursor = conn.cursor(
                _ROW + " AND idx >= $2 AND idx < $3 ORDER BY idx",
                platform,
                start,
                stop,
                prefetch=prefetch,
            )
            async for r in cursor:
                self.rows_read += 1
                yield _row(r)


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _pieces(start: int, end: int) -> list[tuple[int, int]]:
    """The complete aligned subtrees (level, index) that make up [start, end), largest first
    (the subtrees a proof needs are aligned: `merkle.inclusion_ranges`)."""
    pieces = []
    pos, n = start, end - start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            if pos & ((1 << level) - 1):
                raise ValueError(f"range {start}..{end} is not aligned")
            pieces.append((level, pos >> level))
            pos += 1 << level
    return pieces


class PostgresMerkle:
    """Each platform's Merkle tree from the hashes PostgreSQL holds: the leaf hashes stored
    with the records and the complete subtrees `extend` stores (`merkle_nodes`). A root or a
    proof reads O(log n) hashes in one query; no process holds or reads the whole log."""

    def __init__(self, database: Database, *, batch: int = 4096) -> None:
        self._db = database
        self._batch = batch
        self.hashes_read = 0  # stored hashes read, leaves and nodes (tests, measurements)

    async def size(self, platform: str) -> int:
        """How many leaves the stored subtrees cover (proofs up to this tree size), never
        more than the log holds."""
        async with self._db.connection() as conn:
            size = await conn.fetchval(
                "SELECT least(m.size, coalesce(l.size, 0)) FROM merkle_heads m"
                " LEFT JOIN log_heads l USING (platform) WHERE m.platform = $1",
                platform,
            )
        return 0 if size is None else int(size)

    async def extend(self, platform: str) -> int:
        """Store the complete subtrees over the leaves appended since the last call, by any
        process (one extender at a time: the platform's `merkle_heads` row is locked); only
        the new leaves' hashes are read. Returns the log's size, all of it covered."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO merkle_heads (platform) VALUES ($1) ON CONFLICT DO NOTHING", platform
            )
            have = int(
                await conn.fetchval(
                    "SELECT size FROM merkle_heads WHERE platform = $1 FOR UPDATE", platform
                )
            )
            target = await conn.fetchval("SELECT size FROM log_heads WHERE platform = $1", platform)
            target = 0 if target is None else int(target)
            if target <= have:
                # Shorter than the hashed part only if records were removed: the checkpointer
                # then sees a log smaller than its latest checkpoint and refuses.
                return target
            waiting = [(lv, (have >> lv) - 1) for lv in range(have.bit_length()) if have >> lv & 1]
            found = await _fetch_nodes(conn, platform, waiting)
            pending = {lv: found[(lv, i)] for lv, i in waiting}
            index = have
            while index < target:
                stop = min(index + self._batch, target)
                leaves = await conn.fetch(
                    "SELECT idx, leaf_hash FROM audit_records WHERE platform = $1"
                    " AND idx >= $2 AND idx < $3 ORDER BY idx",
                    platform,
                    index,
                    stop,
                )
                self.hashes_read += len(leaves)
                if len(leaves) != stop - index:
                    raise RuntimeError(f"audit log {platform}: records {index}..{stop} missing")
                new: list[tuple[str, int, int, bytes]] = []
                for row in leaves:
                    level, i, h = 0, int(row["idx"]), bytes(row["leaf_hash"])
                    while i & 1:
                        h = node_hash(pending.pop(level), h)
                        level, i = level + 1, i >> 1
                        new.append((platform, level, i, h))
                    pending[level] = h
                if new:
                    await conn.copy_records_to_table(
                        "merkle_nodes", records=new, columns=["platform", "level", "idx", "hash"]
                    )
                index = stop
            await conn.execute(
                "UPDATE merkle_heads SET size = $2 WHERE platform = $1", platform, target
            )
            return target

    async def _ranges(self, platform: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """MTH of each aligned range, from one query."""
        needed = [_pieces(a, b) for a, b in ranges]
        async with self._db.connection() as conn:
            found = await _fetch_nodes(conn, platform, [p for ps in needed for p in ps])
        self.hashes_read += len(found)
        roots = []
        for (a, b), ps in zip(ranges, needed, strict=True):
            if a == b:
                roots.append(EMPTY_ROOT)
                continue
            hashes = [found[p] for p in ps]
            root = hashes[-1]
            for h in reversed(hashes[:-1]):
                root = node_hash(h, root)
            roots.append(root)
        return roots

    async def _covered(self, platform: str, size: int) -> None:
        if size > await self.size(platform):
            raise ValueError(f"tree size {size} is beyond the hashed part of the log")

    async def root(self, platform: str, tree_size: int) -> bytes:
        await self._covered(platform, tree_size)
        return (await self._ranges(platform, [(0, tree_size)]))[0]

    async def inclusion_proof(self, platform: str, index: int, tree_size: int) -> list[bytes]:
        await self._covered(platform, tree_size)
        return await self._ranges(platform, inclusion_ranges(index, tree_size))

    async def consistency_proof(self, platform: str, size1: int, size2: int) -> list[bytes]:
        await self._covered(platform, size2)
        return await self._ranges(platform, consistency_ranges(size1, size2))


class PostgresLogReader:
    """The audit log's reader side (`xacthuc.ports.audit_log.LogReader`) from PostgreSQL:
    the tree from `PostgresMerkle` (checkpoints signed from the stored subtrees, a root or a
    proof O(log n) hashes by primary key, in one query), records by index through a
    server-side cursor, queries and time windows through the indexes. No process reads the
    whole log, not even a fresh one: `extend` reads only the leaf hashes appended since the
    last extension by any process (`tree.hashes_read` and `log.rows_read` count what was
    read, for tests and measurements)."""

    def __init__(self, database: Database, *, prefetch: int = 1000) -> None:
        self.log = PostgresAuditLog(database)
        self.tree = PostgresMerkle(database)
        self._prefetch = prefetch

    async def extend(self, platform: str) -> int:
        return await self.tree.extend(platform)

    async def hashed(self, platform: str) -> int:
        return await self.tree.size(platform)

    async def size(self, platform: str) -> int:
        return await self.log.size(platform)

    # The callers (AuditLog) checked the sizes against `hashed`: one query each.

    async def root(self, platform: str, tree_size: int) -> bytes:
        return (await self.tree._ranges(platform, [(0, tree_size)]))[0]

    async def inclusion_proof(self, platform: str, index: int, tree_size: int) -> list[bytes]:
        return await self.tree._ranges(platform, inclusion_ranges(index, tree_size))

    async def consistency_proof(self, platform: str, size1: int, size2: int) -> list[bytes]:
        return await self.tree._ranges(platform, consistency_ranges(size1, size2))

    async def entries(self, platform: str, start: int, stop: int) -> AsyncIterator[LogEntry]:
        async for row in self.log.export(platform, start, stop, prefetch=self._prefetch):
            yield LogEntry(row.index, row.body, row.leaf_hash)

    async def query(
        self,
        platform: str,
        where: LogFilter,
        *,
        after: int,
        before: int,
        limit: int,
    ) -> list[LogEntry]:
        rows = await self.log.query(
            platform,
            account=where.account or None,
            event=where.event or None,
            since=where.since,
            until=where.until,
            after=after,
            before=before,
            limit=limit,
        )
        return [LogEntry(r.index, r.body, r.leaf_hash) for r in rows]

    async def index_range(
        self, platform: str, since: float | None, until: float | None, stop: int
    ) -> tuple[int, int]:
        first = 0 if since is None else await self.log.first_at(platform, since, stop)
        end = stop if until is None else await self.log.first_at(platform, until, stop)
        return first, max(first, end)


# Stored hashes of given nodes: leaves ($2) from the records, the others ($3 levels, $4
# indices) from merkle_nodes; both through their primary keys.
NODES_QUERY = (
    "SELECT 0 AS level, idx, leaf_hash AS hash FROM audit_records"
    " WHERE platform = $1 AND idx = ANY($2::bigint[])"
    " UNION ALL SELECT level, n.idx, hash FROM merkle_nodes n"
    " JOIN unnest($3::smallint[], $4::bigint[]) AS k(l, i) ON n.level = k.l AND n.idx = k.i"
    " WHERE n.platform = $1"
)


async def _fetch_nodes(
    conn: Conn, platform: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Stored hashes of nodes (level, index): level 0 from the records, others from
    merkle_nodes. Raises RuntimeError naming a node that is not stored."""
    rows = await conn.fetch(
        NODES_QUERY,
        platform,
        [i for lv, i in keys if lv == 0],
        [lv for lv, _ in keys if lv > 0],
        [i for lv, i in keys if lv > 0],
    )
    found = {(int(r["level"]), int(r["idx"])): bytes(r["hash"]) for r in rows}
    missing = [k for k in keys if k not in found]
    if missing:
        raise RuntimeError(f"audit log {platform}: Merkle nodes not stored: {missing[:3]}")
    return found


class GroupAppender:
    """Group commit of audit appends: concurrent callers' records for one platform go to
    PostgreSQL together, one statement (one round trip, one lock of the head row) per
    batch, each caller awaiting its own indices.

    No waiting is added: the first caller commits at once; callers arriving while a commit
    is in flight queue up and go together in the next one (at most `max_records` records;
    a call's records are never split). A failed commit fails every call of its batch with
    the same error (StoreUnavailable when PostgreSQL is out of reach): nothing of the batch
    was written, so each may be retried.
    """

    def __init__(
        self,
        log: PostgresAuditLog,
        *,
        max_records: int = 512,
        probe: Callable[[], Awaitable[None]] | None = None,
        probe_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self._log = log
        self._max = max_records
        # While PostgreSQL is known to be out of reach, `ready()` refuses at once (after at
        # most one probe per `probe_interval`), so a call fails BEFORE its Redis step instead
        # of changing Redis state whose audit records could not be stored.
        self._probe = probe
        self._probe_interval = probe_interval
        self._clock: Clock = clock or MonotonicClock()
        self._down = False
        self._probed_at = -math.inf
        self._queues: dict[str, list[tuple[Sequence[NewRecord | str], asyncio.Future[int]]]] = {}
        self._flushing: dict[str, asyncio.Task[None]] = {}
        self.commits = 0  # statements sent, for measurements and tests

    async def ready(self) -> None:
        """Raise StoreUnavailable while PostgreSQL is known to be out of reach: the last
        commit failed with StoreUnavailable and a probe (at most one per interval) has not
        answered since. Cheap when it is up (no round trip)."""
        if not self._down:
            return
        now = self._clock.now()
        if self._probe is None or now - self._probed_at < self._probe_interval:
            raise StoreUnavailable()
        self._probed_at = now
        try:
            await self._probe()
        except StoreUnavailable:
            raise
        except Exception as e:
            raise StoreUnavailable() from e
        self._down = False

    async def append(self, platform: str, records: Sequence[NewRecord | str]) -> int:
        """Append `records` (in order, together); return the index of the first."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(platform, []).append((records, future))
        if platform not in self._flushing:
            self._flushing[platform] = asyncio.create_task(self._flush(platform))
        return await future

    async def _flush(self, platform: str) -> None:
        try:
            queue = self._queues[platform]
            while queue:
                batch: list[tuple[Sequence[NewRecord | str], asyncio.Future[int]]] = []
                count = 0
                while queue and (not batch or count + len(queue[0][0]) <= self._max):
                    item = queue.pop(0)
                    batch.append(item)
                    count += len(item[0])
                together = [r for records, _ in batch for r in records]
                try:
                    self.commits += 1
                    first = await self._log.append(platform, together)
                except BaseException as e:
                    if isinstance(e, StoreUnavailable):
                        self._down, self._probed_at = True, self._clock.now()
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    if not isinstance(e, Exception):
                        raise
                    continue
                for records, future in batch:
                    if not future.done():
                        future.set_result(first)
                    first += len(records)
        finally:
            self._flushing.pop(platform, None)

    # The audit sink of the pair store's Redis half (RedisStore(audit=...)).

    async def append_audit(
        self,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **extra: str | int,
    ) -> int:
        return await self.append(platform, [NewRecord(now, account, event, outcome, reason, extra)])

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return await self._log.audit_records(platform, start, stop)
