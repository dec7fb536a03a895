"""Account locks end to end (R7): a real server over real Redis, through the shipped SDK.

For every case the online decision (Authorize) and the SDK's offline decision (the token plus
the status list, over HTTP and over GetStatusList) must agree, as in test_authorize.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from xacthuc.client import Client, Decision
from xacthuc.domain import errors
from xacthuc.domain.statuslist import SUSPENDED, VALID, read_status_list_token
from xacthuc.server.auth import Role

from . import test_authorize
from .test_authorize import (
    ISSUER,
    LIST_TTL,
    OK,
    AzHarness,
    Offline,
    agree,
    claims,
    table,
    verify_phone,
)

# The harness of test_authorize.py: a server with a keyring and the well-known listener, and
# the platform's offline decision over HTTP and over GetStatusList.
az = test_authorize.az
offline = test_authorize.offline

DAY = 86_400.0
LOCKED = table(Decision(False, "ACCOUNT_LOCKED", "R7"))
PHONE_OK = table(OK, Decision(False, "PERSONAL_ID_REQUIRED", "R4"))
REF = "CV-2027/A05-123"


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_a_lock_refuses_everything_but_reading_online_and_offline(
    az: AzHarness, offline: Offline
) -> None:
    """R7: while a temporary lock holds, every action but reading is ACCOUNT_LOCKED, online
    and offline (the token's status is SUSPENDED); introspection shows the lock."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-l")
    until = az.clock.now() + 7 * DAY
    result = await client.lock_account(
        account_id="acc-l",
        kind="temporary",
        until=at(until),
        reason="unlawful_content_5_in_30_days",
        request_reference=REF,
    )
    assert ("temporary", at(until), 1, False) == (
        result.lock.kind,
        result.lock.until,
        result.lock.temporary_locks,
        result.unchanged,
    )
    assert LOCKED == await agree(client, offline, "acc-l", att.token)

    intro = await client.introspect_attestation(account_id="acc-l")
    assert intro.lock is not None
    assert ("active", "temporary", REF) == (
        intro.status,
        intro.lock.kind,
        intro.lock.request_reference,
    )
    eligibility = await client.get_commercial_livestream_eligibility(account_id="acc-l")
    assert (False, "ACCOUNT_LOCKED") == (eligibility.eligible, eligibility.reason)

    uri = claims(att.token)["status"]["status_list"]["uri"]
    async with httpx.AsyncClient() as http:
        served = (await http.get(uri)).text
    listed = read_status_list_token(
        served, await client.get_jwks(), expected_uri=uri, now=az.clock.now(), issuer=ISSUER
    )
    idx = claims(att.token)["status"]["status_list"]["idx"]
    assert (2, SUSPENDED) == (listed.status_list.bits, listed.status_list.get(idx))


async def test_a_lock_survives_reverification_and_ends_by_itself(
    az: AzHarness, offline: Offline
) -> None:
    """Verifying again during the lock gives a token that is locked too; at `until` the lock
    ends with no call, and a fresh token is allowed online and offline."""
    client = await az.client()
    await verify_phone(az, client, "acc-t")
    until = az.clock.now() + 7 * DAY
    await client.lock_account(
        account_id="acc-t",
        kind="temporary",
        until=at(until),
        reason="unlawful_content_10_in_90_days",
        request_reference=REF,
    )
    az.clock.advance(DAY)
    again = await verify_phone(az, client, "acc-t")
    assert LOCKED == await agree(client, offline, "acc-t", again.token)

    az.clock.set(until)
    fresh = await verify_phone(az, client, "acc-t")
    assert PHONE_OK == await agree(client, offline, "acc-t", fresh.token)
    assert None is (await client.introspect_attestation(account_id="acc-t")).lock
    unlock = await client.unlock_account(account_id="acc-t", reason="request_withdrawn")
    assert (False, None) == (unlock.was_locked, unlock.unlocked_at)


async def test_unlock_and_permanent_locks(az: AzHarness, offline: Offline) -> None:
    """A permanent lock holds until UnlockAccount; offline verifiers see the unlock once their
    cached list is older than its ttl; the same lock again is `unchanged`."""
    client = await az.client()
    att = await verify_phone(az, client, "acc-p")
    first = await client.lock_account(
        account_id="acc-p", kind="permanent", reason="national_security", request_reference=REF
    )
    again = await client.lock_account(
        account_id="acc-p", kind="permanent", reason="national_security", request_reference=REF
    )
    assert (None, False, True, first.lock) == (
        first.lock.until,
        first.unchanged,
        again.unchanged,
        again.lock,
    )
    az.clock.advance(40 * DAY)
    fresh = await verify_phone(az, client, "acc-p")  # the first token expired meanwhile
    assert LOCKED == await agree(client, offline, "acc-p", fresh.token)
    # The token issued before the lock (expired now) is marked as well: offline says LOCKED.
    assert Decision(False, "ACCOUNT_LOCKED", "R7") == await offline.decide(att.token, "post")

    unlock = await client.unlock_account(account_id="acc-p", reason="appeal_upheld")
    assert (True, at(az.clock.now())) == (unlock.was_locked, unlock.unlocked_at)
    assert Decision(False, "ACCOUNT_LOCKED", "R7") == await offline.decide(fresh.token, "post")
    az.clock.advance(LIST_TTL)
    assert PHONE_OK == await agree(client, offline, "acc-p", fresh.token)
    status = await offline.lists.token_status(
        await offline.keys.verify(fresh.token, now=az.clock.now())
    )
    assert VALID == status


async def test_an_account_never_verified_can_be_locked(az: AzHarness, offline: Offline) -> None:
    """The lock is kept for the account; with no attestation the answer stays
    NOT_AUTHENTICATED (offline cannot know more); once verified, ACCOUNT_LOCKED."""
    client = await az.client()
    await client.lock_account(
        account_id="new-1", kind="permanent", reason="national_security", request_reference=REF
    )
    assert table(Decision(False, "NOT_AUTHENTICATED", "R6")) == await agree(
        client, offline, "new-1", None
    )
    att = await verify_phone(az, client, "new-1")
    assert LOCKED == await agree(client, offline, "new-1", att.token)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "temporary", "days": 7 - 0.01}, "until"),
        ({"kind": "temporary", "days": 30.01}, "until"),
        ({"kind": "temporary", "days": None}, "until"),
        ({"kind": "permanent", "days": 10}, "until"),
        ({"kind": "forever", "days": None}, "kind"),
        ({"kind": "temporary", "days": 7, "reason": "Spam!"}, "reason"),
        ({"kind": "temporary", "days": 7, "reason": ""}, "reason"),
        ({"kind": "temporary", "days": 7, "request_reference": ""}, "request_reference"),
        (
            {"kind": "temporary", "days": 7, "request_reference": "Nguyen Van A"},
            "request_reference",
        ),
        ({"kind": "temporary", "days": 7, "account_id": "bad id!"}, "account_id"),
    ],
)
async def test_lock_limits_are_field_invalid(
    az: AzHarness, fields: dict[str, Any], field: str
) -> None:
    """R7's limits (7-30 days for a temporary lock, no end for a permanent one) and the codes'
    alphabets: FIELD_INVALID naming the field; nothing is locked or audited."""
    client = await az.client()
    days = fields.get("days")
    with pytest.raises(errors.FieldInvalid) as e:
        await client.lock_account(
            account_id=fields.get("account_id", "acc-x"),
            kind=fields["kind"],
            until=None if days is None else at(az.clock.now() + days * DAY),
            reason=fields.get("reason", "unlawful_content_5_in_30_days"),
            request_reference=fields.get("request_reference", REF),
        )
    assert field == e.value.metadata["field"]
    assert None is (await client.introspect_attestation(account_id="acc-x")).lock


async def test_the_bounds_themselves_are_allowed(az: AzHarness) -> None:
    """Exactly 30 days, and 7 days less a few minutes of clock difference, are accepted."""
    client = await az.client()
    now = az.clock.now()
    for account, until in (("b-30", now + 30 * DAY), ("b-7", now + 7 * DAY - 300)):
        result = await client.lock_account(
            account_id=account,
            kind="temporary",
            until=at(until),
            reason="unlawful_content_5_in_30_days",
            request_reference=REF,
        )
        assert at(until) == result.lock.until


async def test_locks_are_audited_and_reported(az: AzHarness) -> None:
    """Every lock and unlock is one audit record and counted by GetReport."""
    client = await az.client()
    now = az.clock.now()
    await client.lock_account(
        account_id="acc-r",
        kind="temporary",
        until=at(now + 10 * DAY),
        reason="unlawful_content_5_in_30_days",
        request_reference=REF,
    )
    await client.lock_account(
        account_id="acc-r", kind="permanent", reason="three_temporary_locks", request_reference=REF
    )
    await client.unlock_account(account_id="acc-r", reason="appeal_upheld")
    auditor = await az.client("alpha", Role.AUDITOR)
    records = (await auditor.query_audit_records(account_id="acc-r")).records
    assert [
        ("account_locked", "unlawful_content_5_in_30_days", "temporary", int(now + 10 * DAY)),
        ("account_locked", "three_temporary_locks", "permanent", None),
        ("account_unlocked", "appeal_upheld", "permanent", None),
    ] == [
        (r.record["event"], r.record["reason"], r.record["kind"], r.record.get("lock_until"))
        for r in records
    ]
    assert {REF} == {r.record["request"] for r in records[:2]}
    counts = await auditor.get_report(from_time=at(now - 1), to_time=at(now + 60))
    assert (2, 1, 1, 1) == (
        counts["account_locks"],
        counts["lock_kind:temporary"],
        counts["lock_kind:permanent"],
        counts["account_unlocks"],
    )


async def test_blocking_client_locks_and_unlocks(az: AzHarness) -> None:
    """The sync Client has the same two calls."""
    client = await az.client()
    await verify_phone(az, client, "acc-s")

    def flow() -> tuple[object, ...]:
        with Client.connect(az.target, api_key=az.keys[("alpha", Role.PLATFORM)]) as c:
            c.lock_account(
                account_id="acc-s",
                kind="permanent",
                reason="national_security",
                request_reference=REF,
            )
            locked = c.authorize(account_id="acc-s", action="post")
            unlocked = c.unlock_account(account_id="acc-s", reason="appeal_upheld").was_locked
            return locked, unlocked, c.authorize(account_id="acc-s", action="post")

    assert (Decision(False, "ACCOUNT_LOCKED", "R7"), True, OK) == await asyncio.to_thread(flow)
