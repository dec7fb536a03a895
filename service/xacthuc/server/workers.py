"""`xacthuc serve --workers N`: N server processes on one port, and the parent that keeps them.

One grpc.aio process uses one core. N worker processes bind the same gRPC port (and the
same well-known HTTP port) with SO_REUSEPORT; the kernel spreads new connections over them.
A gRPC client keeps its connection, so one client's calls stay on one worker, and many
clients (or many connections) are spread. The well-known listener (JWKS, status lists) is
served by every worker, not by worker 0 alone: verifiers fetching keys and lists are not
left without an answer while worker 0 restarts, and the lists' signing is spread too. So is
the compliance console (XACTHUC_CONSOLE_LISTEN), which keeps nothing between requests.

The parent binds no service port. It starts the workers (`xacthuc serve --worker-index I`,
fresh interpreters: nothing of grpc's state crosses a fork), restarts one that exits
(back-off doubling from 0.5 s to 30 s; it starts again from 0.5 s once a worker has run for
30 s), and gives up, stopping the others and exiting 1 with the reason, when a worker exits
`MAX_START_FAILURES` times in a row before serving (or once with exit code 2, a
configuration error: starting it again cannot help). SIGTERM or SIGINT is forwarded to every
worker as SIGTERM; each does the graceful drain of a single server (health NOT_SERVING, no
new calls, `XACTHUC_SHUTDOWN_GRACE_SECONDS` for calls in flight) and the parent exits 0 once
they all have. A socket pair links each worker to the parent: the worker says "serving" on
it, and reads end-of-file when the parent is gone (even SIGKILLed), then stops gracefully.

Background jobs. The parent gives each worker an index; only worker 0 runs the background
jobs (the audit log's checkpointer, the age-out sweep), and the replacement of a dead worker
0 gets index 0 and takes them over. That is enough on one machine: the parent starts the
replacement only after it reaped the dead worker, so there is one signer at a time, and
every job is safe against a second runner anyway (the checkpoint is a compare-and-set on the
latest tree size: a second signer re-reads the winner's checkpoint and checks it instead of
forking the log; the age-out sweep is one atomic script that takes each due link off the
list as it ends it). Several machines rely on exactly those guarantees of the store, not on
this index: each machine's worker 0 runs the jobs, which is redundant work but never a fork. Status lists have no background job: each worker signs a platform's
list on demand and keeps it `CACHE_SECONDS` (5 s), so N workers sign at most N lists per
platform per 5 s, and a revocation made through one worker shows in the others' lists within
those 5 s (verifiers cache the list for its `ttl` anyway).

Metrics. With XACTHUC_METRICS_LISTEN set, the parent sets PROMETHEUS_MULTIPROC_DIR to a fresh
directory for the workers (prometheus_client's multiprocess mode: each worker writes its
series to memory-mapped files), serves the aggregate on the metrics port itself (workers do
not bind it), removes a dead worker's live gauges, and deletes the directory at exit.
Counters and histograms are summed over workers; the per-process `process_*` and
`python_*` series of a single process are not exported in this mode.

Why a worker 0 and not a lock in Redis: a lock needs a lease, renewals and a fencing story,
and buys nothing the store's own checks do not already give; the index is free and local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from xacthuc.server.config import Mode, Settings

log = logging.getLogger("xacthuc.workers")

BACKOFF_FIRST = 0.5  # seconds before the first restart of a worker
BACKOFF_MAX = 30.0
STABLE_SECONDS = 30.0  # a worker that ran this long before exiting restarts without delay growth
MAX_START_FAILURES = 5  # exits in a row before serving: the parent gives up
CONFIG_EXIT = 2  # a worker's exit code for a configuration error: never retried
STOP_MARGIN = 15.0  # beyond the shutdown grace, before a worker that does not stop is killed
_SERVING = b"S"


def default_workers() -> int:
    """One worker per core this process may use."""
    count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)  # 3.13+
    if count is not None:
        return max(1, count() or 1)
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def sharing_problems(settings: Settings) -> list[str]:
    """What keeps the configuration from running in several processes: every worker must
    see the same data and hold the same keys, or a code sent by one could not be checked by
    another, and tokens signed by one would be missing from another's JWKS."""
    problems = []
    if settings.store_url.startswith("memory://"):
        problems.append("XACTHUC_STORE_URL=memory:// is per process; use redis://")
    if settings.signing_key_file is None and settings.signing_keys_dir is None:
        problems.append("set XACTHUC_SIGNING_KEYS_DIR or XACTHUC_SIGNING_KEY_FILE")
    if settings.log_signing_key_file is None:
        problems.append("set XACTHUC_LOG_SIGNING_KEY_FILE")
    if not settings.otp_hmac_keys:
        problems.append("set XACTHUC_OTP_HMAC_KEYS")
    if settings.pseudonym_key is None:
        problems.append("set XACTHUC_PSEUDONYM_KEY")
    if settings.mode is Mode.DEV and settings.api_keys_file is None:
        problems.append(
            "dev mode without XACTHUC_API_KEYS_FILE makes demo API keys per process; set it "
            "(keys in the key store, `xacthuc keys create`, are shared anyway)"
        )
    for name, address in (
        ("XACTHUC_LISTEN", settings.listen),
        ("XACTHUC_WELLKNOWN_LISTEN", settings.wellknown_listen),
        ("XACTHUC_CONSOLE_LISTEN", settings.console_listen),
    ):
        if address and address.rpartition(":")[2] == "0":
            problems.append(f"{name} port 0 would give each worker its own port")
    return problems


@dataclass
class Worker:
    """In a worker process: its index and its link to the parent."""

    index: int
    parent_fd: int

    @property
    def runs_background_jobs(self) -> bool:
        return self.index == 0

    def serving(self, on_parent_gone: Callable[[], None]) -> None:
        """Tell the parent the worker serves; call `on_parent_gone` when the parent is gone."""
        link = socket.socket(fileno=self.parent_fd)
        loop = asyncio.get_running_loop()
        try:
            link.sendall(_SERVING)
        except OSError:
            log.warning("worker %d: the parent is gone; stopping", self.index)
            link.close()
            on_parent_gone()
            return
        link.setblocking(False)

        def readable() -> None:
            try:
                data = link.recv(1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(link.fileno())
                log.warning("worker %d: the parent is gone; stopping", self.index)
                on_parent_gone()

        loop.add_reader(link.fileno(), readable)


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    start_failures: int = 0
    restarts: int = 0
    delay: float = 0.0


@dataclass
class Supervisor:
    """The parent: starts `count` workers and keeps them until SIGTERM/SIGINT."""

    settings: Settings
    count: int
    listen: str | None = None  # the --listen override, passed on to the workers
    _slots: list[_Slot] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _failure: str | None = None
    _metrics_dir: str | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        metrics_server = None
        try:
            if self.settings.metrics_listen:
                self._metrics_dir = tempfile.mkdtemp(prefix="xacthuc-metrics-")
                metrics_server = self._serve_metrics(self._metrics_dir)
            log.info(
                "xacthuc supervisor pid %d: %d workers on %s",
                os.getpid(),
                self.count,
                self.listen or self.settings.listen,
            )
            self._slots = [_Slot(i) for i in range(self.count)]
            keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
            await self._stop.wait()
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self._stop_workers()
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._failure is not None:
            print(f"xacthuc: {self._failure}", file=sys.stderr, flush=True)
            return 1
        log.info("stopped")
        return 0

    def _serve_metrics(self, path: str) -> WSGIServer:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        host, _, port = self.settings.metrics_listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=registry)
        return server

    async def _keep(self, slot: _Slot) -> None:
        """Run the slot's worker, again and again, until stopping or giving up."""
        while not self._stop.is_set():
            started = time.monotonic()
            code, served = await self._run_worker(slot)
            if self._stop.is_set():
                return
            ran = time.monotonic() - started
            pid = slot.process.pid if slot.process else 0
            if not served:
                slot.start_failures += 1
                if code == CONFIG_EXIT or slot.start_failures >= MAX_START_FAILURES:
                    self._give_up(
                        f"worker {slot.index} exited with code {code} before serving, "
                        f"{slot.start_failures} time(s) in a row; giving up (see its errors above)"
                    )
                    return
            else:
                slot.start_failures = 0
            if ran >= STABLE_SECONDS:
                slot.delay = 0.0
            slot.delay = min(BACKOFF_MAX, slot.delay * 2 if slot.delay else BACKOFF_FIRST)
            slot.restarts += 1
            log.warning(
                "worker %d (pid %d) exited with code %s after %.1fs; restarting in %.1fs",
                slot.index,
                pid,
                code,
                ran,
                slot.delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), slot.delay)

    async def _run_worker(self, slot: _Slot) -> tuple[int, bool]:
        """Start the worker, wait for it to exit: (exit code, whether it served)."""
        ours, theirs = socket.socketpair()
        try:
            args = [sys.executable, "-m", "xacthuc.cli", "serve"]
            args += ["--worker-index", str(slot.index), "--parent-fd", str(theirs.fileno())]
            if self.listen:
                args += ["--listen", self.listen]
            env = dict(os.environ)
            if self._metrics_dir is not None:
                env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
            process = await asyncio.create_subprocess_exec(
                *args, env=env, pass_fds=(theirs.fileno(),), start_new_session=True
            )
            slot.process = process
            theirs.close()
            ours.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                served = await loop.sock_recv(ours, 1) == _SERVING
            except OSError:  # the worker is gone
                served = False
            if served:
                log.info("worker %d (pid %d) serving", slot.index, process.pid)
            code = await process.wait()
            self._forget(process.pid)
            return code, served
        finally:
            # Closed on cancellation too (stopping): the worker reads end-of-file and stops
            # gracefully, as it does on the SIGTERM `_stop_workers` sends.
            theirs.close()
            ours.close()

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges leave the aggregate."""
        if self._metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _give_up(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._stop.set()

    async def _stop_workers(self) -> None:
        """SIGTERM to every live worker, then wait for the graceful drains."""
        live = [
            s.process for s in self._slots if s.process is not None and s.process.returncode is None
        ]
        if live:
            log.info("stopping %d workers", len(live))
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_grace_seconds + STOP_MARGIN
        for process in live:
            try:
                await asyncio.wait_for(process.wait(), deadline)
            except TimeoutError:
                log.error("worker pid %d did not stop in %.0fs; killing it", process.pid, deadline)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._forget(process.pid)


def run_supervisor(settings: Settings, count: int, listen: str | None) -> int:
    return asyncio.run(Supervisor(settings, count, listen).run())
