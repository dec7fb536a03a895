"""Children under 16 end to end (issue 4: R1, P6, P7, P9): the shipped clients, a real server over
real Redis, the injected clock on the date boundaries of Asia/Ho_Chi_Minh."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from typing import Any, TypedDict, Unpack

import pytest

from xacthuc.client import (
    AgingOutPage,
    AsyncClient,
    Attestation,
    AttestationVerifier,
    Client,
    GuardianLink,
)
from xacthuc.domain import errors
from xacthuc.domain.age import start_of_day, turns_at
from xacthuc.domain.errors import Code
from xacthuc.server.auth import Role

from .conftest import Citizen, Harness

D = dt.date
HOUR = 3600.0
DAY = 86_400.0
IP = "203.0.113.30"
MUM_PHONE = "0912345678"
DAD_PHONE = "0987654321"
# The sandbox registry's adult An (verifiers/data/sandbox_citizens.jsonl) and Thư, born
# 2008-10-24: 17 in January 2026.
AN: Citizen = {
    "personal_id_number": "001085336181",
    "full_name": "Nguyễn Văn An",
    "date_of_birth": D(1985, 3, 14),
}
THU: Citizen = {
    "personal_id_number": "101308857285",
    "full_name": "Trần Thị Minh Thư",
    "date_of_birth": D(2008, 10, 24),
}
MUM_BORN = D(1988, 8, 8)
KID_BORN = D(2015, 3, 10)  # 11 at the harness start (2027-01-15)


def noon(day: dt.date) -> float:
    """12:00 on `day` in Vietnam."""
    return start_of_day(day) + 12 * HOUR


async def verify_phone(
    h: Harness, client: AsyncClient, account: str, phone: str = MUM_PHONE
) -> Attestation:
    """The guardian verifies their OWN account with the ordinary phone OTP flow."""
    challenge = await client.start_phone_verification(
        account_id=account, phone_number=phone, client_ip=IP
    )
    return await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id=account,
        code=h.sms.code_for(challenge.challenge_id),
    )


class LinkArgs(TypedDict, total=False):
    """The arguments of `link_guardian` that a test changes (the others as in `link`)."""

    child_date_of_birth: dt.date
    guardian_account_id: str
    guardian_date_of_birth: dt.date
    relationship: str
    guardian_consent: bool
    child_consent: bool
    idempotency_key: str


async def link(client: AsyncClient, child: str = "kid-1", **kw: Unpack[LinkArgs]) -> GuardianLink:
    args: LinkArgs = {
        "child_date_of_birth": KID_BORN,
        "guardian_account_id": "mum",
        "guardian_date_of_birth": MUM_BORN,
        "relationship": "parent",
        "guardian_consent": True,
        "child_consent": True,
        **kw,
    }
    return await client.link_guardian(child_account_id=child, **args)


async def audit(h: Harness, platform: str = "alpha") -> list[dict[str, Any]]:
    auditor = await h.client(platform, Role.AUDITOR)
    return [r.record for r in (await auditor.query_audit_records(page_size=1000)).records]


async def link_events(h: Harness) -> list[dict[str, Any]]:
    """The audit records but the auditor's own queries (each query is audited)."""
    return [r for r in await audit(h) if r["event"] != "auditor_query_audit_records"]


def claims_of(h: Harness, jwks: str, token: str, now: float) -> dict[str, Any]:
    verifier = AttestationVerifier(jwks, issuer=h.app.settings.issuer, audience="alpha")
    return verifier.verify(token, now=now).claims


# --- linking ---------------------------------------------------------------------------------


async def test_a_phone_verified_parent_links_a_child(harness: Harness) -> None:
    """The child's attestation: guardian-managed, under_16, a guardian reference, the guardian's
    method, never commercial livestream; the token says so and carries no date of birth."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    result = await link(client)

    att = result.attestation
    assert re.fullmatch(r"gl_[A-Za-z0-9_-]{22}", result.link_id)
    assert (False, "kid-1", "phone_otp", True, False, "under_16") == (
        result.renewed,
        att.account_id,
        att.method,
        att.guardian_managed,
        att.commercial_livestream,
        att.age_band,
    )
    assert re.fullmatch(r"g_[0-9a-f]{16}", att.guardian_ref)
    assert turns_at(KID_BORN, 16) == result.ages_out_at.timestamp()
    assert att == await client.get_attestation(account_id="kid-1")

    claims = claims_of(harness, await client.get_jwks(), att.token, harness.clock.now())
    assert (True, "under_16", att.guardian_ref, False) == (
        claims["guardian_managed"],
        claims["age_band"],
        claims["guardian_ref"],
        claims["commercial_livestream"],
    )
    assert claims["exp"] <= turns_at(KID_BORN, 16)
    assert "exp_reason" not in claims  # the TTL ends this token, not the birthday
    assert {
        "iss",
        "aud",
        "sub",
        "iat",
        "exp",
        "jti",
        "auth_time",
        "method",
        "legal_basis",
        "guardian_managed",
        "commercial_livestream",
        "age_band",
        "guardian_ref",
    } == set(claims) - {"status"}  # status: the status-list reference (issue 5)
    assert "mum" not in claims.values()
    eligibility = await client.get_commercial_livestream_eligibility(account_id="kid-1")
    assert (False, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM") == (
        eligibility.eligible,
        eligibility.reason,
    )


async def test_a_link_is_audited_link_consents_and_issuance(harness: Harness) -> None:
    """guardian_link_created (relationship, method, link, guardian pseudonym), both consents,
    attestation_issued with guardian_managed and the age band."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    result = await link(client, relationship="legal_guardian")

    records = (await audit(harness))[-4:]
    created, consent_g, consent_c, issued = records
    assert ("guardian_link_created", "legal_guardian", "phone_otp", result.link_id, "mum") == (
        created["event"],
        created["relationship"],
        created["method"],
        created["link"],
        created["guardian_account"],
    )
    assert created["guardian"].startswith("ph_")
    assert [("guardian", result.link_id), ("child", result.link_id)] == [
        (r["party"], r["link"]) for r in (consent_g, consent_c)
    ]
    assert ("attestation_issued", 1, "under_16", "kid-1") == (
        issued["event"],
        issued["guardian_managed"],
        issued["age_band"],
        issued["account"],
    )


async def test_an_id_verified_guardian_links_and_the_child_still_cannot_livestream(
    harness: Harness,
) -> None:
    """P7: a child under an ID-verified guardian has method personal_id but no commercial
    livestream, and the ID upgrade is refused for the child."""
    client = await harness.client()
    dad = await client.verify_personal_id(
        account_id="dad",
        client_ip=IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        **AN,
    )
    assert "adult" == dad.age_band
    result = await link(
        client, guardian_account_id="dad", guardian_date_of_birth=AN["date_of_birth"]
    )

    assert ("personal_id", False) == (
        result.attestation.method,
        result.attestation.commercial_livestream,
    )
    with pytest.raises(errors.GuardianManagedNoCommercialLivestream):
        await client.verify_personal_id(
            account_id="kid-1", client_ip=IP, purpose="commercial_livestream", **AN
        )
    eligibility = await client.get_commercial_livestream_eligibility(account_id="kid-1")
    assert "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM" == eligibility.reason


# --- the child's age: the day before, of and after the 16th birthday ---------------------------


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (noon(D(2027, 3, 9)), True),
        (start_of_day(D(2027, 3, 10)) - 1, True),  # 23:59:59 the evening before, in Vietnam
        (start_of_day(D(2027, 3, 10)), False),
        (noon(D(2027, 3, 10)), False),
        (noon(D(2027, 3, 11)), False),
    ],
    ids=["day-before", "last-second", "midnight", "birthday", "day-after"],
)
async def test_the_child_must_be_under_16_today_in_vietnam(
    harness: Harness, when: float, allowed: bool
) -> None:
    """Born 2011-03-10: linkable until local midnight starting 2027-03-10, then CHILD_NOT_UNDER_16."""
    harness.clock.set(when)
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    born = D(2011, 3, 10)
    if allowed:
        result = await link(client, child_date_of_birth=born)
        assert turns_at(born, 16) == result.attestation.expires_at.timestamp()
        assert turns_at(born, 16) == result.ages_out_at.timestamp()
        return
    with pytest.raises(errors.ChildNotUnder16) as e:
        await link(client, child_date_of_birth=born)
    assert Code.FAILED_PRECONDITION == e.value.code
    last = (await audit(harness))[-1]
    assert ("guardian_link_created", "refused", "CHILD_NOT_UNDER_16") == (
        last["event"],
        last["outcome"],
        last["reason"],
    )


async def test_a_token_ending_at_the_birthday_says_so(harness: Harness) -> None:
    """The day before turning 16: exp is the birthday (before now + TTL), `exp_reason` age_16."""
    born = D(2011, 3, 10)
    harness.clock.set(noon(D(2027, 3, 9)))
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    result = await link(client, child_date_of_birth=born)
    claims = claims_of(
        harness, await client.get_jwks(), result.attestation.token, noon(D(2027, 3, 9))
    )
    assert (int(turns_at(born, 16)), "age_16") == (claims["exp"], claims["exp_reason"])


@pytest.mark.parametrize(
    ("today", "allowed"),
    [(D(2028, 2, 28), True), (D(2028, 2, 29), False), (D(2028, 3, 1), False)],
)
async def test_a_child_born_on_29_february(harness: Harness, today: dt.date, allowed: bool) -> None:
    """Born 2012-02-29: 16 on 29 Feb 2028 (a leap year); ages out at that local midnight."""
    harness.clock.set(noon(today))
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    born = D(2012, 2, 29)
    if not allowed:
        with pytest.raises(errors.ChildNotUnder16):
            await link(client, child_date_of_birth=born)
        return
    result = await link(client, child_date_of_birth=born)
    assert start_of_day(D(2028, 2, 29)) == result.ages_out_at.timestamp()


# --- the guardian's age: the day before, of and after the 18th birthday ------------------------


@pytest.mark.parametrize(
    ("guardian_born", "today", "allowed"),
    [
        (D(2009, 5, 20), D(2027, 5, 19), False),
        (D(2009, 5, 20), D(2027, 5, 20), True),
        (D(2009, 5, 20), D(2027, 5, 21), True),
        (D(2008, 2, 29), D(2026, 2, 28), False),  # 29 Feb: 18 on 1 March in a common year
        (D(2008, 2, 29), D(2026, 3, 1), True),
    ],
    ids=["day-before", "birthday", "day-after", "29feb-28feb", "29feb-1mar"],
)
async def test_the_guardian_must_be_18(
    harness: Harness, guardian_born: dt.date, today: dt.date, allowed: bool
) -> None:
    """GUARDIAN_UNDER_18 by the declared date of birth, to the day in Vietnam."""
    harness.clock.set(start_of_day(today) + 60)  # 00:01 local: the date has just changed
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    call = link(client, child_date_of_birth=D(2020, 1, 1), guardian_date_of_birth=guardian_born)
    if allowed:
        assert (await call).attestation.guardian_managed
        return
    with pytest.raises(errors.GuardianUnder18) as e:
        await call
    assert Code.FAILED_PRECONDITION == e.value.code


async def test_a_guardian_the_registry_proved_17_is_refused_whatever_they_declare(
    harness: Harness,
) -> None:
    """From the ID number route: the attestation's band 16_17 refuses GUARDIAN_UNDER_18."""
    harness.clock.set(noon(D(2026, 1, 15)))
    client = await harness.client()
    thu = await client.verify_personal_id(
        account_id="thu",
        client_ip=IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        **THU,
    )
    assert "16_17" == thu.age_band
    with pytest.raises(errors.GuardianUnder18):
        await link(client, guardian_account_id="thu", guardian_date_of_birth=D(1990, 1, 1))


# --- consents and fields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "needs_child_consent"),
    [(D(2022, 3, 9), False), (D(2022, 3, 10), True), (D(2022, 3, 11), True)],
)
async def test_consent_of_a_child_of_7_or_over_is_required(
    harness: Harness, today: dt.date, needs_child_consent: bool
) -> None:
    """Law 91/2025: the guardian always consents; the child too from the 7th birthday."""
    harness.clock.set(noon(today))
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    with pytest.raises(errors.GuardianConsentRequired):
        await link(client, guardian_consent=False)
    if needs_child_consent:
        with pytest.raises(errors.ChildConsentRequired):
            await link(client, child_consent=False)
        return
    await link(client, child_consent=False)
    consents = [r["party"] for r in await audit(harness) if r["event"] == "consent_recorded"]
    assert ["guardian"] == consents


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"relationship": "aunt"}, errors.FieldInvalid, "relationship"),
        ({"guardian_account_id": "kid-1"}, errors.FieldInvalid, "guardian_account_id"),
        ({"guardian_account_id": "bad id"}, errors.FieldInvalid, "guardian_account_id"),
        ({"idempotency_key": "a key"}, errors.FieldInvalid, "idempotency_key"),
        ({"idempotency_key": "k" * 129}, errors.FieldInvalid, "idempotency_key"),
        ({"child_date_of_birth": D(2030, 1, 1)}, errors.DateOfBirthInvalid, "child_date_of_birth"),
        (
            {"guardian_date_of_birth": D(2030, 1, 1)},
            errors.DateOfBirthInvalid,
            "guardian_date_of_birth",
        ),
        # The Date message's range is 1900-9999: a guardian "born" in year 1 is no one.
        (
            {"guardian_date_of_birth": D(1, 1, 1)},
            errors.DateOfBirthInvalid,
            "guardian_date_of_birth",
        ),
        (
            {"guardian_date_of_birth": D(1899, 12, 31)},
            errors.DateOfBirthInvalid,
            "guardian_date_of_birth",
        ),
    ],
)
async def test_malformed_requests_are_refused(
    harness: Harness, change: LinkArgs, error: type[errors.XacthucError], field: str
) -> None:
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    with pytest.raises(error) as e:
        await link(client, **change)
    assert (Code.INVALID_ARGUMENT, field) == (e.value.code, e.value.metadata["field"])


async def test_the_guardian_must_have_verified_their_own_account(harness: Harness) -> None:
    """No attestation, an expired one, or a guardian-managed one: GUARDIAN_NOT_VERIFIED."""
    client = await harness.client()
    with pytest.raises(errors.GuardianNotVerified):
        await link(client)
    await verify_phone(harness, client, "mum")
    await link(client)
    with pytest.raises(errors.GuardianNotVerified):  # a child cannot be a guardian
        await link(client, "kid-2", guardian_account_id="kid-1")
    harness.clock.advance(harness.app.settings.token_ttl_seconds)
    with pytest.raises(errors.GuardianNotVerified):
        await link(client, "kid-3")


# --- one guardian at a time, the cap, renewal ---------------------------------------------------


async def test_a_guardian_reaching_the_cap_is_refused(harness: Harness) -> None:
    """Five children by default; the sixth is RESOURCE_EXHAUSTED until one link ends."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    links = [await link(client, f"kid-{n}") for n in range(5)]
    with pytest.raises(errors.GuardianChildLimit) as e:
        await link(client, "kid-5")
    assert Code.RESOURCE_EXHAUSTED == e.value.code
    await client.withdraw_guardian_link(link_id=links[0].link_id)
    assert not (await link(client, "kid-5")).renewed


async def test_a_child_has_one_guardian_and_the_same_guardian_renews(harness: Harness) -> None:
    """Another guardian: CHILD_ALREADY_LINKED; the same one again: renewed, same link id, a new
    token, the old one revoked."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    harness.clock.advance(61)
    await verify_phone(harness, client, "dad", DAD_PHONE)
    first = await link(client)
    with pytest.raises(errors.ChildAlreadyLinked):
        await link(client, guardian_account_id="dad")

    harness.clock.advance(HOUR)
    again = await link(client)

    assert (first.link_id, True) == (again.link_id, again.renewed)
    assert again.attestation.token_id != first.attestation.token_id
    assert again.attestation == await client.get_attestation(account_id="kid-1")
    assert ["superseded"] == [
        r["reason"] for r in await audit(harness) if r["event"] == "attestation_revoked"
    ]


async def test_a_keyed_link_retried_answers_as_the_first_call(harness: Harness) -> None:
    """A retry with the same idempotency key and fields (the reply was lost): the first call's
    link id, token and flags; nothing issued, revoked or audited. Without a key the same call
    renews the link."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    first = await link(client, idempotency_key="link-kid-1")
    records = await link_events(harness)

    harness.clock.advance(HOUR)
    again = await link(client, idempotency_key="link-kid-1")

    assert re.fullmatch(r"gl_[A-Za-z0-9_-]{22}", first.link_id)
    assert first == again
    assert again.attestation == await client.get_attestation(account_id="kid-1")
    assert records == await link_events(harness)

    renewed = await link(client)  # no key: a second call, which renews
    assert (first.link_id, True) == (renewed.link_id, renewed.renewed)
    assert renewed.attestation.token_id != first.attestation.token_id
    # The renewal with a key, retried: still the renewal, with its own token.
    harness.clock.advance(HOUR)
    keyed = await link(client, idempotency_key="renew-kid-1")
    assert keyed == await link(client, idempotency_key="renew-kid-1")
    assert (first.link_id, True) == (keyed.link_id, keyed.renewed)
    assert ["superseded", "superseded"] == [
        r["reason"] for r in await audit(harness) if r["event"] == "attestation_revoked"
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"child_date_of_birth": D(2016, 3, 10)},
        {"guardian_date_of_birth": D(1988, 8, 9)},
        {"relationship": "legal_guardian"},
        {"child_consent": False, "child_date_of_birth": D(2021, 1, 1)},
    ],
)
async def test_a_key_reused_with_other_fields_is_refused(
    harness: Harness, change: LinkArgs
) -> None:
    """The same key with any field changed, or for another child: IDEMPOTENCY_KEY_REUSED
    (audited, no date of birth in it); the first link and its token stand."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    first = await link(client, idempotency_key="k-1")
    reused: LinkArgs = {**change, "idempotency_key": "k-1"}

    for child in ("kid-1", "kid-2"):
        with pytest.raises(errors.IdempotencyKeyReused) as e:
            await link(client, child, **reused)
        assert Code.INVALID_ARGUMENT == e.value.code

    assert first.attestation == await client.get_attestation(account_id="kid-1")
    with pytest.raises(errors.AttestationNotFound):
        await client.get_attestation(account_id="kid-2")
    refused = [r for r in await audit(harness) if r.get("reason") == "IDEMPOTENCY_KEY_REUSED"]
    assert [
        ("guardian_link_created", "refused", "kid-1"),
        ("guardian_link_created", "refused", "kid-2"),
    ] == [(r["event"], r["outcome"], r["account"]) for r in refused]
    born = [f"{d:%Y-%m-%d}" for d in (KID_BORN, MUM_BORN, *change.values()) if isinstance(d, D)]
    assert [] == [b for r in refused for b in born if b in json.dumps(r)]
    assert first == await link(client, idempotency_key="k-1")  # the same fields still replay


async def test_a_key_is_scoped_to_the_platform(harness: Harness) -> None:
    """One key on two platforms: two links, neither a retry of the other."""
    alpha, beta = await harness.client("alpha"), await harness.client("beta")
    await verify_phone(harness, alpha, "mum")
    harness.clock.advance(61)
    await verify_phone(harness, beta, "mum")
    a = await link(alpha, idempotency_key="k-1")
    b = await link(beta, idempotency_key="k-1")
    assert a.link_id != b.link_id
    assert (False, False) == (a.renewed, b.renewed)


# --- withdrawal ------------------------------------------------------------------------------


async def test_withdrawal_revokes_the_childs_attestation_at_once(harness: Harness) -> None:
    """GetAttestation: ATTESTATION_NOT_FOUND; eligibility: ATTESTATION_REVOKED; the status bit
    is set; a second withdrawal is LINK_ALREADY_ENDED; another platform gets LINK_NOT_FOUND."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    result = await link(client)
    beta = await harness.client("beta")
    with pytest.raises(errors.LinkNotFound) as not_found:
        await beta.withdraw_guardian_link(link_id=result.link_id)
    assert Code.NOT_FOUND == not_found.value.code

    harness.clock.advance(30)
    ended_at = await client.withdraw_guardian_link(link_id=result.link_id)

    assert harness.clock.now() == ended_at.timestamp()
    with pytest.raises(errors.AttestationNotFound):
        await client.get_attestation(account_id="kid-1")
    eligibility = await client.get_commercial_livestream_eligibility(account_id="kid-1")
    assert "ATTESTATION_REVOKED" == eligibility.reason
    bits = await harness.app.store.status_bits("alpha")
    got = await harness.app.store.get_attestation("alpha", "kid-1")
    assert got is not None
    idx = got.status_idx
    assert 1 == (bits[idx // 8] >> (7 - idx % 8)) & 1
    with pytest.raises(errors.LinkAlreadyEnded):
        await client.withdraw_guardian_link(link_id=result.link_id)
    with pytest.raises(errors.FieldInvalid):
        await client.withdraw_guardian_link(link_id="not-a-link")
    assert [
        ("guardian_link_ended", "refused", "LINK_NOT_FOUND"),
    ] == [(r["event"], r["outcome"], r["reason"]) for r in await audit(harness, "beta")]
    assert [
        ("guardian_link_ended", "ok", "withdrawn"),
        ("attestation_revoked", "ok", "guardian_link_withdrawn"),
        ("guardian_link_ended", "refused", "LINK_ALREADY_ENDED"),
    ] == [(r["event"], r["outcome"], r["reason"]) for r in await audit(harness)][-3:]


async def test_a_linked_child_cannot_verify_on_its_own(harness: Harness) -> None:
    """R1: the child's account cannot shed guardian management by a phone verification."""
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    await link(client)
    with pytest.raises(errors.GuardianRequired):
        await client.start_phone_verification(
            account_id="kid-1", phone_number=DAD_PHONE, client_ip=IP
        )
    assert [] == [m for m in harness.sms.messages if m.to.endswith("987654321")]


# --- aging out -------------------------------------------------------------------------------


async def test_listing_accounts_aging_out_by_window_and_page(harness: Harness) -> None:
    """[from, to) over 16th birthdays, ordered; pages of 2 with an opaque token bound to the
    window; another platform sees nothing."""
    harness.clock.set(noon(D(2027, 1, 15)))
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    harness.clock.advance(61)
    await verify_phone(harness, client, "dad", DAD_PHONE)
    births = {
        "kid-c": D(2011, 5, 1),
        "kid-a": D(2011, 3, 1),
        "kid-b": D(2011, 4, 1),
        "kid-b2": D(2011, 4, 1),
        "kid-d": D(2011, 6, 1),
        "kid-z": D(2014, 1, 1),
    }
    for n, (child, born) in enumerate(births.items()):
        await link(
            client, child, child_date_of_birth=born, guardian_account_id=("mum", "dad")[n % 2]
        )

    frm = dt.datetime.fromtimestamp(start_of_day(D(2027, 3, 1)), dt.UTC)
    to = dt.datetime.fromtimestamp(start_of_day(D(2027, 6, 1)), dt.UTC)  # exclusive
    whole = await client.list_accounts_aging_out(from_time=frm, to_time=to)
    assert (["kid-a", "kid-b", "kid-b2", "kid-c"], "") == (whole.account_ids, whole.next_page_token)

    pages, token = [], ""
    while True:
        page = await client.list_accounts_aging_out(
            from_time=frm, to_time=to, page_size=2, page_token=token
        )
        pages.append(page.account_ids)
        token = page.next_page_token
        if not token:
            break
    assert [["kid-a", "kid-b"], ["kid-b2", "kid-c"]] == pages

    first = await client.list_accounts_aging_out(from_time=frm, to_time=to, page_size=2)
    with pytest.raises(errors.FieldInvalid):
        await client.list_accounts_aging_out(
            from_time=frm, to_time=to + dt.timedelta(days=1), page_token=first.next_page_token
        )
    for bad in ({"page_size": 1001}, {"page_size": -1}, {"page_token": "%%%"}):
        with pytest.raises(errors.FieldInvalid):
            await client.list_accounts_aging_out(from_time=frm, to_time=to, **bad)
    with pytest.raises(errors.FieldInvalid):
        await client.list_accounts_aging_out(from_time=to, to_time=frm)
    beta = await harness.client("beta")
    assert [] == (await beta.list_accounts_aging_out(from_time=frm, to_time=to)).account_ids


@pytest.mark.parametrize("offset_days", [-1, 0, 1])
async def test_turning_16_ages_the_link_out(harness: Harness, offset_days: int) -> None:
    """The day before the 16th birthday nothing happens; from its local midnight the decision
    is AGED_OUT and the sweep ends the link (audited aged_out); the user may then verify in
    their own name."""
    born = D(2011, 3, 10)
    harness.clock.set(noon(D(2027, 3, 9)))
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    result = await link(client, child_date_of_birth=born)
    birthday = turns_at(born, 16)
    harness.clock.set(birthday + offset_days * DAY)

    swept = await harness.app.age_out.run_once()

    eligibility = await client.get_commercial_livestream_eligibility(account_id="kid-1")
    listed = (
        await client.list_accounts_aging_out(
            from_time=dt.datetime.fromtimestamp(birthday - 2 * DAY, dt.UTC),
            to_time=dt.datetime.fromtimestamp(birthday + 2 * DAY, dt.UTC),
        )
    ).account_ids
    if offset_days < 0:
        assert (0, "GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM", ["kid-1"]) == (
            swept,
            eligibility.reason,
            listed,
        )
        with pytest.raises(errors.GuardianRequired):
            await client.start_phone_verification(
                account_id="kid-1", phone_number=DAD_PHONE, client_ip=IP
            )
        return
    assert (1, "AGED_OUT", []) == (swept, eligibility.reason, listed)
    got = await harness.app.store.get_attestation("alpha", "kid-1")
    assert got is not None
    assert "aged_out" == got.status
    ended = [r for r in await audit(harness) if r["event"] == "guardian_link_ended"]
    assert [("ok", "aged_out", result.link_id)] == [
        (r["outcome"], r["reason"], r["link"]) for r in ended
    ]
    with pytest.raises(errors.LinkAlreadyEnded):
        await client.withdraw_guardian_link(link_id=result.link_id)
    with pytest.raises(errors.AttestationNotFound):
        await client.get_attestation(account_id="kid-1")
    await verify_phone(harness, client, "kid-1", DAD_PHONE)  # now in their own name
    assert not (await client.get_attestation(account_id="kid-1")).guardian_managed
    assert 0 == await harness.app.age_out.run_once()


# --- the blocking client, and P9 ---------------------------------------------------------------


async def test_the_blocking_client_links_lists_and_withdraws(harness: Harness) -> None:
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    key = harness.keys[("alpha", Role.PLATFORM)]

    def run() -> tuple[GuardianLink, AgingOutPage, dt.datetime]:
        with Client.connect(harness.target, api_key=key, timeout=10) as sync:
            made = sync.link_guardian(
                child_account_id="kid-1",
                child_date_of_birth=KID_BORN,
                guardian_account_id="mum",
                guardian_date_of_birth=MUM_BORN,
                relationship="parent",
                guardian_consent=True,
                child_consent=True,
            )
            listed = sync.list_accounts_aging_out(
                from_time=made.ages_out_at, to_time=made.ages_out_at + dt.timedelta(seconds=1)
            )
            return made, listed, sync.withdraw_guardian_link(link_id=made.link_id)

    made, listed, ended = await asyncio.to_thread(run)
    assert (["kid-1"], True) == (listed.account_ids, made.attestation.guardian_managed)
    assert harness.clock.now() == ended.timestamp()


async def test_no_guardian_or_child_personal_data_in_logs_or_audit(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """P9: no phone number, ID number, name or date of birth in a log line or audit record,
    refusals included."""
    caplog.set_level(logging.DEBUG)
    client = await harness.client()
    await verify_phone(harness, client, "mum")
    await client.verify_personal_id(
        account_id="dad",
        client_ip=IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        **AN,
    )
    result = await link(client)
    await link(
        client, "kid-2", guardian_account_id="dad", guardian_date_of_birth=AN["date_of_birth"]
    )
    with pytest.raises(errors.ChildNotUnder16):
        await link(client, "kid-3", child_date_of_birth=D(2000, 1, 1))
    with pytest.raises(errors.GuardianUnder18):
        await link(client, "kid-3", guardian_date_of_birth=D(2015, 1, 1))
    await client.withdraw_guardian_link(link_id=result.link_id)
    harness.clock.set(turns_at(KID_BORN, 16))
    await harness.app.age_out.run_once()

    records = [json.dumps(r, ensure_ascii=False) for r in await audit(harness)]
    assert 15 <= len(records)
    secrets = (
        MUM_PHONE,
        "912345678",
        AN["personal_id_number"],
        "Nguyễn",
        "Văn An",
        # Every date of birth given above, in the usual spellings.
        *(
            f.format(d)
            for d in (AN["date_of_birth"], MUM_BORN, KID_BORN, D(2000, 1, 1), D(2015, 1, 1))
            for f in ("{:%Y-%m-%d}", "{:%Y%m%d}", "{:%d/%m/%Y}", "{:%d-%m-%Y}")
        ),
    )
    haystack = records + [r.getMessage() for r in caplog.records]
    assert [] == [(s, h) for s in secrets for h in haystack if s in h]
