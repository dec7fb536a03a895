"""The authorization decision (Decree 147 R4-R7, DOMAIN.md P6-P7) as one table of data.

May this account do this action now? The server's Authorize RPC and the SDK's offline
`authorize_offline` both call `decide`, so the two cannot disagree: they differ only in where
the `AttestationState` comes from (the store, or a verified token plus the status list).

The table is read top to bottom and the first row whose condition holds decides. The order
is the policy:

| # | condition                                        | actions                 | allow | reason                                     | rule |
|---|--------------------------------------------------|-------------------------|-------|--------------------------------------------|------|
| 1 | any                                              | read                    | yes   | READ_UNRESTRICTED                          | R5   |
| 2 | no attestation                                   | all but read            | no    | NOT_AUTHENTICATED                          | R6   |
| 3 | attestation revoked                              | all but read            | no    | ATTESTATION_REVOKED                        | R5   |
| 4 | account locked                                   | all but read            | no    | ACCOUNT_LOCKED                             | R7   |
| 5 | guardian-managed and the child has turned 16     | all but read            | no    | AGED_OUT                                   | P6   |
| 6 | attestation expired                              | all but read            | no    | ATTESTATION_EXPIRED                        | R5   |
| 7 | guardian-managed                                 | commercial_livestream   | no    | GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM  | P7   |
| 8 | not personal_id, or no commercial_livestream     | commercial_livestream   | no    | PERSONAL_ID_REQUIRED                       | R4   |
| 9 | any                                              | all but read            | yes   | AUTHENTICATED                              | R5   |

Why this order: reading is never restricted (R5), whatever the account's state. Row 2 cites
R6 because R6 is what now blocks every unauthenticated account from the R5 actions (the
transition period ended 24 Mar 2025). Revocation (3) is checked before time so a revoked
token never reads as merely expired. A lock (4, R7) comes after revocation because offline
the status list holds one value per token, and a revoked token's is "invalid" for good; it
comes before time because verifying again does not lift a lock, so EXPIRED or AGED_OUT would
send the platform the wrong way. A lock is not a row for an account without an attestation
(row 2 decides): offline there is no token to carry it, and the online answer must be the
same. Aging out (5) comes before expiry (6) because a child's
token expires at the 16th birthday: both hold, and AGED_OUT tells the platform what to do
(verify the user in their own name), where EXPIRED would only say "verify again". For
commercial livestream, the guardian rule (7) comes before the ID rule (8): a child cannot
fix the refusal with an ID check, so PERSONAL_ID_REQUIRED would mislead.

Times are seconds since the epoch; `now` is passed in (the injected clock). An attestation
is expired from its `expires_at` on (no leeway here: the decision is exact; token
verification has its own leeway for clock skew).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    READ = "read"
    POST = "post"
    COMMENT = "comment"
    SHARE = "share"
    LIVESTREAM = "livestream"
    COMMERCIAL_LIVESTREAM = "commercial_livestream"


ACTIONS: tuple[Action, ...] = tuple(Action)

PERSONAL_ID = "personal_id"


@dataclass(frozen=True, slots=True)
class AttestationState:
    """What is known about an account's attestation; `None` in `decide` means there is none.

    `aged_out_at` is when a guardian-managed child turns 16 (the server knows the birthday;
    offline it is the token's `exp` when the token says its expiry is that birthday), or
    `None` when it does not apply.
    """

    method: str  # "phone_otp" or "personal_id"
    expires_at: float
    guardian_managed: bool = False
    commercial_livestream: bool = False
    revoked: bool = False
    aged_out_at: float | None = None
    # R7: the account is locked now (online: a lock that holds; offline: the token's status
    # in the status list is SUSPENDED).
    locked: bool = False

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def aged_out(self, now: float) -> bool:
        return self.guardian_managed and self.aged_out_at is not None and now >= self.aged_out_at


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str


_Condition = Callable[["AttestationState | None", float], bool]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: when `condition` holds for an action in `actions`, decide."""

    condition: str  # the row in words, as in the module docstring
    actions: frozenset[Action]
    holds: _Condition
    decision: Decision


_ALL_BUT_READ = frozenset(ACTIONS) - {Action.READ}
_COMMERCIAL = frozenset({Action.COMMERCIAL_LIVESTREAM})


def _present(s: AttestationState | None) -> AttestationState:
    assert s is not None  # rows after "no attestation" only ever see a state
    return s


TABLE: tuple[Row, ...] = (
    Row(
        "any",
        frozenset({Action.READ}),
        lambda s, now: True,
        Decision(True, "READ_UNRESTRICTED", "R5"),
    ),
    Row(
        "no attestation",
        _ALL_BUT_READ,
        lambda s, now: s is None,
        Decision(False, "NOT_AUTHENTICATED", "R6"),
    ),
    Row(
        "attestation revoked",
        _ALL_BUT_READ,
        lambda s, now: _present(s).revoked,
        Decision(False, "ATTESTATION_REVOKED", "R5"),
    ),
    Row(
        "account locked",
        _ALL_BUT_READ,
        lambda s, now: _present(s).locked,
        Decision(False, "ACCOUNT_LOCKED", "R7"),
    ),
    Row(
        "guardian-managed and the child has turned 16",
        _ALL_BUT_READ,
        lambda s, now: _present(s).aged_out(now),
        Decision(False, "AGED_OUT", "P6"),
    ),
    Row(
        "attestation expired",
        _ALL_BUT_READ,
        lambda s, now: _present(s).expired(now),
        Decision(False, "ATTESTATION_EXPIRED", "R5"),
    ),
    Row(
        "guardian-managed",
        _COMMERCIAL,
        lambda s, now: _present(s).guardian_managed,
        Decision(False, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM", "P7"),
    ),
    Row(
        "not personal_id, or no commercial_livestream",
        _COMMERCIAL,
        lambda s, now: _present(s).method != PERSONAL_ID or not _present(s).commercial_livestream,
        Decision(False, "PERSONAL_ID_REQUIRED", "R4"),
    ),
    Row(
        "any",
        _ALL_BUT_READ,
        lambda s, now: True,
        Decision(True, "AUTHENTICATED", "R5"),
    ),
)

REASONS: frozenset[str] = frozenset(row.decision.reason for row in TABLE)


def parse_action(action: str | Action) -> Action:
    """The `Action` for its name; ValueError for anything else (the caller's argument error)."""
    try:
        return Action(action)
    except ValueError:
        raise ValueError(
            f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}"
        ) from None


def decide(state: AttestationState | None, action: str | Action, now: float) -> Decision:
    """The first row of `TABLE` that applies to `action` and holds for `state` at `now`."""
    act = parse_action(action)
    for row in TABLE:
        if act in row.actions and row.holds(state, now):
            return row.decision
    raise AssertionError(f"the decision table has no row for {act}")  # the last row is total
