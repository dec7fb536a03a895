"""The audit log as a verifiable log: one RFC 6962 Merkle tree per platform, signed checkpoints,
proofs, exports and reports (issue 6; P9, P10).

**Records and leaves.** The store appends every audit record in the same atomic step as the
state change it records (one Lua script in Redis, one synchronous block in memory), so there
is never an attestation without its record or a record without its attestation. This module
never writes records (the auditor-call records are appended by the servicer through
`Store.append_audit`). It reads them in index order and hashes the stored bytes: leaf `i` is
`merkle.leaf_hash(<record i as UTF-8>)`. Redis Lua cannot compute SHA-256, and hashing here,
off the request path, means the verification RPCs make exactly the round trips they made
before this module existed.

**Tree cache.** `merkle.MerkleCache` keeps, per platform and in process, the leaf hashes and the
hash of every complete power-of-two subtree (about 64 bytes per record), so a proof costs
O(log^2 n) hash operations instead of a pass over the log. `AuditLog.sync` extends it from the
cached size to the current end of the stored list, in batches: another replica may have
appended in between. Records are append-only, so a cached prefix never needs re-reading; a
record rewritten in storage after this process read it is noticed by any process that reads
it afresh (another replica, a restart) and by the export, which ships the cached leaf hash
next to the stored record.

**Checkpoints.** A C2SP checkpoint (origin `<XACTHUC_LOG_ORIGIN>/<platform>`, tree size, root)
in a signed note, Ed25519, key name = the origin. A checkpoint is due when at least
`every_records` records were appended since the latest one, or when records were appended
and the latest one is `every_seconds` old (a first checkpoint: `every_seconds` after this
process first saw records; at once when an auditor asks for it). Before signing size n2 the
latest stored checkpoint (n1, root1) is checked against the current leaves with an RFC 9162
consistency proof n1 -> n2; if it fails, or the log is shorter than n1, nothing is signed,
the error is logged, `xacthuc_audit_checkpoint_refusals_total` counts it and `problem()`
says why. So a rewritten, removed or reordered record can never be covered by a new
checkpoint.

**Several replicas.** Checkpoints are stored through a `CheckpointStore` whose `append` is a
compare-and-set on the latest stored tree size (a Lua script in Redis, next to the audit
list under the platform's hash tag). A replica that lost the race re-reads the winner's
checkpoint and checks it against its own leaves instead of publishing its own. All replicas
must share the log key file (production refuses to start without one).

**Which platforms.** The background task checkpoints the platforms of the configured API keys
(every record of a platform's log comes from a call made with one of its keys) plus any
platform this process served an auditor call for; `GetCheckpoint` also signs on demand. There
is no shared "platforms" key: keeping it would need a write outside the platform's hash slot
on every append, that is a second round trip on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.domain.age import local_date
from xacthuc.domain.checkpoint import Checkpoint, format_vkey, sign_note
from xacthuc.domain.clock import Clock
from xacthuc.domain.merkle import EMPTY_ROOT, MerkleCache, ProofError, leaf_hash, verify_consistency
from xacthuc.ports.checkpoints import CheckpointStore, StoredCheckpoint
from xacthuc.ports.metrics import LogMetrics, NoLogMetrics
from xacthuc.ports.store import Store

log = logging.getLogger("xacthuc.audit")

DEFAULT_ORIGIN = "xacthuc.invalid/log"
EXPORT_CHUNK_BYTES = 64 * 1024
LOCKOUT_EVENTS = frozenset({"phone_locked", "id_locked"})


def export_line(index: int, record: str, leaf: bytes) -> bytes:
    """One line of an export: the record exactly as stored (a JSON string, so every byte
    survives), its index and the leaf hash the server computed when it first read it."""
    return (
        f'{{"index":{index},"leaf_hash":"{leaf.hex()}","record":{json.dumps(record)}}}\n'.encode()
    )


def erased_line(index: int, leaf: bytes) -> bytes:
    """One line of an export for a record whose contents were erased (P10 retention, an
    erasure request): its index and leaf hash, which still bind the tree, and the marker."""
    return f'{{"index":{index},"leaf_hash":"{leaf.hex()}","erased":true}}\n'.encode()


def record_time(text: str) -> float:
    """Seconds since the epoch of a record's `time` (RFC 3339, UTC)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _flag(value: Any) -> bool:
    return value in (1, "1", "true")


class ReportCounter:
    """Counts over the records whose `time` is in [since, until), shared by GetReport and
    `xacthuc audit report`. It counts what it is given: `audit report --checkpoint` gives it
    only the records the checkpoint covers, as they pass verification, and prints nothing
    when the export does not verify.

    Keys: `records`; `event:<event>`; `outcome:<outcome>`; `attestations` (events
    `attestation_issued`), `method:<method>` (attestations by method), `guardian_managed` and
    `commercial_livestream` (attestations carrying that flag); `lockouts` (`phone_locked`
    and `id_locked` events). The five plain keys are always present, the others when not 0:
    `id_type:<type>` (personal-ID attestations by kind of number, `citizen` or `foreigner`,
    R9); `account_locks` (`account_locked` events, R7) and `lock_kind:<kind>` (them by
    `temporary` or `permanent`); `account_unlocks` (`account_unlocked` events).
    """

    def __init__(self, since: float | None = None, until: float | None = None) -> None:
        self._since, self._until = since, until
        self._counts: dict[str, int] = dict.fromkeys(
            ("records", "attestations", "guardian_managed", "commercial_livestream", "lockouts"),
            0,
        )

    def _inc(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def add(self, record: str) -> None:
        rec = json.loads(record)
        t = record_time(rec["time"])
        if (self._since is not None and t < self._since) or (
            self._until is not None and t >= self._until
        ):
            return
        event = rec.get("event", "")
        self._inc("records")
        self._inc(f"event:{event}")
        self._inc(f"outcome:{rec.get('outcome', '')}")
        if event == "attestation_issued":
            self._inc("attestations")
            if rec.get("method"):
                self._inc(f"method:{rec['method']}")
            if _flag(rec.get("guardian_managed")):
                self._inc("guardian_managed")
            if _flag(rec.get("commercial_livestream")):
                self._inc("commercial_livestream")
            if rec.get("id_type"):
                self._inc(f"id_type:{rec['id_type']}")
        if event in LOCKOUT_EVENTS:
            self._inc("lockouts")
        if event == "account_locked":
            self._inc("account_locks")
            if rec.get("kind"):
                self._inc(f"lock_kind:{rec['kind']}")
        elif event == "account_unlocked":
            self._inc("account_unlocks")

    def counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))


class AuditLog:
    """The verifiable view of every platform's audit log (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        checkpoints: CheckpointStore,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        *,
        origin: str = DEFAULT_ORIGIN,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        platforms: Callable[[], Iterable[str]] = tuple,
        read_batch: int = 5000,
        metrics: LogMetrics | None = None,
        leaf_hashes: Callable[[str, int, int], Awaitable[list[bytes]]] | None = None,
    ) -> None:
        # The stored leaf hashes [start, stop) of a platform, for records whose contents
        # were erased (P10: the store reads them as ""): PostgreSQL keeps each record's leaf
        # hash (pg_audit.PostgresAuditLog.leaf_hashes). Stores that never erase need none.
        self._leaf_hashes = leaf_hashes
        self._metrics: LogMetrics = metrics or NoLogMetrics()
        self._store = store
        self._checkpoints = checkpoints
        self._key = signing_key
        self._clock = clock
        self._origin = origin.rstrip("/")
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._configured_platforms = platforms
        self._read_batch = read_batch
        self._trees: dict[str, MerkleCache] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._first_seen: dict[str, float] = {}
        self._seen: set[str] = set()
        self._problems: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ names and keys

    def origin(self, platform: str) -> str:
        return f"{self._origin}/{platform}"

    def verifier_key(self, platform: str) -> str:
        """The C2SP verifier key (`<origin>+<key id>+<key>`) of the platform's checkpoints."""
        return format_vkey(self.origin(platform), self._key.public_key())

    def problem(self, platform: str) -> str | None:
        """Why the latest attempt to sign a checkpoint was refused, if it was."""
        return self._problems.get(platform)

    def platforms(self) -> set[str]:
        return {*self._configured_platforms(), *self._seen}

    # -------------------------------------------------------------------------- leaves

    def _lock(self, platform: str) -> asyncio.Lock:
        return self._locks.setdefault(platform, asyncio.Lock())

    async def sync(self, platform: str) -> MerkleCache:
        """The platform's tree, extended to the current end of the stored log."""
        self._seen.add(platform)
        async with self._lock(platform):
            return await self._sync_locked(platform)

    async def _sync_locked(self, platform: str) -> MerkleCache:
        tree = self._trees.setdefault(platform, MerkleCache())
        while True:
            start = tree.size
            batch = await self._store.audit_records(platform, start, start + self._read_batch)
            stored = await self._erased_leaves(platform, start, batch)
            for offset, record in enumerate(batch):
                tree.append(stored[offset] if offset in stored else leaf_hash(record.encode()))
            if len(batch) < self._read_batch:
                break
        if tree.size and platform not in self._first_seen:
            self._first_seen[platform] = self._clock.now()
        self._metrics.tree_size(platform, tree.size)
        return tree

    async def _erased_leaves(self, platform: str, start: int, batch: list[str]) -> dict[int, bytes]:
        """The stored leaf hashes of the erased records of `batch` (records `start`...), by
        offset: an erased record reads as "" and its leaf is the hash stored with it."""
        erased = [offset for offset, record in enumerate(batch) if not record]
        if not erased:
            return {}
        if self._leaf_hashes is None:
            raise RuntimeError(f"audit log {platform}: record {start + erased[0]} is empty")
        hashes = await self._leaf_hashes(platform, start, start + len(batch))
        return {offset: hashes[offset] for offset in erased}

    # --------------------------------------------------------------------- checkpoints

    def sign(self, platform: str, tree_size: int, root: bytes) -> StoredCheckpoint:
        origin = self.origin(platform)
        note = sign_note(Checkpoint(origin, tree_size, root).body(), origin, self._key)
        return StoredCheckpoint(tree_size, root, self._clock.now(), note)

    async def checkpoint(
        self, platform: str, *, on_demand: bool = False
    ) -> StoredCheckpoint | None:
        """The latest stored checkpoint, after signing a new one if one is due. `on_demand`
        (an auditor asking) also signs the first checkpoint of a log at once."""
        async with self._lock(platform):
            return await self._checkpoint_locked(platform, on_demand, retry=True)

    async def checkpoint_history(self, platform: str) -> list[StoredCheckpoint]:
        """Every stored checkpoint of the platform's log, oldest first."""
        return await self._checkpoints.history(platform)

    async def current_checkpoint(self, platform: str) -> StoredCheckpoint:
        """What GetCheckpoint returns: the latest checkpoint, signed on demand if due; for an
        empty log a checkpoint of the empty tree (signed, not stored: it binds nothing)."""
        self._seen.add(platform)
        latest = await self.checkpoint(platform, on_demand=True)
        return latest if latest is not None else self.sign(platform, 0, EMPTY_ROOT)

    async def _checkpoint_locked(
        self, platform: str, on_demand: bool, *, retry: bool
    ) -> StoredCheckpoint | None:
        # Latest first, then the leaves: a log that only grows is then at least as long.
        latest = await self._checkpoints.latest(platform)
        tree = await self._sync_locked(platform)
        if latest is not None:
            problem = self._inconsistency(tree, latest)
            if problem is not None:
                self._refuse(platform, problem)
                return latest
        now = self._clock.now()
        if not self._due(platform, tree.size, latest, on_demand, now):
            return latest
        new = self.sign(platform, tree.size, tree.root())
        after = latest.tree_size if latest is not None else 0
        if await self._checkpoints.append(platform, new, after=after):
            self._metrics.checkpoint_signed(platform)
            if self._problems.pop(platform, None) is not None:
                log.info(
                    "audit log %s: consistent again, signed tree size %d", platform, new.tree_size
                )
            return new
        if retry:  # another replica published first: check its checkpoint instead
            return await self._checkpoint_locked(platform, False, retry=False)
        return await self._checkpoints.latest(platform)

    def _due(
        self,
        platform: str,
        size: int,
        latest: StoredCheckpoint | None,
        on_demand: bool,
        now: float,
    ) -> bool:
        covered = latest.tree_size if latest is not None else 0
        if size <= covered:
            return False
        if size - covered >= self._every_records:
            return True
        if latest is None:
            return on_demand or now - self._first_seen.get(platform, now) >= self._every_seconds
        return now - latest.signed_at >= self._every_seconds

    @staticmethod
    def _inconsistency(tree: MerkleCache, signed: StoredCheckpoint) -> str | None:
        """Why the current leaves do not extend the signed checkpoint, or None if they do."""
        if signed.tree_size > tree.size:
            return (
                f"the log has {tree.size} records but checkpoint {signed.tree_size} was signed: "
                "records were removed"
            )
        if signed.tree_size == 0:
            return None
        proof = tree.consistency_proof(signed.tree_size, tree.size)
        try:
            verify_consistency(signed.tree_size, tree.size, proof, signed.root_hash, tree.root())
        except ProofError:
            return (
                f"records 0..{signed.tree_size - 1} no longer hash to the root of the signed "
                f"checkpoint of tree size {signed.tree_size}: a stored record was changed, "
                "removed or reordered"
            )
        return None

    def _refuse(self, platform: str, problem: str) -> None:
        self._metrics.checkpoint_refused(platform)
        if self._problems.get(platform) != problem:
            log.error("audit log %s: not signing a checkpoint: %s", platform, problem)
        self._problems[platform] = problem

    # ------------------------------------------------------------- background signing

    @property
    def poll_seconds(self) -> float:
        return min(self._every_seconds, 5.0)

    async def run_once(self) -> None:
        """One round of the checkpointer over every known platform."""
        for platform in sorted(self.platforms()):
            try:
                await self.checkpoint(platform)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit log %s: checkpointing failed", platform)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.run_once()

    def start(self) -> None:
        """Start the background checkpointer (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="xacthuc-checkpointer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ export, report

    async def export(self, platform: str, start: int, stop: int) -> AsyncIterator[bytes]:
        """Records [start, stop) as JSON Lines (`export_line`), in chunks of about 64 KiB.
        `stop` must not exceed the log's size."""
        tree = await self.sync(platform)
        if stop > tree.size:
            raise ValueError(f"stop {stop} is beyond the log ({tree.size} records)")
        chunk = bytearray()
        index = start
        while index < stop:
            batch = await self._store.audit_records(
                platform, index, min(index + self._read_batch, stop)
            )
            if not batch:
                raise RuntimeError(f"audit log {platform} ends before record {index}")
            for record in batch:
                leaf = tree.leaf(index)
                if not record:  # erased (P10): its leaf hash and the marker only
                    chunk += erased_line(index, leaf)
                else:
                    if leaf_hash(record.encode("utf-8")) != leaf:
                        self._metrics.leaf_mismatch(platform)
                        log.error(
                            "audit log %s: stored record %d changed after it was first read",
                            platform,
                            index,
                        )
                    chunk += export_line(index, record, leaf)
                index += 1
                if len(chunk) >= EXPORT_CHUNK_BYTES:
                    yield bytes(chunk)
                    chunk.clear()
        if chunk:
            yield bytes(chunk)

    async def report(
        self, platform: str, since: float | None, until: float | None
    ) -> dict[str, int]:
        counter = ReportCounter(since, until)
        async for _, record in self._records(platform):
            counter.add(record)
        return counter.counts()

    async def daily_report(
        self, platform: str, since: float, until: float
    ) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
        """The counts of `report` over [since, until), and the same counts for each calendar
        day in Vietnam (`YYYY-MM-DD`) that has records in the range, oldest first. The days'
        counts add up to the total."""
        total = ReportCounter(since, until)
        days: dict[str, ReportCounter] = {}
        async for _, record in self._records(platform):
            t = record_time(json.loads(record)["time"])
            if since <= t < until:
                total.add(record)
                day = local_date(t).isoformat()
                days.setdefault(day, ReportCounter(since, until)).add(record)
        return total.counts(), [(day, days[day].counts()) for day in sorted(days)]

    async def index_range(
        self, platform: str, since: float | None, until: float | None, stop: int
    ) -> tuple[int, int]:
        """[first, end) of the records of [0, stop) whose `time` is in [since, until).
        Records are appended in time order (`xacthuc audit verify` checks it), so they are
        consecutive; an empty range is (n, n)."""
        first: int | None = None
        end = 0
        async for index, record in self._records(platform, stop):
            t = record_time(json.loads(record)["time"])
            if until is not None and t >= until:
                break
            if since is None or t >= since:
                if first is None:
                    first = index
                end = index + 1
        return (end, end) if first is None else (first, end)

    async def _records(
        self, platform: str, stop: int | None = None
    ) -> AsyncIterator[tuple[int, str]]:
        """(index, stored record) of the log from 0 to `stop` (its end when None), read in
        batches; erased records (contents gone, P10) are left out."""
        index = 0
        while stop is None or index < stop:
            asked = self._read_batch if stop is None else min(self._read_batch, stop - index)
            batch = await self._store.audit_records(platform, index, index + asked)
            for offset, record in enumerate(batch):
                if record:
                    yield index + offset, record
            index += len(batch)
            if len(batch) < asked:
                return
