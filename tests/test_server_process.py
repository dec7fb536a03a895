"""`xacthuc serve` as a real process: configuration errors, production guard, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from xacthuc.client import AsyncClient
from xacthuc.domain import errors
from xacthuc.server.auth import ApiKeys, Role, new_key

XACTHUC = [sys.executable, "-m", "xacthuc.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_values_are_reported_one_line_each() -> None:
    """Every invalid XACTHUC_* value is named with its problem, and the process exits 2."""
    run = subprocess.run(
        [*XACTHUC, "serve"],
        env=_env(
            XACTHUC_OTP_TTL_SECONDS="3600", XACTHUC_LISTEN="nowhere", XACTHUC_STORE_URL="mysql://x"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == run.returncode
    assert "XACTHUC_OTP_TTL_SECONDS: Input should be less than or equal to 600" in run.stderr
    assert "XACTHUC_LISTEN: must be HOST:PORT" in run.stderr
    assert "XACTHUC_STORE_URL: must start with memory://" in run.stderr
    assert "Traceback" not in run.stderr


def test_production_mode_refuses_dev_only_parts() -> None:
    """Production refuses console SMS, test numbers, a generated signing key and the in-process
    store."""
    run = subprocess.run(
        [*XACTHUC, "serve"],
        env=_env(
            XACTHUC_MODE="production", XACTHUC_SMS_BACKEND="console", XACTHUC_TEST_NUMBERS="true"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == run.returncode
    for part in (
        "XACTHUC_SMS_BACKEND=console",
        "XACTHUC_TEST_NUMBERS=true would accept the fixed code for the test numbers +84 95x",
        "neither XACTHUC_SIGNING_KEYS_DIR nor XACTHUC_SIGNING_KEY_FILE is set",
        "XACTHUC_STORE_URL=memory://",
    ):
        assert part in run.stderr


def test_keys_create_stores_only_a_hash(tmp_path: Path) -> None:
    """`xacthuc keys create` prints the key once; the file holds its hash, never the key."""
    keys = tmp_path / "keys.json"
    run = subprocess.run(
        [
            *XACTHUC,
            "keys",
            "create",
            "--platform",
            "zalo-like",
            "--role",
            "auditor",
            "--file",
            str(keys),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == run.returncode
    key = run.stdout.strip()
    assert re.fullmatch(r"xk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    stored = keys.read_text()
    assert key.split("_", 2)[2] not in stored
    assert '"role": "auditor"' in stored


async def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    """On SIGTERM a start waiting on a slow SMS gateway completes; the process then exits 0."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def gateway(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"ok": True})

    gw = web.Application()
    gw.router.add_post("/sms", gateway)
    runner = web.AppRunner(gw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gw_port = site.port
    keys = tmp_path / "keys.json"
    api_key, entry = new_key("p1", Role.PLATFORM)
    ApiKeys.append_to_file(keys, entry)
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *XACTHUC,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        env=_env(
            XACTHUC_SMS_BACKEND="http",
            XACTHUC_SMS_HTTP_URL=f"http://127.0.0.1:{gw_port}/sms",
            XACTHUC_API_KEYS_FILE=str(keys),
            XACTHUC_SHUTDOWN_GRACE_SECONDS="20",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        client = await AsyncClient.connect(f"127.0.0.1:{port}", api_key=api_key, timeout=30)
        async with asyncio.timeout(30):
            while True:
                try:
                    await client.get_jwks(timeout=1)
                    break
                except errors.XacthucError:
                    await asyncio.sleep(0.1)
        in_flight = asyncio.create_task(
            client.start_phone_verification(
                account_id="a1", phone_number="0912345678", client_ip="203.0.113.9"
            )
        )
        await asyncio.wait_for(arrived.wait(), 10)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async with await AsyncClient.connect(
            f"127.0.0.1:{port}", api_key=api_key, timeout=2, retries=0
        ) as late:
            with pytest.raises(errors.Unavailable):
                await late.get_jwks()
        release.set()
        challenge = await asyncio.wait_for(in_flight, 10)
        assert challenge.challenge_id.startswith("ch_")
        assert 0 == await asyncio.wait_for(proc.wait(), 30)
        await client.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()


def test_health_command_reports_not_serving_without_a_server() -> None:
    """`xacthuc health` exits non-zero when nothing answers."""
    run = subprocess.run(
        [*XACTHUC, "health", "--target", f"127.0.0.1:{_free_port()}", "--timeout", "0.5"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 1 == run.returncode
    assert grpc.StatusCode.UNAVAILABLE.name in run.stderr


def test_production_needs_a_public_base_url_for_the_wellknown_listener() -> None:
    """With the well-known listener on, production refuses to guess the status-list URL."""
    from xacthuc.server.config import ConfigError, Settings

    with pytest.raises(ConfigError) as e:
        Settings.load(mode="production", wellknown_listen="0.0.0.0:8080")
    assert any("XACTHUC_PUBLIC_BASE_URL is unset" in p for p in e.value.problems)


@pytest.mark.parametrize(
    ("listen", "tls", "refused"),
    [
        ("0.0.0.0:8443", False, True),
        ("10.1.2.3:8443", False, True),
        ("127.0.0.1:8443", False, False),
        ("[::1]:8443", False, False),
        ("localhost:8443", False, False),
        ("0.0.0.0:8443", True, False),
    ],
)
def test_production_refuses_the_console_in_clear_off_loopback(
    listen: str, tls: bool, refused: bool, tmp_path: Path
) -> None:
    """Auditor keys never cross a network in clear: the console needs TLS off loopback."""
    from xacthuc.server.config import ConfigError, Settings

    files = {"tls_cert_file": tmp_path / "c.pem", "tls_key_file": tmp_path / "k.pem"} if tls else {}
    with pytest.raises(ConfigError) as e:
        Settings.load(mode="production", console_listen=listen, **files)
    assert refused == any("XACTHUC_CONSOLE_LISTEN" in p for p in e.value.problems)


def test_production_refuses_placeholder_issuer_and_log_origin() -> None:
    """Tokens and checkpoints must not name the .invalid placeholders in production."""
    from xacthuc.server.config import ConfigError, Settings

    with pytest.raises(ConfigError) as e:
        Settings.load(mode="production")
    text = " ".join(e.value.problems)
    assert (True, True) == (
        "XACTHUC_ISSUER is the placeholder" in text,
        "XACTHUC_LOG_ORIGIN is the placeholder" in text,
    )
    with pytest.raises(ConfigError) as named:
        Settings.load(
            mode="production",
            issuer="https://xacthuc.example.vn",
            log_origin="xacthuc.example.vn/log",
        )
    assert "placeholder" not in " ".join(named.value.problems)


def test_the_registry_deadline_must_hold_one_whole_attempt() -> None:
    """XACTHUC_REGISTRY_DEADLINE_SECONDS below the per-attempt timeout is refused at start; the
    http registry is built with the deadline."""
    from xacthuc.adapters.registry.http import HttpRegistry
    from xacthuc.server.app import make_registry
    from xacthuc.server.config import ConfigError, Settings

    http = {"registry_backend": "http", "registry_url": "https://registry.example"}
    with pytest.raises(ConfigError) as e:
        Settings.load(**http, registry_timeout_seconds=5, registry_deadline_seconds=4)
    assert any("XACTHUC_REGISTRY_DEADLINE_SECONDS must be at least" in p for p in e.value.problems)

    registry = make_registry(
        Settings.load(**http, registry_timeout_seconds=2, registry_deadline_seconds=4.5)
    )
    assert isinstance(registry, HttpRegistry)
    assert 4.5 == registry._deadline
