"""`xacthuc` command line: run the server and manage its keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.config import ConfigError, Settings


def _serve(args: argparse.Namespace) -> int:
    overrides = {"listen": args.listen} if args.listen else {}
    try:
        settings = Settings.load(**overrides)
    except ConfigError as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    from xacthuc.server.logs import configure_logging

    configure_logging(settings.log_level, settings.effective_log_format)
    from xacthuc.server import workers

    worker = None
    if args.worker_index is not None:  # started by the supervisor below
        if args.parent_fd is None:
            print("xacthuc: --worker-index needs --parent-fd (set by the parent)", file=sys.stderr)
            return 2
        worker = workers.Worker(args.worker_index, args.parent_fd)
    else:
        count = args.workers or settings.workers
        problems = workers.sharing_problems(settings)
        if count is None:
            count = 1 if problems else workers.default_workers()
        elif count > 1 and problems:
            print(
                f"xacthuc: --workers {count} needs a configuration every worker shares:\n"
                + "\n".join(f"  {p}" for p in problems),
                file=sys.stderr,
            )
            return 2
        if count > 1:
            return workers.run_supervisor(settings, count, args.listen)
    from xacthuc.adapters.keyring import KeyringError
    from xacthuc.adapters.store.postgres import SchemaMismatch
    from xacthuc.server.app import DEMO_PLATFORM, build_app
    from xacthuc.server.runtime import serve

    try:
        app = build_app(settings)
    except (OSError, ValueError, KeyringError) as e:
        print(f"xacthuc: cannot start: {e}", file=sys.stderr)
        return 2
    for role, key in app.demo_keys.items():
        # Dev mode only: a throwaway key for the demo platform, shown once so it can be used.
        print(f"dev mode: demo platform '{DEMO_PLATFORM}' {role.value} key: {key}", flush=True)
    if app.demo_keys:
        # The log key of this run, for the console's pinned key (`xacthuc audit log-key`
        # prints it from a key file; a dev run's key exists only in memory).
        vkey = app.audit_log.verifier_key(DEMO_PLATFORM)
        print(f"dev mode: demo platform '{DEMO_PLATFORM}' log verifier key: {vkey}", flush=True)
    if settings.metrics_listen and worker is None:  # workers: the parent serves /metrics
        from prometheus_client import start_http_server

        host, _, port = settings.metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host)
    try:
        asyncio.run(serve(app, worker))
    except SchemaMismatch as e:
        print(f"xacthuc: cannot start: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"xacthuc: cannot serve: {e}", file=sys.stderr)
        return 1
    return 0


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 256")
    return int(text)


def _keys_create(args: argparse.Namespace) -> int:
    if args.file is None:  # the key store, as the servers read it
        from xacthuc.cli import api_keys as cli_api_keys

        return cli_api_keys.create(args)
    if args.label:
        print("xacthuc: --label is kept by the key store only, not with --file", file=sys.stderr)
        return 2
    try:
        key, entry = new_key(args.platform, Role(args.role))
    except ValueError as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    ApiKeys.append_to_file(args.file, entry)
    print(
        f"created {entry.role.value} key {entry.key_id} for platform {entry.platform} in {args.file}",
        file=sys.stderr,
    )
    print(key)  # shown once: only its hash is stored
    return 0


def _signing_key(args: argparse.Namespace) -> int:
    from xacthuc.domain.tokens import SigningKey

    if args.out.exists():
        print(f"xacthuc: {args.out} exists; not overwriting a signing key", file=sys.stderr)
        return 2
    key = SigningKey.generate()
    args.out.touch(mode=0o600)
    args.out.write_bytes(key.to_pem())
    print(f"wrote Ed25519 signing key {key.kid} to {args.out}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xacthuc", description="Decree 147 account verification service"
    )
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server (configured by XACTHUC_* variables)")
    serve.add_argument("--listen", help="HOST:PORT (overrides XACTHUC_LISTEN)")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="server processes sharing the port (overrides XACTHUC_WORKERS; default: one "
        "per core when the configuration can be shared, else 1)",
    )
    # Internal: how the supervisor starts a worker (xacthuc.server.workers).
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    from xacthuc.cli import admin as cli_admin
    from xacthuc.cli import audit as cli_audit
    from xacthuc.cli import db as cli_db
    from xacthuc.cli import health as cli_health

    cli_health.register(sub)
    cli_db.register(sub)
    cli_admin.register(sub)

    cli_audit.register(sub)
    keys = sub.add_parser("keys", help="manage API keys and signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser(
        "create",
        help="create a platform API key in the key store (every server takes it within "
        "seconds) or, with --file, in the keys file; prints it once",
    )
    create.add_argument("--platform", required=True, help="platform id (a-z 0-9 _ -)")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.PLATFORM.value)
    create.add_argument("--label", default="", help="a note kept with the key (store only)")
    create.add_argument(
        "--file",
        type=Path,
        help="write the read-only keys file (XACTHUC_API_KEYS_FILE, read at start) instead",
    )
    create.set_defaults(func=_keys_create)
    sk = ksub.add_parser("signing-key", help="generate an Ed25519 signing key (PEM)")
    sk.add_argument("--out", type=Path, required=True)
    sk.set_defaults(func=_signing_key)
    from xacthuc.cli import api_keys as cli_api_keys
    from xacthuc.cli import keys as cli_keys

    cli_api_keys.register(ksub)
    cli_keys.register(ksub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        # argparse printed the usage and the error; `xacthuc health` never exits 2, which
        # Docker reserves in HEALTHCHECK (every other command keeps argparse's 2).
        if e.code == 2 and argv[:1] == ["health"]:
            return 1
        raise
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of stdout left (`xacthuc audit report ... | head`): stop quietly, and
        # point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
