"""The compliance console (issue 14) in a real browser: Debian's Chromium driven by Playwright,
against a real server with the console listener on, over real Redis.

What an auditor sees must be what the report RPC gives; what the page calls verified must be
checked by the page itself (a tampered record, a checkpoint signed by another key: "not
verified"); only auditor keys get in, and a key never travels in a URL. Each page is kept
as a screenshot under var/console-screenshots/ (gitignored).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Browser, Page, Request, async_playwright
from prometheus_client import REGISTRY

from xacthuc.adapters.store.postgres import Database
from xacthuc.domain import errors
from xacthuc.domain.age import start_of_day
from xacthuc.domain.audit_verify import verify_export
from xacthuc.domain.checkpoint import Checkpoint, format_vkey, sign_note
from xacthuc.domain.clock import FixedClock
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.console import CSP, STATIC_DIR, STATIC_FILES
from xacthuc.server.runtime import start_server

from ..conftest import pair_store
from .conftest import START, CapturingSms, Harness, make_keys, make_settings

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "console-screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IP = "203.0.113.9"
DAY = 86_400.0
D1 = dt.date(2027, 1, 15)  # START's day in Vietnam
AN = {
    "personal_id_number": "001085336181",
    "full_name": "Nguyễn Văn An",
    "date_of_birth": dt.date(1985, 3, 14),
}
KID_BORN = dt.date(2011, 2, 10)  # 16 on 2027-02-10: ages out next month


@dataclass
class Console:
    h: Harness
    base: str
    redis_url: str
    namespace: str
    requests: list[Request] = field(default_factory=list)
    csp_errors: list[str] = field(default_factory=list)

    def key(self, role: Role = Role.AUDITOR, platform: str = "alpha") -> str:
        return self.h.keys[(platform, role)]

    @property
    def vkey(self) -> str:
        return self.h.app.audit_log.verifier_key("alpha")


async def _phone(h: Harness, account: str, phone: str) -> None:
    client = await h.client()
    ch = await client.start_phone_verification(account_id=account, phone_number=phone, client_ip=IP)
    await client.confirm_phone_verification(
        challenge_id=ch.challenge_id, account_id=account, code=h.sms.code_for(ch.challenge_id)
    )


async def seed(h: Harness) -> None:
    """Three days of activity on platform alpha, then a quiet fourth day (now)."""
    client = await h.client()
    # Day 1: two phone verifications.
    await _phone(h, "acc-1", "0912345678")
    await _phone(h, "acc-2", "0987654321")
    # Day 2: a personal-ID verification, a parent and a child who turns 16 next month.
    h.clock.advance(DAY)
    await client.verify_personal_id(
        account_id="acc-3",
        client_ip=IP,
        purpose="no_vietnamese_mobile",
        declared_no_vietnamese_mobile=True,
        **AN,  # type: ignore[arg-type]
    )
    await _phone(h, "mum", "0911222333")
    await client.link_guardian(
        child_account_id="kid-1",
        child_date_of_birth=KID_BORN,
        guardian_account_id="mum",
        guardian_date_of_birth=dt.date(1980, 5, 5),
        relationship="parent",
        guardian_consent=True,
        child_consent=True,
    )
    # Day 3: a lockout (3 wrong codes), an account lock (R7), an SMS that failed.
    h.clock.advance(DAY)
    ch = await client.start_phone_verification(
        account_id="acc-4", phone_number="0911111111", client_ip=IP
    )
    wrong = f"{(int(h.sms.code_for(ch.challenge_id)) + 1) % 1_000_000:06d}"
    for _ in range(3):
        with pytest.raises(errors.XacthucError):
            await client.confirm_phone_verification(
                challenge_id=ch.challenge_id, account_id="acc-4", code=wrong
            )
    await client.lock_account(
        account_id="acc-2",
        kind="temporary",
        until=datetime.fromtimestamp(h.clock.now() + 10 * DAY, UTC),
        reason="court_order",
        request_reference="CV-2027/1",
    )
    h.sms.fail = True
    with pytest.raises(errors.SmsDeliveryFailed):
        await client.start_phone_verification(
            account_id="acc-5", phone_number="0933444555", client_ip=IP
        )
    h.sms.fail = False
    h.clock.advance(DAY)  # day 4: nothing but the auditors' own calls


@pytest.fixture
async def console(
    redis_url: str, redis_namespace: str, database: Database
) -> AsyncIterator[Console]:
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(phone_max_failures=3, checkpoint_every_records=1),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=sms,
        clock=clock,
        api_keys=keys,
    )
    server = await start_server(app, "127.0.0.1:0", console_listen="127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    await seed(h)
    try:
        yield Console(h, f"http://127.0.0.1:{server.console_port}", redis_url, redis_namespace)
    finally:
        for c in h.clients:
            await c.close()
        await server.stop(grace=0)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def open_page(c: Console, browser: Browser, locale: str = "en-GB") -> Page:
    context = await browser.new_context(locale=locale, viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    page.on("request", lambda r: c.requests.append(r))
    page.on(
        "console",
        lambda m: c.csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    await page.goto(c.base + "/console/")
    return page


async def sign_in(page: Page, key: str, vkey: str) -> None:
    await page.fill("#api-key", key)
    await page.fill("#verifier-key", vkey)
    await page.click("#sign-in button[type=submit]")


async def ready(page: Page, name: str) -> None:
    await page.wait_for_selector(f'main[data-page="{name}"][data-ready="true"]')


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def set_period(page: Page, first: dt.date, last: dt.date) -> None:
    await page.fill("form.period input[name=from]", first.isoformat())
    await page.fill("form.period input[name=to]", last.isoformat())
    await page.click("form.period button[type=submit]")


def local(day: dt.date) -> datetime:
    return datetime.fromtimestamp(start_of_day(day), UTC)


def no_leaks(c: Console) -> None:
    """Every request went to the console's own origin, no URL carried a key, and the page
    broke no rule of its Content-Security-Policy."""
    assert c.requests
    assert [] == [r.url for r in c.requests if not r.url.startswith(c.base + "/")]
    keys = [k for k in c.h.keys.values()]
    assert [] == [r.url for r in c.requests if any(k in r.url for k in keys)]
    assert [] == c.csp_errors


# --------------------------------------------------------------------------------- tests


async def test_overview_shows_the_report_rpc_figures(console: Console, browser: Browser) -> None:
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    await set_period(page, D1, D1 + dt.timedelta(days=2))
    await page.wait_for_selector('[data-key="method:personal_id"]')
    await ready(page, "overview")

    shown = {
        await td.get_attribute("data-key"): int(await td.get_attribute("data-value") or "-1")
        for td in await page.query_selector_all("td[data-key]")
    }
    auditor = await c.h.client("alpha", Role.AUDITOR)
    expected = await auditor.get_report(
        from_time=local(D1), to_time=local(D1 + dt.timedelta(days=3))
    )
    assert expected == shown
    # Phone: acc-1, acc-2, the mother and her child (a child's token carries the guardian's
    # method); personal ID: acc-3.
    assert (4, 1, 1, 1, 1, 1) == (
        shown["method:phone_otp"],
        shown["method:personal_id"],
        shown["guardian_managed"],
        shown["lockouts"],
        shown["account_locks"],
        shown["event:code_send_failed"],
    )
    cards = {
        str(await s.get_attribute("data-count")): int(await s.get_attribute("data-value") or "-1")
        for s in await page.query_selector_all(".card [data-count]")
    }
    assert {k: expected.get(k, 0) for k in cards} == cards
    # One bar per day and series with records: phone on days 1 and 2, personal ID on day 2.
    assert 3 == len(await page.query_selector_all("figure.chart:nth-of-type(1) rect.bar"))
    assert "Accounts verified" in await page.inner_text("figure.chart:nth-of-type(1) figcaption")
    await shot(page, "overview")
    no_leaks(c)


async def test_aging_out_account_history_and_log_verify_in_the_browser(
    console: Console, browser: Browser
) -> None:
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")

    await page.goto(c.base + "/console/#/aging")
    await ready(page, "aging")
    await set_period(page, dt.date(2027, 2, 1), dt.date(2027, 2, 28))
    await page.wait_for_selector("ul.accounts li")
    assert "1" == await page.get_attribute('[data-count="aging_out"]', "data-value")
    platform = await c.h.client()
    listed = await platform.list_accounts_aging_out(
        from_time=local(dt.date(2027, 2, 1)), to_time=local(dt.date(2027, 3, 1))
    )
    assert listed.account_ids == await page.locator("ul.accounts li").all_inner_texts()
    await shot(page, "aging-out")

    await page.click('ul.accounts a:has-text("kid-1")')
    await ready(page, "account")
    assert "verified" == await page.get_attribute("#verdict", "data-state")
    await page.goto(c.base + "/console/#/account/acc-1")
    await ready(page, "account")
    auditor = await c.h.client("alpha", Role.AUDITOR)
    records = (await auditor.query_audit_records(account_id="acc-1")).records
    rows = page.locator("table.records tbody tr")
    assert [str(r.index) for r in records] == [
        await rows.nth(i).get_attribute("data-index") for i in range(await rows.count())
    ]
    assert {"verified"} == {
        await rows.nth(i).get_attribute("data-state") for i in range(await rows.count())
    }
    assert "verified" == await page.get_attribute("#verdict", "data-state")
    # Times in Asia/Ho_Chi_Minh: 08:00 UTC is 15:00 in Vietnam.
    assert "15:00:00" in await rows.first.locator("td").nth(1).inner_text()
    await page.locator("table.records details").first.click()
    await shot(page, "account")

    await page.goto(c.base + "/console/#/log")
    await ready(page, "log")
    checkpoint = await auditor.get_checkpoint()
    assert "verified" == await page.get_attribute("#verdict", "data-state")
    assert c.vkey.split("+")[0] == checkpoint.signed_note.splitlines()[0]
    assert checkpoint.signed_note.splitlines()[0] in await page.inner_text("#note")
    await page.wait_for_selector('[data-count="log_size"]')
    await shot(page, "log")
    no_leaks(c)


async def test_a_tampered_record_is_not_verified(console: Console, browser: Browser) -> None:
    c = console
    auditor = await c.h.client("alpha", Role.AUDITOR)
    await auditor.get_checkpoint()  # covers every record so far
    target = (await auditor.query_audit_records(account_id="acc-1")).records[-1]
    tampered = target.raw.replace('"outcome":"ok"', '"outcome":"failed"')
    assert tampered != target.raw
    database = c.h.app.database  # the audit log is PostgreSQL's (the pair store)
    assert database is not None
    async with database.connection() as conn:
        changed = await conn.execute(
            "UPDATE audit_records SET body = $3 WHERE platform = $1 AND idx = $2 AND body = $4",
            "alpha",
            target.index,
            tampered,
            target.raw,
        )
    assert "UPDATE 1" == changed

    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    await page.goto(c.base + "/console/#/account/acc-1")
    await ready(page, "account")
    assert "not-verified" == await page.get_attribute("#verdict", "data-state")
    bad = page.locator('table.records tr[data-state="not-verified"]')
    assert [str(target.index)] == [
        await bad.nth(i).get_attribute("data-index") for i in range(await bad.count())
    ]
    assert "Not verified" in await bad.first.inner_text()
    await shot(page, "tampered-record")
    no_leaks(c)


async def test_a_checkpoint_signed_by_another_key_is_not_verified(
    console: Console, browser: Browser
) -> None:
    """The server (here: a man in the middle) hands the page a checkpoint that a key other
    than the pinned one signed, for the right origin: the page refuses it."""
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    other = Ed25519PrivateKey.generate()
    origin = c.h.app.audit_log.origin("alpha")

    async def forge(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        cp = Checkpoint.parse(body["note"][: body["note"].rindex("\n\n") + 1])
        body["note"] = sign_note(cp.body(), origin, other)
        body["verifier_key"] = format_vkey(origin, other.public_key())
        await route.fulfill(response=response, json=body)

    await page.route("**/console/api/checkpoint", forge)
    for where in ("log", "account/acc-1"):
        await page.goto(f"{c.base}/console/#/{where}")
        await ready(page, where.split("/")[0])
        assert "not-verified" == await page.get_attribute("#verdict", "data-state")
        assert "no signature by the pinned key" in await page.inner_text("#verdict")
    assert 0 == await page.locator('table.records tr[data-state="verified"]').count()
    await shot(page, "forged-checkpoint")

    # The genuine checkpoint with another key pinned: not verified either.
    await page.unroute("**/console/api/checkpoint")
    await page.click("#sign-out")
    await sign_in(page, c.key(), format_vkey(origin, other.public_key()))
    await ready(page, "overview")
    await page.goto(c.base + "/console/#/log")
    await ready(page, "log")
    assert "not-verified" == await page.get_attribute("#verdict", "data-state")
    no_leaks(c)


async def test_a_rewritten_or_rolled_back_log_is_not_verified(
    console: Console, browser: Browser
) -> None:
    """Even signed by the right key, a checkpoint that does not extend the one this browser
    verified before (a rewritten history, a shorter log) is not verified."""
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    await page.goto(c.base + "/console/#/log")
    await ready(page, "log")
    assert "verified" == await page.get_attribute("#verdict", "data-state")
    seen = int(await page.get_attribute('[data-count="tree_size"]', "data-value") or "0")
    assert seen > 30
    log = c.h.app.audit_log
    size = await log.tree_size("alpha")

    async def serve(note: str) -> None:
        async def fulfill(route: Any) -> None:
            response = await route.fetch()
            body = await response.json()
            await route.fulfill(response=response, json={**body, "note": note})

        await page.unroute("**/console/api/checkpoint")
        await page.route("**/console/api/checkpoint", fulfill)

    rewritten = log.sign("alpha", size, bytes(range(32)))  # the right key, another history
    await serve(rewritten.note)
    await page.goto(c.base + "/console/#/overview")
    await ready(page, "overview")
    await page.goto(c.base + "/console/#/log")
    await ready(page, "log")
    assert "not-verified" == await page.get_attribute("#verdict", "data-state")
    assert "rewritten" in await page.inner_text("#verdict")
    await shot(page, "rewritten-log")

    await serve(log.sign("alpha", seen - 1, await log.root("alpha", seen - 1)).note)
    await page.goto(c.base + "/console/#/account/acc-1")
    await ready(page, "account")
    assert "not-verified" == await page.get_attribute("#verdict", "data-state")
    assert "rolled back" in await page.inner_text("#verdict")

    await page.unroute("**/console/api/checkpoint")
    await page.goto(c.base + "/console/#/log")
    await ready(page, "log")
    assert "verified" == await page.get_attribute("#verdict", "data-state")
    assert f"checkpoint of {seen} records" in await page.inner_text("#consistency")
    no_leaks(c)


async def test_platform_and_wrong_keys_are_refused(console: Console, browser: Browser) -> None:
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(Role.PLATFORM), c.vkey)
    await page.wait_for_selector('#sign-in-error [data-error="ROLE_NOT_ALLOWED"]')
    assert "not an auditor key" in await page.inner_text("#sign-in-error")
    assert await page.evaluate("sessionStorage.length") == 0
    await shot(page, "sign-in-refused")
    await sign_in(page, c.key()[:-2] + "xx", c.vkey)
    await page.wait_for_selector('#sign-in-error [data-error="CREDENTIAL_INVALID"]')
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    assert [c.key()] == await page.evaluate("[sessionStorage.getItem('xacthuc.apiKey')]")
    assert c.vkey == await page.evaluate("localStorage.getItem('xacthuc.verifierKey')")
    assert c.key() not in await page.evaluate("JSON.stringify(localStorage)")
    no_leaks(c)


async def test_vietnamese_by_browser_language_with_a_switch(
    console: Console, browser: Browser
) -> None:
    c = console
    page = await open_page(c, browser, locale="vi-VN")
    assert "Đăng nhập" in await page.inner_text("#sign-in")
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    assert "Tổng quan" in await page.inner_text("nav")
    assert "vi" == await page.get_attribute("html", "lang")
    await page.goto(c.base + "/console/#/account/acc-1")
    await ready(page, "account")
    assert "Đã xác minh" in await page.inner_text("#verdict")
    await shot(page, "account-vi")
    await page.click("#lang")
    await ready(page, "account")
    assert "Overview" in await page.inner_text("nav")
    assert "en" == await page.get_attribute("html", "lang")
    no_leaks(c)


async def test_export_downloads_a_log_that_verifies_offline(
    console: Console, browser: Browser, tmp_path: Path
) -> None:
    c = console
    page = await open_page(c, browser)
    await sign_in(page, c.key(), c.vkey)
    await ready(page, "overview")
    await page.goto(c.base + "/console/#/export")
    await ready(page, "export")
    async with page.expect_download() as checkpoint_download:
        await page.click("#export-checkpoint")
    note = await (await checkpoint_download.value).path()
    async with page.expect_download() as log_download:
        await page.click("#export-all")
    exported = await (await log_download.value).path()
    await shot(page, "export")
    verdict = verify_export(
        exported.read_bytes().splitlines(keepends=True),
        note.read_text(),
        c.vkey,
        allow_unverified_tail=True,
    )
    assert verdict.ok, verdict.text()
    assert verdict.tree_size > 30

    async with page.expect_download() as period_download:
        await set_period(page, D1 + dt.timedelta(days=2), D1 + dt.timedelta(days=2))
    lines = (await (await period_download.value).path()).read_bytes().splitlines()
    days = {
        datetime.fromisoformat(json.loads(json.loads(line)["record"])["time"]).date()
        for line in lines
    }
    assert {D1 + dt.timedelta(days=2)} == days  # 08:00 UTC: the same day in Vietnam
    no_leaks(c)


# ------------------------------------------------------------------- the API without a page


async def test_the_api_needs_an_auditor_key_in_the_header_and_audits_every_call(
    console: Console,
) -> None:
    c = console
    auth = {"Authorization": f"Bearer {c.key()}"}
    period = {"from": local(D1).isoformat(), "to": local(D1 + dt.timedelta(days=3)).isoformat()}
    labels = {"method": "report", "reason": "OK"}
    ok_before = REGISTRY.get_sample_value("xacthuc_console_requests_total", labels) or 0.0
    labels = {"method": "report", "reason": "FIELD_INVALID"}
    invalid_before = REGISTRY.get_sample_value("xacthuc_console_requests_total", labels) or 0.0
    async with httpx.AsyncClient(base_url=c.base + "/console/api") as http:
        for headers, params, status, reason in (
            ({}, {}, 401, "CREDENTIAL_MISSING"),
            ({}, {"api_key": c.key()}, 401, "CREDENTIAL_MISSING"),
            ({"Authorization": f"Bearer {c.key(Role.PLATFORM)}"}, {}, 403, "ROLE_NOT_ALLOWED"),
            ({"Authorization": "Bearer xk_nope"}, {}, 401, "CREDENTIAL_INVALID"),
        ):
            r = await http.get("/report", headers=headers, params={**period, **params})
            assert (status, reason) == (r.status_code, r.json()["reason"])
            assert CSP == r.headers["Content-Security-Policy"]
        r = await http.get("/report", headers=auth, params=period)
        assert 200 == r.status_code
        body = r.json()
        total: dict[str, int] = {}
        for d in body["days"]:
            for k, v in d["counts"].items():
                total[k] = total.get(k, 0) + v
        assert {k: v for k, v in body["counts"].items() if v} == total
        assert ["2027-01-15", "2027-01-16", "2027-01-17"] == [d["day"] for d in body["days"]]
        r = await http.get("/report", headers=auth, params={"from": "yesterday", "to": "x"})
        assert (400, "FIELD_INVALID", {"field": "from"}) == (
            r.status_code,
            r.json()["reason"],
            r.json()["metadata"],
        )
        r = await http.get("/records", headers=auth, params={"tree_size": "99999999"})
        assert (400, {"field": "tree_size"}) == (r.status_code, r.json()["metadata"])
        r = await http.get("/nothing", headers=auth)
        assert 404 == r.status_code
        page = await http.get(c.base + "/console/")
        assert CSP == page.headers["Content-Security-Policy"]
        assert "DENY" == page.headers["X-Frame-Options"]
        assert '<script type="module" src="static/app.js">' in page.text
        assert "<style" not in page.text
        assert "style=" not in page.text
        for name in ("app.js", "verify.js", "console.css"):
            assert 200 == (await http.get(f"{c.base}/console/static/{name}")).status_code
        assert 404 == (await http.get(f"{c.base}/console/static/../console.py")).status_code
        assert {"index.html", *STATIC_FILES} == {p.name for p in STATIC_DIR.iterdir()}

    sample = REGISTRY.get_sample_value
    assert (ok_before + 1, invalid_before + 1) == (
        sample("xacthuc_console_requests_total", {"method": "report", "reason": "OK"}),
        sample("xacthuc_console_requests_total", {"method": "report", "reason": "FIELD_INVALID"}),
    )

    auditor = await c.h.client("alpha", Role.AUDITOR)
    audited = [
        r.record
        for r in (await auditor.query_audit_records(page_size=1000)).records
        if r.record.get("channel") == "console"
    ]
    assert [
        ("auditor_get_report", "ok", ""),
        ("auditor_get_report", "refused", "FIELD_INVALID"),
        ("auditor_query_audit_records", "refused", "FIELD_INVALID"),
    ] == [(r["event"], r["outcome"], r["reason"]) for r in audited]
    assert {c.h.app.api_keys.authenticate(auth["Authorization"]).key_id} == {
        r["key_id"] for r in audited
    }


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("2027-01-01", 400),
        ("2027-01-01T00:00:00", 400),
        ("2027-01-01T00:00:00+07:00", 200),
        ("2026-12-31T17:00:00Z", 200),
    ],
)
async def test_the_console_reads_times_as_the_cli_does(
    text: str, status: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A time without an offset is refused by both, with the same message naming the form;
    one with an offset is accepted by both (tests/test_instants.py: the CLI alone)."""
    from xacthuc.adapters.store.memory import MemoryStore
    from xacthuc.cli.main import main
    from xacthuc.domain.clock import INSTANT_FORM

    keys, raw = make_keys()
    app = build_app(make_settings(), store=MemoryStore(), api_keys=keys)
    server = await start_server(app, "127.0.0.1:0", console_listen="127.0.0.1:0")
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.console_port}/console/api",
            headers={"Authorization": f"Bearer {raw[('alpha', Role.AUDITOR)]}"},
        ) as http:
            r = await http.get("/report", params={"from": text, "to": "2027-02-01T00:00:00Z"})
    finally:
        await server.stop(grace=0)
    export = tmp_path / "log.jsonl"
    export.write_text("")
    code = main(["audit", "report", str(export), "--from", text])
    err = capsys.readouterr().err
    if status == 200:
        assert (200, 0) == (r.status_code, code)
        return
    refusal = f"has no offset: must be {INSTANT_FORM}"
    assert (400, "FIELD_INVALID", {"field": "from"}, refusal) == (
        r.status_code,
        r.json()["reason"],
        r.json()["metadata"],
        r.json()["message"].removeprefix("from: "),
    )
    assert (2, f"--from {text!r} {refusal}") == (code, err.strip().removeprefix("xacthuc audit: "))


# ------------------------------------------------------- the page's verifier, against ours


@pytest.fixture
async def bare_console() -> AsyncIterator[str]:
    """A console over an empty memory store: only its files are used."""
    from xacthuc.adapters.store.memory import MemoryStore

    app = build_app(make_settings(), store=MemoryStore(), api_keys=make_keys()[0])
    server = await start_server(app, "127.0.0.1:0", console_listen="127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{server.console_port}"
    finally:
        await server.stop(grace=0)


VERIFY_JS = """async ([cases, notes, extensions]) => {
  const v = await import("./static/verify.js");
  const consistent = [];
  for (const c of extensions) {
    consistent.push(await v.verifyConsistency(c.size1, c.size2, c.proof.map(v.b64decode),
                                              v.b64decode(c.root1), v.b64decode(c.root2)));
  }
  const proofs = [];
  for (const c of cases) {
    const leaf = await v.leafHash(c.record);
    proofs.push(await v.verifyInclusion(leaf, c.index, c.size, c.proof.map(v.b64decode),
                                        v.b64decode(c.root)));
  }
  const opened = [];
  for (const n of notes) {
    try {
      const cp = await v.verifyCheckpoint(n.note, n.key);
      opened.push(`ok ${cp.origin} ${cp.size} ${v.b64encode(cp.root)}`);
    } catch (e) {
      opened.push(e.code || String(e));
    }
  }
  return [proofs, opened, consistent];
}"""


async def test_the_page_verifies_as_the_python_verifier_does(
    bare_console: str, browser: Browser
) -> None:
    """verify.js, run in Chromium, agrees with xacthuc.domain.merkle and checkpoint on every
    inclusion proof of trees of 1-33 records, every consistency proof between trees of 1-21,
    each also changed in several ways, and on good and bad signed notes."""
    from xacthuc.domain import merkle
    from xacthuc.domain.b64 import b64_encode

    records = [json.dumps({"seq": i, "note": "bản ghi"}, ensure_ascii=False) for i in range(33)]
    leaves = [merkle.leaf_hash(r.encode()) for r in records]
    cases: list[dict[str, Any]] = []
    for size in range(1, 34):
        root = b64_encode(merkle.root_from_leaf_hashes(leaves[:size]))
        for index in range(size):
            proof = [b64_encode(p) for p in merkle.inclusion_proof(leaves, index, size)]
            good = {"record": records[index], "index": index, "size": size, "root": root}
            cases.append({**good, "proof": proof})
            # One proof hash changed, a neighbour's record, another size, a short proof.
            cases.append({**good, "proof": [*proof[:-1], b64_encode(bytes(32))]})
            cases.append({**good, "proof": proof, "record": records[index - 1]})
            cases.append({**good, "proof": proof, "size": size + 1})
            cases.append({**good, "proof": proof[:-1]})

    def python_says(case: dict[str, Any]) -> bool:
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(case["record"].encode()),
                case["index"],
                case["size"],
                [base64.b64decode(p) for p in case["proof"]],
                base64.b64decode(case["root"]),
            )
        except merkle.ProofError:
            return False
        return True

    expected = [python_says(c) for c in cases]
    assert all(expected[0::5])  # the genuine proofs
    assert not any(expected[1::5] + expected[2::5])  # a changed hash, another record
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    origin = "xacthuc.example/log/alpha"
    body = Checkpoint(origin, 33, merkle.root_from_leaf_hashes(leaves)).body()
    note = sign_note(body, origin, key)
    vkey = format_vkey(origin, key.public_key())
    by_other = sign_note(body, origin, other)
    both = by_other + note[note.rindex("\n\n") + 2 :]  # a second signature line, by the key
    forged_sig = (
        note[: note.rindex(" ") + 1]
        + b64_encode(bytes.fromhex(vkey.split("+")[1]) + bytes(64))
        + "\n"
    )
    notes = [
        {"note": note, "key": vkey},
        {"note": both, "key": vkey},  # another key's signature is ignored
        {"note": by_other, "key": vkey},
        {"note": forged_sig, "key": vkey},
        {"note": note.replace("\n33\n", "\n34\n"), "key": vkey},
        {
            "note": sign_note(Checkpoint("other/log", 33, bytes(32)).body(), origin, key),
            "key": vkey,
        },
        {"note": note, "key": vkey[:-4] + "AAA="},
        {"note": note, "key": ""},
    ]
    extensions: list[dict[str, Any]] = []
    for size2 in range(1, 22):
        root2 = b64_encode(merkle.root_from_leaf_hashes(leaves[:size2]))
        for size1 in range(1, size2 + 1):
            root1 = b64_encode(merkle.root_from_leaf_hashes(leaves[:size1]))
            proof = [b64_encode(p) for p in merkle.consistency_proof(leaves, size1, size2)]
            good = {"size1": size1, "size2": size2, "root1": root1, "root2": root2}
            extensions.append({**good, "proof": proof})
            # A rewritten old tree, a changed proof hash, another new size, a short proof.
            extensions.append({**good, "proof": proof, "root1": root2 if size1 < size2 else ""})
            extensions.append({**good, "proof": [*proof[:-1], b64_encode(bytes(32))]})
            extensions.append({**good, "proof": proof, "size2": size2 + 1})
            extensions.append({**good, "proof": proof[:-1]})
    for e in extensions:
        e["root1"] = e["root1"] or b64_encode(bytes(32))

    def python_extends(case: dict[str, Any]) -> bool:
        try:
            merkle.verify_consistency(
                case["size1"],
                case["size2"],
                [base64.b64decode(p) for p in case["proof"]],
                base64.b64decode(case["root1"]),
                base64.b64decode(case["root2"]),
            )
        except merkle.ProofError:
            return False
        return True

    extends = [python_extends(c) for c in extensions]
    assert all(extends[0::5])
    assert not any(extends[1::5])

    page = await browser.new_page()
    await page.goto(bare_console + "/console/")
    proofs, opened, consistent = await page.evaluate(VERIFY_JS, [cases, notes, extensions])
    assert expected == proofs
    assert extends == consistent
    root = b64_encode(merkle.root_from_leaf_hashes(leaves))
    assert [
        f"ok {origin} 33 {root}",
        f"ok {origin} 33 {root}",
        "no_signature",
        "bad_signature",
        "bad_signature",
        "wrong_origin",
        "bad_key",
        "no_key",
    ] == opened
