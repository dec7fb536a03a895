"""The audit log as a verifiable log: one RFC 6962 Merkle tree per platform, signed checkpoints,
proofs, queries, exports and reports (issue 6; P9, P10).

**Records and leaves.** The store appends every audit record in the same atomic step as the
state change it records (one Lua script in Redis, one synchronous block in memory, one
PostgreSQL transaction), so there is never an attestation without its record or a record
without its attestation. This module never writes records (the auditor-call records are
appended by the servicer through `Store.append_audit`). Leaf `i` is `merkle.leaf_hash(<record
i as UTF-8>)`. Everything it reads comes through the `LogReader` port
(`xacthuc.ports.audit_log`): the tree (its size, roots and proofs), the records by index
range (streamed), by filter, and the index range of a time window. Two adapters:

* with a database (XACTHUC_DATABASE_URL), `pg_audit.PostgresLogReader`: PostgreSQL computes
  each leaf hash when it stores the record and keeps the hash of every complete subtree
  (`PostgresMerkle`), so checkpoints are signed from what PostgreSQL holds, a root or a proof
  is O(log n) stored hashes read by primary key, queries go through the indexes and exports
  through a server-side cursor: no process reads the whole log, not even a fresh one;
* otherwise `log_reader.StoreLogReader`: an in-process tree cache over
  `Store.audit_records` (the memory store, Redis alone). Hashing there, off the request
  path, means the verification RPCs make exactly the round trips they made before this
  module existed.

**Checkpoints.** A C2SP checkpoint (origin `<XACTHUC_LOG_ORIGIN>/<platform>`, tree size, root)
in a signed note, Ed25519, key name = the origin. A checkpoint is due when at least
`every_records` records were appended since the latest one, or when records were appended
and the latest one is `every_seconds` old (a first checkpoint: `every_seconds` after this
process first saw records; at once when an auditor asks for it). Before signing size n2 the
latest stored checkpoint (n1, root1) is checked against the tree with an RFC 9162
consistency proof n1 -> n2; if it fails, or the log is shorter than n1, nothing is signed,
the error is logged, `xacthuc_audit_checkpoint_refusals_total` counts it and `problem()`
says why. So a removed or reordered record, or a record rewritten before a process hashed
it afresh, is never covered by a new checkpoint; nor is a database restored from an older
backup and written since (its new records do not extend the signed tree). A record's text
rewritten in PostgreSQL behind the service's back does not change its stored leaf hash, so
checkpoints go on extending the signed tree; the export ships the stored hash next to the
text, the export counts the mismatch (`xacthuc_audit_leaf_mismatches_total`) and `xacthuc
audit verify` names the record.

**Queries, exports, reports.** `query` pages through the records matching an account, an
event and a time window, oldest first; a page token is opaque (HMAC-SHA-256 under a key
derived from the log signing key, so every replica accepts every replica's tokens) and
continues only the query, on the platform, that made it. `export` streams records as JSON
Lines, an erased record (retention, an erasure request: text gone, leaf hash kept) as its
leaf hash and the marker `"erased": true`. Reports read only the records of their time
window (`LogReader.index_range`: a time index or a binary search), parsing each once;
erased records are not counted (nothing of them is left to count).

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
import hashlib
import hmac
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.domain.age import local_date
from xacthuc.domain.b64 import b64url_decode, b64url_encode
from xacthuc.domain.checkpoint import Checkpoint, format_vkey, sign_note
from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import FieldInvalid
from xacthuc.domain.merkle import EMPTY_ROOT, ProofError, leaf_hash, verify_consistency
from xacthuc.ports.audit_log import LogEntry, LogFilter, LogReader
from xacthuc.ports.checkpoints import CheckpointStore, StoredCheckpoint
from xacthuc.ports.metrics import LogMetrics, NoLogMetrics

log = logging.getLogger("xacthuc.audit")

DEFAULT_ORIGIN = "xacthuc.invalid/log"
EXPORT_CHUNK_BYTES = 64 * 1024
LOCKOUT_EVENTS = frozenset({"phone_locked", "id_locked"})


def export_line(index: int, record: str, leaf: bytes) -> bytes:
    """One line of an export: the record exactly as stored (a JSON string, so every byte
    survives), its index and the leaf hash the tree holds (stored by PostgreSQL with the
    record, or computed by the process when it first read it)."""
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
        """Count one record as stored (its text), if its time is in the window."""
        rec = json.loads(record)
        self.add_parsed(rec, record_time(rec["time"]))

    def add_parsed(self, rec: dict[str, Any], t: float) -> None:
        """Count one record already parsed, `t` its time (`record_time(rec["time"])`)."""
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
        reader: LogReader,
        checkpoints: CheckpointStore,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        *,
        origin: str = DEFAULT_ORIGIN,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        platforms: Callable[[], Iterable[str]] = tuple,
        metrics: LogMetrics | None = None,
    ) -> None:
        self._metrics: LogMetrics = metrics or NoLogMetrics()
        self._reader = reader
        self._checkpoints = checkpoints
        self._key = signing_key
        # Page tokens are MACed under a key every replica derives from the shared log key.
        self._token_key = hashlib.sha256(
            b"xacthuc audit page tokens\x00" + signing_key.private_bytes_raw()
        ).digest()
        self._clock = clock
        self._origin = origin.rstrip("/")
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._configured_platforms = platforms
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

    # ---------------------------------------------------------------- the tree, proofs

    def _lock(self, platform: str) -> asyncio.Lock:
        return self._locks.setdefault(platform, asyncio.Lock())

    async def _extend(self, platform: str) -> int:
        size = await self._reader.extend(platform)
        if size and platform not in self._first_seen:
            self._first_seen[platform] = self._clock.now()
        self._metrics.tree_size(platform, size)
        return size

    async def size(self, platform: str) -> int:
        """How many records the platform's log holds now: what an export or a query may
        reach."""
        self._seen.add(platform)
        return await self._reader.size(platform)

    async def tree_size(self, platform: str, at_least: int = 0) -> int:
        """The size of the platform's tree that roots and proofs may use: the part already
        hashed when it covers `at_least` records (a signed tree size always is; then no
        record is read), else the whole log, hashed first."""
        self._seen.add(platform)
        if at_least > 0:
            hashed = await self._reader.hashed(platform)
            if hashed >= at_least:
                return hashed
        return await self._extend(platform)

    async def root(self, platform: str, tree_size: int) -> bytes:
        """The root hash of the tree of `tree_size` records (<= `tree_size(platform,
        tree_size)`)."""
        return await self._reader.root(platform, tree_size)

    async def inclusion_proof(self, platform: str, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of record `index` in the tree of `tree_size` records
        (0 <= index < tree_size <= `tree_size(platform, tree_size)`)."""
        return await self._reader.inclusion_proof(platform, index, tree_size)

    async def consistency_proof(self, platform: str, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of `size1` records to that of `size2`
        (0 < size1 <= size2 <= `tree_size(platform, size2)`)."""
        return await self._reader.consistency_proof(platform, size1, size2)

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
        size = await self._extend(platform)
        if latest is not None:
            problem = await self._inconsistency(platform, size, latest)
            if problem is not None:
                self._refuse(platform, problem)
                return latest
        now = self._clock.now()
        if not self._due(platform, size, latest, on_demand, now):
            return latest
        new = self.sign(platform, size, await self._reader.root(platform, size))
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

    async def _inconsistency(
        self, platform: str, size: int, signed: StoredCheckpoint
    ) -> str | None:
        """Why the tree of `size` records does not extend the signed checkpoint, or None if
        it does."""
        if signed.tree_size > size:
            return (
                f"the log has {size} records but checkpoint {signed.tree_size} was signed: "
                "records were removed"
            )
        if signed.tree_size == 0:
            return None
        proof = await self._reader.consistency_proof(platform, signed.tree_size, size)
        root = await self._reader.root(platform, size)
        try:
            verify_consistency(signed.tree_size, size, proof, signed.root_hash, root)
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

    # ------------------------------------------------------------------------- queries

    async def query(
        self, platform: str, where: LogFilter, *, page_size: int, page_token: str = ""
    ) -> tuple[list[LogEntry], str]:
        """A page of at most `page_size` records matching `where`, oldest first, and the
        next page's token ("" after the last page). Pages walk the log as it was at the
        first page: records appended since (this very query's own audit record, say) wait
        for the next query. A token continues only the query, on the platform, that gave it:
        any other is FIELD_INVALID `page_token`."""
        self._seen.add(platform)
        if page_token:
            start, end = self._open_token(platform, where, page_token)
        else:
            start, end = 0, await self._reader.size(platform)
        found = await self._reader.query(
            platform, where, after=start - 1, before=end, limit=page_size + 1
        )
        if len(found) <= page_size:
            return found, ""
        page = found[:page_size]
        return page, self._token(platform, where, page[-1].index + 1, end)

    def _mac(self, platform: str, where: LogFilter, body: bytes) -> bytes:
        bound = json.dumps([platform, where.account, where.event, where.since, where.until])
        return hmac.digest(self._token_key, bound.encode() + b"\x00" + body, "sha256")[:16]

    def _token(self, platform: str, where: LogFilter, start: int, end: int) -> str:
        body = struct.pack(">QQ", start, end)
        return b64url_encode(body + self._mac(platform, where, body))

    def _open_token(self, platform: str, where: LogFilter, token: str) -> tuple[int, int]:
        """(first index the page may return, end of the log at the first page)."""
        try:
            raw = b64url_decode(token)
        except ValueError:
            raw = b""
        if len(raw) != 32 or not hmac.compare_digest(
            raw[16:], self._mac(platform, where, raw[:16])
        ):
            raise FieldInvalid(
                "page_token", "is not a token from a previous response to this query"
            )
        start, end = struct.unpack(">QQ", raw[:16])
        return int(start), int(end)

    # ---------------------------------------------------------- export, reports, ranges

    async def export(self, platform: str, start: int, stop: int) -> AsyncIterator[bytes]:
        """Records [start, stop) as JSON Lines (`export_line`; an erased record as
        `erased_line`), in chunks of about 64 KiB, streamed (memory stays flat however long
        the log). `stop` must not exceed the log's `size`."""
        chunk = bytearray()
        index = start
        async for entry in self._reader.entries(platform, start, stop):
            if entry.index != index:
                raise RuntimeError(f"audit log {platform}: record {index} is missing")
            if entry.record is None:
                chunk += erased_line(index, entry.leaf_hash)
            else:
                if leaf_hash(entry.record.encode("utf-8")) != entry.leaf_hash:
                    self._metrics.leaf_mismatch(platform)
                    log.error(
                        "audit log %s: stored record %d does not hash to its leaf: changed "
                        "after it was hashed",
                        platform,
                        index,
                    )
                chunk += export_line(index, entry.record, entry.leaf_hash)
            index += 1
            if len(chunk) >= EXPORT_CHUNK_BYTES:
                yield bytes(chunk)
                chunk.clear()
        if index != stop:
            raise RuntimeError(f"audit log {platform} ends before record {index}")
        if chunk:
            yield bytes(chunk)

    async def report(
        self, platform: str, since: float | None, until: float | None
    ) -> dict[str, int]:
        """The `ReportCounter` counts of the records of [since, until)."""
        counter = ReportCounter(since, until)
        async for rec, t in self._window(platform, since, until):
            counter.add_parsed(rec, t)
        return counter.counts()

    async def daily_report(
        self, platform: str, since: float, until: float
    ) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
        """The counts of `report` over [since, until), and the same counts for each calendar
        day in Vietnam (`YYYY-MM-DD`) that has records in the range, oldest first. The days'
        counts add up to the total."""
        total = ReportCounter(since, until)
        days: dict[str, ReportCounter] = {}
        async for rec, t in self._window(platform, since, until):
            total.add_parsed(rec, t)
            day = local_date(t).isoformat()
            days.setdefault(day, ReportCounter(since, until)).add_parsed(rec, t)
        return total.counts(), [(day, days[day].counts()) for day in sorted(days)]

    async def _window(
        self, platform: str, since: float | None, until: float | None
    ) -> AsyncIterator[tuple[dict[str, Any], float]]:
        """Each record of [since, until), parsed, with its time: only the window's records
        are read (`index_range`); erased ones are left out (nothing of them is left)."""
        first, end = await self.index_range(platform, since, until, await self.size(platform))
        async for entry in self._reader.entries(platform, first, end):
            if entry.record is not None:
                rec = json.loads(entry.record)
                yield rec, record_time(rec["time"])

    async def index_range(
        self, platform: str, since: float | None, until: float | None, stop: int
    ) -> tuple[int, int]:
        """[first, end) of the records of [0, stop) whose `time` is in [since, until).
        Records are appended in time order (`xacthuc audit verify` checks it), so they are
        consecutive and found without a scan; an empty range is (n, n)."""
        return await self._reader.index_range(platform, since, until, stop)
