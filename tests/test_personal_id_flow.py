"""PersonalIdVerifier over the memory store: what an attempt costs and what a refusal says."""

from __future__ import annotations

import asyncio
import datetime
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
