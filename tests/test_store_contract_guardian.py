"""Store contract for guardian links (issue 4: R1, P6, P7) and the revocation primitive (issue 5),
memory and Redis alike, down to the bytes of the audit records."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Awaitable

import pytest

from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.errors import (
    AttestationNotFound,
    ChildAlreadyLinked,
    ChildNotUnder16,
    FieldInvalid,
    GuardianChildLimit,
    GuardianManagedNoCommercialLivestream,
    GuardianNotVerified,
    GuardianRequired,
    GuardianUnder18,
    IdempotencyKeyReused,
    LinkAlreadyEnded,
    LinkNotFound,
    XacthucError,
)
from xacthuc.domain.records import (
    AgingOut,
    AttestationRecord,
    GuardianLink,
    IdAttempt,
    Limits,
    PendingAttestation,
    audit_record,
)
from xacthuc.ports.store import Store

from .conftest import STATUS_BLOCK, memory_store, nth_index, pair_store
from .test_store_contract import LIMITS, NOW, PHONE, PHONE_2, PLATFORM, check, new, phone_n, sent

OTHER = "beta"
DAY = 86_400.0
TTL = DAY
AGED = NOW + 40 * DAY  # the default child's 16th birthday
NUMBER = "id_" + "a" * 32
CLIENT = "ip_" + "c" * 32
REF = "g_0123456789abcdef"


async def phone_guardian(
    store: Store,
    account: str = "mum",
    *,
    phone: str = PHONE,
    now: float = NOW,
    platform: str = PLATFORM,
    limits: Limits = LIMITS,
) -> AttestationRecord:
    """A guardian account verified by phone OTP (its own attestation)."""
    challenge = f"ch-{account}-{now}"
    await sent(
        store, new(challenge, now=now, account=account, phone=phone, platform=platform), limits
    )
    return await store.check_code(
        check(
            challenge, now=now + 1, account=account, platform=platform, token_id=f"tok-{account}"
        ),
        limits,
    )


async def id_guardian(
    store: Store, account: str = "dad", *, band: str = "adult", now: float = NOW
) -> AttestationRecord:
    """A guardian account verified by personal ID, with the age band the registry proved."""
    attempt = IdAttempt(
        PLATFORM, f"at-{account}", account, NUMBER, CLIENT, "no_vietnamese_mobile", now
    )
    await store.begin_id_check(attempt, LIMITS)
    pending = PendingAttestation(f"tok-{account}", now, now + 365 * DAY, "personal_id", band)
    return await store.finish_id_check(attempt, "match", pending, LIMITS)


def link(
    child: str = "kid-1",
    *,
    guardian: str = "mum",
    subject: str = PHONE,
    token: str = "tok-mum",
    now: float = NOW + 10,
    link_id: str | None = None,
    aged_out_at: float = AGED,
    child_consent: bool = True,
    relationship: str = "parent",
    method: str = "phone_otp",
    platform: str = PLATFORM,
    digest: str = "",
) -> GuardianLink:
    return GuardianLink(
        platform=platform,
        link_id=link_id or f"gl-{child}-{now}",
        child_account_id=child,
        guardian_account_id=guardian,
        guardian_subject=subject,
        guardian_token_id=token,
        guardian_ref=REF,
        relationship=relationship,
        child_consent=child_consent,
        aged_out_at=aged_out_at,
        now=now,
        attestation=PendingAttestation(
            token_id=f"tok-{child}-{now}",
            issued_at=now,
            expires_at=min(now + TTL, aged_out_at),
            method=method,
            age_band="under_16",
        ),
        request_digest=digest,
    )


def rec(
    seq: int,
    now: float,
    event: str,
    outcome: str,
    reason: str = "",
    *,
    account: str = "kid-1",
    **extra: str | int,
) -> str:
    return audit_record(
        seq=seq,
        now=now,
        platform=PLATFORM,
        account=account,
        event=event,
        outcome=outcome,
        reason=reason,
        **extra,
    )


async def events(
    store: Store, start: int = 0, platform: str = PLATFORM
) -> list[tuple[str, str, str]]:
    return [
        (r["event"], r["outcome"], r["reason"])
        for r in map(json.loads, await store.audit_records(platform, start))
    ]


def bit(bits: bytes, idx: int) -> int:
    """Bit `idx` in Redis SETBIT order (index 0 = most significant bit of byte 0)."""
    return (bits[idx // 8] >> (7 - idx % 8)) & 1 if idx // 8 < len(bits) else 0


# --- link_guardian ---------------------------------------------------------------------------


async def test_a_link_issues_the_childs_guardian_managed_attestation(store: Store) -> None:
    """The child's record: guardian-managed, under_16, the guardian's method and reference,
    expiry at most the birthday, a fresh status index; no P8 slot of the guardian's."""
    await phone_guardian(store)
    result = await store.link_guardian(link(), LIMITS)

    expected = AttestationRecord(
        account_id="kid-1",
        method="phone_otp",
        token_id=f"tok-kid-1-{NOW + 10}",
        verified_at=NOW + 10,
        issued_at=NOW + 10,
        expires_at=NOW + 10 + TTL,
        guardian_managed=True,
        commercial_livestream=False,
        age_band="under_16",
        guardian_ref=REF,
        aged_out_at=AGED,
        link_id=f"gl-kid-1-{NOW + 10}",
        status_idx=nth_index(1),
    )
    assert (f"gl-kid-1-{NOW + 10}", expected, False) == (
        result.link_id,
        result.attestation,
        result.renewed,
    )
    assert expected == await store.get_attestation(PLATFORM, "kid-1")
    assert (expected, "") == await store.attestation_subject(PLATFORM, "kid-1")
    mum = await store.attestation_subject(PLATFORM, "mum")
    assert mum is not None
    assert ("phone_otp", PHONE) == (mum[0].method, mum[1])


async def test_a_link_is_audited_with_pseudonyms_only(store: Store) -> None:
    """Link created, both consents, the issuance (guardian_managed, age band); no DOB anywhere."""
    await phone_guardian(store)
    assert 4 == len(await store.audit_records(PLATFORM))  # started, sent, check_ok, issued
    await store.link_guardian(link(), LIMITS)
    t, lid = NOW + 10, f"gl-kid-1-{NOW + 10}"

    assert [
        rec(
            4,
            t,
            "guardian_link_created",
            "ok",
            link=lid,
            guardian=PHONE,
            guardian_account="mum",
            relationship="parent",
            method="phone_otp",
        ),
        rec(5, t, "consent_recorded", "ok", link=lid, party="guardian"),
        rec(6, t, "consent_recorded", "ok", link=lid, party="child"),
        rec(
            7,
            t,
            "attestation_issued",
            "ok",
            token_id=f"tok-kid-1-{t}",
            method="phone_otp",
            expires=int(t + TTL),
            guardian_managed=1,
            age_band="under_16",
        ),
    ] == await store.audit_records(PLATFORM, 4)


async def test_the_childs_token_expires_at_the_birthday_when_that_comes_first(store: Store) -> None:
    """expires_at = min(now + TTL, 16th birthday): the store keeps what the service decided."""
    await phone_guardian(store)
    result = await store.link_guardian(link(aged_out_at=NOW + 100), LIMITS)
    assert (NOW + 100, NOW + 100) == (result.attestation.expires_at, result.attestation.aged_out_at)


async def test_a_young_childs_missing_consent_is_not_recorded(store: Store) -> None:
    """Only the consents given are recorded (a child under 7 need not consent)."""
    await phone_guardian(store)
    await store.link_guardian(link(child_consent=False), LIMITS)
    assert [("consent_recorded", "ok", "")] == [
        e for e in await events(store) if e[0] == "consent_recorded"
    ]


async def test_an_id_verified_guardian_passes_the_method_on(store: Store) -> None:
    """A guardian verified by personal ID: the child's attestation says personal_id, but never
    commercial livestream (P7)."""
    await id_guardian(store)
    result = await store.link_guardian(
        link(guardian="dad", subject=NUMBER, token="tok-dad", method="personal_id"), LIMITS
    )
    assert ("personal_id", False, True) == (
        result.attestation.method,
        result.attestation.commercial_livestream,
        result.attestation.guardian_managed,
    )
    with pytest.raises(GuardianManagedNoCommercialLivestream):
        await store.begin_id_check(
            IdAttempt(PLATFORM, "at-x", "kid-1", NUMBER, CLIENT, "commercial_livestream", NOW + 20),
            LIMITS,
        )


@pytest.mark.parametrize(
    "case", ["none", "expired", "revoked", "guardian_managed", "token_changed", "subject_changed"]
)
async def test_the_guardian_needs_an_active_attestation_of_their_own(
    store: Store, case: str
) -> None:
    """GUARDIAN_NOT_VERIFIED, audited with the guardian's account and pseudonym."""
    token, subject = "tok-mum", PHONE  # what link() defaults to
    now = NOW + 10
    if case != "none":
        await phone_guardian(store)
    if case == "expired":
        now = NOW + 1 + 365 * DAY
    elif case == "revoked":
        await store.revoke_attestation(PLATFORM, "mum", NOW + 5, "fraud")
    elif case == "guardian_managed":
        await phone_guardian(store, "sis", phone=PHONE_2)
        await store.link_guardian(
            link("mum", guardian="sis", subject=PHONE_2, token="tok-sis"), LIMITS
        )
        now = NOW + 20
    elif case == "token_changed":
        token = "tok-read-before-a-re-verification"
    elif case == "subject_changed":
        subject = PHONE_2
    start = len(await store.audit_records(PLATFORM))

    with pytest.raises(GuardianNotVerified):
        await store.link_guardian(link(now=now, token=token, subject=subject), LIMITS)

    assert [
        rec(
            start,
            now,
            "guardian_link_created",
            "refused",
            "GUARDIAN_NOT_VERIFIED",
            guardian=subject,
            guardian_account="mum",
            relationship="parent",
        )
    ] == await store.audit_records(PLATFORM, start)
    assert "kid-1" not in [e.account_id for e in await store.list_aging_out(PLATFORM, 0, AGED, 9)]


async def test_a_guardian_the_registry_proved_16_or_17_is_refused(store: Store) -> None:
    """An ID attestation with age band 16_17 cannot make its holder a guardian (GUARDIAN_UNDER_18)."""
    await id_guardian(store, band="16_17")
    with pytest.raises(GuardianUnder18):
        await store.link_guardian(
            link(guardian="dad", subject=NUMBER, token="tok-dad", method="personal_id"), LIMITS
        )
    assert ("guardian_link_created", "refused", "GUARDIAN_UNDER_18") == (await events(store))[-1]


async def test_a_child_the_registry_proved_16_or_over_is_refused(store: Store) -> None:
    """The account's active ID attestation says adult: it is no child (CHILD_NOT_UNDER_16)."""
    await phone_guardian(store)
    await id_guardian(store, "kid-1")
    with pytest.raises(ChildNotUnder16):
        await store.link_guardian(link(), LIMITS)


async def test_a_child_linked_to_another_guardian_is_refused_until_withdrawn(store: Store) -> None:
    """CHILD_ALREADY_LINKED; once the first guardian withdraws, the second may link."""
    await phone_guardian(store)
    await phone_guardian(store, "dad", phone=PHONE_2)
    first = await store.link_guardian(link(), LIMITS)

    def by_dad(now: float) -> GuardianLink:
        return link(now=now, guardian="dad", subject=PHONE_2, token="tok-dad")

    with pytest.raises(ChildAlreadyLinked):
        await store.link_guardian(by_dad(NOW + 20), LIMITS)
    await store.end_guardian_link(PLATFORM, first.link_id, NOW + 30)
    second = await store.link_guardian(by_dad(NOW + 40), LIMITS)

    assert (False, "dad-ref") != (second.renewed, second.link_id)
    assert second.link_id != first.link_id


async def test_the_same_guardian_linking_again_renews_and_revokes_the_old_token(
    store: Store,
) -> None:
    """Renewal: same link id, a fresh token and status index, the replaced token revoked
    (superseded) so a child has one live token; the cap is not charged twice."""
    limits = Limits(max_children_per_guardian=1)
    await phone_guardian(store, limits=limits)
    first = await store.link_guardian(link(), limits)

    again = await store.link_guardian(link(now=NOW + 20, relationship="legal_guardian"), limits)

    assert (first.link_id, True) == (again.link_id, again.renewed)
    assert (nth_index(1), nth_index(2)) == (
        first.attestation.status_idx,
        again.attestation.status_idx,
    )
    assert again.attestation == await store.get_attestation(PLATFORM, "kid-1")
    bits = await store.status_bits(PLATFORM)
    assert (1, 0) == (
        bit(bits, first.attestation.status_idx),
        bit(bits, again.attestation.status_idx),
    )
    assert [
        ("guardian_link_renewed", "ok", ""),
        ("consent_recorded", "ok", ""),
        ("consent_recorded", "ok", ""),
        ("attestation_revoked", "ok", "superseded"),
        ("attestation_issued", "ok", ""),
    ] == (await events(store))[-5:]
    renewed = json.loads((await store.audit_records(PLATFORM))[-5])
    assert ("legal_guardian", first.link_id) == (renewed["relationship"], renewed["link"])


async def test_a_keyed_call_retried_returns_what_it_did_and_writes_nothing(store: Store) -> None:
    """A call retried under its id with the same request digest (LinkGuardian's idempotency
    key): the first call's link id, attestation and renewed flag; no token, no revocation, no
    record; the cap is not charged again."""
    limits = Limits(max_children_per_guardian=1)
    await phone_guardian(store, limits=limits)
    first = await store.link_guardian(link(link_id="gl_key1", digest="lr_1"), limits)
    log, bits = await store.audit_records(PLATFORM), await store.status_bits(PLATFORM)

    again = await store.link_guardian(
        link(now=NOW + 20, link_id="gl_key1", digest="lr_1", relationship="parent"), limits
    )

    assert first == again
    assert not again.renewed
    assert first.attestation == await store.get_attestation(PLATFORM, "kid-1")
    assert (log, bits) == (await store.audit_records(PLATFORM), await store.status_bits(PLATFORM))


async def test_a_keyed_renewal_retried_is_still_the_renewal(store: Store) -> None:
    """A renewal's retry: the renewed link's id (not the call's) and renewed true, the token
    the renewal issued; nothing revoked the second time."""
    await phone_guardian(store)
    created = await store.link_guardian(link(), LIMITS)
    renewal = await store.link_guardian(
        link(now=NOW + 20, link_id="gl_key2", digest="lr_2"), LIMITS
    )
    log, bits = await store.audit_records(PLATFORM), await store.status_bits(PLATFORM)

    again = await store.link_guardian(link(now=NOW + 30, link_id="gl_key2", digest="lr_2"), LIMITS)

    assert (created.link_id, True) == (again.link_id, again.renewed)
    assert renewal == again
    assert (log, bits) == (await store.audit_records(PLATFORM), await store.status_bits(PLATFORM))


async def test_a_call_id_with_another_request_digest_is_refused_and_audited(store: Store) -> None:
    """The same call id (an idempotency key) with other fields: IDEMPOTENCY_KEY_REUSED,
    audited as a refused link with pseudonyms only; the link and its token are untouched,
    also for another child."""
    await phone_guardian(store)
    first = await store.link_guardian(link(link_id="gl_key3", digest="lr_3"), LIMITS)
    bits = await store.status_bits(PLATFORM)

    for other in (
        link(now=NOW + 20, link_id="gl_key3", digest="lr_4"),
        link("kid-2", now=NOW + 21, link_id="gl_key3", digest="lr_5"),
        link(now=NOW + 22, link_id="gl_key3"),  # the same id without a digest
    ):
        with pytest.raises(IdempotencyKeyReused):
            await store.link_guardian(other, LIMITS)

    assert [("guardian_link_created", "refused", "IDEMPOTENCY_KEY_REUSED")] * 3 == (
        await events(store)
    )[-3:]
    refused = json.loads((await store.audit_records(PLATFORM))[-2])
    assert ("kid-2", PHONE, "mum") == (
        refused["account"],
        refused["guardian"],
        refused["guardian_account"],
    )
    assert first.attestation == await store.get_attestation(PLATFORM, "kid-1")
    assert None is await store.get_attestation(PLATFORM, "kid-2")
    assert bits == await store.status_bits(PLATFORM)
    assert [AgingOut("kid-1", AGED)] == await store.list_aging_out(PLATFORM, 0, AGED + 1, 10)


async def test_linking_replaces_and_revokes_a_childs_own_phone_attestation(store: Store) -> None:
    """A child who had verified by phone: that token is revoked and its P8 slot freed."""
    limits = Limits(max_accounts_per_phone=1)
    own = await phone_guardian(store, "kid-1", phone=PHONE_2, limits=limits)
    await phone_guardian(store, limits=limits)
    await store.link_guardian(link(now=NOW + 20), limits)

    assert 1 == bit(await store.status_bits(PLATFORM), own.status_idx)
    # PHONE_2's only slot is free again: another account may verify with it.
    await phone_guardian(store, "someone", phone=PHONE_2, now=NOW + 100, limits=limits)


async def test_a_guardian_reaching_the_cap_is_refused(store: Store) -> None:
    """At most N children per guardian pseudonym, across the guardian's accounts; a withdrawal
    frees a place."""
    limits = Limits(max_children_per_guardian=2)
    await phone_guardian(store, limits=limits)
    await phone_guardian(store, "mum-2", phone=PHONE, now=NOW + 100, limits=limits)  # same person
    a = await store.link_guardian(link("kid-1", now=NOW + 110), limits)
    await store.link_guardian(
        link("kid-2", guardian="mum-2", token="tok-mum-2", now=NOW + 111), limits
    )

    with pytest.raises(GuardianChildLimit):
        await store.link_guardian(link("kid-3", now=NOW + 112), limits)
    assert ("guardian_link_created", "refused", "GUARDIAN_CHILD_LIMIT") == (await events(store))[-1]
    await store.end_guardian_link(PLATFORM, a.link_id, NOW + 113)
    await store.link_guardian(link("kid-3", now=NOW + 114), limits)


async def test_links_are_per_platform(store: Store) -> None:
    """Another platform sees neither the link nor the guardian's attestation."""
    await phone_guardian(store)
    result = await store.link_guardian(link(), LIMITS)

    with pytest.raises(GuardianNotVerified):
        await store.link_guardian(link(platform=OTHER), LIMITS)
    with pytest.raises(LinkNotFound):
        await store.end_guardian_link(OTHER, result.link_id, NOW + 20)
    assert [] == await store.list_aging_out(OTHER, 0, AGED + 1, 10)
    assert [AgingOut("kid-1", AGED)] == await store.list_aging_out(PLATFORM, 0, AGED + 1, 10)


# --- a linked child cannot verify on its own (R1) ---------------------------------------------


async def test_a_linked_child_cannot_start_or_confirm_a_phone_verification(store: Store) -> None:
    """GUARDIAN_REQUIRED at start and at confirmation, audited; not once the child is 16."""
    await phone_guardian(store)
    await sent(store, new("ch-kid", now=NOW + 5, account="kid-1", phone=PHONE_2))
    await store.link_guardian(link(), LIMITS)

    with pytest.raises(GuardianRequired):
        await store.start_challenge(
            new("ch-2", now=NOW + 70, account="kid-1", phone=PHONE_2), LIMITS
        )
    with pytest.raises(GuardianRequired):
        await store.check_code(check("ch-kid", now=NOW + 71, account="kid-1"), LIMITS)
    assert [
        ("verification_started", "refused", "GUARDIAN_REQUIRED"),
        ("check_failed", "refused", "GUARDIAN_REQUIRED"),
    ] == (await events(store))[-2:]

    await store.start_challenge(new("ch-3", now=AGED, account="kid-1", phone=PHONE_2), LIMITS)


async def test_a_linked_child_cannot_verify_by_personal_id_on_its_own(store: Store) -> None:
    """begin_id_check refuses the no-mobile purpose with GUARDIAN_REQUIRED (R1)."""
    await phone_guardian(store)
    await store.link_guardian(link(), LIMITS)
    attempt = IdAttempt(PLATFORM, "at-1", "kid-1", NUMBER, CLIENT, "no_vietnamese_mobile", NOW + 20)
    with pytest.raises(GuardianRequired):
        await store.begin_id_check(attempt, LIMITS)


# --- end_guardian_link ------------------------------------------------------------------------


async def test_withdrawal_ends_the_link_and_revokes_the_attestation_at_once(store: Store) -> None:
    """Status revoked, its status bit set, out of the aging-out index, audited twice."""
    await phone_guardian(store)
    result = await store.link_guardian(link(), LIMITS)
    start = len(await store.audit_records(PLATFORM))

    revoked = await store.end_guardian_link(PLATFORM, result.link_id, NOW + 20)

    expected = dataclasses.replace(result.attestation, status="revoked", revoked_at=NOW + 20)
    assert expected == revoked == await store.get_attestation(PLATFORM, "kid-1")
    assert 1 == bit(await store.status_bits(PLATFORM), result.attestation.status_idx)
    assert [] == await store.list_aging_out(PLATFORM, 0, AGED + 1, 10)
    assert [
        rec(
            start,
            NOW + 20,
            "guardian_link_ended",
            "ok",
            "withdrawn",
            link=result.link_id,
            guardian=PHONE,
        ),
        rec(
            start + 1,
            NOW + 20,
            "attestation_revoked",
            "ok",
            "guardian_link_withdrawn",
            token_id=result.attestation.token_id,
            status_idx=result.attestation.status_idx,
        ),
    ] == await store.audit_records(PLATFORM, start)


async def test_withdrawing_an_unknown_or_ended_link_is_refused_and_audited(store: Store) -> None:
    """LINK_NOT_FOUND (no account known), then LINK_ALREADY_ENDED (the child's account)."""
    await phone_guardian(store)
    result = await store.link_guardian(link(), LIMITS)
    with pytest.raises(LinkNotFound):
        await store.end_guardian_link(PLATFORM, "gl-nope", NOW + 20)
    await store.end_guardian_link(PLATFORM, result.link_id, NOW + 21)
    with pytest.raises(LinkAlreadyEnded):
        await store.end_guardian_link(PLATFORM, result.link_id, NOW + 22)

    records = await store.audit_records(PLATFORM)
    assert (
        rec(
            len(records) - 4,
            NOW + 20,
            "guardian_link_ended",
            "refused",
            "LINK_NOT_FOUND",
            account="",
            link="gl-nope",
        )
        == records[-4]
    )
    assert (
        rec(
            len(records) - 1,
            NOW + 22,
            "guardian_link_ended",
            "refused",
            "LINK_ALREADY_ENDED",
            link=result.link_id,
        )
        == records[-1]
    )


async def test_withdrawal_after_the_platform_revoked_the_child_revokes_nothing_more(
    store: Store,
) -> None:
    """The attestation was revoked already: the link ends, no second revocation record."""
    await phone_guardian(store)
    result = await store.link_guardian(link(), LIMITS)
    await store.revoke_attestation(PLATFORM, "kid-1", NOW + 15, "account_deleted")
    assert None is await store.end_guardian_link(PLATFORM, result.link_id, NOW + 20)
    assert ("guardian_link_ended", "ok", "withdrawn") == (await events(store))[-1]


# --- sweep_aged_out and list_aging_out --------------------------------------------------------


async def test_the_sweep_ends_links_of_children_who_turned_16(store: Store) -> None:
    """Links with a birthday at or before now end (aged_out), oldest first, `limit` at a time;
    the attestation says aged_out, the guardian's place is free, nothing else changes."""
    limits = Limits(max_children_per_guardian=3)
    await phone_guardian(store, limits=limits)
    births = {"kid-a": NOW + 50, "kid-b": NOW + 40, "kid-c": NOW + 500}
    for n, (child, aged) in enumerate(births.items()):
        await store.link_guardian(link(child, now=NOW + 10 + n, aged_out_at=aged), limits)

    assert 0 == await store.sweep_aged_out(PLATFORM, NOW + 39.5, 10)
    assert 1 == await store.sweep_aged_out(PLATFORM, NOW + 50, 1)
    got = await store.get_attestation(PLATFORM, "kid-b")
    assert got is not None
    assert "aged_out" == got.status
    got = await store.get_attestation(PLATFORM, "kid-a")
    assert got is not None
    assert "active" == got.status
    assert 1 == await store.sweep_aged_out(PLATFORM, NOW + 50, 10)
    assert 0 == await store.sweep_aged_out(PLATFORM, NOW + 50, 10)

    assert [AgingOut("kid-c", NOW + 500)] == await store.list_aging_out(PLATFORM, 0, NOW + 1000, 10)
    ended = [json.loads(r) for r in await store.audit_records(PLATFORM)][-2:]
    assert [("kid-b", "aged_out"), ("kid-a", "aged_out")] == [
        (r["account"], r["reason"]) for r in ended
    ]
    assert {"guardian_link_ended"} == {r["event"] for r in ended}
    assert 0 == sum(bin(b).count("1") for b in await store.status_bits(PLATFORM))
    await store.link_guardian(link("kid-d", now=NOW + 60, aged_out_at=NOW + 900), limits)
    with pytest.raises(LinkAlreadyEnded):
        await store.end_guardian_link(PLATFORM, f"gl-kid-b-{NOW + 11}", NOW + 61)


async def test_listing_aging_out_uses_the_half_open_window_and_pages(store: Store) -> None:
    """[from, to) by birthday, ties by account id; `after` continues strictly after an entry."""
    limits = Limits(max_children_per_guardian=10)
    await phone_guardian(store, limits=limits)
    births = {"k-3": 300.0, "k-1": 100.0, "k-2b": 200.0, "k-2a": 200.0, "k-4": 400.0}
    for n, (child, offset) in enumerate(births.items()):
        await store.link_guardian(link(child, now=NOW + 10 + n, aged_out_at=AGED + offset), limits)

    window = (AGED + 100, AGED + 400)
    assert ["k-1", "k-2a", "k-2b", "k-3"] == [
        e.account_id for e in await store.list_aging_out(PLATFORM, *window, 10)
    ]
    first = await store.list_aging_out(PLATFORM, *window, 2)
    assert [AgingOut("k-1", AGED + 100), AgingOut("k-2a", AGED + 200)] == first
    assert [AgingOut("k-2b", AGED + 200), AgingOut("k-3", AGED + 300)] == (
        await store.list_aging_out(PLATFORM, *window, 2, first[-1])
    )
    assert [] == await store.list_aging_out(PLATFORM, *window, 2, AgingOut("k-3", AGED + 300))
    assert [] == await store.list_aging_out(PLATFORM, AGED + 401, AGED + 500, 10)


async def test_paging_through_many_children_born_the_same_day(store: Store) -> None:
    """600 children share one birthday (one score): pages of 250 see each exactly once."""
    limits = Limits(max_children_per_guardian=1000)
    await phone_guardian(store, limits=limits)
    children = sorted(f"c-{n:04d}" for n in range(600))
    for n, child in enumerate(random.Random(4).sample(children, len(children))):
        await store.link_guardian(link(child, now=NOW + 10 + n / 1000), limits)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_aging_out(PLATFORM, AGED, AGED + 1, 250, after)
        seen += [e.account_id for e in page]
        if len(page) < 250:
            break
        after = page[-1]
    assert children == seen


# --- revoke_attestation and the status list ---------------------------------------------------


async def test_every_attestation_gets_the_next_status_index_per_platform(store: Store) -> None:
    """check_code, finish_id_check and link_guardian share one counter per platform; the
    counter's n-th value is index nth_index(n) (a keyed permutation, issue 13)."""
    phone = await phone_guardian(store)
    other = await phone_guardian(store, platform=OTHER)
    by_id = await id_guardian(store)
    child = (await store.link_guardian(link(), LIMITS)).attestation
    assert [nth_index(0), nth_index(0), nth_index(1), nth_index(2)] == [
        r.status_idx for r in (phone, other, by_id, child)
    ]
    assert by_id == await store.get_attestation(PLATFORM, "dad")
    assert "adult" == by_id.age_band


async def test_the_status_bitmap_covers_every_index_handed_out(store: Store) -> None:
    """Opening a block of indices writes the whole block's zero bits, so a list published from
    the bitmap holds the index of every token issued, revoked or not (check_code,
    finish_id_check, link_guardian), and its length tells only how many blocks are open."""
    block = STATUS_BLOCK // 8 * b"\x00"
    assert b"" == await store.status_bits(PLATFORM)
    await phone_guardian(store)  # "mum", the first token
    assert block == await store.status_bits(PLATFORM)
    for n in range(1, STATUS_BLOCK - 1):  # 200 s apart: within the client's hourly budget
        await phone_guardian(store, f"acc-{n}", phone=phone_n(n), now=NOW + 200 * n)
    dad = await id_guardian(store)  # the block's last token
    assert (nth_index(STATUS_BLOCK - 1), block) == (
        dad.status_idx,
        await store.status_bits(PLATFORM),
    )
    child = (await store.link_guardian(link(), LIMITS)).attestation  # opens the next block
    assert (nth_index(STATUS_BLOCK), 2 * block) == (
        child.status_idx,
        await store.status_bits(PLATFORM),
    )
    assert STATUS_BLOCK <= child.status_idx < 2 * STATUS_BLOCK
    assert b"" == await store.status_bits(OTHER)


async def test_revocation_sets_the_status_bit_and_is_idempotent(store: Store) -> None:
    """Status revoked, bit set (Redis order), one audit record; again: same record, no record."""
    for n in range(10):
        await phone_guardian(store, f"acc-{n}", phone=phone_n(n), now=NOW + 100 * n)
    start = len(await store.audit_records(PLATFORM))

    first = await store.revoke_attestation(PLATFORM, "acc-0", NOW + 2000, "account_deleted")
    ninth = await store.revoke_attestation(PLATFORM, "acc-9", NOW + 2001, "fraud")
    again = await store.revoke_attestation(PLATFORM, "acc-0", NOW + 2002, "fraud")

    assert ("revoked", nth_index(0), nth_index(9)) == (
        first.status,
        first.status_idx,
        ninth.status_idx,
    )
    assert first == again == await store.get_attestation(PLATFORM, "acc-0")
    assert NOW + 2000 == again.revoked_at  # the first revocation's time, kept
    bits = await store.status_bits(PLATFORM)
    revoked = {i for i in range(len(bits) * 8) if bit(bits, i)}
    assert ({nth_index(0), nth_index(9)}, STATUS_BLOCK // 8) == (revoked, len(bits))
    assert b"" == await store.status_bits(OTHER)
    assert [
        rec(
            start,
            NOW + 2000,
            "attestation_revoked",
            "ok",
            "account_deleted",
            account="acc-0",
            token_id="tok-acc-0",
            status_idx=nth_index(0),
        ),
        rec(
            start + 1,
            NOW + 2001,
            "attestation_revoked",
            "ok",
            "fraud",
            account="acc-9",
            token_id="tok-acc-9",
            status_idx=nth_index(9),
        ),
    ] == await store.audit_records(PLATFORM, start)


async def test_revoking_nothing_or_with_a_bad_reason_is_refused(store: Store) -> None:
    """ATTESTATION_NOT_FOUND for an unknown account (or another platform's); FIELD_INVALID for
    a reason outside 1-64 of a-z 0-9 _."""
    await phone_guardian(store)
    with pytest.raises(AttestationNotFound):
        await store.revoke_attestation(PLATFORM, "nobody", NOW + 5, "fraud")
    with pytest.raises(AttestationNotFound):
        await store.revoke_attestation(OTHER, "mum", NOW + 5, "fraud")
    for bad in ("", "Fraud", "x" * 65, "0912345678 ", "fraud!"):
        with pytest.raises(FieldInvalid):
            await store.revoke_attestation(PLATFORM, "mum", NOW + 5, bad)
    got = await store.get_attestation(PLATFORM, "mum")
    assert got is not None
    assert "active" == got.status


async def test_both_stores_write_the_same_bytes(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    """A history of links, refusals, renewals, withdrawals, sweeps and revocations gives the
    same audit log, the same records and the same status bits in memory and in the pair."""
    stores: list[Store] = [memory_store(), pair_store(redis_url, redis_namespace, database)]
    results = []
    limits = Limits(max_children_per_guardian=2)
    for s in stores:
        await phone_guardian(s, limits=limits)
        await id_guardian(s, "teen", band="16_17")
        await phone_guardian(s, "kid-1", phone=PHONE_2, limits=limits)
        outcomes: list[object] = []
        steps = [
            link(now=NOW + 10),
            link(now=NOW + 11, relationship="legal_guardian", child_consent=False),
            link("kid-2", now=NOW + 12, aged_out_at=NOW + 30),
            link("kid-3", now=NOW + 13),
            link("kid-4", guardian="teen", subject=NUMBER, token="tok-teen", now=NOW + 14),
            link("kid-5", guardian="nobody", now=NOW + 15),
            # kid-2's call retried under its id: its answer again, nothing written; then that
            # id (an idempotency key's) with other fields: refused and audited.
            link("kid-2", now=NOW + 16, aged_out_at=NOW + 30, link_id=f"gl-kid-2-{NOW + 12}"),
            link("kid-2", now=NOW + 17, link_id=f"gl-kid-2-{NOW + 12}", digest="lr_other"),
        ]
        for step in steps:
            try:
                outcomes.append(await s.link_guardian(step, limits))
            except XacthucError as e:
                outcomes.append(e.reason)
        outcomes.append(await s.sweep_aged_out(PLATFORM, NOW + 30, 10))
        outcomes.append(await s.end_guardian_link(PLATFORM, f"gl-kid-1-{NOW + 10}", NOW + 31))
        for link_id in (f"gl-kid-1-{NOW + 10}", "gl-none"):
            try:
                await s.end_guardian_link(PLATFORM, link_id, NOW + 32)
            except XacthucError as e:
                outcomes.append(e.reason)
        outcomes.append(await s.revoke_attestation(PLATFORM, "teen", NOW + 33, "fraud_suspected"))
        outcomes.append(await s.list_aging_out(PLATFORM, 0, NOW + 10_000, 10))
        results.append(
            (
                outcomes,
                await s.audit_records(PLATFORM),
                await s.status_bits(PLATFORM),
                [await s.get_attestation(PLATFORM, a) for a in ("mum", "teen", "kid-1", "kid-2")],
            )
        )
        await s.aclose()
    assert 30 <= len(results[0][1])
    assert results[0] == results[1]


async def test_random_histories_agree_between_memory_and_the_pair(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    """Random interleavings of every guardian and revocation operation: same outcomes, same
    audit bytes, same attestations and status bits."""
    memory, redis_backend = memory_store(), pair_store(redis_url, redis_namespace, database)
    rnd = random.Random(147)
    limits = Limits(max_children_per_guardian=2)
    guardians = {"g-1": PHONE, "g-2": PHONE_2}
    children = [f"c-{n}" for n in range(5)]
    link_ids: list[str] = ["gl-missing"]
    try:
        for s in (memory, redis_backend):
            for account, phone in guardians.items():
                await phone_guardian(s, account, phone=phone, limits=limits)
        now = NOW + 10
        calls: list[Awaitable[object]]
        for step in range(250):
            now += rnd.choice([0, 1, 5, 60])
            kind = rnd.random()
            if kind < 0.45:
                g = rnd.choice(list(guardians))
                lk = link(
                    rnd.choice(children),
                    guardian=g,
                    subject=guardians[g],
                    token=f"tok-{g}" if rnd.random() < 0.9 else "tok-stale",
                    now=now,
                    link_id=f"gl-{step}",
                    aged_out_at=now + rnd.choice([3, 30, 300, 3000]),
                    child_consent=rnd.random() < 0.7,
                )
                link_ids.append(lk.link_id)
                calls = [s.link_guardian(lk, limits) for s in (memory, redis_backend)]
            elif kind < 0.6:
                lid = rnd.choice(link_ids)
                calls = [s.end_guardian_link(PLATFORM, lid, now) for s in (memory, redis_backend)]
            elif kind < 0.7:
                n = rnd.randint(1, 3)
                calls = [s.sweep_aged_out(PLATFORM, now, n) for s in (memory, redis_backend)]
            elif kind < 0.8:
                who = rnd.choice([*children, "g-1"])
                calls = [
                    s.revoke_attestation(PLATFORM, who, now, "r") for s in (memory, redis_backend)
                ]
            elif kind < 0.9:
                lo = now + rnd.choice([-100, 0, 50])
                hi, size = lo + rnd.choice([1, 500, 5000]), rnd.randint(1, 4)
                after = None
                if rnd.random() < 0.5:
                    after = AgingOut(rnd.choice(children), lo + rnd.choice([0, 100]))
                calls = [
                    s.list_aging_out(PLATFORM, lo, hi, size, after) for s in (memory, redis_backend)
                ]
            else:
                child = rnd.choice(children)
                nc = new(f"ch-{step}", now=now, account=child, phone=PHONE_2)
                calls = [
                    s.start_challenge(nc, Limits(resend_cooldown_seconds=0))
                    for s in (memory, redis_backend)
                ]
            expected, actual = [await _outcome(c) for c in calls]
            assert expected == actual, f"step {step}"
        assert await memory.audit_records(PLATFORM) == await redis_backend.audit_records(PLATFORM)
        assert await memory.status_bits(PLATFORM) == await redis_backend.status_bits(PLATFORM)
        for account in [*children, *guardians]:
            assert await memory.get_attestation(PLATFORM, account) == (
                await redis_backend.get_attestation(PLATFORM, account)
            )
    finally:
        await redis_backend.aclose()


async def _outcome(call: Awaitable[object]) -> tuple[str, object]:
    try:
        return ("ok", await call)
    except XacthucError as e:
        return ("err", e.reason)
