"""Probe a running xacthuc from inside its image (run by check.sh with the image's own python,
as the image's user, in a chroot of the image's filesystem). Standard library, grpc and the
xacthuc SDK only: everything it uses is what the image ships.

    python - cert DIR                      self-signed certificate for 127.0.0.1 (cert.pem, key.pem)
    python - check TARGET [--ca PEM] [--api-key KEY] [--wellknown HOST:PORT]
                          [--metrics HOST:PORT] [--wait SECONDS]

`check` waits until the server's health says SERVING, then checks every health service,
the reflection list, real RPCs (GetJwks, Authorize) with the key, a wrong key refused, the
well-known HTTP listener, the metrics endpoint, and that the process cannot write the installed code. One line per
check; the first failure exits 1 with what was expected and what came.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

SERVICES = ("xacthuc.v1.VerificationService", "xacthuc.v1.AuditService")


class ProbeFailed(Exception):
    pass


def ok(message: str) -> None:
    print(f"probe: ok   {message}", flush=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ProbeFailed(message)
    ok(message)


def make_cert(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xacthuc check")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ok(f"self-signed certificate for 127.0.0.1 in {directory}")


def channel(target: str, ca: Path | None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()))


def health_check(
    ch: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    # Through the channel itself: the generated stubs' methods are missing from their type stubs.
    return ch.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def wait_serving(target: str, ca: Path | None, wait: float) -> None:
    deadline = time.monotonic() + wait
    last = "no answer"
    while time.monotonic() < deadline:
        with channel(target, ca) as ch:
            try:
                reply = health_check(ch)(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError as e:
                last = e.code().name if isinstance(e, grpc.Call) else type(e).__name__
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        time.sleep(0.5)
    raise ProbeFailed(f"health of {target} not SERVING within {wait:.0f} s (last: {last})")


def check(args: argparse.Namespace) -> None:
    target: str = args.target
    ca: Path | None = args.ca
    expect(os.getuid() != 0 and os.getgid() != 0, f"runs as uid {os.getuid()} gid {os.getgid()}")
    expect(
        not os.access(Path(sys.prefix), os.W_OK),
        f"the installed code ({sys.prefix}) is not writable by the service's user",
    )
    wait_serving(target, ca, args.wait)
    with channel(target, ca) as ch:
        check_health = health_check(ch)
        for service in ("", *SERVICES):
            reply = check_health(health_pb2.HealthCheckRequest(service=service), timeout=5)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            expect(status == "SERVING", f"health {service or '(server)'}: {status}")
        reflect = ch.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = reflect(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        listed = {s.name for a in answers for s in a.list_services_response.service}
        wanted = {*SERVICES, "grpc.health.v1.Health"}
        expect(wanted <= listed, f"reflection lists {', '.join(sorted(listed))}")
    if args.api_key:
        rpcs(target, ca, args.api_key)
    if args.wellknown:
        wellknown(args.wellknown)
    if args.metrics:
        with urllib.request.urlopen(f"http://{args.metrics}/metrics", timeout=5) as r:
            body = r.read().decode()
        expect(r.status == 200 and "xacthuc_" in body, f"GET /metrics: {r.status}, xacthuc_*")


def rpcs(target: str, ca: Path | None, api_key: str) -> None:
    from xacthuc.client import Client, errors

    tls: bool | grpc.ChannelCredentials = (
        grpc.ssl_channel_credentials(ca.read_bytes()) if ca is not None else False
    )
    with Client.connect(target, api_key=api_key, tls=tls, timeout=5) as xt:
        keys = json.loads(xt.get_jwks())["keys"]
        expect(
            len(keys) >= 1 and all(k.get("crv") == "Ed25519" for k in keys),
            f"GetJwks: {len(keys)} Ed25519 key(s)",
        )
        decision = xt.authorize(account_id="container-check", action="post")
        expect(
            not decision.allowed and decision.reason == "NOT_AUTHENTICATED",
            f"Authorize (an account never verified): {decision}",
        )
    with Client.connect(target, api_key="xk_wrong", tls=tls, timeout=5) as xt:
        try:
            xt.get_jwks()
        except errors.XacthucError as e:
            expect(e.code.name == "UNAUTHENTICATED", f"a wrong key: {e.code.name} {e.reason}")
        else:
            raise ProbeFailed("a wrong API key was accepted")


def wellknown(address: str) -> None:
    base = f"http://{address}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:  # noqa: S310  (http to loopback)
        expect(r.status == 200, f"GET /healthz: {r.status}")
    with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=5) as r:  # noqa: S310
        keys = json.loads(r.read())["keys"]
        expect(len(keys) >= 1, f"GET /.well-known/jwks.json: {len(keys)} key(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probe.py")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cert")
    c.add_argument("directory", type=Path)
    k = sub.add_parser("check")
    k.add_argument("target")
    k.add_argument("--ca", type=Path)
    k.add_argument("--api-key", default="")
    k.add_argument("--wellknown", default="")
    k.add_argument("--metrics", default="")
    k.add_argument("--wait", type=float, default=60.0)
    args = p.parse_args(argv)
    try:
        if args.command == "cert":
            make_cert(args.directory)
        else:
            check(args)
    except (ProbeFailed, grpc.RpcError, OSError, ValueError, KeyError) as e:
        print(f"probe: FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
