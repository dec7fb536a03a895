"""State of the embedded store and what every part of it shares.

`MemoryStore` (memory.py) is assembled from one part per domain (phone, identity,
guardian), each a mixin over `MemoryBase`; each method runs to completion without
awaiting, so on one event loop it is atomic. This is the reference implementation of the
store contract; the pair store (`pair.py`) mirrors it.
"""

from __future__ import annotations

import bisect
import json
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from xacthuc.domain.clock import rfc3339
from xacthuc.domain.locks import AccountLock
from xacthuc.domain.records import AttestationRecord, audit_record
from xacthuc.domain.status_index import (
    INDEX_BLOCK,
    KEY_HEX_CHARS,
    check_block,
    first_counter,
    permuted_index,
)

_WINDOWS = {"phone_15m": 900, "phone_day": 86_400, "platform_hour": 3600, "client_ip_hour": 3600}


@dataclass
class _Challenge:
    account_id: str
    phone: str
    client: str
    mac: str
    idempotency_key: str
    created: float
    expires_at: float
    resend_not_before: float
    attempts: int = 0
    state: str = "sending"  # sending -> pending -> consumed


@dataclass
class _Phone:
    fails: int = 0
    lock_level: int = 0
    locked_until: float = 0.0
    last_send: float = float("-inf")
    sends: list[tuple[float, str]] = field(default_factory=list)  # (time, challenge id)


@dataclass
class _Guard:
    """Consecutive failures and lock of one account or personal-ID number (ID attempts)."""

    fails: int = 0
    lock_level: int = 0
    locked_until: float = 0.0
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (time, attempt id)


@dataclass
class _Link:
    """A guardian link (P6); kept after it ends, with `ended` and `end_reason` set."""

    link_id: str
    child: str
    guardian_account: str
    guardian: str  # the guardian's pseudonym (ph_/id_)
    relationship: str
    method: str
    child_consent: bool
    created: float
    renewed: float
    aged_out_at: float
    ended: float | None = None
    end_reason: str = ""


@dataclass
class _Platform:
    challenges: dict[str, _Challenge] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    phones: dict[str, _Phone] = field(default_factory=lambda: defaultdict(_Phone))
    platform_sends: list[tuple[float, str]] = field(default_factory=list)
    client_sends: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    subject_accounts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # P8
    account_guards: dict[str, _Guard] = field(default_factory=lambda: defaultdict(_Guard))
    number_guards: dict[str, _Guard] = field(default_factory=lambda: defaultdict(_Guard))
    attestations: dict[str, tuple[AttestationRecord, str]] = field(
        default_factory=dict
    )  # -> (record, phone)
    audit: list[str] = field(default_factory=list)
    # (len(audit), the "time" of its last record): not parsed back out of the record.
    audit_time: tuple[int, str] = (0, "")
    # Guardian links (P6): every link, the active one of each child, the children of each
    # guardian pseudonym with an active link, and the aging-out index (child -> 16th birthday).
    links: dict[str, _Link] = field(default_factory=dict)
    child_links: dict[str, str] = field(default_factory=dict)
    guardian_children: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    aging: dict[str, float] = field(default_factory=dict)
    # The ids of the link calls that took effect, each with its request digest (a call retried
    # under its id with that digest returns what it did: PostgreSQL's status_tokens.issued_by
    # 'link:<id>' and request_digest, migration 0008).
    link_calls: dict[str, str] = field(default_factory=dict)
    # The status list (issue 5): the token counter, the index key and block size (set at the
    # first allocation, issue 13), and the bitmap in Redis SETBIT bit order.
    status_next: int = 0
    status_key: str = ""
    status_block: int = 0
    status_bits: bytearray = field(default_factory=bytearray)
    # Account locks (R7): each account's latest lock, and every status index issued to each
    # account (a lock marks all of them in the published list).
    locks: dict[str, AccountLock] = field(default_factory=dict)
    account_idxs: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    # What issued each token (a challenge id, an ID attempt id) -> its account, and what
    # issued each account's current attestation: an issuing step retried returns what it
    # issued (PostgreSQL's status_tokens.issued_by and attestations.issued_by).
    issued: dict[str, str] = field(default_factory=dict)
    issued_by: dict[str, str] = field(default_factory=dict)


_OVER_16 = frozenset({"adult", "16_17"})  # age bands the registry proved


def _active(record: AttestationRecord, now: float) -> bool:
    return record.status == "active" and record.expires_at > now


def _linked_child(p: _Platform, account_id: str, now: float) -> bool:
    """The account has an active guardian link and the child has not turned 16 (R1)."""
    aged_out_at = p.aging.get(account_id)
    return aged_out_at is not None and aged_out_at > now


def _issued(p: _Platform, issued_by: str, account_id: str) -> AttestationRecord | None:
    """The account's attestation when `issued_by` issued it and it is still active (an
    issuing step retried returns it)."""
    current = p.attestations.get(account_id)
    if current is None or p.issued_by.get(account_id) != issued_by:
        return None
    return current[0] if current[0].status == "active" else None


def _recent(entries: list[tuple[float, str]], now: float, window: float) -> list[tuple[float, str]]:
    return [e for e in entries if e[0] > now - window]


def _time(entry: tuple[float, str]) -> float:
    return entry[0]


def _in_window(entries: list[tuple[float, str]], now: float, window: float) -> int:
    """How many entries of a time-sorted list lie in the window (time > now - window); they
    are its last ones. A search, not a pass: a platform's hourly list holds up to its limit."""
    return len(entries) - bisect.bisect_right(entries, now - window, key=_time)


def _add_in_window(
    entries: list[tuple[float, str]], entry: tuple[float, str], now: float, window: float
) -> None:
    """Drop a time-sorted list's entries that left the window and put `entry` in its place
    by time (the wall clock can step back: append order is not time order)."""
    del entries[: bisect.bisect_right(entries, now - window, key=_time)]
    bisect.insort_right(entries, entry, key=_time)


class MemoryBase:
    def __init__(
        self,
        *,
        status_block: int = INDEX_BLOCK,
        status_keys: Callable[[], str] = lambda: secrets.token_hex(KEY_HEX_CHARS // 2),
    ) -> None:
        """`status_block` and `status_keys` (a source of random index keys) are fixed for the
        life of the store; tests pass their own to make indices predictable."""
        self._platforms: dict[str, _Platform] = defaultdict(_Platform)
        self._starts = 0
        self._status_block = check_block(status_block)
        self._status_keys = status_keys

    def _audit(
        self,
        p: _Platform,
        platform: str,
        now: float,
        *,
        account: str,
        event: str,
        outcome: str,
        reason: str = "",
        **fields: str | int,
    ) -> None:
        record = audit_record(
            seq=len(p.audit),
            now=now,
            platform=platform,
            account=account,
            event=event,
            outcome=outcome,
            reason=reason,
            **fields,
        )
        # Never before the previous record's time, so times in a log never go backwards (a
        # step that read the clock before another was appended, another replica's clock);
        # RFC 3339 UTC with milliseconds compares as text. PostgreSQL's append mirrors it.
        time = rfc3339(now)
        if not p.audit:
            last = time
        elif p.audit_time[0] == len(p.audit):
            last = p.audit_time[1]
        else:  # the list was changed behind `_audit`'s back (tests tamper with it)
            last = json.loads(p.audit[-1])["time"]
        if last > time:
            record = record.replace(f'"time":"{time}"', f'"time":"{last}"', 1)
        p.audit.append(record)
        p.audit_time = (len(p.audit), max(last, time))

    def _attest(
        self, p: _Platform, record: AttestationRecord, subject: str, issued_by: str = ""
    ) -> None:
        """Make `record` the account's attestation, moving its P8 slot to `subject` (none
        when `subject` is "": a guardian-managed child takes no slot of the guardian's),
        issued by the operation `issued_by` (a challenge id, an ID attempt id)."""
        p.issued_by[record.account_id] = issued_by
        if issued_by:
            p.issued[issued_by] = record.account_id
        previous = p.attestations.get(record.account_id)
        if previous is not None and previous[1] != subject:
            p.subject_accounts[previous[1]].discard(record.account_id)
        if subject:
            p.subject_accounts[subject].add(record.account_id)
        p.attestations[record.account_id] = (record, subject)
        if record.status_idx >= 0:
            p.account_idxs[record.account_id].add(record.status_idx)

    def _next_status_idx(self, p: _Platform) -> int:
        """The platform's next token's index (status_index.py): pseudorandom within its block,
        never one handed out before. The first allocation fixes the platform's key and block
        size (a store that handed out sequential indices before goes on at the next whole
        block); opening a block grows the bitmap to cover all of it with zero bits, so its
        length tells only how many blocks are open."""
        if not p.status_key:
            p.status_key = self._status_keys()
            p.status_block = self._status_block
            p.status_next = first_counter(p.status_next, p.status_block)
        counter = p.status_next
        p.status_next += 1
        block = p.status_block
        need = (counter // block + 1) * block // 8
        if len(p.status_bits) < need:
            p.status_bits.extend(bytes(need - len(p.status_bits)))
        return permuted_index(p.status_key, counter, block)

    @staticmethod
    def _set_status_bit(p: _Platform, idx: int) -> None:
        """Redis SETBIT order: index 0 is the most significant bit of byte 0."""
        if idx < 0:
            return
        byte = idx // 8
        if len(p.status_bits) <= byte:
            p.status_bits.extend(bytes(byte + 1 - len(p.status_bits)))
        p.status_bits[byte] |= 0x80 >> (idx % 8)

    def _revoke(
        self, p: _Platform, platform: str, now: float, record: AttestationRecord, reason: str
    ) -> AttestationRecord:
        """Set the status of `record` (the account's current one) to revoked, its bit, audit."""
        revoked = replace(record, status="revoked", revoked_at=now)
        p.attestations[record.account_id] = (revoked, p.attestations[record.account_id][1])
        self._set_status_bit(p, record.status_idx)
        self._audit(
            p,
            platform,
            now,
            account=record.account_id,
            event="attestation_revoked",
            outcome="ok",
            reason=reason,
            token_id=record.token_id,
            status_idx=record.status_idx if record.status_idx >= 0 else "",
        )
        return revoked
