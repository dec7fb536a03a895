"""Group commit of the pair store's durable steps (issue 10; docs/design/system-of-record.md).

Each durable step of the pair (issue a phone or ID attestation, a confirm whose challenge
is gone, a revocation, the facts a start reads, the records of a Redis step) is one op of
`xacthuc_batch` (migration 0006). Per process and platform, concurrent calls' ops go to
PostgreSQL together: one statement, one round trip, one transaction, one commit for the
batch, each call awaiting its own reply. Without it, every issuing step of a platform held
the platform's status head and log head until its own commit (fsync), so the platform's
confirms committed one at a time.

* No waiting is added: the first call commits at once; calls arriving while a commit is in
  flight go together in the next one (at most `max_ops` ops and `max_records` records of
  the Redis steps; a call's records are never split), as `GroupAppender` does.
* A call's reply is given only after its batch committed. A failed commit (PostgreSQL out
  of reach, a deadlock or serialization failure: StoreUnavailable) fails every call of the
  batch with the same error and writes nothing; each may be retried (the steps are
  idempotent under their key, `issued_by`).
* Refusals are replies (the functions audit and return them), so one call refused does not
  fail the others. A step that raises (any other PostgreSQL error) rolls the batch back; its
  ops are then run again one by one, so only the op at fault gets the error.
* Locks are taken in one order (0006's note; docs: advisory locks sorted, status head, rows
  by account, then the log head, by one append of all the batch's records at the end).

It is also the audit sink of the Redis steps (`RedisStore(audit=...)`): their records are
ops of the same batches, and, as with GroupAppender, while PostgreSQL is known to be out
of reach (a batch holding records failed with StoreUnavailable) `ready()` refuses before a
Redis step changes state whose records could not be stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from xacthuc.adapters.store.pg_audit import GroupAppender, NewRecord, PostgresAuditLog, append_args
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import StoreUnavailable

_BATCH = "SELECT * FROM xacthuc_batch($1, $2::jsonb)"


@dataclass(slots=True)
class _Call:
    """One call's op and the future its caller awaits (the op's row; the index of the first
    record for an "audit" op)."""

    op: dict[str, Any]
    records: int  # of an "audit" op (the others' records are written by their step)
    audit: bool
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class DurableBatcher(GroupAppender):
    """The group commit of the pair's PostgreSQL steps (module docstring).

    `database` gives the database to use at each commit (the store's, which its owner may
    swap). `log` serves `audit_records`. `commits` counts statements sent, `batched_ops` the
    ops they carried (tests, measurements)."""

    def __init__(
        self,
        log: PostgresAuditLog,
        database: Callable[[], Database],
        *,
        max_ops: int = 64,
        max_records: int = 512,
        probe: Callable[[], Awaitable[None]] | None = None,
        probe_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            log,
            max_records=max_records,
            probe=probe,
            probe_interval=probe_interval,
            clock=clock,
        )
        self._database = database
        self._max_ops = max_ops
        self._calls: dict[str, list[_Call]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.batched_ops = 0

    async def run(self, platform: str, op: dict[str, Any]) -> asyncpg.Record:
        """Run one durable step (an op of xacthuc_batch) with the platform's next batch;
        return its row (o_reason, o_a, the facts) once the batch committed."""
        row: asyncpg.Record = await self._enqueue(platform, _Call(op, 0, False))
        return row

    async def append(self, platform: str, records: Sequence[NewRecord | str]) -> int:
        """Append `records` (in order, together) with the platform's next batch; return the
        index of the first."""
        if not records:
            return await self._log.append(platform, records)  # the log's size: no batch
        heads, tails, times, events, accounts = append_args(platform, records)
        op = {"op": "audit", "h": heads, "t": tails, "tm": times, "e": events, "ac": accounts}
        first: int = await self._enqueue(platform, _Call(op, len(heads), True))
        return first

    async def _enqueue(self, platform: str, call: _Call) -> Any:
        self._calls.setdefault(platform, []).append(call)
        if platform not in self._tasks:
            self._tasks[platform] = asyncio.create_task(self._flush_calls(platform))
        return await call.future

    async def _flush_calls(self, platform: str) -> None:
        try:
            queue = self._calls[platform]
            while queue:
                batch: list[_Call] = []
                records = 0
                while (
                    queue
                    and len(batch) < self._max_ops
                    and (not batch or records + queue[0].records <= self._max)
                ):
                    call = queue.pop(0)
                    batch.append(call)
                    records += call.records
                await self._commit(platform, batch)
        finally:
            self._tasks.pop(platform, None)

    async def _commit(self, platform: str, batch: list[_Call]) -> None:
        try:
            rows = await self._send(platform, [c.op for c in batch])
        except asyncpg.PostgresError as e:  # not "out of reach": a step raised
            if len(batch) == 1:
                _fail(batch, e)
            else:  # the batch wrote nothing: each op alone, so only the faulty one fails
                for call in batch:
                    await self._commit(platform, [call])
            return
        except BaseException as e:
            if isinstance(e, StoreUnavailable) and any(c.audit for c in batch):
                self._down, self._probed_at = True, self._clock.now()
            _fail(batch, e)
            task = asyncio.current_task()
            if not isinstance(e, Exception) and (task is None or task.cancelling()):
                raise
            return
        base = 0
        by_op: dict[int, asyncpg.Record] = {}
        for row in rows:
            if row["o_i"] < 0:
                base = row["o_first"] or 0
            else:
                by_op[row["o_i"]] = row
        for i, call in enumerate(batch):
            if call.future.done():
                continue
            row = by_op[i]
            call.future.set_result(base + row["o_first"] if call.audit else row)

    async def _send(self, platform: str, ops: list[dict[str, Any]]) -> list[asyncpg.Record]:
        self.commits += 1
        self.batched_ops += len(ops)
        payload = json.dumps(ops)
        async with self._database().connection() as conn:
            return await conn.fetch(_BATCH, platform, payload)


def _fail(batch: list[_Call], error: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(error)
