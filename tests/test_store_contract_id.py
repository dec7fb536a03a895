"""Store contract for personal-ID attempts (issue 3: no oracle, P8, R4), memory and Redis alike."""

from __future__ import annotations

import pytest

from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import (
    AccountNotAuthenticated,
    IdAttemptsExceeded,
    PersonalIdAccountLimit,
    PersonalIdNotMatched,
    RegistryUnavailable,
)
from xacthuc.domain.records import (
    AttestationRecord,
    IdAttempt,
    Limits,
    PendingAttestation,
    audit_record,
)
from xacthuc.ports.store import Store

from .conftest import memory_store, pair_store
from .test_store_contract import LIMITS, NOW, PLATFORM, check, sent
from .test_store_contract import new as new_challenge

NUMBER = "id_" + "a" * 32
NUMBER_2 = "id_" + "b" * 32
CLIENT = "ip_" + "c" * 32
YEAR = 365 * 86400


def attempt(
    n: int = 1,
    *,
    account: str = "acc-1",
    subject: str = NUMBER,
    now: float = NOW,
    purpose: str = "no_vietnamese_mobile",
) -> IdAttempt:
    return IdAttempt(
        platform=PLATFORM,
        attempt_id=f"at-{n}",
        account_id=account,
        subject=subject,
        client=CLIENT,
        purpose=purpose,
        now=now,
    )


def pending(now: float = NOW, token: str = "tok-id") -> PendingAttestation:
    return PendingAttestation(
        token_id=token, issued_at=now, expires_at=now + YEAR, method="personal_id"
    )


async def verify(
    store: Store, a: IdAttempt, answer: str, limits: Limits = LIMITS
) -> AttestationRecord:
    await store.begin_id_check(a, limits)
    return await store.finish_id_check(a, answer, pending(a.now, f"tok-{a.attempt_id}"), limits)


def id_rec(
    seq: int,
    event: str,
    outcome: str,
    reason: str = "",
    *,
    n: int = 1,
    now: float = NOW,
    purpose: str = "no_vietnamese_mobile",
    **extra: str | int,
) -> str:
    return audit_record(
        seq=seq,
        now=now,
        platform=PLATFORM,
        account="acc-1",
        event=event,
        outcome=outcome,
        reason=reason,
        attempt=f"at-{n}",
        personal_id=NUMBER,
        client=CLIENT,
        purpose=purpose,
        **extra,
    )


async def test_a_match_attests_by_personal_id_and_records_the_declaration(store: Store) -> None:
    """A match writes a personal-ID attestation allowed to livestream; the purpose is audited."""
    record = await verify(store, attempt(), "match")

    assert ("personal_id", True, False) == (
        record.method,
        record.commercial_livestream,
        record.guardian_managed,
    )
    assert record == await store.get_attestation(PLATFORM, "acc-1")
    assert [
        id_rec(0, "id_check_started", "ok"),
        id_rec(1, "id_check", "ok", refunded="personal_id"),
        audit_record(
            seq=2,
            now=NOW,
            platform=PLATFORM,
            account="acc-1",
            event="attestation_issued",
            outcome="ok",
            token_id="tok-at-1",
            method="personal_id",
            expires=int(NOW + YEAR),
            commercial_livestream=1,
        ),
    ] == await store.audit_records(PLATFORM)


async def test_no_match_and_unknown_number_are_the_same_refusal(store: Store) -> None:
    """A non-match is PERSONAL_ID_NOT_MATCHED whatever the reason; nothing is attested."""
    with pytest.raises(PersonalIdNotMatched):
        await verify(store, attempt(), "no_match")

    assert None is await store.get_attestation(PLATFORM, "acc-1")
    assert (
        id_rec(1, "id_check", "failed", "PERSONAL_ID_NOT_MATCHED")
        == (await store.audit_records(PLATFORM))[1]
    )


async def test_unavailable_registry_attests_nothing_and_counts_no_failure(store: Store) -> None:
    """REGISTRY_UNAVAILABLE leaves no attestation and does not move towards a lock."""
    limits = Limits(id_max_failures=1)
    with pytest.raises(RegistryUnavailable):
        await verify(store, attempt(1), "unavailable", limits)
    await verify(store, attempt(2, now=NOW + 1), "match", limits)

    stored = await store.get_attestation(PLATFORM, "acc-1")
    assert stored is not None
    assert "personal_id" == stored.method


async def test_five_non_matches_lock_account_and_number_with_doubling_back_off(
    store: Store,
) -> None:
    """The 5th consecutive non-match locks for 15 min; after it, the next lock lasts 30 min."""
    for n in range(1, 5):
        with pytest.raises(PersonalIdNotMatched):
            await verify(store, attempt(n, now=NOW + n), "no_match")
    with pytest.raises(IdAttemptsExceeded) as locked:
        await verify(store, attempt(5, now=NOW + 5), "no_match")
    assert (900, {"scope": "account", "retry_after_seconds": "900"}) == (
        locked.value.retry_after,
        locked.value.metadata,
    )
    with pytest.raises(IdAttemptsExceeded) as still:
        await store.begin_id_check(attempt(6, now=NOW + 800, account="acc-2"), LIMITS)
    assert ("personal_id", 105) == (still.value.metadata["scope"], still.value.retry_after)

    later = NOW + 905 + 3600
    for n in range(7, 11):
        with pytest.raises(PersonalIdNotMatched):
            await verify(store, attempt(n, now=later + n), "no_match")
    with pytest.raises(IdAttemptsExceeded) as second:
        await verify(store, attempt(11, now=later + 11), "no_match")
    assert 1800 == second.value.retry_after


async def test_a_match_resets_the_failure_count(store: Store) -> None:
    """After a match, four more non-matches do not lock."""
    for n in range(1, 5):
        with pytest.raises(PersonalIdNotMatched):
            await verify(store, attempt(n, now=NOW + n), "no_match")
    await verify(store, attempt(5, now=NOW + 5), "match")
    for n in range(6, 10):
        with pytest.raises(PersonalIdNotMatched):
            await verify(store, attempt(n, now=NOW + n), "no_match")


@pytest.mark.parametrize(("scope", "vary"), [("account", "subject"), ("personal_id", "account")])
async def test_hourly_attempt_budget(store: Store, scope: str, vary: str) -> None:
    """The 11th attempt within an hour for one account (or one number) is refused with retry-after."""
    for n in range(10):
        kw = {"subject": f"id_{n:032d}"} if vary == "subject" else {"account": f"acc-{n}"}
        await store.begin_id_check(attempt(n, now=NOW + n, **kw), LIMITS)
    kw = {"subject": NUMBER_2} if vary == "subject" else {"account": "acc-x"}
    with pytest.raises(IdAttemptsExceeded) as e:
        await store.begin_id_check(attempt(99, now=NOW + 100, **kw), LIMITS)

    assert (scope, 3500) == (e.value.metadata["scope"], e.value.retry_after)
    await store.begin_id_check(attempt(100, now=NOW + 3601, **kw), LIMITS)


async def test_accounts_per_number_are_capped_after_a_match_only(store: Store) -> None:
    """P8: with a cap of 2, a third account's match is refused; a non-match never says so."""
    limits = Limits(max_accounts_per_personal_id=2)
    for n, account in enumerate(("a-1", "a-2"), start=1):
        await verify(store, attempt(n, account=account, now=NOW + n), "match", limits)
    with pytest.raises(PersonalIdNotMatched):
        await verify(store, attempt(3, account="a-3", now=NOW + 3), "no_match", limits)
    with pytest.raises(PersonalIdAccountLimit):
        await verify(store, attempt(4, account="a-3", now=NOW + 4), "match", limits)
    await verify(store, attempt(5, account="a-1", now=NOW + 5), "match", limits)


async def test_livestream_upgrade_needs_an_authenticated_account(store: Store) -> None:
    """R4: the upgrade is refused without an attestation and turns a phone one into personal ID."""
    with pytest.raises(AccountNotAuthenticated):
        await store.begin_id_check(attempt(1, purpose="commercial_livestream"), LIMITS)
    await sent(store, new_challenge(now=NOW + 1))
    phone = await store.check_code(check(now=NOW + 2), LIMITS)
    assert (phone.method, phone.commercial_livestream) == ("phone_otp", False)

    upgraded = await verify(
        store, attempt(2, now=NOW + 3, purpose="commercial_livestream"), "match"
    )

    assert ("personal_id", True) == (upgraded.method, upgraded.commercial_livestream)


async def test_moving_from_phone_to_personal_id_frees_the_phone_slot(store: Store) -> None:
    """P8 counts an account once: after its ID attestation its phone slot is free again."""
    limits = Limits(max_accounts_per_phone=1)
    await sent(store, new_challenge(now=NOW), limits)
    await store.check_code(check(now=NOW + 1), limits)
    await verify(store, attempt(1, now=NOW + 2), "match", limits)

    await sent(store, new_challenge("ch-2", now=NOW + 100, account="acc-2"), limits)
    assert (
        "acc-2"
        == (
            await store.check_code(check("ch-2", now=NOW + 101, account="acc-2"), limits)
        ).account_id
    )


async def test_both_stores_write_the_same_bytes(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    """The same history gives byte-identical audit logs in memory and in the pair."""
    stores: list[Store] = [memory_store(), pair_store(redis_url, redis_namespace, database)]
    logs = []
    for s in stores:
        await sent(s, new_challenge(now=NOW))
        await s.check_code(check(now=NOW + 1), LIMITS)
        with pytest.raises(PersonalIdNotMatched):
            await verify(s, attempt(1, now=NOW + 2, purpose="commercial_livestream"), "no_match")
        await verify(s, attempt(2, now=NOW + 3, purpose="commercial_livestream"), "match")
        with pytest.raises(RegistryUnavailable):
            await verify(s, attempt(3, now=NOW + 4), "unavailable")
        logs.append(await s.audit_records(PLATFORM))
        await s.aclose()
    assert 11 == len(logs[0])
    assert logs[0] == logs[1]


# --- what an attempt costs (issue 13) ------------------------------------------------------


async def test_an_attempt_without_a_registry_answer_costs_nothing(store: Store) -> None:
    """Defect 13.2: unavailable attempts are refunded in both hourly windows, audited as such."""
    limits = Limits(id_attempts_per_account_hour=2, id_attempts_per_number_hour=2)
    for n in range(1, 6):
        with pytest.raises(RegistryUnavailable):
            await verify(store, attempt(n, now=NOW + n), "unavailable", limits)

    record = await verify(store, attempt(6, now=NOW + 6), "match", limits)

    assert "personal_id" == record.method
    records = await store.audit_records(PLATFORM)
    assert [
        id_rec(0, "id_check_started", "ok", now=NOW + 1),
        id_rec(
            1,
            "id_check",
            "failed",
            "REGISTRY_UNAVAILABLE",
            now=NOW + 1,
            refunded="account,personal_id",
        ),
    ] == records[:2]
    assert 13 == len(records)  # 5 x (started, failed) + started, ok, attestation_issued


async def test_the_budget_still_bounds_attempts_in_flight(store: Store) -> None:
    """Reserve, then release: while two attempts wait for the registry a third is refused;
    once one of them ends unavailable, its place is free again."""
    limits = Limits(id_attempts_per_account_hour=2)
    first, second = attempt(1, now=NOW + 1), attempt(2, now=NOW + 2)
    await store.begin_id_check(first, limits)
    await store.begin_id_check(second, limits)
    with pytest.raises(IdAttemptsExceeded) as refused:
        await store.begin_id_check(attempt(3, now=NOW + 3), limits)
    assert "account" == refused.value.metadata["scope"]

    with pytest.raises(RegistryUnavailable):
        await store.finish_id_check(first, "unavailable", pending(NOW + 4), limits)
    await store.begin_id_check(attempt(4, now=NOW + 5), limits)
    with pytest.raises(IdAttemptsExceeded):
        await store.begin_id_check(attempt(5, now=NOW + 6), limits)


async def test_a_non_match_still_costs_an_attempt(store: Store) -> None:
    """Only a missing answer is refunded: non-matches fill the hourly window as before."""
    limits = Limits(id_attempts_per_account_hour=2, id_max_failures=10)
    for n in range(1, 3):
        with pytest.raises(PersonalIdNotMatched):
            await verify(store, attempt(n, now=NOW + n), "no_match", limits)
    with pytest.raises(IdAttemptsExceeded):
        await store.begin_id_check(attempt(3, now=NOW + 3), limits)


async def test_the_eleventh_account_within_the_hour_meets_the_cap_not_a_budget(
    store: Store,
) -> None:
    """Defect 13.4: with the default limits ten accounts verify one number within the hour;
    the eleventh gets PERSONAL_ID_ACCOUNT_LIMIT with no retry-after (waiting cannot help)."""
    for n in range(10):
        await verify(store, attempt(n, account=f"a-{n}", now=NOW + n), "match")

    with pytest.raises(PersonalIdAccountLimit) as capped:
        await verify(store, attempt(10, account="a-10", now=NOW + 10), "match")

    assert (None, {}) == (capped.value.retry_after, capped.value.metadata)
    # Asking again gives the same truthful answer.
    with pytest.raises(PersonalIdAccountLimit):
        await verify(store, attempt(11, account="a-11", now=NOW + 11), "match")


async def test_a_capped_number_and_an_unknown_one_answer_a_non_match_alike(store: Store) -> None:
    """No oracle: after ten accounts verified NUMBER, a non-match on it looks exactly like a
    non-match on a number nobody has (and a fresh account's budget is untouched by either)."""
    for n in range(10):
        await verify(store, attempt(n, account=f"a-{n}", now=NOW + n), "match")

    refusals = []
    for n, subject in ((10, NUMBER), (11, NUMBER_2)):
        with pytest.raises(PersonalIdNotMatched) as e:
            await verify(
                store, attempt(n, account=f"probe-{n}", subject=subject, now=NOW + n), "no_match"
            )
        refusals.append(
            (
                type(e.value),
                e.value.code,
                e.value.reason,
                e.value.message,
                e.value.metadata,
                e.value.retry_after,
            )
        )
    assert refusals[0] == refusals[1]


# --- the kind of number (R9) ----------------------------------------------------------------


async def test_the_kind_of_number_is_kept_and_audited(store: Store) -> None:
    """A foreigner's attempt says `id_type` in every record; the attestation keeps it."""
    a = IdAttempt(
        platform=PLATFORM,
        attempt_id="at-1",
        account_id="acc-1",
        subject=NUMBER,
        client=CLIENT,
        purpose="no_vietnamese_mobile",
        now=NOW,
        id_type="foreigner",
    )
    await store.begin_id_check(a, LIMITS)
    given = PendingAttestation(
        token_id="tok-f",
        issued_at=NOW,
        expires_at=NOW + YEAR,
        method="personal_id",
        age_band="adult",
        id_type="foreigner",
    )
    record = await store.finish_id_check(a, "match", given, LIMITS)

    assert "foreigner" == record.id_type
    assert record == await store.get_attestation(PLATFORM, "acc-1")
    assert [
        id_rec(0, "id_check_started", "ok", id_type="foreigner"),
        id_rec(1, "id_check", "ok", id_type="foreigner", refunded="personal_id"),
        audit_record(
            seq=2,
            now=NOW,
            platform=PLATFORM,
            account="acc-1",
            event="attestation_issued",
            outcome="ok",
            token_id="tok-f",
            method="personal_id",
            expires=int(NOW + YEAR),
            commercial_livestream=1,
            age_band="adult",
            id_type="foreigner",
        ),
    ] == await store.audit_records(PLATFORM)
