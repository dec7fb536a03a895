"""xacthuc.testing, used as an integrator would: the in-process server, the capturing SMS
sender, test numbers (dev only), and the pytest fixtures of README "Testing your integration"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import phonenumbers
import pytest
from phonenumbers import carrier

from xacthuc.client import Client, errors
from xacthuc.domain.clock import FixedClock
from xacthuc.domain.phone import normalize_vn_mobile
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.config import ConfigError, Settings
from xacthuc.testing import (
    TEST_NUMBER_CODE,
    CapturingSmsSender,
    InProcessServer,
    is_test_number,
    test_number,
)

ROOT = Path(__file__).resolve().parent.parent
IP = "203.0.113.7"


@pytest.fixture
def server() -> Iterator[InProcessServer]:
    with InProcessServer() as running:
        yield running


def _start(client: Client, account: str, number: str) -> str:
    return client.start_phone_verification(
        account_id=account, phone_number=number, client_ip=IP
    ).challenge_id


def test_the_test_range_is_valid_mobile_with_no_carrier() -> None:
    """Test numbers pass the real validation (phonenumbers: valid VN mobile) and no carrier is
    named for the 095 prefix; if a phonenumbers update assigns it, this fails and we move."""
    for n in (0, 1, 4_567_890, 9_999_999):
        e164 = normalize_vn_mobile(test_number(n))
        assert is_test_number(e164)
        assert "" == carrier.name_for_number(phonenumbers.parse(e164), "en")
    assert not is_test_number(normalize_vn_mobile("0912345678"))
    assert not is_test_number("+849512345")  # too short to be a number of the range
    with pytest.raises(ValueError, match="between 0 and 9999999"):
        test_number(10_000_000)


def test_a_test_number_takes_the_fixed_code_and_is_never_texted(server: InProcessServer) -> None:
    """Start and confirm with TEST_NUMBER_CODE; no SMS goes out; a wrong code is refused."""
    with server.client() as client:
        challenge_id = _start(client, "u1", "+84 95 123 4567")
        with pytest.raises(errors.OtpIncorrect):
            client.confirm_phone_verification(
                challenge_id=challenge_id, account_id="u1", code="123123"
            )
        attestation = client.confirm_phone_verification(
            challenge_id=challenge_id, account_id="u1", code=TEST_NUMBER_CODE
        )
        assert "phone_otp" == attestation.method
    assert [] == server.sms.messages
    with pytest.raises(LookupError, match="nothing is sent to the test numbers"):
        server.sms.last_code("0951234567")


def test_a_real_number_is_texted_and_its_code_read_in_any_format(server: InProcessServer) -> None:
    """A non-test number gets a random code by SMS; last_code finds it by any format."""
    with server.client() as client:
        challenge_id = _start(client, "u2", "0912 345 678")
        code = server.sms.last_code("+84912345678")
        assert code == server.sms.code_for(challenge_id) == server.sms.last_code("84912345678")
        client.confirm_phone_verification(challenge_id=challenge_id, account_id="u2", code=code)
        assert client.authorize(account_id="u2", action="post").allowed


def test_the_fixed_code_and_settings_are_configurable() -> None:
    """`test_number_code` and any other setting by name; a clock moves time."""
    clock = FixedClock(1_800_000_000.0)
    server = InProcessServer(test_number_code="424242", otp_ttl_seconds=60, clock=clock)
    with server, server.client() as client:
        expired = _start(client, "u3", test_number(3))
        clock.advance(61)
        with pytest.raises(errors.OtpExpired):
            client.confirm_phone_verification(challenge_id=expired, account_id="u3", code="424242")
        fresh = _start(client, "u4", test_number(4))
        client.confirm_phone_verification(challenge_id=fresh, account_id="u4", code="424242")


def test_with_test_numbers_off_the_range_is_an_ordinary_number() -> None:
    """Off, a 095 number is texted a random code like any other."""
    with InProcessServer(test_numbers=False) as server, server.client() as client:
        challenge_id = _start(client, "u5", test_number(5))
        assert server.sms.code_for(challenge_id) == server.sms.last_code(test_number(5))


def test_the_kit_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment's XACTHUC_* variables on the test machine do not reach the kit."""
    monkeypatch.setenv("XACTHUC_MODE", "production")
    monkeypatch.setenv("XACTHUC_STORE_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("XACTHUC_OTP_TTL_SECONDS", "600")
    with InProcessServer() as server:
        assert "memory://" == server.settings.store_url
        assert 300 == server.settings.otp_ttl_seconds


def test_auditor_client_and_blocking_client_request_id(server: InProcessServer) -> None:
    """The auditor key reaches the audit service; the blocking client's exceptions carry the
    request id too."""
    with server.client(role=Role.AUDITOR) as auditor:
        assert [] == auditor.query_audit_records().records
    with server.client() as client, pytest.raises(errors.AttestationNotFound) as caught:
        client.get_attestation(account_id="nobody")
    assert caught.value.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", caught.value.request_id)


def test_the_capturing_sender_can_fail(server: InProcessServer) -> None:
    """`fail = True` makes the gateway fail: the service answers SMS_DELIVERY_FAILED."""
    server.sms.fail = True
    with server.client() as client, pytest.raises(errors.SmsDeliveryFailed):
        _start(client, "u6", "0912345678")


def test_production_refuses_test_numbers() -> None:
    """A production configuration otherwise complete fails on XACTHUC_TEST_NUMBERS alone,
    with a message that says why."""
    production = {
        "mode": "production",
        "sms_backend": "http",
        "sms_http_url": "https://sms.example/send",
        "signing_key_file": "/etc/xacthuc/signing.pem",
        "store_url": "redis://redis:6379/0",
        "database_url": "postgresql://xacthuc@postgres:5432/xacthuc",
        "otp_hmac_keys": "k" * 32,
        "pseudonym_key": "p" * 32,
        "api_keys_file": "/etc/xacthuc/keys.json",
        "log_signing_key_file": "/etc/xacthuc/log.pem",
        "registry_backend": "http",
        "registry_url": "https://eid.example",
        "issuer": "https://xacthuc.example.vn",
        "log_origin": "xacthuc.example.vn/log",
    }
    Settings.load(**production)  # complete: accepted
    with pytest.raises(ConfigError) as refused:
        Settings.load(**production, test_numbers=True)
    assert 1 == len(refused.value.problems)
    assert (
        "production mode refuses dev-only parts: XACTHUC_TEST_NUMBERS=true would accept the "
        "fixed code for the test numbers +84 95x xxx xxx (095x xxx xxx) without sending an SMS; "
        "test numbers are for dev and tests only"
    ) == refused.value.problems[0]


def test_the_test_number_code_is_six_digits() -> None:
    """XACTHUC_TEST_NUMBER_CODE must be a code the service would accept."""
    with pytest.raises(ConfigError, match="XACTHUC_TEST_NUMBER_CODE"):
        Settings.load(test_number_code="12345")


async def test_dev_mode_prints_no_code_unless_console_is_chosen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """By default (XACTHUC_SMS_BACKEND=none) a start prints nothing to stdout; with console
    chosen explicitly the SMS, code included, is printed (scripts/serve.sh does that)."""
    for backend, printed in (("none", False), ("console", True)):
        settings = Settings.load(
            otp_hmac_keys="k" * 32, pseudonym_key="p" * 32, sms_backend=backend
        )
        app = build_app(settings)
        started = await app.phone.start(
            platform="demo",
            account_id="u1",
            phone_number="0912345678",
            client_ip=IP,
            idempotency_key="",
        )
        await app.aclose()
        out = capsys.readouterr().out
        assert printed == ("[dev SMS to +84912345678]" in out), out
        assert started.masked_phone == "+84 91*****78"
        if not printed:
            assert "" == out


def _readme_blocks() -> dict[str, str]:
    """The README's "Testing your integration" code blocks, by the file name on their first line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing your integration", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {b.splitlines()[0].removeprefix("# "): b for b in blocks if b.startswith("# ")}


def test_the_readme_example_passes_as_an_integrators_suite(tmp_path: Path) -> None:
    """README's conftest.py and test_signup.py, copied into a fresh project and run by pytest
    with its defaults (pytest-asyncio strict mode), all pass."""
    blocks = _readme_blocks()
    assert {"conftest.py", "test_signup.py"} == set(blocks)
    for name, text in blocks.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XACTHUC_", "PYTEST_"))}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == run.returncode, run.stdout + run.stderr
    assert "4 passed" in run.stdout, run.stdout


def test_sms_helpers_need_a_message() -> None:
    """code_for and last_code say when nothing was sent."""
    sms = CapturingSmsSender()
    with pytest.raises(LookupError, match="no SMS was sent for challenge"):
        sms.code_for("ch_x")
    with pytest.raises(LookupError, match="no SMS was sent to"):
        sms.last_code("0912345678")
