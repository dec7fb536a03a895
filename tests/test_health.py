"""Health tells the truth (issue 12): grpc.health.v1 follows Redis; `xacthuc health` probes it."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from xacthuc.adapters.store.postgres import Database
from xacthuc.cli.main import main
from xacthuc.client import AsyncClient
from xacthuc.domain import errors
from xacthuc.server.app import build_app
from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.config import Settings
from xacthuc.server.health import HealthMonitor
from xacthuc.server.runtime import SERVICE_NAMES, Server, start_server

from .conftest import pair_store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The promise: a dependency's loss or return shows in the health status within 2 seconds.
WITHIN = 2.0
DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server this test owns (never the shared one): stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, and wait until the process is gone (the port is closed)."""
        assert self.proc is not None
        with redis.Redis(port=self.port) as client, suppress(redis.ConnectionError):
            client.shutdown(nosave=True)  # the server closes the connection as it goes
        self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@dataclass
class Running:
    server: Server
    api_key: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def _settings(**overrides: object) -> Settings:
    return Settings.load(otp_hmac_keys="k" * 32, pseudonym_key="p" * 32, **overrides)


async def _serve(store_url: str, database: Database, **overrides: object) -> Running:
    keys = ApiKeys()
    api_key, entry = new_key("alpha", Role.PLATFORM)
    keys.add(entry)
    app = build_app(
        _settings(**overrides),
        store=pair_store(store_url, "health", database),
        api_keys=keys,
        database=database,
    )
    return Running(await start_server(app, "127.0.0.1:0"), api_key)


@pytest.fixture
async def running(own_redis: OwnRedis, database: Database) -> AsyncIterator[Running]:
    """A real server over the test's own Redis (the pair's Redis half), with the default
    probe settings."""
    r = await _serve(own_redis.url, database)
    yield r
    await r.server.stop(grace=0)


class Watcher:
    """The statuses one Watch stream has delivered, in order."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        self.seen: list[int] = []
        self._changed = asyncio.Event()
        # Ignored: types-grpcio-health-checking declares HealthStub with only __init__, but
        # the generated class sets its Check and Watch multicallables in __init__.
        self._call: grpc.aio.UnaryStreamCall[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = health_pb2_grpc.HealthStub(channel).Watch(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service)
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for reply in self._call:
            self.seen.append(reply.status)
            self._changed.set()

    async def until(self, status: int, within: float) -> float:
        """Seconds until the stream's latest status is `status`; fails after `within`."""
        began = time.monotonic()
        async with asyncio.timeout(within):
            while not self.seen or self.seen[-1] != status:
                self._changed.clear()
                await self._changed.wait()
        return time.monotonic() - began

    def close(self) -> None:
        self._call.cancel()
        self._task.cancel()


async def _check(channel: grpc.aio.Channel, service: str) -> int:
    # Ignored: HealthStub's multicallables are missing from its stub (see Watcher).
    reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def test_health_follows_redis_down_and_back(running: Running, own_redis: OwnRedis) -> None:
    """Redis stopped: every service NOT_SERVING within 2 s; restarted: SERVING within 2 s."""
    services = ("", *SERVICE_NAMES)
    async with grpc.aio.insecure_channel(running.target) as channel:
        watchers = [Watcher(channel, s) for s in services]
        try:
            for w in watchers:
                await w.until(SERVING, WITHIN)

            await asyncio.to_thread(own_redis.stop)
            for w in watchers:
                await w.until(NOT_SERVING, WITHIN)
            assert [NOT_SERVING] * len(services) == [await _check(channel, s) for s in services]

            await asyncio.to_thread(own_redis.start)
            for w in watchers:
                await w.until(SERVING, WITHIN)
            assert [SERVING] * len(services) == [await _check(channel, s) for s in services]
        finally:
            for w in watchers:
                w.close()
    async with await AsyncClient.connect(running.target, api_key=running.api_key) as client:
        with pytest.raises(errors.AttestationNotFound):  # the store answers again
            await client.get_attestation(account_id="nobody")


async def _healthz_until(url: str, status: int, within: float) -> None:
    """Polls GET /healthz until it answers `status`; fails after `within` seconds."""
    async with httpx.AsyncClient(timeout=1) as http:
        async with asyncio.timeout(within):
            while True:
                r = await http.get(url)
                if r.status_code == status:
                    break
                await asyncio.sleep(0.05)
    assert (status, "no-store") == (r.status_code, r.headers["cache-control"])
    assert ("ok" if status == 200 else "unavailable") == r.text


async def test_healthz_follows_redis_down_and_back(own_redis: OwnRedis, database: Database) -> None:
    """The well-known listener's /healthz tells what the gRPC health service tells: 503
    within 2 s of Redis stopping, 200 within 2 s of its return."""
    r = await _serve(own_redis.url, database, wellknown_listen="127.0.0.1:0")
    url = f"http://127.0.0.1:{r.server.wellknown_port}/healthz"
    try:
        await _healthz_until(url, 200, WITHIN)
        await asyncio.to_thread(own_redis.stop)
        await _healthz_until(url, 503, WITHIN)
        async with grpc.aio.insecure_channel(r.target) as channel:
            assert NOT_SERVING == await _check(channel, "")
        await asyncio.to_thread(own_redis.start)
        await _healthz_until(url, 200, WITHIN)
    finally:
        await r.server.stop(grace=0)


async def test_a_stopping_server_is_not_serving_for_healthz_either() -> None:
    """From `stop()` on (SIGTERM), the prober's verdict is NOT_SERVING for good."""
    monitor = HealthMonitor(HealthServicer(), SERVICE_NAMES, {}, interval=0.05, timeout=1)
    assert monitor.is_serving()  # before any probe: the server just pinged its store
    await monitor.update()
    assert monitor.is_serving()
    await monitor.stop()
    assert not monitor.is_serving()


async def test_the_health_command_exits_1_while_redis_is_down(
    running: Running, own_redis: OwnRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xacthuc health` exits 0 while SERVING, 1 (printing NOT_SERVING) while Redis is down."""
    assert 0 == await asyncio.to_thread(main, ["health", "--target", running.target])
    async with grpc.aio.insecure_channel(running.target) as channel:
        watcher = Watcher(channel, "")
        try:
            await asyncio.to_thread(own_redis.stop)
            await watcher.until(NOT_SERVING, WITHIN)
        finally:
            watcher.close()
    capsys.readouterr()
    assert 1 == await asyncio.to_thread(main, ["health", "--target", running.target])
    assert "NOT_SERVING" == capsys.readouterr().out.strip()


class RecordingHealth(HealthServicer):
    """The aio health servicer, keeping the last status set for each service."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, int] = {}

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        self.statuses[service] = status


async def test_a_probe_that_hangs_counts_as_down_after_its_timeout() -> None:
    """A dependency that never answers (a black-holed address) is down once the timeout passes;
    the others are still probed, and only the failing one is blamed."""
    health = RecordingHealth()
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    async def answers() -> None:
        return None

    monitor = HealthMonitor(
        health,
        ["xacthuc.v1.VerificationService"],
        {"store": hangs, "other": answers},
        interval=0.1,
        timeout=0.2,
    )
    began = time.monotonic()
    assert {"store": "no answer in time"} == await monitor.probe()
    assert time.monotonic() - began < 5  # bounded (the timeout), not forever
    assert False is await monitor.update()
    for service in ("", "xacthuc.v1.VerificationService"):
        assert NOT_SERVING == health.statuses[service]


async def test_the_prober_ends_with_the_server(own_redis: OwnRedis, database: Database) -> None:
    """Stopping the server ends the background prober: no task is left probing."""
    r = await _serve(own_redis.url, database, health_probe_interval_seconds=0.05)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "xacthuc-health-monitor" in names
    await r.server.stop(grace=0)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "xacthuc-health-monitor" not in names


async def test_each_change_is_one_log_line_naming_the_dependency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """README, Health: "the log has one line per change, naming the dependency": nothing while
    the status holds, the failing dependency named by its error's type, never its message."""
    health = RecordingHealth()
    down = True

    async def store() -> None:
        if down:
            raise ConnectionError("redis://user:hunter2@10.0.0.7 refused")

    async def database() -> None:
        return None

    monitor = HealthMonitor(
        health,
        ["xacthuc.v1.VerificationService"],
        {"store": store, "database": database},
        interval=1,
        timeout=1,
    )
    caplog.set_level(logging.INFO, logger="xacthuc")
    for now_down in (True, True, True, False, False, True):
        down = now_down
        await monitor.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "xacthuc"]
    assert 3 == len(lines), lines
    assert "store: ConnectionError" in lines[0]
    assert "database" not in lines[0]
    assert "SERVING" in lines[1]
    assert "NOT_SERVING" not in lines[1]
    assert lines[0] == lines[2]
    assert "hunter2" not in "".join(lines)


async def test_stopping_turns_every_status_not_serving_for_good(
    own_redis: OwnRedis, database: Database
) -> None:
    """README, Health: "On SIGTERM every status turns NOT_SERVING for good" (SIGTERM calls
    Server.stop): Watch streams see it during the grace period, before they are closed, and no
    prober is left to turn it back."""
    r = await _serve(own_redis.url, database, health_probe_interval_seconds=0.05)
    services = ("", *SERVICE_NAMES)
    async with grpc.aio.insecure_channel(r.target) as channel:
        watchers = [Watcher(channel, s) for s in services]
        try:
            for w in watchers:
                await w.until(SERVING, WITHIN)
            stopping = asyncio.create_task(r.server.stop(grace=1.5))
            for w in watchers:
                await w.until(NOT_SERVING, WITHIN)
            await stopping
            assert all(SERVING not in w.seen[w.seen.index(NOT_SERVING) :] for w in watchers)
        finally:
            for w in watchers:
                w.close()
    assert "xacthuc-health-monitor" not in {t.get_name() for t in asyncio.all_tasks()}


# --- the health command over TLS -------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """ca.crt; server.crt for the name xacthuc.test (not 127.0.0.1); client.crt, by the CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("health test CA", ca_key, None)
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = "xacthuc.test" if name == "server" else "prober"
        _write(tmp_path, name, _cert(subject, key, (ca.subject, ca_key), usage), key)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return tmp_path


@pytest.fixture
async def mtls_server(
    redis_url: str, redis_namespace: str, database: Database, pki: Path
) -> AsyncIterator[str]:
    """A server that requires a client certificate issued by the CA; yields its target."""
    app = build_app(
        _settings(
            tls_cert_file=pki / "server.crt",
            tls_key_file=pki / "server.key",
            tls_client_ca_file=pki / "ca.crt",
        ),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
    )
    server = await start_server(app, "127.0.0.1:0")
    yield f"127.0.0.1:{server.port}"
    await server.stop(grace=0)


async def test_the_health_command_speaks_mutual_tls(mtls_server: str, pki: Path) -> None:
    """With the CA, a client certificate and the server's name, `health` exits 0; without the
    client certificate, or without TLS, it exits 1."""
    tls = ["--ca", str(pki / "ca.crt"), "--server-name", "xacthuc.test"]
    client = ["--cert", str(pki / "client.crt"), "--key", str(pki / "client.key")]
    base = ["health", "--target", mtls_server, "--timeout", "5"]
    assert 0 == await asyncio.to_thread(main, [*base, *tls, *client])
    for service in SERVICE_NAMES:
        assert 0 == await asyncio.to_thread(main, [*base, *tls, *client, "--service", service])
    assert 1 == await asyncio.to_thread(main, [*base, *tls, *client, "--service", "no.Such"])
    assert 1 == await asyncio.to_thread(main, [*base, *tls])
    assert 1 == await asyncio.to_thread(main, [*base, "--no-tls"])


async def test_the_health_command_takes_tls_from_the_environment(
    mtls_server: str, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the image's HEALTHCHECK: XACTHUC_TLS_CERT_FILE turns TLS on, XACTHUC_HEALTH_*
    name the CA, the client certificate, the server name and the target."""
    monkeypatch.setenv("XACTHUC_TLS_CERT_FILE", str(pki / "server.crt"))
    monkeypatch.setenv("XACTHUC_HEALTH_TARGET", mtls_server)
    monkeypatch.setenv("XACTHUC_HEALTH_CA_FILE", str(pki / "ca.crt"))
    monkeypatch.setenv("XACTHUC_HEALTH_SERVER_NAME", "xacthuc.test")
    assert 1 == await asyncio.to_thread(main, ["health"])  # no client certificate yet
    monkeypatch.setenv("XACTHUC_HEALTH_CERT_FILE", str(pki / "client.crt"))
    monkeypatch.setenv("XACTHUC_HEALTH_KEY_FILE", str(pki / "client.key"))
    assert 0 == await asyncio.to_thread(main, ["health"])


async def test_the_image_healthcheck_follows_the_listen_port(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dockerfile's HEALTHCHECK command, run with the image's XACTHUC_LISTEN form
    (0.0.0.0:<port>), asks 127.0.0.1:<port>: exit 0."""
    dockerfile = await asyncio.to_thread(DOCKERFILE.read_text)
    found = re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", dockerfile)
    assert found is not None
    command = json.loads(found.group(1))
    assert ["xacthuc", "health"] == command[:2]
    monkeypatch.setenv("XACTHUC_LISTEN", f"0.0.0.0:{running.server.port}")
    assert 0 == await asyncio.to_thread(main, command[1:])


def test_the_default_target_is_the_listen_port_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """XACTHUC_LISTEN=0.0.0.0:6000 is asked at 127.0.0.1:6000; a set address as it is."""
    from xacthuc.cli.health import _default_target

    monkeypatch.setenv("XACTHUC_LISTEN", "0.0.0.0:6000")
    assert "127.0.0.1:6000" == _default_target()
    monkeypatch.setenv("XACTHUC_LISTEN", "[::]:6001")
    assert "127.0.0.1:6001" == _default_target()
    monkeypatch.setenv("XACTHUC_LISTEN", "10.0.0.5:6002")
    assert "10.0.0.5:6002" == _default_target()
    monkeypatch.delenv("XACTHUC_LISTEN")
    assert "127.0.0.1:50051" == _default_target()


def test_a_missing_certificate_file_is_unhealthy_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 with one line (Docker reserves 2), never a traceback."""
    assert 1 == main(["health", "--ca", str(tmp_path / "absent.crt")])
    err = capsys.readouterr().err
    assert "health check not run" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["health", "--no-such-flag"], ["health", "--timeout", "soon"], ["health", "extra"]],
)
def test_a_bad_health_command_line_exits_1_not_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Docker reserves exit status 2 in HEALTHCHECK: argparse's usage error exits 1 here."""
    assert 1 == main(argv)
    err = capsys.readouterr().err
    assert ("usage: xacthuc", "error:") == tuple(
        s for s in ("usage: xacthuc", "error:") if s in err
    )


def test_other_commands_keep_argparse_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["keys", "--no-such-flag"])
    assert 2 == e.value.code
