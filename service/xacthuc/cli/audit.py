"""`xacthuc audit ...`: what a compliance team runs to fetch, verify and report on the audit log.

    xacthuc audit log-key --platform P [--key-file PEM] [--origin ORIGIN]
        (operator) print the verifier key of a platform's checkpoints, to publish
    xacthuc audit checkpoint --target HOST:PORT --api-key KEY --out FILE
        fetch the latest signed checkpoint (auditor key)
    xacthuc audit export --target HOST:PORT --api-key KEY [--checkpoint FILE] --out FILE
        fetch the log as JSON Lines (auditor key); with --checkpoint, records 0..size-1 only
    xacthuc audit verify EXPORT --checkpoint FILE --key VKEY_FILE [--older-checkpoint FILE]...
            [--allow-unverified-tail]
        offline: rebuild the tree, check the signature, report the first bad record; records
        past the checkpoint fail it unless allowed (then listed as UNVERIFIED)
    xacthuc audit report EXPORT [--checkpoint FILE --key VKEY_FILE] [--from TIME] [--to TIME]
        offline: the counts of GetReport, from an export; with --checkpoint, over the records
        it covers, once they verify; without, marked UNVERIFIED. TIME is RFC 3339 with its
        offset (2027-01-01T00:00:00+07:00); a time without one is refused, as the console does.
        Erased records (exported as their leaf hash and `"erased": true`) are not counted,
        as GetReport does not

Exit status: 0 success, 1 verification failed (or a server refused), 2 usage error. The API
key may also come from XACTHUC_API_KEY, which keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xacthuc.domain.clock import parse_instant
from xacthuc.verifiers.auditlog import DEFAULT_ORIGIN, ReportCounter


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
    verify.add_argument(
        "--allow-unverified-tail",
        action="store_true",
        help="list records past the checkpoint as UNVERIFIED instead of failing on them "
        "(the exit status is then that of the records the checkpoint covers)",
    )
    verify.set_defaults(func=_verify)

    report = asub.add_parser("report", help="counts over a time range, from an export")
    report.add_argument("export", type=Path)
    report.add_argument(
        "--checkpoint",
        type=Path,
        help="count only the records this signed checkpoint covers, after verifying them",
    )
    report.add_argument("--key", type=Path, help="the log's verifier key file (with --checkpoint)")
    report.add_argument(
        "--from",
        dest="since",
        help="start (inclusive): an RFC 3339 time with an offset, e.g. 2027-01-01T00:00:00+07:00",
    )
    report.add_argument(
        "--to",
        dest="until",
        help="end (exclusive): an RFC 3339 time with an offset, e.g. 2027-02-01T00:00:00+07:00",
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
        if name == "export":
            p.add_argument(
                "--checkpoint",
                type=Path,
                help="stop at this checkpoint's tree size (records 0..size-1), so the export "
                "holds exactly what its signature covers",
            )
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
        verdict = verify_export(
            _lines(args.export),
            note,
            vkey,
            olders,
            allow_unverified_tail=args.allow_unverified_tail,
        )
    except (_Usage, UsageError) as e:
        return _fail_usage(str(e))
    print(verdict.text())
    return 0 if verdict.ok else 1


def _parse_time(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError as e:
        raise _Usage(f"{flag} {text!r} {e}") from None


UNVERIFIED_WARNING = (
    "UNVERIFIED figures: no checkpoint was given, so nothing in this export was checked "
    "against a signature; anyone who could edit the file could have added, changed or "
    "removed records. Give --checkpoint FILE --key VKEY_FILE to count only verified records."
)


def _span(first: int, end: int) -> list[int] | None:
    """[first, last] of the indexes first..end-1, None when there are none."""
    return [first, end - 1] if end > first else None


def _report(args: argparse.Namespace) -> int:
    from xacthuc.domain.clock import rfc3339

    try:
        since = _parse_time(args.since, "--from")
        until = _parse_time(args.until, "--to")
        if since is not None and until is not None and until <= since:
            raise _Usage("--to must be after --from")
        if (args.checkpoint is None) != (args.key is None):
            raise _Usage("--checkpoint and --key go together")
        if not args.export.is_file():
            raise _Usage(f"cannot read export {args.export}")
        counter = ReportCounter(since, until)
        if args.checkpoint is not None:
            head = _verified_counts(args, counter)
        else:
            head = _unverified_counts(args, counter)
    except _Usage as e:
        return _fail_usage(str(e))
    except _Failed as e:
        print(f"xacthuc audit: {e}", file=sys.stderr)
        return 1
    result = head | {
        "from": None if since is None else rfc3339(since),
        "to": None if until is None else rfc3339(until),
        "counts": counter.counts(),
    }
    print(json.dumps(result, indent=2))
    return 0


class _Failed(Exception):
    pass


def _verified_counts(args: argparse.Namespace, counter: ReportCounter) -> dict[str, Any]:
    """Count the records the checkpoint covers, as `verify` checks them; nothing if it fails."""
    from xacthuc.domain.audit_verify import UsageError, records_text, verify_export

    vkey = _read_text(args.key, "verifier key file").strip()
    note = _read_text(args.checkpoint, "checkpoint")
    try:
        verdict = verify_export(
            _lines(args.export),
            note,
            vkey,
            allow_unverified_tail=True,
            list_unverified=False,
            on_covered=lambda _, record: counter.add(record),
        )
    except UsageError as e:
        raise _Usage(str(e)) from None
    if not verdict.ok:
        raise _Failed(
            f"{verdict.summary}\nxacthuc audit: no counts: the export does not verify "
            "against the checkpoint"
        )
    size, origin = verdict.tree_size, verdict.origin
    covered = f"records 0..{size - 1} of {origin}" if size else f"no record of {origin}"
    message = (
        f"xacthuc audit: counts over {covered}, verified against its checkpoint of tree size "
        f"{size} (signature valid)"
    )
    if verdict.records > size:
        message += f"; {records_text(size, verdict.records)} past it and not counted"
    print(message, file=sys.stderr)
    return {
        "verified": True,
        "origin": origin,
        "tree_size": size,
        "counted": _span(0, size),
        "not_counted": _span(size, verdict.records),
    }


def _unverified_counts(args: argparse.Namespace, counter: ReportCounter) -> dict[str, Any]:
    print(f"xacthuc audit: WARNING: {UNVERIFIED_WARNING}", file=sys.stderr)
    n = 0
    for n, line in enumerate(_lines(args.export), 1):
        try:
            entry = json.loads(line)
            if entry.get("erased") is True and "record" not in entry:
                continue  # its contents are gone: nothing to count (as GetReport)
            counter.add(entry["record"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _Failed(f"line {n} of {args.export} is not an export line") from None
    return {
        "verified": False,
        "warning": UNVERIFIED_WARNING,
        "origin": None,
        "tree_size": None,
        "counted": _span(0, n),
        "not_counted": None,
    }


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
        size = None if args.checkpoint is None else _tree_size(args.checkpoint)
        client = _client(args)
    except _Usage as e:
        return _fail_usage(str(e))
    tmp = args.out.with_name(args.out.name + ".part")
    lines = 0
    try:
        with client, tmp.open("wb") as out:
            # to_index 0 would mean "to the end": a checkpoint of the empty tree cuts to nothing.
            if size != 0:
                for chunk in client.export_audit_records(to_index=size or 0):
                    out.write(chunk)
                    lines += chunk.count(b"\n")
    except XacthucError as e:
        tmp.unlink(missing_ok=True)
        print(f"xacthuc audit: export failed: {e.reason}: {e}", file=sys.stderr)
        return 1
    tmp.replace(args.out)
    span = f"0..{lines - 1}, " if lines else ""
    cut = "" if size is None else f" ({span}cut at the checkpoint's tree size {size})"
    print(f"wrote {lines} records{cut} to {args.out}", file=sys.stderr)
    return 0


def _tree_size(path: Path) -> int:
    """The tree size of a checkpoint note. Its signature is not checked here: the cut only
    decides which records are fetched, and `verify` checks the note against the key."""
    from xacthuc.domain.checkpoint import Checkpoint, CheckpointError

    note = _read_text(path, "checkpoint")
    try:
        return Checkpoint.parse(note[: note.find("\n\n") + 1]).tree_size
    except CheckpointError as e:
        raise _Usage(f"{path} is not a checkpoint note: {e}") from None


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
