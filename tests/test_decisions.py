"""The authorization decision table (R4-R7, P6, P7): every row, its order, and its data."""

from __future__ import annotations

import itertools

import pytest

from xacthuc.domain.decisions import (
    ACTIONS,
    REASONS,
    TABLE,
    Action,
    AttestationState,
    Decision,
    decide,
)

NOW = 1_800_000_000.0
DAY = 86_400.0


def state(
    *,
    method: str = "phone_otp",
    expires_at: float = NOW + 30 * DAY,
    guardian_managed: bool = False,
    commercial_livestream: bool = False,
    revoked: bool = False,
    aged_out_at: float | None = None,
    locked: bool = False,
) -> AttestationState:
    return AttestationState(
        method=method,
        expires_at=expires_at,
        guardian_managed=guardian_managed,
        commercial_livestream=commercial_livestream,
        revoked=revoked,
        aged_out_at=aged_out_at,
        locked=locked,
    )


PHONE = state()
ID_COMMERCIAL = state(method="personal_id", commercial_livestream=True)
CHILD = state(guardian_managed=True, aged_out_at=NOW + 100 * DAY, expires_at=NOW + 30 * DAY)
NON_READ = [a for a in ACTIONS if a is not Action.READ]
ORDINARY = [Action.POST, Action.COMMENT, Action.SHARE, Action.LIVESTREAM]


@pytest.mark.parametrize(
    "subject",
    [None, PHONE, state(revoked=True), state(expires_at=NOW - 1), ID_COMMERCIAL],
    ids=["none", "phone", "revoked", "expired", "id"],
)
def test_row1_read_is_always_allowed(subject: AttestationState | None) -> None:
    """Reading is never restricted (R5), whatever the account's state."""
    assert Decision(True, "READ_UNRESTRICTED", "R5") == decide(subject, "read", NOW)


@pytest.mark.parametrize("action", NON_READ)
def test_row2_no_attestation_denies_everything_but_read(action: Action) -> None:
    """An account with no attestation may not post, comment, share or livestream (R6)."""
    assert Decision(False, "NOT_AUTHENTICATED", "R6") == decide(None, action, NOW)


@pytest.mark.parametrize("action", NON_READ)
def test_row3_revoked_denies(action: Action) -> None:
    """A revoked attestation denies every R5 action, even one otherwise fully entitled."""
    subject = state(method="personal_id", commercial_livestream=True, revoked=True)
    assert Decision(False, "ATTESTATION_REVOKED", "R5") == decide(subject, action, NOW)


@pytest.mark.parametrize("action", NON_READ)
def test_row5_aged_out_child_is_denied(action: Action) -> None:
    """A guardian-managed child past the 16th birthday must verify in their own name (P6)."""
    subject = state(guardian_managed=True, aged_out_at=NOW - 1, expires_at=NOW - 1)
    assert Decision(False, "AGED_OUT", "P6") == decide(subject, action, NOW)


def test_row5_aged_out_starts_exactly_at_the_birthday() -> None:
    """One second before the birthday the child may post; at the birthday they may not."""
    subject = state(guardian_managed=True, aged_out_at=NOW, expires_at=NOW)
    assert (True, False) == (
        decide(subject, "post", NOW - 1).allowed,
        decide(subject, "post", NOW).allowed,
    )


def test_row5_needs_guardian_management() -> None:
    """An aged_out_at on an adult's attestation is ignored: only children age out."""
    subject = state(aged_out_at=NOW - 1, expires_at=NOW + DAY)
    assert Decision(True, "AUTHENTICATED", "R5") == decide(subject, "post", NOW)


@pytest.mark.parametrize("action", NON_READ)
def test_row6_expired_denies(action: Action) -> None:
    """An expired attestation denies every R5 action."""
    subject = state(method="personal_id", commercial_livestream=True, expires_at=NOW)
    assert Decision(False, "ATTESTATION_EXPIRED", "R5") == decide(subject, action, NOW)


def test_row6_child_token_expired_before_the_birthday_is_expired_not_aged_out() -> None:
    """A child's token that lapsed by its ttl, before 16, says EXPIRED."""
    subject = state(guardian_managed=True, aged_out_at=NOW + DAY, expires_at=NOW - 1)
    assert Decision(False, "ATTESTATION_EXPIRED", "R5") == decide(subject, "share", NOW)


def test_row7_guardian_managed_never_livestreams_commercially() -> None:
    """A child may not livestream commercially, even with an ID-based attestation (P7)."""
    subject = state(method="personal_id", commercial_livestream=True, guardian_managed=True)
    expected = Decision(False, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM", "P7")
    assert expected == decide(subject, "commercial_livestream", NOW)


@pytest.mark.parametrize(
    "subject",
    [PHONE, state(commercial_livestream=True), state(method="personal_id")],
    ids=["phone", "phone-with-flag", "id-without-flag"],
)
def test_row8_commercial_livestream_needs_personal_id(subject: AttestationState) -> None:
    """Commercial livestream needs a personal-ID attestation with the entitlement (R4)."""
    expected = Decision(False, "PERSONAL_ID_REQUIRED", "R4")
    assert expected == decide(subject, "commercial_livestream", NOW)


def test_row9_id_attested_adult_may_livestream_commercially() -> None:
    """An adult with a personal-ID attestation and the entitlement may (R4, R5)."""
    expected = Decision(True, "AUTHENTICATED", "R5")
    assert expected == decide(ID_COMMERCIAL, "commercial_livestream", NOW)


@pytest.mark.parametrize("action", ORDINARY)
@pytest.mark.parametrize("subject", [PHONE, ID_COMMERCIAL, CHILD], ids=["phone", "id", "child"])
def test_row9_authenticated_may_act(subject: AttestationState, action: Action) -> None:
    """Any valid attestation, a child's included, allows post, comment, share, livestream."""
    assert Decision(True, "AUTHENTICATED", "R5") == decide(subject, action, NOW)


def test_revoked_wins_over_aged_out_and_expired() -> None:
    """Revocation is reported before time: a revoked token never reads as merely expired."""
    subject = state(guardian_managed=True, revoked=True, aged_out_at=NOW - 9, expires_at=NOW - 9)
    assert "ATTESTATION_REVOKED" == decide(subject, "post", NOW).reason


@pytest.mark.parametrize("action", NON_READ)
def test_locked_account_is_refused_everything_but_read(action: Action) -> None:
    """R7: a lock refuses every action but reading, even to a fully entitled account."""
    subject = state(method="personal_id", commercial_livestream=True, locked=True)
    assert Decision(False, "ACCOUNT_LOCKED", "R7") == decide(subject, action, NOW)
    assert Decision(True, "READ_UNRESTRICTED", "R5") == decide(subject, "read", NOW)


def test_lock_order_after_revocation_before_time() -> None:
    """Revoked wins over locked (one status per token offline); locked wins over aged out
    and expired (verifying again does not lift a lock)."""
    revoked = state(revoked=True, locked=True)
    aged = state(guardian_managed=True, aged_out_at=NOW - 1, expires_at=NOW - 1, locked=True)
    expired = state(expires_at=NOW - 1, locked=True)
    assert ["ATTESTATION_REVOKED", "ACCOUNT_LOCKED", "ACCOUNT_LOCKED"] == [
        decide(s, "post", NOW).reason for s in (revoked, aged, expired)
    ]


def test_expired_wins_over_the_commercial_rules() -> None:
    """An expired phone attestation asking to livestream commercially says EXPIRED first."""
    assert (
        "ATTESTATION_EXPIRED" == decide(state(expires_at=NOW), "commercial_livestream", NOW).reason
    )


def test_unknown_action_is_an_argument_error() -> None:
    """An action outside the six is refused, never silently allowed or denied."""
    with pytest.raises(ValueError, match="unknown action"):
        decide(PHONE, "delete_account", NOW)


def test_the_table_is_data_every_row_reachable_and_total() -> None:
    """Every row decides some case, and every (state, action) finds a row."""
    facts = itertools.product(
        [None, "phone_otp", "personal_id"],
        [False, True],  # guardian_managed
        [False, True],  # commercial_livestream
        [False, True],  # revoked
        [NOW - 1, NOW + DAY],  # expires_at
        [None, NOW - 1, NOW + DAY],  # aged_out_at
        [False, True],  # locked
    )
    reached: set[Decision] = set()
    for method, guardian, commercial, revoked, exp, aged, locked in facts:
        subject = (
            None
            if method is None
            else AttestationState(method, exp, guardian, commercial, revoked, aged, locked)
        )
        for action in ACTIONS:
            reached.add(decide(subject, action, NOW))
    assert {row.decision for row in TABLE} == reached
    assert 9 == len(TABLE)
    assert {
        "READ_UNRESTRICTED",
        "NOT_AUTHENTICATED",
        "ATTESTATION_REVOKED",
        "ACCOUNT_LOCKED",
        "AGED_OUT",
        "ATTESTATION_EXPIRED",
        "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM",
        "PERSONAL_ID_REQUIRED",
        "AUTHENTICATED",
    } == REASONS


def test_action_names_match_the_issue() -> None:
    """The six actions of issue 5, spelled as on the wire."""
    assert [
        "read",
        "post",
        "comment",
        "share",
        "livestream",
        "commercial_livestream",
    ] == [a.value for a in ACTIONS]
