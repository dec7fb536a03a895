"""`xacthuc audit ...`: what a compliance team runs to fetch, verify and report on the audit log.

    xacthuc audit log-key --platform P [--key-file PEM] [--origin ORIGIN]
        (operator) print the verifier key of a platform's checkpoints, to publish
    xacthuc audit checkpoint --target HOST:PORT --api-key KEY --out FILE
        fetch the latest signed checkpoint (auditor key)
    xacthuc audit export --target HOST:PORT --api-key KEY --out FILE
        fetch the whole log as JSON Lines (auditor key)
    xacthuc audit verify EXPORT --checkpoint FILE --key VKEY_FILE [--older-checkpoint FILE]...
        offline: rebuild the tree, check the signature, report the first bad record
    xacthuc audit report EXPORT [--from ISO] [--to ISO]
        offline: the counts of GetReport, from an export

Exit status: 0 success, 1 verification failed (or a server refused), 2 usage error. The API
key may also come from XACTHUC_API_KEY, which keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from xacthuc.verifiers.auditlog import DEFAULT_ORIGIN, ReportCounter

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")


def register(sub: Any) -> None:
    """Add the `audit` command group to the top-level subparsers."""
    audit = sub.add_parser("audit", help="fetch, verify and report on the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True)

    verify = asub.add_parser("verify", help="verify an export against a signed checkpoint, offline")
    verify.add_argument("export", type=Path, help="JSON Lines file from `xacthuc audit export`")
    verify.add_argument("--checkpoint", type=Path, required=True, help="signed checkpoint note")
    verify.add_argument(
        "--key", type=Path, required=True, help="file holding the log's verifier key line"
    )
    verify.add_argument(
        "--older-checkpoint",
        type=Path,
        action="append",
        default=[],
        help="an earlier checkpoint to check for consistency with --checkpoint (repeatable)",
    )
    verify.set_defaults(func=_verify)

    report = asub.add_parser("report", help="counts over a time range, from an export")
    report.add_argument("export", type=Path)
    report.add_argument(
        "--from", dest="since", help="ISO 8601 start (inclusive); no offset: Asia/Ho_Chi_Minh"
    )
    report.add_argument(
        "--to", dest="until", help="ISO 8601 end (exclusive); no offset: Asia/Ho_Chi_Minh"
    )
    report.set_defaults(func=_report)

    for name, helptext, func in (
        ("export", "download the platform's audit log as JSON Lines", _export),
        ("checkpoint", "download the latest signed checkpoint", _checkpoint),
    ):
        p = asub.add_parser(name, help=helptext)
        p.add_argument("--target", required=True, help="HOST:PORT of the xacthuc server")
        p.add_argument("--api-key", help="auditor API key (default: $XACTHUC_API_KEY)")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--tls", action="store_true", help="TLS with the system's roots")
        p.add_argument("--ca-file", type=Path, help="TLS with this CA (PEM)")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
        p.set_defaults(func=func)

    key = asub.add_parser("log-key", help="print the verifier key of a platform's checkpoints")
    key.add_argument("--platform", required=True)
    key.add_argument(
        "--key-file",
        type=Path,
        help="log signing key, PEM (default: $XACTHUC_LOG_SIGNING_KEY_FILE)",
    )
    key.add_argument(
        "--origin", help=f"log origin (default: $XACTHUC_LOG_ORIGIN or {DEFAULT_ORIGIN})"
    )
    key.set_defaults(func=_log_key)


def _fail_usage(message: str) -> int:
    print(f"xacthuc audit: {message}", file=sys.stderr)
    return 2


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Usage(f"cannot read {what} {path}: {e}") from None


class _Usage(Exception):
    pass


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def _verify(args: argparse.Namespace) -> int:
    from xacthuc.domain.audit_verify import UsageError, verify_export

    try:
        vkey = _read_text(args.key, "verifier key file").strip()
        note = _read_text(args.checkpoint, "checkpoint")
        olders = [_read_text(p, "older checkpoint") for p in args.older_checkpoint]
        if not args.export.is_file():
            raise _Usage(f"cannot read export {args.export}")
        verdict = verify_export(_lines(args.export), note, vkey, olders)
    except (_Usage, UsageError) as e:
        return _fail_usage(str(e))
    print(verdict.text())
    return 0 if verdict.ok else 1


def _parse_time(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(f"{flag} {text!r} is not an ISO 8601 date or time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=VIETNAM)
    return when.timestamp()


def _report(args: argparse.Namespace) -> int:
    from xacthuc.domain.clock import rfc3339

    try:
        since = _parse_time(args.since, "--from")
        until = _parse_time(args.until, "--to")
        if since is not None and until is not None and until <= since:
            raise _Usage("--to must be after --from")
        if not args.export.is_file():
            raise _Usage(f"cannot read export {args.export}")
    except _Usage as e:
        return _fail_usage(str(e))
    counter = ReportCounter(since, until)
    for n, line in enumerate(_lines(args.export), 1):
        try:
            counter.add(json.loads(line)["record"])
        except (ValueError, KeyError, TypeError):
            print(
                f"xacthuc audit: line {n} of {args.export} is not an export line", file=sys.stderr
            )
            return 1
    result = {
        "from": None if since is None else rfc3339(since),
        "to": None if until is None else rfc3339(until),
        "counts": counter.counts(),
    }
    print(json.dumps(result, indent=2))
    return 0


def _client(args: argparse.Namespace) -> Any:
    import grpc

    from xacthuc.client import Client

    api_key = args.api_key or os.environ.get("XACTHUC_API_KEY", "")
    if not api_key:
        raise _Usage("give --api-key or set XACTHUC_API_KEY (an auditor key)")
    tls: bool | grpc.ChannelCredentials = args.tls
    if args.ca_file is not None:
        tls = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
    return Client.connect(args.target, api_key=api_key, tls=tls, timeout=args.timeout)


def _export(args: argparse.Namespace) -> int:
    from xacthuc.domain.errors import XacthucError

    try:
        client = _client(args)
    except _Usage as e:
        return _fail_usage(str(e))
    tmp = args.out.with_name(args.out.name + ".part")
    lines = 0
    try:
        with client, tmp.open("wb") as out:
            for chunk in client.export_audit_records():
                out.write(chunk)
                lines += chunk.count(b"\n")
    except XacthucError as e:
        tmp.unlink(missing_ok=True)
        print(f"xacthuc audit: export failed: {e.reason}: {e}", file=sys.stderr)
        return 1
    tmp.replace(args.out)
    print(f"wrote {lines} records to {args.out}", file=sys.stderr)
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from xacthuc.domain.errors import XacthucError

    try:
        client = _client(args)
    except _Usage as e:
        return _fail_usage(str(e))
    try:
        with client:
            checkpoint = client.get_checkpoint()
    except XacthucError as e:
        print(f"xacthuc audit: checkpoint failed: {e.reason}: {e}", file=sys.stderr)
        return 1
    args.out.write_text(checkpoint.signed_note, "utf-8")
    print(
        f"wrote checkpoint of tree size {checkpoint.tree_size} to {args.out}; the server states "
        f"its verifier key as {checkpoint.verifier_key} (check it against the operator's)",
        file=sys.stderr,
    )
    return 0


def _log_key(args: argparse.Namespace) -> int:
    from xacthuc.domain.checkpoint import NoteError, format_vkey
    from xacthuc.domain.tokens import SigningKey
    from xacthuc.server.auth import PLATFORM_ID

    key_file = args.key_file or os.environ.get("XACTHUC_LOG_SIGNING_KEY_FILE")
    if not key_file:
        return _fail_usage("give --key-file or set XACTHUC_LOG_SIGNING_KEY_FILE")
    if not PLATFORM_ID.fullmatch(args.platform):
        return _fail_usage(f"{args.platform!r} is not a platform id")
    origin = (args.origin or os.environ.get("XACTHUC_LOG_ORIGIN") or DEFAULT_ORIGIN).rstrip("/")
    try:
        key = SigningKey.from_pem_file(Path(key_file))
        print(format_vkey(f"{origin}/{args.platform}", key.private_key.public_key()))
    except (OSError, ValueError, NoteError) as e:
        return _fail_usage(f"cannot use {key_file}: {e}")
    return 0
