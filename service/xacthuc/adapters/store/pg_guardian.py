"""Guardian links (R1, P6) and account locks (R7) in PostgreSQL: `PgGuardianLocks`, the part
of the pair store (Redis + PostgreSQL) with no Redis step at all.

Each state-changing operation is one call of its plpgsql function (migration
`0004_links_locks.sql`), one round trip, one transaction: the checks, the writes and the
audit records commit together or not at all, exactly as the reference store
(`memory_guardian.py`, `memory_locks.py`) behaves, record for record. A refusal is audited by
that same call, so the function returns it as a value (its reason, after writing the
record) and it is raised here as the domain error. The reads (`list_aging_out`,
`locked_status_indexes`) are one indexed query each. PostgreSQL out of reach is
StoreUnavailable (`Database`).

`link_guardian` is idempotent under the call's link id (`GuardianLink.link_id`): run again
with the same request digest, it returns the link and the child's attestation as they are,
with no second token and no second record; with another digest (an idempotency key reused
for other fields) it is IDEMPOTENCY_KEY_REUSED (migration 0008). Concurrent calls about one child, one guardian's child cap or one account's
lock are serialised in PostgreSQL (advisory locks, then row locks), so two links cannot both
pass a check that only one of them may pass.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from xacthuc.adapters.store.pg_state import (
    PgStateBase,
    attestation_record,
    lock_record,
    time_j,
)
from xacthuc.domain.errors import (
    ChildAlreadyLinked,
    ChildNotUnder16,
    GuardianChildLimit,
    GuardianNotVerified,
    GuardianUnder18,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    LinkNotFound,
    XacthucError,
)
from xacthuc.domain.locks import AccountLock, LockRequest
from xacthuc.domain.records import AgingOut, AttestationRecord, GuardianLink, Limits, LinkResult

# The refusals the functions of migrations 0004 and 0008 return (`r_refusal`), by reason.
REFUSALS: dict[str, type[XacthucError]] = {
    cls.reason: cls
    for cls in (
        GuardianNotVerified,
        GuardianUnder18,
        ChildNotUnder16,
        ChildAlreadyLinked,
        GuardianChildLimit,
        IdempotencyKeyReused,
        LinkNotFound,
        LinkAlreadyEnded,
    )
}

_LINK = (
    "SELECT r.r_refusal, r.r_link_id, r.r_renewed, (r.r_a).*"
    " FROM xacthuc_link_guardian($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
    " $14, $15, $16, $17, $18, $19, $20) AS r"
)
_END = "SELECT r.r_refusal, (r.r_a).* FROM xacthuc_end_guardian_link($1, $2, $3, $4, $5) AS r"
_SWEEP = "SELECT xacthuc_sweep_aged_out($1, $2, $3, $4)"
_LOCK = (
    "SELECT r.r_changed, (r.r_lock).*"
    " FROM xacthuc_lock_account($1, $2, $3, $4, $5, $6, $7, $8) AS r"
)
_UNLOCK = "SELECT (r).* FROM xacthuc_unlock_account($1, $2, $3, $4, $5) AS r"
# Children with an active link, by (16th birthday, account id bytes: `child` is COLLATE "C"),
# on the partial index guardian_links_aging; the page boundary is a row comparison.
_AGING = (
    "SELECT child, aged_out_at FROM guardian_links"
    " WHERE platform = $1 AND ended IS NULL AND aged_out_at >= $2 AND aged_out_at < $3"
)
_AGING_ALL = _AGING + " ORDER BY aged_out_at, child LIMIT $4"
_AGING_AFTER = (
    _AGING + ' AND (aged_out_at, child) > ($5, $6::text COLLATE "C")'
    " ORDER BY aged_out_at, child LIMIT $4"
)
# The platform's locks that hold at $2 (partial index account_locks_holding), each joined
# to every token its account was ever issued (status_tokens_account).
_LOCKED_INDEXES = (
    "SELECT t.idx FROM account_locks l"
    " JOIN status_tokens t ON t.platform = l.platform AND t.account = l.account"
    " WHERE l.platform = $1 AND l.ended_at IS NULL"
    " AND (l.lock_until IS NULL OR l.lock_until > $2)"
    " ORDER BY t.idx"
)


_INT_MAX = 2**31 - 1  # the sweep's batch is a PostgreSQL integer


def _refused(reason: str) -> XacthucError:
    return REFUSALS[reason]()


def _fields(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row.items())


class PgGuardianLocks(PgStateBase):
    """link_guardian, end_guardian_link, sweep_aged_out, list_aging_out, lock_account,
    unlock_account, locked_status_indexes of the Store port, over `self._db`."""

    async def link_guardian(self, link: GuardianLink, limits: Limits) -> LinkResult:
        a = link.attestation
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                _LINK,
                link.platform,
                link.link_id,
                link.child_account_id,
                link.guardian_account_id,
                link.guardian_subject,
                link.guardian_token_id,
                link.guardian_ref,
                link.relationship,
                link.child_consent,
                link.aged_out_at,
                link.now,
                time_j(link.now),
                a.token_id,
                a.issued_at,
                a.expires_at,
                a.method,
                limits.max_children_per_guardian,
                self._status_keys(),
                self._status_block,
                link.request_digest,
            )
        assert row is not None
        if row["r_refusal"]:
            raise _refused(row["r_refusal"])
        return LinkResult(row["r_link_id"], attestation_record(_fields(row)), row["r_renewed"])

    async def end_guardian_link(
        self, platform: str, link_id: str, now: float, reason: str = "withdrawn"
    ) -> AttestationRecord | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_END, platform, link_id, now, time_j(now), reason)
        assert row is not None
        if row["r_refusal"]:
            raise _refused(row["r_refusal"])
        return None if row["account"] is None else attestation_record(_fields(row))

    async def sweep_aged_out(self, platform: str, now: float, limit: int) -> int:
        if limit <= 0:
            return 0
        async with self._db.connection() as conn:
            ended = await conn.fetchval(_SWEEP, platform, now, time_j(now), min(limit, _INT_MAX))
        return int(ended)

    async def list_aging_out(
        self,
        platform: str,
        from_time: float,
        to_time: float,
        limit: int,
        after: AgingOut | None = None,
    ) -> list[AgingOut]:
        if limit <= 0 or to_time <= from_time:
            return []
        async with self._db.connection() as conn:
            if after is None:
                rows = await conn.fetch(_AGING_ALL, platform, from_time, to_time, limit)
            else:
                rows = await conn.fetch(
                    _AGING_AFTER,
                    platform,
                    from_time,
                    to_time,
                    limit,
                    after.aged_out_at,
                    after.account_id,
                )
        return [AgingOut(r["child"], r["aged_out_at"]) for r in rows]

    # ---- account locks (R7) -------------------------------------------------------------

    async def lock_account(self, request: LockRequest) -> tuple[AccountLock, bool]:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                _LOCK,
                request.platform,
                request.account_id,
                request.kind.value,
                request.until,
                request.reason,
                request.request_reference,
                request.now,
                time_j(request.now),
            )
        assert row is not None
        return lock_record(_fields(row)), bool(row["r_changed"])

    async def unlock_account(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AccountLock | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_UNLOCK, platform, account_id, now, time_j(now), reason)
        if row is None or row["account"] is None:
            return None
        return lock_record(_fields(row))

    async def locked_status_indexes(self, platform: str, now: float) -> list[int]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(_LOCKED_INDEXES, platform, now)
        return [int(r["idx"]) for r in rows]
