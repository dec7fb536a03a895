"""The audit log's retention job (P10; issue 10): one per machine, in worker 0 only.

Every `interval` seconds it makes sure the monthly partitions of `audit_records` exist for
this month and the next few (migration 0005; `xacthuc db migrate` does the same), then, when a
retention is set (XACTHUC_AUDIT_RETENTION_DAYS > 0), erases the contents of every record older
than that, platform by platform, oldest first, at most `batch` records per transaction, each
transaction audited `records_expired` with the count and the cut-off. Erasure keeps each
record's leaf hash, so every checkpoint still verifies and an export shows the record as its
hash with `"erased": true`.

Several machines may run it at once: partitions are made under an advisory lock, and a record
is erased once (the update skips records already erased, so two passes count each once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from xacthuc.adapters.store.pg_audit import PostgresAuditLog
from xacthuc.adapters.store.postgres import PARTITIONS_AHEAD
from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import StoreUnavailable

log = logging.getLogger("xacthuc.audit.retention")

DAY = 86_400.0


class AuditRetention:
    """Partitions ahead and retention of every platform's audit log in PostgreSQL."""

    def __init__(
        self,
        audit: PostgresAuditLog,
        clock: Clock,
        *,
        days: int,
        interval: float = 3600.0,
        batch: int = 10_000,
        ahead: int = PARTITIONS_AHEAD,
    ) -> None:
        self._audit = audit
        self._clock = clock
        self._days = days
        self._interval = interval
        self._batch = batch
        self._ahead = ahead
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run_once(self, now: float | None = None) -> int:
        """One round at `now` (default: the clock): partitions ahead, then the records older
        than the retention erased. Returns how many records were erased."""
        at = self._clock.now() if now is None else now
        made = await self._audit.ensure_partitions(at, self._ahead)
        if made:
            log.info("audit log: %d monthly partition(s) created", made)
        if self._days <= 0:
            return 0
        before = at - self._days * DAY
        total = 0
        for platform in await self._audit.platforms():
            erased = self._batch
            while erased == self._batch:
                erased = await self._audit.erase_before(platform, before, at, limit=self._batch)
                total += erased
        return total

    def start(self) -> None:
        """Start the background round (idempotent)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="xacthuc-audit-retention"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                erased = await self.run_once()
                if erased:
                    log.info("audit retention: %d record(s) erased", erased)
            except StoreUnavailable:
                log.warning("audit retention: database unavailable; retrying next round")
            except Exception:
                log.exception("audit retention failed; retrying next round")
            await asyncio.sleep(self._interval)
