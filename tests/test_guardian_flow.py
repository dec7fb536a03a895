"""Guardian linking in Python (issue 4): the reference, the child's token claims, page tokens, and
the aging-out sweeper, over the in-memory store with a fixed clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.age import start_of_day, turns_at
from xacthuc.domain.b64 import b64url_encode
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.errors import FieldInvalid, IdempotencyKeyReused
from xacthuc.domain.keyed import Pseudonymizer
from xacthuc.domain.records import (
    AttestationRecord,
    CodeCheck,
    Limits,
    LinkResult,
    NewChallenge,
    PendingAttestation,
)
from xacthuc.domain.tokens import SigningKey, TokenSigner
from xacthuc.verifiers.age_out import AgeOutSweeper
from xacthuc.verifiers.guardian_flow import GuardianLinker, Relationship, guardian_ref

NOW = start_of_day(dt.date(2027, 1, 15)) + 12 * 3600
LIMITS = Limits(max_children_per_guardian=10)


async def verified_guardian(
    store: MemoryStore, platform: str = "alpha", account: str = "mum"
) -> None:
    await store.start_challenge(
        NewChallenge(
            platform, f"ch-{account}", account, "ph_" + "1" * 32, "ip_x", "m", "", NOW, NOW + 300
        ),
        LIMITS,
    )
    await store.confirm_sent(platform, f"ch-{account}", account, NOW)
    await store.check_code(
        CodeCheck(
            platform,
            f"ch-{account}",
            account,
            ("m",),
            NOW,
            PendingAttestation(f"tok-{account}", NOW, NOW + 86_400, "phone_otp"),
        ),
        LIMITS,
    )


def linker(store: MemoryStore, clock: FixedClock, ttl: int = 86_400) -> GuardianLinker:
    return GuardianLinker(
        store=store,
        clock=clock,
        pseudonyms=Pseudonymizer(b"p" * 32),
        limits=LIMITS,
        token_ttl_seconds=ttl,
    )


async def link(g: GuardianLinker, child: str, born: dt.date, platform: str = "alpha") -> LinkResult:
    return await g.link(
        platform=platform,
        child_account_id=child,
        child_date_of_birth=born,
        guardian_account_id="mum",
        guardian_date_of_birth=dt.date(1980, 1, 1),
        relationship=Relationship.PARENT,
        guardian_consent=True,
        child_consent=True,
    )


def test_the_guardian_reference_is_platform_scoped() -> None:
    """g_ + 16 hex; the same guardian differs between platforms; no input shows through."""
    a, b = guardian_ref("alpha", "ph_abc"), guardian_ref("beta", "ph_abc")
    assert re.fullmatch(r"g_[0-9a-f]{16}", a)
    assert a != b
    assert a == guardian_ref("alpha", "ph_abc")
    assert "abc" not in a


def test_a_keyed_call_has_a_link_id_derived_from_platform_and_key() -> None:
    """gl_ + 22 base64url, the same in every process with the pseudonym key, per platform and
    key; the request digest is keyed and shows none of its fields."""
    p, other = Pseudonymizer(b"p" * 32), Pseudonymizer(b"q" * 32)
    a = p.link_call("alpha", "k-1")
    assert re.fullmatch(r"gl_[A-Za-z0-9_-]{22}", a)
    assert a == Pseudonymizer(b"p" * 32).link_call("alpha", "k-1")
    assert len({a, p.link_call("beta", "k-1"), p.link_call("alpha", "k-2")}) == 3
    assert a != other.link_call("alpha", "k-1")
    digest = p.link_request("kid", "2015-03-10", "mum", "1980-01-01", "parent", "True", "True")
    assert re.fullmatch(r"lr_[0-9a-f]{32}", digest)
    assert digest != p.link_request(
        "kid", "2015-03-11", "mum", "1980-01-01", "parent", "True", "True"
    )


async def test_a_retry_with_the_key_answers_as_the_first_call() -> None:
    """Same key and fields: the first result, no second token; another date of birth with the
    key: IDEMPOTENCY_KEY_REUSED; without a key: a renewal."""
    clock = FixedClock(NOW)
    store = MemoryStore()
    await verified_guardian(store)
    g = linker(store, clock)

    async def keyed(born: dt.date, key: str = "k-1") -> LinkResult:
        return await g.link(
            platform="alpha",
            child_account_id="kid",
            child_date_of_birth=born,
            guardian_account_id="mum",
            guardian_date_of_birth=dt.date(1980, 1, 1),
            relationship=Relationship.PARENT,
            guardian_consent=True,
            child_consent=True,
            idempotency_key=key,
        )

    first = await keyed(dt.date(2015, 3, 10))
    clock.advance(60)
    assert first == await keyed(dt.date(2015, 3, 10))
    assert Pseudonymizer(b"p" * 32).link_call("alpha", "k-1") == first.link_id
    with pytest.raises(IdempotencyKeyReused):
        await keyed(dt.date(2015, 3, 11))
    with pytest.raises(FieldInvalid):
        await keyed(dt.date(2015, 3, 10), key="k 1")
    renewed = await link(g, "kid", dt.date(2015, 3, 10))
    assert (first.link_id, True) == (renewed.link_id, renewed.renewed)
    assert renewed.attestation.token_id != first.attestation.token_id


def _record(
    *,
    guardian_managed: bool = False,
    age_band: str = "",
    guardian_ref: str = "",
    aged_out_at: float | None = None,
    status_idx: int = -1,
) -> AttestationRecord:
    return AttestationRecord(
        account_id="kid",
        method="phone_otp",
        token_id="t",
        verified_at=NOW,
        issued_at=NOW,
        expires_at=NOW + 100,
        guardian_managed=guardian_managed,
        age_band=age_band,
        guardian_ref=guardian_ref,
        aged_out_at=aged_out_at,
        status_idx=status_idx,
    )


def test_token_claims_of_a_child_and_the_status_reference() -> None:
    """age_band when known, guardian_ref for a child, exp_reason when exp is the birthday; the
    status claim only when the signer has a status list and the record an index."""
    key = SigningKey.generate()
    plain = TokenSigner(key, issuer="x")
    adult = plain.claims("alpha", _record(age_band="adult", status_idx=3))
    assert ("adult", None, None, None) == (
        adult["age_band"],
        adult.get("guardian_ref"),
        adult.get("exp_reason"),
        adult.get("status"),
    )
    phone = plain.claims("alpha", _record())
    assert [] == [c for c in ("age_band", "guardian_ref", "exp_reason") if c in phone]

    with_list = TokenSigner(
        key, issuer="x", status_list=lambda p, i: {"idx": i, "uri": f"https://x/{p}/0"}
    )
    child = _record(
        guardian_managed=True,
        age_band="under_16",
        guardian_ref="g_1",
        aged_out_at=NOW + 100,
        status_idx=7,
    )
    claims = with_list.claims("alpha", child)
    assert (
        "under_16",
        "g_1",
        "age_16",
        {"status_list": {"idx": 7, "uri": "https://x/alpha/0"}},
    ) == (
        claims["age_band"],
        claims["guardian_ref"],
        claims["exp_reason"],
        claims["status"],
    )
    assert "exp_reason" not in with_list.claims(
        "alpha", _record(guardian_managed=True, aged_out_at=NOW + 101, guardian_ref="g_1")
    )
    assert "status" not in with_list.claims("alpha", _record(status_idx=-1))


async def test_page_tokens_continue_only_their_own_window() -> None:
    store, clock = MemoryStore(), FixedClock(NOW)
    await verified_guardian(store)
    g = linker(store, clock)
    for n in range(5):
        await link(g, f"kid-{n}", dt.date(2012, 1, 1 + n))
    frm, to = turns_at(dt.date(2012, 1, 1), 16), turns_at(dt.date(2012, 1, 6), 16)

    first = await g.aging_out(
        platform="alpha", from_time=frm, to_time=to, page_size=3, page_token=""
    )
    rest = await g.aging_out(
        platform="alpha", from_time=frm, to_time=to, page_size=3, page_token=first.next_page_token
    )

    assert (["kid-0", "kid-1", "kid-2"], ["kid-3", "kid-4"], "") == (
        first.account_ids,
        rest.account_ids,
        rest.next_page_token,
    )
    for token, window in (
        (first.next_page_token, (frm, to + 1)),
        ("bm90IGpzb24", (frm, to)),
        ("W10", (frm, to)),  # "[]"
        ("é", (frm, to)),
    ):
        with pytest.raises(FieldInvalid):
            await g.aging_out(
                platform="alpha",
                from_time=window[0],
                to_time=window[1],
                page_size=3,
                page_token=token,
            )
    default = await g.aging_out(
        platform="alpha", from_time=frm, to_time=to, page_size=0, page_token=""
    )
    assert 5 == len(default.account_ids)
    for bad in ((None, to), (frm, None)):
        with pytest.raises(FieldInvalid):
            await g.aging_out(
                platform="alpha", from_time=bad[0], to_time=bad[1], page_size=1, page_token=""
            )


async def test_the_sweeper_ends_every_aged_out_link_in_batches_on_every_platform() -> None:
    store, clock = MemoryStore(), FixedClock(NOW)
    for platform in ("alpha", "beta"):
        await verified_guardian(store, platform)
    g = linker(store, clock)
    for n in range(5):
        await link(g, f"kid-{n}", dt.date(2011, 2, 1 + n))
    await link(g, "kid-b", dt.date(2011, 2, 1), "beta")
    await link(g, "kid-later", dt.date(2012, 2, 1))
    sweeper = AgeOutSweeper(store, clock, lambda: {"alpha", "beta", "gamma"}, batch=2)

    assert 0 == await sweeper.run_once()
    assert 6 == await sweeper.run_once(turns_at(dt.date(2011, 2, 5), 16))
    assert 0 == await sweeper.run_once(turns_at(dt.date(2011, 2, 5), 16))
    assert ["kid-later"] == [e.account_id for e in await store.list_aging_out("alpha", 0, 1e12, 10)]


async def test_the_sweeper_runs_in_the_background_until_stopped() -> None:
    store, clock = MemoryStore(), FixedClock(NOW)
    await verified_guardian(store)
    await link(linker(store, clock), "kid-1", dt.date(2011, 2, 1))
    clock.set(turns_at(dt.date(2011, 2, 1), 16))
    sweeper = AgeOutSweeper(store, clock, lambda: ["alpha"], interval_seconds=0.01)
    sweeper.start()
    for _ in range(200):
        if not await store.list_aging_out("alpha", 0, 1e12, 10):
            break
        await asyncio.sleep(0.01)
    await sweeper.stop()
    await sweeper.stop()  # idempotent
    got = await store.get_attestation("alpha", "kid-1")
    assert got is not None
    assert "aged_out" == got.status


@pytest.mark.parametrize(
    "body",
    [
        '{"a": "kid-0", "s": NaN, "f": %(f)r, "t": %(t)r}',
        '{"a": "kid-0", "s": Infinity, "f": %(f)r, "t": %(t)r}',
        '{"a": "kid-0", "s": -Infinity, "f": %(f)r, "t": %(t)r}',
        '{"a": 7, "s": 1.0, "f": %(f)r, "t": %(t)r}',
        '{"a": "bad id", "s": 1.0, "f": %(f)r, "t": %(t)r}',
    ],
    ids=["nan", "inf", "-inf", "number-account", "malformed-account"],
)
async def test_a_forged_page_token_is_field_invalid(body: str) -> None:
    """A token of the right window whose position is no birthday instant (NaN, infinities) or
    no account id is FIELD_INVALID `page_token`: it came from no response."""
    store, clock = MemoryStore(), FixedClock(NOW)
    await verified_guardian(store)
    g = linker(store, clock)
    await link(g, "kid-0", dt.date(2012, 1, 1))
    frm, to = turns_at(dt.date(2012, 1, 1), 16), turns_at(dt.date(2012, 1, 6), 16)
    token = b64url_encode((body % {"f": frm, "t": to}).encode())
    with pytest.raises(FieldInvalid) as e:
        await g.aging_out(
            platform="alpha", from_time=frm, to_time=to, page_size=1, page_token=token
        )
    assert "page_token" == e.value.metadata["field"]
