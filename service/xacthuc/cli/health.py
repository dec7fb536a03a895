"""`xacthuc health`: the standard gRPC health check, for container and orchestrator probes.

Exit 0 when the service asked for (--service; "" is the whole server) is SERVING, 1 for
anything else: NOT_SERVING, an unknown service, no answer, a TLS failure, a certificate
file that cannot be read, a command line argparse refuses (Docker reserves exit code 2 in
HEALTHCHECK). Every option has an environment
default, so the image's HEALTHCHECK needs no arguments:

    XACTHUC_HEALTH_TARGET        HOST:PORT to ask; default: the port of XACTHUC_LISTEN on
                                 127.0.0.1 (when it listens on every address)
    XACTHUC_HEALTH_TLS           "1"/"true": TLS (on by itself when XACTHUC_TLS_CERT_FILE is
                                 set: the server then speaks nothing else)
    XACTHUC_HEALTH_CA_FILE       PEM roots that verify the server (default: the system's)
    XACTHUC_HEALTH_CERT_FILE,    the client certificate and key, when the server asks for
    XACTHUC_HEALTH_KEY_FILE      one (XACTHUC_TLS_CLIENT_CA_FILE)
    XACTHUC_HEALTH_SERVER_NAME   the name the server's certificate is checked against (it
                                 rarely names 127.0.0.1)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
_WILDCARDS = {"", "0.0.0.0", "[::]", "::", "*"}  # noqa: S104  (parsing, not binding)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = os.environ
    p = sub.add_parser(
        "health",
        help="query the standard gRPC health service; exit 0 when SERVING, else 1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", default=env.get("XACTHUC_HEALTH_TARGET") or _default_target())
    p.add_argument(
        "--service", default="", help='"" (the server) or a service, e.g. xacthuc.v1.AuditService'
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=_truthy(env.get("XACTHUC_HEALTH_TLS")) or bool(env.get("XACTHUC_TLS_CERT_FILE")),
        help="TLS (implied by --ca-file and --cert-file)",
    )
    p.add_argument(
        "--ca-file",
        "--ca",
        type=Path,
        default=_path(env.get("XACTHUC_HEALTH_CA_FILE")),
        help="PEM roots that verify the server",
    )
    p.add_argument(
        "--cert-file",
        "--cert",
        type=Path,
        default=_path(env.get("XACTHUC_HEALTH_CERT_FILE")),
        help="client certificate (PEM) for mutual TLS",
    )
    p.add_argument(
        "--key-file",
        "--key",
        type=Path,
        default=_path(env.get("XACTHUC_HEALTH_KEY_FILE")),
        help="its private key (PEM)",
    )
    p.add_argument(
        "--server-name",
        default=env.get("XACTHUC_HEALTH_SERVER_NAME") or None,
        help="the name to verify in the server's certificate (default: the target's host)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = _channel(args)
    except (OSError, ValueError) as e:
        print(f"xacthuc: health check not run: {e}", file=sys.stderr)
        return 1
    with channel:
        try:
            # Ignored: types-grpcio-health-checking declares HealthStub with only __init__, but
            # the generated class sets its Check and Watch multicallables in __init__.
            reply: health_pb2.HealthCheckResponse = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
            print(f"xacthuc: health check failed: {code.name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _channel(args: argparse.Namespace) -> grpc.Channel:
    import grpc

    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("--cert-file and --key-file go together")
    if not (args.tls or args.ca_file or args.cert_file):
        return grpc.insecure_channel(args.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.ca_file.read_bytes() if args.ca_file else None,
        private_key=args.key_file.read_bytes() if args.key_file else None,
        certificate_chain=args.cert_file.read_bytes() if args.cert_file else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def _default_target() -> str:
    """127.0.0.1 on the port the server listens on (XACTHUC_LISTEN), when it listens on all
    addresses; else that address itself."""
    listen = os.environ.get("XACTHUC_LISTEN", "")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return DEFAULT_TARGET
    return f"127.0.0.1:{port}" if host in _WILDCARDS else listen


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
