"""The records the use cases and the stores exchange: values, limits and audit-record text.

Plain data with their own rules (revocation codes, the canonical audit-record form); no I/O.
Values are already pseudonymised: none of them holds a raw phone number, IP address or code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from xacthuc.domain.b64 import b64url_encode
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.errors import FieldInvalid

AUDIT_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Limits:
    """P1-P3 and P8 as numbers (from Settings)."""

    otp_max_attempts: int = 5
    phone_max_failures: int = 10
    phone_lock_base_seconds: int = 900
    phone_lock_max_seconds: int = 86_400
    resend_cooldown_seconds: int = 60
    sends_per_phone_15m: int = 5
    sends_per_phone_day: int = 10
    sends_per_platform_hour: int = 10_000
    sends_per_client_ip_hour: int = 20
    max_accounts_per_phone: int = 10
    # Personal-ID attempts (issue 3 "no oracle"): sliding-hour windows per account and per
    # number, and consecutive non-matches before a lock with the same doubling back-off.
    id_attempts_per_account_hour: int = 10
    id_attempts_per_number_hour: int = 10
    id_max_failures: int = 5
    id_lock_base_seconds: int = 900
    id_lock_max_seconds: int = 86_400
    max_accounts_per_personal_id: int = 10
    # P6: children with an active guardian link per guardian (per guardian pseudonym).
    max_children_per_guardian: int = 5
    # How long a challenge is remembered after it expires (replays, clear NOT_FOUND vs EXPIRED).
    challenge_retention_seconds: int = 3600
    # How long a new challenge belongs to the start that made it while its code is being sent
    # (state "sending"). A start with the same idempotency key meanwhile is START_IN_PROGRESS;
    # after it, a challenge still "sending" is taken for abandoned (that start died between
    # the store step and confirming the send) and the retry starts afresh. The flow gives the
    # gateway at most half of it, the other half is margin for clocks of replicas.
    send_lease_seconds: int = 60

    def lock_seconds(self, level: int) -> int:
        """Growing back-off (P2): base, 2x base, 4x base ... capped."""
        return int(
            min(self.phone_lock_base_seconds * 2 ** max(0, level - 1), self.phone_lock_max_seconds)
        )

    def id_lock_seconds(self, level: int) -> int:
        """The same growing back-off for personal-ID non-matches."""
        return int(
            min(self.id_lock_base_seconds * 2 ** max(0, level - 1), self.id_lock_max_seconds)
        )


# A challenge id is "ch_" and 22 base64url characters (the proto promises that form, at most 25
# characters in all). The first two after "ch_" are its number's tag (`number_tag`: 12 bits of
# a hash of the number's pseudonym), so a store that shards by number (Redis Cluster,
# docs/design/redis-cluster.md) finds a challenge's shard from its id alone. Then, for one
# started with an idempotency key, the key's slot (11 characters, 66 bits of SHA-256 of the
# key) and 9 random characters (54 bits); for one without a key, 20 random ones (120 bits).
# A store keeps a challenge under "ch_" + its key's slot (`challenge_record`), so the challenge
# and its idempotency key are one record (issue 11: Redis memory), found from the challenge id
# and from the key alike. A new challenge under a key replaces the key's earlier one: a check
# of the earlier id then finds no challenge. Ids of the form before the tag ("ch_" + slot + 11
# random) name no record and answer CHALLENGE_NOT_FOUND.
CHALLENGE_PREFIX = "ch_"
TAG_CHARS = 2
SLOT_CHARS = 11
CHALLENGE_CHARS = 22  # after the prefix
CHALLENGE_ID = re.compile(r"ch_[A-Za-z0-9_-]{22}")


def idempotency_slot(idempotency_key: str) -> str:
    """The characters every challenge id started with `idempotency_key` has after its
    number's tag."""
    digest = hashlib.sha256(b"xacthuc idempotency\x1f" + idempotency_key.encode()).digest()
    return b64url_encode(digest)[:SLOT_CHARS]


def number_tag(phone: str) -> str:
    """The tag of a number, from its pseudonym: 12 bits of SHA-1 of it, 2 base64url
    characters (4096 tags). Hashed rather than cut from the pseudonym so that any text a
    store is given (tests pass bare hex) gets a well-spread tag; SHA-1 because Redis' Lua
    has it (redis.sha1hex: the scripts name a number's keys from a stored pseudonym, common.lua
    number_tag). It reveals 12 bits of a keyed hash of the number to whoever sees the
    challenge id: the platform knows the number."""
    digest = hashlib.sha1(b"xacthuc number tag\x1f" + phone.encode()).digest()  # noqa: S324
    return b64url_encode(digest[:2])[:TAG_CHARS]


def challenge_head(phone: str, idempotency_key: str) -> str:
    """What a new challenge id for `phone` begins with: the prefix, the number's tag, and the
    idempotency key's slot when there is a key; random characters make up the rest
    (`CHALLENGE_CHARS` after the prefix)."""
    slot = idempotency_slot(idempotency_key) if idempotency_key else ""
    return CHALLENGE_PREFIX + number_tag(phone) + slot


def challenge_tag(challenge_id: str) -> str | None:
    """The number's tag an id of the service's form carries (None for any other text)."""
    if CHALLENGE_ID.fullmatch(challenge_id):
        return challenge_id[len(CHALLENGE_PREFIX) : len(CHALLENGE_PREFIX) + TAG_CHARS]
    return None


def challenge_record(challenge_id: str) -> tuple[str, str]:
    """The name a store keeps a challenge under, and the rest of its id (kept in the
    record): an id of the service's form is named "ch_" + its characters after the tag up to
    a slot's length (with a key, the key's slot: the challenge and its key are one record),
    its tag and last characters are the rest; any other id is a name of its own."""
    if not CHALLENGE_ID.fullmatch(challenge_id):
        return challenge_id, ""
    start = len(CHALLENGE_PREFIX) + TAG_CHARS
    return (
        CHALLENGE_PREFIX + challenge_id[start : start + SLOT_CHARS],
        challenge_id[len(CHALLENGE_PREFIX) : start] + challenge_id[start + SLOT_CHARS :],
    )


@dataclass(frozen=True, slots=True)
class NewChallenge:
    platform: str
    challenge_id: str
    account_id: str
    phone: str  # pseudonym
    client: str  # pseudonym of the client-IP bucket
    code_mac: str  # hex HMAC of the code under the current key
    idempotency_key: str  # "" when the platform sent none
    now: float
    expires_at: float

    def __post_init__(self) -> None:
        if self.idempotency_key and not self.challenge_id.startswith(
            challenge_head(self.phone, self.idempotency_key)
        ):
            raise ValueError(
                "a challenge started with an idempotency key begins with its number's tag"
                " and the key's slot"
            )
        tag = challenge_tag(self.challenge_id)
        if tag is not None and tag != number_tag(self.phone):
            raise ValueError("a challenge id of the service's form carries its number's tag")


@dataclass(frozen=True, slots=True)
class ChallengeView:
    challenge_id: str
    expires_at: float
    resend_not_before: float
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class PendingAttestation:
    """Claims fixed before the check, so the record and the token agree exactly."""

    token_id: str
    issued_at: float
    expires_at: float
    method: str
    # "" unknown (phone route), "adult" (18+), "16_17", "under_16" (guardian-managed).
    age_band: str = ""
    # Personal-ID route: the kind of number the registry matched, "citizen" or "foreigner"
    # (R9); "" for the other methods.
    id_type: str = ""


@dataclass(frozen=True, slots=True)
class CodeCheck:
    platform: str
    challenge_id: str
    account_id: str
    candidates: tuple[str, ...]  # MACs of the submitted code under every configured key
    now: float
    attestation: PendingAttestation


@dataclass(frozen=True, slots=True)
class AttestationRecord:
    account_id: str
    method: str
    token_id: str
    verified_at: float
    issued_at: float
    expires_at: float
    status: str = "active"  # "active", "revoked" or "aged_out" (a guardian link aged out)
    guardian_managed: bool = False
    commercial_livestream: bool = False
    age_band: str = ""  # "", "adult", "16_17" or "under_16" (see PendingAttestation)
    guardian_ref: str = ""  # guardian-managed: the platform-scoped guardian reference
    aged_out_at: float | None = None  # guardian-managed: the child's 16th birthday (P6)
    link_id: str = ""  # guardian-managed: the link the attestation was issued under
    status_idx: int = -1  # the token's index in the platform's status list; -1 none
    revoked_at: float | None = None  # when status became "revoked"
    id_type: str = ""  # personal-ID: "citizen" or "foreigner" (R9); "" otherwise


@dataclass(frozen=True, slots=True)
class IdAttempt:
    """One personal-ID verification attempt, already validated and pseudonymised."""

    platform: str
    attempt_id: str
    account_id: str
    subject: str  # pseudonym of the personal identification number
    client: str  # pseudonym of the client-IP bucket
    purpose: str  # "no_vietnamese_mobile" or "commercial_livestream"
    now: float
    id_type: str = ""  # "citizen" or "foreigner" (R9), audited with the attempt


@dataclass(frozen=True, slots=True)
class GuardianLink:
    """A child's registration through a guardian (R1, P6), checked in Python so far (ages,
    consents, relationship); the store checks the guardian's attestation and the links.

    `guardian_subject` and `guardian_token_id` are what the guardian's attestation said when
    the service read it (`attestation_subject`): the store refuses (GUARDIAN_NOT_VERIFIED)
    when it no longer says so, so the child's claims always come from the attestation the
    store checked. `attestation.method` is the guardian's method; `attestation.expires_at` is
    at most `aged_out_at`.
    """

    platform: str
    link_id: str
    child_account_id: str
    guardian_account_id: str
    guardian_subject: str  # the pseudonym (ph_/id_) the guardian's attestation verified
    guardian_token_id: str
    guardian_ref: str  # "g_" + 16 hex, platform-scoped (goes into the child's token)
    relationship: str  # "parent" or "legal_guardian"
    child_consent: bool  # the guardian's consent is required, so always given here
    aged_out_at: float  # the child's 16th birthday, local midnight in Vietnam
    now: float
    attestation: PendingAttestation
    # With an idempotency key: `link_id` is derived from the key (the call's id, under which
    # the store recognises a retry) and this is the keyed digest of the call's fields (no
    # date of birth in clear), which a retry must match (IDEMPOTENCY_KEY_REUSED otherwise).
    # "" without a key (the id is random then: no call repeats it).
    request_digest: str = ""


@dataclass(frozen=True, slots=True)
class LinkResult:
    link_id: str
    attestation: AttestationRecord
    renewed: bool  # the same guardian linked the same child again: the link was renewed


@dataclass(frozen=True, slots=True)
class AgingOut:
    """One entry of a platform's aging-out index: a child with an active link."""

    account_id: str
    aged_out_at: float


REASON_CODE = re.compile(r"[a-z0-9_]{1,64}")


def check_reason_code(reason: str, field: str = "reason") -> str:
    """A platform-given reason code (revocation, lock, unlock): 1-64 of a-z 0-9 _ (no
    personal data fits in that); FIELD_INVALID naming `field` otherwise."""
    if not isinstance(reason, str) or not REASON_CODE.fullmatch(reason):
        raise FieldInvalid(field, "must be 1-64 characters of a-z 0-9 _")
    return reason


# The reference of a request a platform answers (an authority's document number for a lock,
# a ticket for an erasure): 1-128 of A-Z a-z 0-9 . _ : / -, so no personal data fits.
REQUEST_REFERENCE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def check_request_reference(reference: str, field: str = "request_reference") -> str:
    """A request reference (REQUEST_REFERENCE); FIELD_INVALID naming `field` otherwise."""
    if not isinstance(reference, str) or not REQUEST_REFERENCE.fullmatch(reference):
        raise FieldInvalid(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : / -")
    return reference


def split_audit_record(record: str) -> tuple[str, str]:
    """The record text before and after its `"seq":N` member, for stores that number records
    atomically where they append them (the keys are sorted, so the split is stable)."""
    head, sep, rest = record.partition(',"seq":')
    if not sep:
        raise ValueError("record has no seq")
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return head + ',"seq":', rest[digits:]


# json.dumps(..., sort_keys=True, separators=(",", ":")) without an encoder built per record.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def audit_record(
    *,
    seq: int,
    now: float,
    platform: str,
    account: str,
    event: str,
    outcome: str,
    reason: str = "",
    **extra: str | int,
) -> str:
    """The canonical audit record of the in-memory store (sorted keys, compact, ASCII)."""
    record: dict[str, str | int] = {
        "v": AUDIT_FORMAT_VERSION,
        "seq": seq,
        "time": rfc3339(now),
        "platform": platform,
        "account": account,
        "event": event,
        "outcome": outcome,
        "reason": reason,
    }
    record.update({k: v for k, v in extra.items() if v != ""})
    return _CANONICAL.encode(record)
