"""The store as Redis + PostgreSQL ("the pair", issue 10; docs/design/system-of-record.md).

PostgreSQL is the system of record: attestations, revocations and status bits, status
index allocation, the accounts per number (P8), guardian links, account locks and the audit
log (migrations 0001-0003). Redis keeps only what may be lost at the price of a user asking
for a new code: challenges in flight, idempotency keys of starts, send budgets and
cool-downs (P3), failure counters and lock-outs (P2, P5).

An operation with a Redis step runs it first (a Lua script of `lua/`, called with
`P.pair`: it leaves the durable parts out), then its PostgreSQL step: one plpgsql function,
one round trip, one transaction holding its checks, writes and audit records, idempotent
under the operation's key (`issued_by`: the challenge id, the ID attempt id). The records
an issue writes are rendered here (`audit_record()`, as every store renders them) and sent
with the op; the step appends them only when it issued (migration 0007: SQL rendering them
field by field was a quarter of a confirm's PostgreSQL time). The reply comes only after
the commit. So:

* Redis flushed at any moment loses nothing durable; a confirm whose challenge is gone
  asks PostgreSQL what the challenge issued before answering CHALLENGE_NOT_FOUND;
* a process killed between the two steps leaves the challenge `consumed` in Redis and
  nothing in PostgreSQL: the same call retried (the right code again, no attempt counted)
  runs the PostgreSQL step, which issues once and returns the same attestation to every
  retry (never a second one, never a second status index).

The Lua steps' own records (refusals, wrong codes, starts) are stored through
`GroupAppender` before the call returns or raises (`RedisStore(audit=...)`).
Operations with no Redis step (revocation, reads, guardian links and locks from
`PgGuardianLocks`) are PostgreSQL only.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from xacthuc.adapters.store.pg_audit import GroupAppender, PostgresAuditLog
from xacthuc.adapters.store.pg_batch import DurableBatcher
from xacthuc.adapters.store.pg_guardian import PgGuardianLocks
from xacthuc.adapters.store.pg_state import attestation_record, lock_record, time_j
from xacthuc.adapters.store.postgres import Database
from xacthuc.adapters.store.redis import RedisClient, RedisStore, _refusal
from xacthuc.domain.errors import AttestationNotFound
from xacthuc.domain.locks import AccountLock
from xacthuc.domain.records import (
    AttestationRecord,
    ChallengeView,
    CodeCheck,
    IdAttempt,
    Limits,
    NewChallenge,
    PendingAttestation,
    audit_record,
    check_reason_code,
    split_audit_record,
)
from xacthuc.domain.status_index import INDEX_BLOCK, KEY_HEX_CHARS

_STATE = (
    "SELECT (SELECT a FROM attestations a WHERE platform = $1 AND account = $2) AS a,"
    " (SELECT l FROM account_locks l WHERE platform = $1 AND account = $2) AS l"
)
_ATTESTATION = "SELECT a, a.subject FROM attestations a WHERE platform = $1 AND account = $2"


def _pending(a: PendingAttestation) -> dict[str, Any]:
    return {
        "method": a.method,
        "token_id": a.token_id,
        "issued_at": a.issued_at,
        "expires_at": a.expires_at,
        "age_band": a.age_band,
        "id_type": a.id_type,
    }


def _issued_fields(a: PendingAttestation) -> dict[str, str | int]:
    return {"token_id": a.token_id, "method": a.method, "expires": math.floor(a.expires_at)}


def _issue_records(
    platform: str, now: float, account: str, *records: tuple[str, Mapping[str, str | int]]
) -> dict[str, list[str]]:
    """The records (event, extra fields) an issuing step writes when it issues (the
    check's, then `attestation_issued`), rendered around their index: `xacthuc_batch`'s "h"
    and "t" (migration 0007), which it appends only when the step issued."""
    heads, tails = [], []
    for event, extra in records:
        text = audit_record(
            seq=0,
            now=now,
            platform=platform,
            account=account,
            event=event,
            outcome="ok",
            reason="",
            **extra,
        )
        head, tail = split_audit_record(text)
        heads.append(head)
        tails.append(tail)
    return {"h": heads, "t": tails}


def _issued(row: Any) -> AttestationRecord:
    """The reply of an issuing function: the attestation, or its refusal raised."""
    if row["o_reason"]:
        raise _refusal(row["o_reason"], "", "")
    return attestation_record(row["o_a"])


class PairStore(PgGuardianLocks):
    """The `Store` contract on Redis (ephemeral state) + PostgreSQL (durable state).

    `database` is opened and closed by its owner (the App; `owns_database`: this store
    closes it in `aclose`); the Redis client is the store's
    own unless `client` is given. The audit log is `database`'s (`audit`: the group-commit
    appender of the Lua steps' records; one is made when not given)."""

    def __init__(
        self,
        url: str,
        database: Database,
        *,
        namespace: str = "xacthuc",
        client: RedisClient | None = None,
        status_block: int = INDEX_BLOCK,
        status_keys: Callable[[], str] = lambda: secrets.token_hex(KEY_HEX_CHARS // 2),
        audit: GroupAppender | None = None,
        owns_database: bool = False,
    ) -> None:
        super().__init__(database, status_block=status_block, status_keys=status_keys)
        self._owns_database = owns_database
        self._log = PostgresAuditLog(database)
        # Group commit of the PostgreSQL steps (pg_batch.py); the audit sink of the Redis
        # steps too, so their records ride in the same batches.
        self._batch = DurableBatcher(self._log, lambda: self._db, probe=self._ping_database)
        self.audit = audit or self._batch
        # The ephemeral half: its Lua scripts, keys and encoding (called with `pair`).
        self._eph = RedisStore(url, namespace=namespace, client=client, audit=self.audit)

    @property
    def client(self) -> RedisClient:
        """The redis-py client in use (for instrumentation at composition): one server's,
        or a Redis Cluster's (`redis+cluster://`)."""
        return self._eph.client

    @property
    def once_client(self) -> Any:
        """The client of the state-changing scripts (each command sent once)."""
        return self._eph.once_client

    @property
    def clustered(self) -> bool:
        """Whether Redis is a cluster (see `RedisStore.clustered`)."""
        return self._eph.clustered

    @property
    def database(self) -> Database:
        return self._db

    @property
    def redis_half(self) -> RedisStore:
        """The Redis half: the ephemeral steps (`redis.RedisStore`)."""
        return self._eph

    async def _ping_database(self) -> None:
        await self._db.ping()

    async def _facts(self, platform: str, account: str, subject: str, now: float, room: int) -> Any:
        """What a start or an ID attempt needs from PostgreSQL (linked child, P8 room, the
        attestation's state), read in the batches (measured: fewer round trips than a read
        of its own per call)."""
        return await self._batch.run(
            platform,
            {"op": "facts", "account": account, "subject": subject, "now": now, "max": room},
        )

    # ---- phone challenges ---------------------------------------------------------------

    async def start_challenge(self, new: NewChallenge, limits: Limits) -> ChallengeView:
        f = await self._facts(
            new.platform, new.account_id, new.phone, new.now, limits.max_accounts_per_phone
        )
        return await self._eph.start_challenge(
            new, limits, linked=f["o_linked"], full=not f["o_has_room"]
        )

    async def confirm_sent(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self._eph.confirm_sent(platform, challenge_id, account_id, now)

    async def abort_challenge(
        self, platform: str, challenge_id: str, account_id: str, now: float
    ) -> None:
        await self._eph.abort_challenge(platform, challenge_id, account_id, now)

    async def check_code(self, check: CodeCheck, limits: Limits) -> AttestationRecord:
        phone = await self._eph.check_code(check, limits)
        # The durable step: issue (or return what this challenge issued), or refuse.
        common: dict[str, Any] = {
            "by": check.challenge_id,
            "account": check.account_id,
            "tj": time_j(check.now),
        }
        if phone is None:
            op = {"op": "gone"} | common
        else:
            op = (
                {"op": "phone"}
                | common
                | {
                    "subject": phone,
                    "now": check.now,
                    "pending": _pending(check.attestation),
                    "max": limits.max_accounts_per_phone,
                    "key": self._status_keys(),
                    "block": self._status_block,
                }
                | _issue_records(
                    check.platform,
                    check.now,
                    check.account_id,
                    ("check_ok", {"challenge": check.challenge_id, "phone": phone}),
                    ("attestation_issued", _issued_fields(check.attestation)),
                )
            )
        row = await self._batch.run(check.platform, op)
        return _issued(row)

    # ---- personal-ID attempts -----------------------------------------------------------

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits) -> None:
        f = await self._facts(attempt.platform, attempt.account_id, "", attempt.now, 0)
        await self._eph.begin_id_check(
            attempt, limits, linked=f["o_linked"], active=f["o_active"], managed=f["o_managed"]
        )

    async def finish_id_check(
        self, attempt: IdAttempt, answer: str, pending: PendingAttestation, limits: Limits
    ) -> AttestationRecord:
        await self._eph.finish_id_check(attempt, answer, limits)  # a refusal raises here
        ctx = {
            "attempt": attempt.attempt_id,
            "personal_id": attempt.subject,
            "client": attempt.client,
            "purpose": attempt.purpose,
            "id_type": attempt.id_type,
        }
        op = {
            "op": "id",
            "by": attempt.attempt_id,
            "account": attempt.account_id,
            "subject": attempt.subject,
            "now": attempt.now,
            "tj": time_j(attempt.now),
            "pending": _pending(pending),
            "ctx": ctx,
            "max": limits.max_accounts_per_personal_id,
            "key": self._status_keys(),
            "block": self._status_block,
        } | _issue_records(
            attempt.platform,
            attempt.now,
            attempt.account_id,
            ("id_check", {**ctx, "refunded": "personal_id"}),
            (
                "attestation_issued",
                _issued_fields(pending)
                | {
                    "commercial_livestream": 1,
                    "age_band": pending.age_band,
                    "id_type": pending.id_type,
                },
            ),
        )
        row = await self._batch.run(attempt.platform, op)
        return _issued(row)

    # ---- revocation and reads (PostgreSQL only) -----------------------------------------

    async def revoke_attestation(
        self, platform: str, account_id: str, now: float, reason: str
    ) -> AttestationRecord:
        check_reason_code(reason)
        op = {
            "op": "revoke",
            "account": account_id,
            "now": now,
            "tj": time_j(now),
            "reason": reason,
        }
        a = (await self._batch.run(platform, op))["o_a"]
        if a is None:
            raise AttestationNotFound()
        return attestation_record(a)

    async def status_bits(self, platform: str) -> bytes:
        async with self._db.connection() as conn:
            bits = await conn.fetchval("SELECT xacthuc_status_bitmap($1)", platform)
        return bytes(bits)

    async def account_state(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord | None, AccountLock | None]:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_STATE, platform, account_id)
        assert row is not None
        a, lk = row["a"], row["l"]
        return (
            attestation_record(a) if a is not None else None,
            lock_record(lk) if lk is not None else None,
        )

    async def get_attestation(self, platform: str, account_id: str) -> AttestationRecord | None:
        async with self._db.connection() as conn:
            a = await conn.fetchval(
                "SELECT a FROM attestations a WHERE platform = $1 AND account = $2",
                platform,
                account_id,
            )
        return attestation_record(a) if a is not None else None

    async def attestation_subject(
        self, platform: str, account_id: str
    ) -> tuple[AttestationRecord, str] | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_ATTESTATION, platform, account_id)
        if row is None:
            return None
        return attestation_record(row["a"]), row["subject"]

    # ---- the audit log ------------------------------------------------------------------

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
        return await self.audit.append_audit(
            platform, now, account=account, event=event, outcome=outcome, reason=reason, **extra
        )

    async def audit_records(
        self, platform: str, start: int = 0, stop: int | None = None
    ) -> list[str]:
        return await self._log.audit_records(platform, start, stop)

    async def ping(self) -> None:
        await self._eph.ping()
        await self._db.ping()

    async def aclose(self) -> None:
        await self._eph.aclose()
        if self._owns_database:
            await self._db.aclose()
