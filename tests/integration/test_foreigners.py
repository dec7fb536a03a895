"""Foreign users by their e-ID identification number (R9), end to end: the shipped client, a
real server over real Redis, and an e-ID provider on loopback HTTPS (see test_personal_id.py).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from xacthuc.client import AsyncClient, AttestationVerifier
from xacthuc.domain import errors
from xacthuc.domain.errors import Code
from xacthuc.server.auth import Role

from ..test_http_registry import pki  # noqa: F401  (the self-made CA fixture of idh)
from . import test_personal_id
from .test_personal_id import AN, IP, IdHarness

idh = test_personal_id.idh

# Synthetic foreigners from the shipped sandbox file (id_type "foreigner").
YUKI: dict[str, Any] = {
    "personal_id_number": "3920071154",
    "full_name": "Tanaka Yuki",
    "date_of_birth": datetime.date(1988, 1, 22),
}
CARTER: dict[str, Any] = {  # the same twelve digits as the citizen An's number: another person
    "personal_id_number": "001085336181",
    "full_name": "John Michael Carter",
    "date_of_birth": datetime.date(1980, 5, 17),
}
MARIE: dict[str, Any] = {  # 17 on the harness's date (2027-01-15)
    "personal_id_number": "250009876543",
    "full_name": "Marie Dubois",
    "date_of_birth": datetime.date(2009, 4, 10),
}
LUCAS: dict[str, Any] = {  # 12 on the harness's date
    "personal_id_number": "7600112233",
    "full_name": "Lucas Müller",
    "date_of_birth": datetime.date(2014, 7, 7),
}


async def as_foreigner(
    client: AsyncClient, person: Mapping[str, Any], account: str = "acc-f", **kw: Any
) -> Any:
    args = {
        "purpose": "no_vietnamese_mobile",
        "declared_no_vietnamese_mobile": True,
        "personal_id_type": "foreigner",
        **person,
        **kw,
    }
    return await client.verify_personal_id(account_id=account, client_ip=IP, **args)


def claims_of(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


async def test_a_foreigner_is_verified_by_the_identification_number(idh: IdHarness) -> None:
    """R9: a registry match of a foreigner's number gives a personal-ID attestation whose token
    says `id_type` foreigner and never the number; the provider was told the type."""
    client = await idh.client()
    att = await as_foreigner(client, YUKI)

    verifier = AttestationVerifier(
        await client.get_jwks(), issuer=idh.app.settings.issuer, audience="alpha"
    )
    verified = verifier.verify(att.token, now=idh.clock.now())
    assert ("personal_id", "foreigner", "foreigner", "adult", True) == (
        verified.method,
        att.personal_id_type,
        verified.claims["id_type"],
        att.age_band,
        att.commercial_livestream,
    )
    assert YUKI["personal_id_number"] not in json.dumps(claims_of(att.token))
    assert idh.provider is not None
    assert ("3920071154", "foreigner") == (
        idh.provider.seen[0]["personal_id"],
        idh.provider.seen[0]["id_type"],
    )


async def as_citizen(client: AsyncClient, account: str) -> Any:
    """The citizen An, without a `personal_id_type` (the default)."""
    return await client.verify_personal_id(
        account_id=account,
        personal_id_number="001085336181",
        full_name="Nguyễn Văn An",
        date_of_birth=datetime.date(1985, 3, 14),
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        client_ip=IP,
    )


async def test_a_citizen_is_still_the_default(idh: IdHarness) -> None:
    """Without a type the number is a citizen's, and the attestation says so."""
    client = await idh.client()
    att = await as_citizen(client, "acc-c")
    assert ("citizen", "citizen") == (att.personal_id_type, claims_of(att.token)["id_type"])
    assert idh.provider is not None
    assert "citizen" == idh.provider.seen[0]["id_type"]


async def test_the_same_digits_are_two_people(idh: IdHarness) -> None:
    """A foreigner's number equal to a citizen's names another person: each matches only as
    its own kind, and the attempt limits of one never lock the other (separate pseudonyms)."""
    client = await idh.client()
    with pytest.raises(errors.PersonalIdNotMatched):
        await as_foreigner(client, AN, account="probe-0")
    for n in range(1, 4):
        with pytest.raises(errors.PersonalIdNotMatched):
            await as_foreigner(client, {**CARTER, "full_name": f"Wrong {n}"}, account=f"probe-{n}")
    with pytest.raises(errors.IdAttemptsExceeded):
        await as_foreigner(client, {**CARTER, "full_name": "Wrong 4"}, account="probe-4")
    citizen = await as_citizen(client, "an")
    assert "citizen" == citizen.personal_id_type
    idh.clock.advance(901)
    assert "foreigner" == (await as_foreigner(client, CARTER, account="carter")).personal_id_type


@pytest.mark.parametrize(
    "number",
    ["12345", "1" * 21, "39200711x4", "３９２００７１１５４", "39200 71154", ""],
)
async def test_only_the_form_of_a_foreigners_number_is_checked(idh: IdHarness, number: str) -> None:
    """6-20 ASCII digits (nothing more is published); anything else is PERSONAL_ID_MALFORMED
    and never reaches the registry."""
    client = await idh.client()
    with pytest.raises(errors.PersonalIdMalformed) as e:
        await as_foreigner(client, {**YUKI, "personal_id_number": number})
    assert (Code.INVALID_ARGUMENT, True) == (e.value.code, "6-20 ASCII digits" in e.value.message)
    assert idh.provider is not None
    assert 0 == idh.provider.hits


async def test_no_citizen_structure_is_applied_to_a_foreigner(idh: IdHarness) -> None:
    """A declared sex is not cross-checked with a foreigner's number, and its digits encode no
    birth year: the registry decides (a citizen's rules would refuse this 12-digit number)."""
    client = await idh.client()
    att = await as_foreigner(client, MARIE, sex="male")
    assert ("foreigner", "16_17") == (att.personal_id_type, att.age_band)


async def test_ages_and_guardians_apply_as_for_citizens(idh: IdHarness) -> None:
    """A foreign child under 16 is sent to the guardian route (R1, P6) and may not livestream
    commercially (P7); a verified foreign adult may be a child's guardian."""
    client = await idh.client()
    with pytest.raises(errors.GuardianRequired):
        await as_foreigner(client, LUCAS, account="lucas")
    with pytest.raises(errors.GuardianManagedNoCommercialLivestream):
        await as_foreigner(client, LUCAS, account="lucas", purpose="commercial_livestream")
    await as_foreigner(client, YUKI, account="yuki")
    link = await client.link_guardian(
        child_account_id="lucas",
        child_date_of_birth=LUCAS["date_of_birth"],
        guardian_account_id="yuki",
        guardian_date_of_birth=YUKI["date_of_birth"],
        relationship="parent",
        guardian_consent=True,
        child_consent=True,
    )
    assert ("personal_id", True, "under_16") == (
        link.attestation.method,
        link.attestation.guardian_managed,
        link.attestation.age_band,
    )


async def test_the_kind_is_audited_and_reported_never_the_number(
    idh: IdHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record of the attempt says `id_type`; GetReport counts attestations by kind; the
    number, name and date of birth appear in no record and no log line (P9)."""
    caplog.set_level(logging.DEBUG)
    client = await idh.client()
    await as_foreigner(client, YUKI)
    with pytest.raises(errors.PersonalIdMalformed):
        await as_foreigner(client, {**YUKI, "personal_id_number": "1"}, account="acc-2")
    await as_citizen(client, "an")
    auditor = await idh.client("alpha", Role.AUDITOR)
    records = (await auditor.query_audit_records()).records
    assert [
        ("acc-f", "id_check_started", "foreigner"),
        ("acc-f", "id_check", "foreigner"),
        ("acc-f", "attestation_issued", "foreigner"),
        ("acc-2", "id_check_started", "foreigner"),
        ("an", "id_check_started", "citizen"),
        ("an", "id_check", "citizen"),
        ("an", "attestation_issued", "citizen"),
    ] == [(r.record["account"], r.record["event"], r.record["id_type"]) for r in records]
    start = datetime.datetime.fromtimestamp(idh.clock.now() - 60, datetime.UTC)
    counts = await auditor.get_report(from_time=start, to_time=start + datetime.timedelta(hours=1))
    assert (1, 1) == (counts["id_type:foreigner"], counts["id_type:citizen"])
    haystack = [r.raw for r in records] + [r.getMessage() for r in caplog.records]
    secrets = ("3920071154", "Tanaka", "1988-01-22")
    assert [] == [(s, h) for s in secrets for h in haystack if s in h]


async def test_an_unknown_type_is_field_invalid(idh: IdHarness) -> None:
    """The SDK refuses a type other than citizen or foreigner before calling."""
    client = await idh.client()
    with pytest.raises(errors.FieldInvalid) as e:
        await as_foreigner(client, YUKI, personal_id_type="tourist")
    assert "personal_id_type" == e.value.metadata["field"]
