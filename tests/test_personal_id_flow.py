"""PersonalIdVerifier over the memory store: what an attempt costs and what a refusal says."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest

from xacthuc.adapters.registry.sandbox import SandboxRegistry
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import (
    IdAttemptsExceeded,
    PersonalIdAccountLimit,
    PersonalIdNotMatched,
    RegistryUnavailable,
    XacthucError,
)
from xacthuc.domain.keyed import Pseudonymizer
from xacthuc.domain.personal_id import IdType, Sex
from xacthuc.domain.records import AttestationRecord, Limits
from xacthuc.ports.registry import RegistryAnswer, RegistryQuery, RegistryUnavailableError
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier, Purpose

START = 1_800_000_000.0
AN = {
    "number": "001085336181",
    "full_name": "Nguyễn Văn An",
    "date_of_birth": datetime.date(1985, 3, 14),
}
UNKNOWN = {**AN, "number": "001085999999"}


class FlakyRegistry:
    """The sandbox people, behind a registry that can be down (raises) or hang."""

    def __init__(self) -> None:
        self.people = SandboxRegistry.from_file()
        self.mode = "up"  # "up", "down" or "hang"
        self.calls = 0

    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        self.calls += 1
        if self.mode == "down":
            raise RegistryUnavailableError("registry down (test)")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return await self.people.match(query)

    async def aclose(self) -> None:
        return None


def flow(
    registry: FlakyRegistry, limits: Limits | None = None, deadline: float = 10.0
) -> tuple[PersonalIdVerifier, MemoryStore, FixedClock]:
    store, clock = MemoryStore(), FixedClock(START)
    verifier = PersonalIdVerifier(
        store=store,
        registry=registry,
        clock=clock,
        pseudonyms=Pseudonymizer(b"p" * 32),
        limits=limits or Limits(),
        token_ttl_seconds=86_400,
        registry_deadline_seconds=deadline,
    )
    return verifier, store, clock


async def by_id(
    verifier: PersonalIdVerifier, person: dict[str, Any], account: str = "acc-1"
) -> AttestationRecord:
    return await verifier.verify(
        platform="alpha",
        account_id=account,
        sex=None,
        purpose=Purpose.NO_VIETNAMESE_MOBILE,
        declared_no_vietnamese_mobile=True,
        client_ip="203.0.113.20",
        **person,
    )


def shape(e: XacthucError) -> tuple[object, ...]:
    return (type(e), e.code, e.reason, e.message, e.metadata, e.retry_after)


@pytest.mark.parametrize("mode", ["down", "hang"])
async def test_a_registry_outage_costs_the_user_nothing(mode: str) -> None:
    """Defect 13.2: more unavailable attempts than the hourly budgets allow, then the registry
    is back and the right data verifies at once (not ID_ATTEMPTS_EXCEEDED for an hour)."""
    registry = FlakyRegistry()
    limits = Limits(id_attempts_per_account_hour=3, id_attempts_per_number_hour=3)
    verifier, store, _ = flow(registry, limits, deadline=0.05)
    registry.mode = mode
    for _ in range(5):
        with pytest.raises(RegistryUnavailable):
            await by_id(verifier, AN)
    assert 5 == registry.calls

    registry.mode = "up"
    assert "personal_id" == (await by_id(verifier, AN)).method
    refunds = [r for r in await store.audit_records("alpha") if '"refunded"' in r]
    assert 6 == len(refunds)  # five outages (both windows) and the match (the number's)
    assert 5 == sum('"refunded":"account,personal_id"' in r for r in refunds)


async def test_non_matches_still_use_up_the_budget() -> None:
    """Only a missing answer is free: the 4th attempt after 3 non-matches is refused."""
    registry = FlakyRegistry()
    verifier, _, _ = flow(registry, Limits(id_attempts_per_account_hour=3, id_max_failures=10))
    for n in range(3):
        with pytest.raises(PersonalIdNotMatched):
            await by_id(verifier, {**AN, "full_name": f"Sai Tên {n}"})
    with pytest.raises(IdAttemptsExceeded):
        await by_id(verifier, AN)
    assert 3 == registry.calls


async def test_the_eleventh_account_within_the_hour_is_told_the_cap() -> None:
    """Defect 13.4: default limits, eleven accounts on one number in a minute: the 11th gets
    PERSONAL_ID_ACCOUNT_LIMIT without retry-after, and a wrong name on that number looks like
    a wrong name on a number nobody has."""
    registry = FlakyRegistry()
    verifier, _, clock = flow(registry)
    for n in range(10):
        await by_id(verifier, AN, account=f"acc-{n}")
        clock.advance(5)

    with pytest.raises(PersonalIdAccountLimit) as capped:
        await by_id(verifier, AN, account="acc-10")
    assert (None, {}) == (capped.value.retry_after, capped.value.metadata)

    with pytest.raises(PersonalIdNotMatched) as known:
        await by_id(verifier, {**AN, "full_name": "Nguyễn Văn Bình"}, account="probe-1")
    with pytest.raises(PersonalIdNotMatched) as unknown:
        await by_id(verifier, UNKNOWN, account="probe-2")
    assert shape(known.value) == shape(unknown.value)


def _refusal_fields(record: str) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(record)
    return fields


FOREIGNER = {
    "number": "8001234567",
    "full_name": "John Smith",
    "date_of_birth": AN["date_of_birth"],
}


@pytest.mark.parametrize(
    ("change", "reason", "keeps"),
    [
        # Refused before the number is looked at; the number is valid, so its pseudonym stays.
        ({"client_ip": "not-an-ip"}, "FIELD_INVALID", {"purpose", "id_type", "personal_id"}),
        ({"client_ip": "fe80::1%eth0"}, "FIELD_INVALID", {"purpose", "id_type", "personal_id"}),
        ({"purpose": None}, "FIELD_INVALID", {"client", "id_type", "personal_id"}),
        ({"id_type": None}, "FIELD_INVALID", {"client", "purpose"}),
        ({"full_name": "   "}, "FIELD_INVALID", {"client", "purpose", "id_type", "personal_id"}),
        (
            {"full_name": "Nguyễn \u202eVăn An"},
            "FIELD_INVALID",
            {"client", "purpose", "id_type", "personal_id"},
        ),
        (
            {"declared_no_vietnamese_mobile": False},
            "PHONE_ROUTE_REQUIRED",
            {"client", "purpose", "id_type", "personal_id"},
        ),
        (
            {"date_of_birth": datetime.date(2015, 3, 14), "number": "001215336181"},
            "GUARDIAN_REQUIRED",
            {"client", "purpose", "id_type", "personal_id"},
        ),
        # The number did not validate, or could not be checked: no pseudonym of it.
        ({"date_of_birth": None}, "DATE_OF_BIRTH_INVALID", {"client", "purpose", "id_type"}),
        ({"number": "00108533618x"}, "PERSONAL_ID_MALFORMED", {"client", "purpose", "id_type"}),
        (
            {"number": "003085336181"},
            "PERSONAL_ID_PLACE_CODE_UNKNOWN",
            {"client", "purpose", "id_type"},
        ),
        (
            {"number": "001086336181"},
            "PERSONAL_ID_BIRTH_YEAR_MISMATCH",
            {"client", "purpose", "id_type"},
        ),
        ({"sex": Sex.FEMALE}, "PERSONAL_ID_SEX_MISMATCH", {"client", "purpose", "id_type"}),
        ({"number": "12345"}, "PERSONAL_ID_MALFORMED", {"client", "purpose", "id_type"}),
    ],
)
async def test_every_refusal_before_the_store_is_audited_without_an_unvalidated_number(
    change: dict[str, Any], reason: str, keeps: set[str]
) -> None:
    """Every attempt is audited (the module doc): a refusal before the store step leaves one
    `id_check_started` record, `refused`, with its reason and what of the request was valid;
    the number's pseudonym only when the number passed its structural check, never its digits."""
    registry = FlakyRegistry()
    verifier, store, _ = flow(registry)
    request: dict[str, Any] = {
        "platform": "alpha",
        "account_id": "acc-1",
        "sex": None,
        "purpose": Purpose.NO_VIETNAMESE_MOBILE,
        "declared_no_vietnamese_mobile": True,
        "client_ip": "203.0.113.20",
        "id_type": IdType.CITIZEN,
        **AN,
        **change,
    }
    with pytest.raises(XacthucError) as refused:
        await verifier.verify(**request)
    assert reason == refused.value.reason
    assert 0 == registry.calls
    (record,) = await store.audit_records("alpha")
    fields = _refusal_fields(record)
    assert ("id_check_started", "refused", reason, "acc-1") == (
        fields["event"],
        fields["outcome"],
        fields["reason"],
        fields["account"],
    )
    assert fields["attempt"].startswith("ia_")
    optional = {"client", "purpose", "id_type", "personal_id"}
    assert keeps == optional & set(fields)
    if "personal_id" in keeps:
        pseudonyms = Pseudonymizer(b"p" * 32)
        assert pseudonyms.personal_id(request["number"].strip()) == fields["personal_id"]
    assert request["number"] not in record
    assert str(request["number"]).strip()[3:] not in record


async def test_a_foreigners_refusal_keeps_the_pseudonym_of_a_valid_number_only() -> None:
    """A foreigner's number has only its form checked: valid form, its pseudonym (under the
    foreigners' key domain); another form, none."""
    registry = FlakyRegistry()
    verifier, store, _ = flow(registry)
    pseudonyms = Pseudonymizer(b"p" * 32)
    base: dict[str, Any] = {
        "platform": "alpha",
        "account_id": "acc-f",
        "sex": None,
        "purpose": Purpose.NO_VIETNAMESE_MOBILE,
        "client_ip": "203.0.113.20",
        "id_type": IdType.FOREIGNER,
        **FOREIGNER,
    }
    with pytest.raises(XacthucError):
        await verifier.verify(**base, declared_no_vietnamese_mobile=False)
    with pytest.raises(XacthucError):
        await verifier.verify(**{**base, "number": "80012x"}, declared_no_vietnamese_mobile=True)
    first, second = (_refusal_fields(r) for r in await store.audit_records("alpha"))
    assert ("PHONE_ROUTE_REQUIRED", "foreigner") == (first["reason"], first["id_type"])
    assert pseudonyms.personal_id("8001234567", "foreigner") == first["personal_id"]
    assert ("PERSONAL_ID_MALFORMED", "foreigner") == (second["reason"], second["id_type"])
    assert "personal_id" not in second


async def test_a_malformed_account_id_is_refused_unaudited() -> None:
    """No account to name: FIELD_INVALID and no record, as in every flow."""
    verifier, store, _ = flow(FlakyRegistry())
    with pytest.raises(XacthucError) as refused:
        await by_id(verifier, AN, account="bad account")
    assert ("FIELD_INVALID", {"field": "account_id"}) == (
        refused.value.reason,
        refused.value.metadata,
    )
    assert [] == await store.audit_records("alpha")
