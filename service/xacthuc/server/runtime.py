"""The grpc.aio server: xacthuc services, standard health checking and reflection, graceful stop.

Beside the gRPC port, when XACTHUC_WELLKNOWN_LISTEN is set, a small HTTP listener serves the
JWKS and the status lists (`xacthuc.adapters.wellknown`); it starts before the gRPC port opens, so the
status list URI every token carries names a port that answers.

When XACTHUC_CONSOLE_LISTEN is set, a second HTTP listener serves the compliance console
for auditors (`xacthuc.server.console`).

Health tells the truth (`xacthuc.server.health`): while a dependency (the store) does not
answer, the overall status and every xacthuc service are NOT_SERVING, and the well-known
listener's /healthz answers 503.

On SIGTERM or SIGINT the health status turns NOT_SERVING, the server stops accepting new
calls, in-flight calls get `shutdown_grace_seconds` to finish, then the well-known listener
stops and resources are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from xacthuc.adapters.metrics import SERVING
from xacthuc.adapters.wellknown import (
    Serving,
    bound_port,
    make_wellknown_app,
    start_wellknown,
    stop_wellknown,
)
from xacthuc.server.app import App
from xacthuc.server.audit import AuditServicer
from xacthuc.server.console import ConsoleApi, make_console_app
from xacthuc.server.health import HealthMonitor
from xacthuc.server.rpc import add_not_served, add_service
from xacthuc.server.verification import VerificationServicer
from xacthuc.server.workers import Worker
from xacthuc.v1 import audit_pb2, verification_pb2

log = logging.getLogger("xacthuc")

VERIFICATION_SERVICE = verification_pb2.DESCRIPTOR.services_by_name["VerificationService"]
AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]
SERVICE_NAMES = (VERIFICATION_SERVICE.full_name, AUDIT_SERVICE.full_name)
MAX_MESSAGE_BYTES = 1 << 20
# The cyclic garbage collector of a serving process (`tune_gc`): a young generation of
# 10,000 objects rather than 700, so the objects of the calls in flight are walked (and
# promoted) about 14 times less often; the older generations as CPython's defaults.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Once the server serves: collect, then freeze what exists (modules, descriptors, the
    app and its tables: they live as long as the process, and a full collection no longer
    walks them), and raise the young generation's threshold (`GC_THRESHOLDS`). Measured
    under benchmarks/run.py: the collector's share of the server's CPU fell from 2.4% to
    0.8% (benchmarks/README.md). Memory is still freed by reference counting as before;
    only unreachable cycles wait a little longer for a collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Server:
    """A running xacthuc server; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        app: App,
        server: grpc.aio.Server,
        health: HealthServicer,
        port: int,
        wellknown: web.AppRunner | None = None,
        monitor: HealthMonitor | None = None,
        console: web.AppRunner | None = None,
    ) -> None:
        self.app = app
        self.port = port
        self._server = server
        self._health = health
        self._monitor = monitor
        self._wellknown = wellknown
        # The well-known listener's port (0 when it is off).
        self.wellknown_port = bound_port(wellknown) if wellknown is not None else 0
        self._console = console
        # The compliance console's port (0 when it is off).
        self.console_port = bound_port(console) if console is not None else 0

    async def stop(self, grace: float | None = None) -> None:
        if self._monitor is not None:
            await self._monitor.stop()
        await self._health.enter_graceful_shutdown()
        await self._server.stop(
            self.app.settings.shutdown_grace_seconds if grace is None else grace
        )
        for runner in (self._wellknown, self._console):
            if runner is not None:
                await stop_wellknown(runner)
        self._wellknown = self._console = None
        await self.app.aclose()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def start_server(
    app: App,
    listen: str | None = None,
    *,
    wellknown_listen: str | None = None,
    console_listen: str | None = None,
    reuse_port: bool = False,
    background: bool = True,
) -> Server:
    """Start the gRPC server on `listen` (XACTHUC_LISTEN) and, when `wellknown_listen`
    (XACTHUC_WELLKNOWN_LISTEN) is not empty, the well-known HTTP listener; when
    `console_listen` (XACTHUC_CONSOLE_LISTEN) is not empty, the compliance console.

    `reuse_port` (the workers of `xacthuc serve --workers N`) binds every port with
    SO_REUSEPORT, shared with the other workers; a single server binds them alone, so a
    second server on a port in use fails instead of silently sharing it. `background`
    False (every worker but worker 0) leaves the background jobs to another process."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        # A span per RPC only when tracing is on (xacthuc.server.telemetry): none otherwise.
        interceptors=[app.telemetry.interceptor()] if app.telemetry is not None else None,
    )
    add_service(
        server,
        VerificationServicer(
            api_keys=app.api_keys,
            phone=app.phone,
            personal_id=app.personal_id,
            store=app.store,
            signing=app.signing,
            clock=app.clock,
            guardian=app.guardian,
            status_lists=app.status_lists,
            eraser=app.pg_audit,
        ),
        VERIFICATION_SERVICE,
        access_log=app.settings.access_log,
    )
    add_service(
        server,
        AuditServicer(
            api_keys=app.api_keys,
            store=app.store,
            audit_log=app.audit_log,
            clock=app.clock,
        ),
        AUDIT_SERVICE,
        access_log=app.settings.access_log,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    add_not_served(
        server, access_log=app.settings.access_log
    )  # last: methods no service above serves
    port = _bind(server, app, listen or app.settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen or app.settings.listen}")
    await app.open()  # the database's schema is this build's, or no start
    await app.store.ping()
    await app.key_watcher.refresh()  # the key store's keys, before the first call
    monitor = HealthMonitor(
        health,
        SERVICE_NAMES,
        app.probes,
        interval=app.settings.health_probe_interval_seconds,
        timeout=app.settings.health_probe_timeout_seconds,
    )
    wellknown = await _start_wellknown(
        app, wellknown_listen, reuse_port=reuse_port, serving=monitor.is_serving
    )
    console = None
    try:
        console = await _start_console(app, console_listen, reuse_port=reuse_port)
        await server.start()
    except BaseException:
        for runner in (wellknown, console):
            if runner is not None:
                await stop_wellknown(runner)
        raise
    # The API key poll in every process; the checkpointer and the age-out sweep in one.
    app.start(background_jobs=background)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    monitor.start()
    SERVING.labels("1" if background else "0").set(1)
    return Server(app, server, health, port, wellknown, monitor, console)


async def _start_wellknown(
    app: App, listen: str | None, *, reuse_port: bool = False, serving: Serving
) -> web.AppRunner | None:
    """The JWKS and status list listener, its /healthz answering `serving()`; it also fixes
    the status list URIs' base when XACTHUC_PUBLIC_BASE_URL is unset (the port bound may have
    been 0)."""
    s = app.settings
    address = s.wellknown_listen if listen is None else listen
    if not address:
        return None
    host, _, port = address.rpartition(":")
    http = make_wellknown_app(
        lambda: app.signing.current().jwks_json(),
        app.status_lists.serve,
        jwks_ttl=s.jwks_ttl_seconds,
        status_ttl=s.status_list_ttl_seconds,
        serving=serving,
    )
    runner = await start_wellknown(http, host.strip("[]"), int(port), reuse_port=reuse_port)
    if not s.public_base_url:
        bound = bound_port(runner)
        app.status_lists.names.base_url = f"http://{host}:{bound}"
    return runner


async def _start_console(
    app: App, listen: str | None, *, reuse_port: bool = False
) -> web.AppRunner | None:
    """The compliance console (`xacthuc.server.console`), over TLS when the gRPC port has
    a certificate."""
    s = app.settings
    address = s.console_listen if listen is None else listen
    if not address:
        return None
    host, _, port = address.rpartition(":")
    context = None
    if s.tls_cert_file is not None and s.tls_key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
    api = ConsoleApi(
        api_keys=app.api_keys,
        store=app.store,
        audit_log=app.audit_log,
        guardian=app.guardian,
        clock=app.clock,
    )
    return await start_wellknown(
        make_console_app(api),
        host.strip("[]"),
        int(port),
        name="compliance console",
        ssl_context=context,
        reuse_port=reuse_port,
    )


def _bind(server: grpc.aio.Server, app: App, address: str) -> int:
    s = app.settings
    if s.tls_cert_file is None or s.tls_key_file is None:
        return int(server.add_insecure_port(address))
    ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
    credentials = grpc.ssl_server_credentials(
        [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
    return int(server.add_secure_port(address, credentials))


async def serve(app: App, worker: Worker | None = None) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully. A `worker` of `xacthuc serve
    --workers N` (xacthuc.server.workers) shares the ports, runs the background jobs only
    as worker 0, and also stops when its parent is gone."""
    running = await (
        start_server(app)
        if worker is None
        else start_server(app, reuse_port=True, background=worker.runs_background_jobs)
    )
    tune_gc()
    log.info(
        "xacthuc listening on %s (mode %s, store %s)",
        app.settings.listen,
        app.settings.mode.value,
        app.settings.store_url.split("://")[0],
    )
    if running.console_port:
        log.info(
            "compliance console on port %d: %s://%s:%d/console/ (auditor keys only)",
            running.console_port,
            "https" if app.settings.tls_cert_file else "http",
            app.settings.console_listen.rpartition(":")[0],
            running.console_port,
        )
    if running.wellknown_port:
        log.info(
            "JWKS and status lists served over HTTP on port %d; status lists named %s",
            running.wellknown_port,
            app.status_lists.uri("<platform>"),
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        worker.serving(stop.set)
    await stop.wait()
    log.info(
        "shutting down: refusing new calls, %.0fs for calls in flight",
        app.settings.shutdown_grace_seconds,
    )
    await running.stop()
    log.info("stopped")
