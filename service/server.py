"""The grpc.aio server: xacthuc services, standard health checking and reflection, graceful stop.

On SIGTERM or SIGINT the health status turns NOT_SERVING, the server stops accepting new
calls, in-flight calls get `shutdown_grace_seconds` to finish, then resources are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from xacthuc.app import App, make_audit_log
from xacthuc.audit_servicer import AuditServicer
from xacthuc.servicer import VerificationServicer
from xacthuc.v1 import audit_pb2, audit_pb2_grpc, verification_pb2, verification_pb2_grpc

log = logging.getLogger("xacthuc")

SERVICE_NAMES = (
    verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)
MAX_MESSAGE_BYTES = 1 << 20


class Server:
    """A running xacthuc server; `port` is the bound port (useful with port 0)."""

    def __init__(
        self, app: App, server: grpc.aio.Server, health: HealthServicer, port: int
    ) -> None:
        self.app = app
        self.port = port
        self._server = server
        self._health = health

    async def stop(self, grace: float | None = None) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(
            self.app.settings.shutdown_grace_seconds if grace is None else grace
        )
        if self.app.audit_log is not None:
            await self.app.audit_log.stop()
        await self.app.aclose()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def start_server(app: App, listen: str | None = None) -> Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    verification_pb2_grpc.add_VerificationServiceServicer_to_server(
        VerificationServicer(
            api_keys=app.api_keys,
            phone=app.phone,
            personal_id=app.personal_id,
            store=app.store,
            signer=app.signer,
            clock=app.clock.now,
            guardian=app.guardian,
        ),
        server,
    )
    if app.audit_log is None:
        app.audit_log = make_audit_log(app.settings, app.store, app.clock, app.api_keys)
    audit_log = app.audit_log
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(
            api_keys=app.api_keys,
            store=app.store,
            audit_log=audit_log,
            clock=app.clock.now,
        ),
        server,
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
    port = _bind(server, app, listen or app.settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen or app.settings.listen}")
    await app.store.ping()
    await server.start()
    audit_log.start()  # the background checkpointer
    if app.age_out is not None:  # ends guardian links of children who turned 16 (P6)
        app.age_out.start()
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(app, server, health, port)


def _bind(server: grpc.aio.Server, app: App, address: str) -> int:
    s = app.settings
    if s.tls_cert_file is None or s.tls_key_file is None:
        return server.add_insecure_port(address)
    ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
    credentials = grpc.ssl_server_credentials(
        [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
    return server.add_secure_port(address, credentials)


async def serve(app: App) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    running = await start_server(app)
    log.info(
        "xacthuc listening on %s (mode %s, store %s)",
        app.settings.listen,
        app.settings.mode.value,
        app.settings.store_url.split("://")[0],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: refusing new calls, %.0fs for calls in flight",
        app.settings.shutdown_grace_seconds,
    )
    await running.stop()
    log.info("stopped")
