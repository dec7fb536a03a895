"""The durable half of the store in PostgreSQL (issue 10; docs/design/system-of-record.md).

Tables and building blocks are migration 0002 (`attestations`, `status_heads`,
`status_tokens`, `subject_accounts`, `guardian_links`, `account_locks`; `xacthuc_audit`
renders a record exactly as `audit_record()` does and appends it with its gap-free index,
`xacthuc_next_status_idx`, `xacthuc_attest`, `xacthuc_revoke`, `xacthuc_linked_child`).
Each state-changing operation is one plpgsql function, called in one round trip: its checks,
its writes and its audit records commit together or not at all, and it is idempotent under
the operation's natural key (`issued_by`: the challenge id, the ID attempt id, the link
operation), so the step can run again after a crash or a lost reply.

This module holds what every operation of the durable half shares: the connection to the
database, the status-index settings and the conversions of rows into domain records.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.locks import AccountLock
from xacthuc.domain.records import AttestationRecord
from xacthuc.domain.status_index import INDEX_BLOCK, KEY_HEX_CHARS, check_block


def time_j(now: float) -> str:
    """The JSON text of a record's time (`xacthuc_audit`'s `p_time_j`), as audit_record()
    writes it."""
    return json.dumps(rfc3339(now))


def attestation_record(row: Mapping[str, Any]) -> AttestationRecord:
    """A row of `attestations` (or a composite of its type) as the domain record."""
    return AttestationRecord(
        account_id=row["account"],
        method=row["method"],
        token_id=row["token_id"],
        verified_at=row["verified_at"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        status=row["status"],
        guardian_managed=row["guardian_managed"],
        commercial_livestream=row["commercial_livestream"],
        age_band=row["age_band"],
        guardian_ref=row["guardian_ref"],
        aged_out_at=row["aged_out_at"],
        link_id=row["link_id"],
        status_idx=row["status_idx"],
        revoked_at=row["revoked_at"] if row["status"] == "revoked" else None,
        id_type=row["id_type"],
    )


def lock_record(row: Mapping[str, Any]) -> AccountLock:
    """A row of `account_locks` as the domain record."""
    return AccountLock(
        account_id=row["account"],
        kind=row["kind"],
        locked_at=row["locked_at"],
        until=row["lock_until"],
        reason=row["reason"],
        request_reference=row["request_reference"],
        temporary_locks=row["temporary_locks"],
        ended_at=row["ended_at"],
        unlock_reason=row["unlock_reason"],
    )


class PgStateBase:
    """What the durable operations share: the database and the status-index settings.

    `status_block` and `status_keys` (a source of random index keys, drawn for a platform's
    first allocation only) are fixed for the life of the store; tests pass their own to make
    indices predictable, as with MemoryStore."""

    def __init__(
        self,
        database: Database,
        *,
        status_block: int = INDEX_BLOCK,
        status_keys: Callable[[], str] = lambda: secrets.token_hex(KEY_HEX_CHARS // 2),
    ) -> None:
        self._db = database
        self._status_block = check_block(status_block)
        self._status_keys = status_keys
