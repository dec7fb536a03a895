"""No tiers (policy R8): every platform gets the same rules, decisions and limits, whatever its
size. A real server over the pair store (real Redis + PostgreSQL), driven through the shipped
client: platform alpha first carries heavy traffic (many verifications and decisions),
platform beta none; then the same calls give both the same answers, refusal for refusal and
retry-after for retry-after, and each has a send budget of the same size, its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import pytest

from xacthuc.client import ACTIONS, AsyncClient
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import SendLimitExceeded, XacthucError
from xacthuc.server.app import build_app
from xacthuc.server.runtime import start_server

from ..conftest import emptied_database, pair_store
from .conftest import START, CapturingSms, Harness, make_keys, make_settings

BUDGET = 30  # sends per platform and hour, one setting for every platform
TRAFFIC = 20  # verifications alpha carries before the comparison


@pytest.fixture
async def harness(
    redis_url: str, redis_namespace: str, database_url: str
) -> AsyncIterator[Harness]:
    database = await emptied_database(database_url)
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(sends_per_platform_hour=BUDGET, max_accounts_per_phone=2),
        store=pair_store(redis_url, redis_namespace, database),
        sms=sms,
        clock=clock,
        api_keys=keys,
        database=database,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)


def phone(platform: str, n: int) -> str:
    return f"09{'1' if platform == 'alpha' else '3'}{n:07d}"


def ip(n: int) -> str:
    return f"198.51.{n // 250}.{n % 250 + 1}"


async def outcome(call: Awaitable[object]) -> str:
    """What a call answered: its refusal's reason and retry-after, or "ok"."""
    try:
        await call
    except XacthucError as e:
        return f"{e.reason} {e.retry_after}"
    return "ok"


async def verify(h: Harness, c: AsyncClient, platform: str, account: str, n: int) -> str:
    challenge = await c.start_phone_verification(
        account_id=account, phone_number=phone(platform, n), client_ip=ip(n)
    )
    return await outcome(
        c.confirm_phone_verification(
            challenge_id=challenge.challenge_id,
            account_id=account,
            code=h.sms.code_for(challenge.challenge_id),
        )
    )


async def decisions(c: AsyncClient, account: str) -> list[tuple[str, bool, str, str]]:
    found = []
    for action in ACTIONS:
        d = await c.authorize(account_id=account, action=action)
        found.append((action.value, d.allowed, d.reason, d.rule))
    return found


async def rules(h: Harness, platform: str) -> list[object]:
    """The same calls on `platform`: decisions before and after verification and revocation,
    the resend cool-down, wrong codes, the accounts per number."""
    c = await h.client(platform)
    seen: list[object] = [await decisions(c, "acc-new")]
    seen.append(await verify(h, c, platform, "acc-new", 900))
    seen.append(await decisions(c, "acc-new"))
    h.clock.advance(20)
    seen.append(
        await outcome(
            c.start_phone_verification(
                account_id="acc-new", phone_number=phone(platform, 900), client_ip=ip(900)
            )
        )
    )
    challenge = await c.start_phone_verification(
        account_id="acc-wrong", phone_number=phone(platform, 901), client_ip=ip(901)
    )
    right = h.sms.code_for(challenge.challenge_id)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for code in [wrong] * 5 + [right]:
        seen.append(
            await outcome(
                c.confirm_phone_verification(
                    challenge_id=challenge.challenge_id, account_id="acc-wrong", code=code
                )
            )
        )
    h.clock.advance(100)
    for account in ("acc-p8-1", "acc-p8-2"):
        seen.append(await verify(h, c, platform, account, 902))
        h.clock.advance(61)
    seen.append(
        await outcome(
            c.start_phone_verification(
                account_id="acc-p8-3", phone_number=phone(platform, 902), client_ip=ip(902)
            )
        )
    )
    await c.revoke_attestation(account_id="acc-new", reason="account_deleted")
    seen.append(await decisions(c, "acc-new"))
    return seen


async def sends_until_refused(h: Harness, platform: str, first: int) -> int:
    """Start verifications on fresh numbers until the platform's send budget refuses one;
    how many were sent."""
    c = await h.client(platform)
    n = first
    while True:
        try:
            await c.start_phone_verification(
                account_id=f"acc-budget-{n}", phone_number=phone(platform, n), client_ip=ip(n)
            )
        except SendLimitExceeded:
            return n - first
        n += 1


async def test_a_large_and_a_small_platform_get_the_same_decisions_and_limits(
    harness: Harness,
) -> None:
    alpha = await harness.client("alpha")
    for n in range(TRAFFIC):  # alpha's traffic: verifications and decisions
        assert "ok" == await verify(harness, alpha, "alpha", f"acc-{n}", n)
        await decisions(alpha, f"acc-{n}")

    on_alpha = await rules(harness, "alpha")
    used = {"alpha": len(harness.sms.messages)}
    on_beta = await rules(harness, "beta")
    used["beta"] = len(harness.sms.messages) - used["alpha"]

    assert on_alpha == on_beta
    limits = [on_alpha[3], on_alpha[9], on_alpha[12]]  # each limit was reached
    assert ["RESEND_TOO_SOON 40.0", "OTP_ATTEMPTS_EXCEEDED None", "PHONE_ACCOUNT_LIMIT None"] == (
        limits
    )
    left = {p: await sends_until_refused(harness, p, 1000) for p in ("alpha", "beta")}
    assert {"alpha": BUDGET, "beta": BUDGET} == {p: used[p] + left[p] for p in left}
    assert left["alpha"] < left["beta"]  # each spends its own budget
