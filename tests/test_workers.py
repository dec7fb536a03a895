"""`xacthuc serve --workers N` as real processes: N workers on one port, one parent that
restarts a dead one and stops them all on SIGTERM; background jobs in worker 0 only;
/metrics aggregated by the parent."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest

from xacthuc.client import AsyncClient
from xacthuc.client import _wire as wire
from xacthuc.domain.tokens import SigningKey
from xacthuc.server.app import build_app
from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.config import Settings
from xacthuc.server.runtime import start_server
from xacthuc.server.workers import Supervisor, Worker, _Slot

XACTHUC = [sys.executable, "-m", "xacthuc.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shared_config(
    tmp_path: Path, redis_url: str, namespace: str, database_url: str
) -> tuple[dict[str, str], str]:
    """Everything several workers must share: the store, the keys. Returns (env, API key)."""
    keys = tmp_path / "keys.json"
    api_key, entry = new_key("p1", Role.PLATFORM)
    ApiKeys.append_to_file(keys, entry)
    for name in ("signing.pem", "log.pem"):
        (tmp_path / name).write_bytes(SigningKey.generate().to_pem())
    env = {
        "XACTHUC_STORE_URL": redis_url,
        "XACTHUC_STORE_NAMESPACE": namespace,
        "XACTHUC_DATABASE_URL": database_url,
        "XACTHUC_API_KEYS_FILE": str(keys),
        "XACTHUC_SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
        "XACTHUC_LOG_SIGNING_KEY_FILE": str(tmp_path / "log.pem"),
        "XACTHUC_OTP_HMAC_KEYS": "k" * 32,
        "XACTHUC_PSEUDONYM_KEY": "p" * 32,
        "XACTHUC_SHUTDOWN_GRACE_SECONDS": "5",
    }
    return env, api_key


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def _background_jobs(metrics: str) -> dict[int, float]:
    """pid -> 1.0 if it runs the background jobs, for each live worker that serves."""
    pattern = r'^xacthuc_serving\{background_jobs="([01])",pid="(\d+)"\} 1\.0$'
    return {int(pid): float(jobs) for jobs, pid in re.findall(pattern, metrics, re.MULTILINE)}


def _rpc_total(metrics: str, method: str) -> float:
    pattern = rf'^xacthuc_rpc_total\{{method="{method}",reason="OK"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, metrics, re.MULTILINE))


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _established_on(pid: int, port: int) -> int:
    """How many established TCP connections process `pid` holds on local port `port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it returns True (no fixed sleeps: only a generous bound)."""
    async with asyncio.timeout(60):
        while True:
            try:
                if await check():
                    return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.2)


async def _clients(target: str, api_key: str, n: int) -> AsyncIterator[AsyncClient]:
    for _ in range(n):
        # A channel of its own (no shared subchannel): a connection of its own.
        options = [*wire.channel_options(2), ("grpc.use_local_subchannel_pool", 1)]
        channel = grpc.aio.insecure_channel(target, options=options)
        yield AsyncClient(channel, api_key=api_key, timeout=10)


async def test_two_workers_serve_one_port_and_a_killed_one_is_replaced(
    tmp_path: Path, redis_url: str, redis_namespace: str, database_url: str
) -> None:
    env, api_key = _shared_config(tmp_path, redis_url, redis_namespace, database_url)
    port, metrics_port, wellknown_port = _free_port(), _free_port(), _free_port()
    console_port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *XACTHUC,
        "serve",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        env=_env(
            **env,
            XACTHUC_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
            XACTHUC_WELLKNOWN_LISTEN=f"127.0.0.1:{wellknown_port}",
            XACTHUC_CONSOLE_LISTEN=f"127.0.0.1:{console_port}",
        ),
    )
    target = f"127.0.0.1:{port}"
    clients: list[AsyncClient] = []
    try:
        jobs: dict[int, float] = {}

        async def two_workers_up() -> bool:
            nonlocal jobs
            jobs = _background_jobs(await _metrics(metrics_port))
            return len(jobs) == 2

        await _until(two_workers_up)
        workers = set(jobs)
        assert {proc.pid} == {_parent_of(pid) for pid in workers}
        assert [1.0] == [v for v in jobs.values() if v == 1.0]  # background jobs: one worker
        first = next(pid for pid, v in jobs.items() if v == 1.0)

        # Many connections: the kernel spreads them over both workers.
        clients = [c async for c in _clients(target, api_key, 16)]
        for client in clients:
            assert "keys" in await client.get_jwks()
        assert all(_established_on(pid, port) > 0 for pid in workers)
        assert 16 == _rpc_total(await _metrics(metrics_port), "GetJwks")  # summed over both
        async with aiohttp.ClientSession() as http:
            for _ in range(8):  # the well-known listener answers on the shared port too
                async with http.get(
                    f"http://127.0.0.1:{wellknown_port}/.well-known/jwks.json"
                ) as r:
                    assert 200 == r.status
                async with http.get(f"http://127.0.0.1:{console_port}/console/") as r:
                    assert 200 == r.status  # and so does the compliance console

        os.kill(first, signal.SIGKILL)
        for client in clients:  # calls keep succeeding (a lost connection is reopened)
            assert "keys" in await client.get_jwks()

        async def replaced() -> bool:
            nonlocal jobs
            jobs = _background_jobs(await _metrics(metrics_port))
            return len(jobs) == 2 and first not in jobs

        await _until(replaced)
        replacement = (set(jobs) - workers).pop()
        assert 1.0 == jobs[replacement]  # worker 0's replacement took the background jobs
        assert proc.pid == _parent_of(replacement)
        for client in clients:
            assert "keys" in await client.get_jwks()
        assert 48 == _rpc_total(await _metrics(metrics_port), "GetJwks")

        proc.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.wait_for(proc.wait(), 60)
        assert all(_gone(pid) for pid in set(jobs) | workers)
    finally:
        for client in clients:
            await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_worker_that_cannot_start_makes_the_parent_give_up(
    tmp_path: Path, redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """The port is held by a process that does not share it: every start fails; the parent
    backs off, gives up after a few tries and exits 1 saying why."""
    env, _ = _shared_config(tmp_path, redis_url, redis_namespace, database_url)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = subprocess.run(
            [*XACTHUC, "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
            env=_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert 1 == run.returncode
    assert "before serving, 5 time(s) in a row; giving up" in run.stderr
    assert "restarting in 4.0s" in run.stderr  # the back-off doubled: 0.5, 1, 2, 4


def test_several_workers_need_a_shared_configuration() -> None:
    """An in-process store or generated keys cannot be shared: --workers 2 is refused (exit
    2, every problem named); without --workers the default is then one process."""
    run = subprocess.run(
        [*XACTHUC, "serve", "--workers", "2", "--listen", f"127.0.0.1:{_free_port()}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == run.returncode
    assert "XACTHUC_STORE_URL=memory:// is per process" in run.stderr
    assert "XACTHUC_PSEUDONYM_KEY" in run.stderr
    assert "Traceback" not in run.stderr


async def test_only_the_worker_with_background_jobs_starts_them() -> None:
    """A worker other than 0 serves but starts neither the checkpointer nor the sweep; every
    worker polls the API key store."""
    settings = Settings.load(listen="127.0.0.1:0")
    for background in (False, True):
        app = build_app(settings)
        server = await start_server(app, background=background)
        try:
            running = (app.audit_log._task is not None, app.age_out._task is not None)
            assert (background, background) == running
            assert app.key_watcher._task is not None
        finally:
            await server.stop(0)


@pytest.mark.parametrize("value", ["0", "257", "two"])
def test_the_worker_count_is_checked(value: str) -> None:
    run = subprocess.run(
        [*XACTHUC, "serve", "--workers", value], env=_env(), capture_output=True, text=True
    )
    assert 2 == run.returncode
    assert "--workers: must be a whole number from 1 to 256" in run.stderr


def test_the_circuit_state_reaches_the_aggregate_of_several_workers(tmp_path: Path) -> None:
    """In multiprocess mode a read-at-scrape gauge would never be read: a worker writes the
    registry's circuit state for the parent's /metrics."""
    script = """
import time
from xacthuc.adapters.metrics import watch_circuit
watch_circuit("registry.example", lambda: "open")
time.sleep(0.5)
"""
    env = _env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    assert 'xacthuc_registry_circuit_state{registry="registry.example"} 2.0' in text


async def test_a_single_server_binds_its_port_alone() -> None:
    """README, Several processes: a single server "binds its port alone: a second one on the
    same port fails instead of sharing it"; workers (reuse_port) do share one."""
    settings = Settings.load()
    alone, shared = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    first = await start_server(build_app(settings), alone, background=False)
    try:
        second = build_app(settings)
        with pytest.raises(RuntimeError, match="Failed to bind"):  # grpc.aio says so
            await start_server(second, alone, background=False)
        await second.aclose()
    finally:
        await first.stop(0)
    workers = [
        await start_server(build_app(settings), shared, reuse_port=True, background=False)
        for _ in range(2)
    ]
    for worker in workers:
        await worker.stop(0)


async def test_a_worker_stops_by_itself_once_its_parent_is_gone() -> None:
    """README, Several processes: "A worker whose parent is gone (even killed) stops
    gracefully by itself": the worker's link reads end-of-file when the parent's end closes
    (as the kernel closes it for a SIGKILLed parent), and the worker is told to stop."""
    parent, child = socket.socketpair()
    gone = asyncio.Event()
    Worker(1, child.detach()).serving(gone.set)
    with parent:
        assert parent.recv(16)  # the worker said it serves
        await asyncio.sleep(0.05)
        assert not gone.is_set()  # the parent is still there
    await asyncio.wait_for(gone.wait(), 5)


async def test_a_configuration_error_in_a_worker_makes_the_parent_give_up_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README, Several processes: the parent gives up, exiting 1 with the reason, when a
    worker exits "once with status 2, a configuration error" before serving: no restart."""
    started: list[int] = []

    async def exits_2(self: Supervisor, slot: _Slot) -> tuple[int, bool]:
        started.append(slot.index)
        return 2, False

    monkeypatch.setattr(Supervisor, "_run_worker", exits_2)
    assert 1 == await asyncio.wait_for(Supervisor(Settings.load(), 1).run(), 30)
    assert [0] == started
    assert "exited with code 2 before serving, 1 time(s) in a row" in capsys.readouterr().err
