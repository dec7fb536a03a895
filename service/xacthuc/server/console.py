"""The compliance console (issue 14): a web page for auditors, and the JSON API it reads.

Served on its own HTTP listener (XACTHUC_CONSOLE_LISTEN, off by default), apart from the
public well-known listener, so it can be kept on an internal network:

    GET /console/                      the page (index.html); `/` redirects here
    GET /console/static/<file>         its scripts, styles and icon, shipped in the package
    GET /console/api/session           who the key is (platform, key id), the server's time
    GET /console/api/report            GetReport's counts over [from, to), and per day
    GET /console/api/aging-out         guardian-managed accounts turning 16 in [from, to)
    GET /console/api/records           QueryAuditRecords, each record with its inclusion
                                       proof against `tree_size` (the checkpoint on screen)
    GET /console/api/checkpoint        GetCheckpoint: the latest signed checkpoint
    GET /console/api/consistency       GetConsistencyProof: from_size -> to_size
    GET /console/api/log               the signed tree sizes over [from, to), one per day
    GET /console/api/export            the records of [from, to) as JSON Lines (an export)

The API is a thin layer over what the AuditServicer uses (`AuditLog`, `find_records`,
`AuditedCalls`, and `GuardianLinker.aging_out` for the aging-out list): the same checks,
the same figures. Each call needs `Authorization: Bearer <api key>` of an `auditor` key (a
key in the URL is never read, and the listener keeps no access log) and sees only its own
platform; each is audited exactly as the gRPC auditor calls are, `auditor_<method>` with
`channel` "console". Errors are JSON `{"code", "reason", "message", "metadata"}` with the
HTTP status of the gRPC code; anything unexpected is a 500 with a request id, the traceback
goes to the log.

The page verifies what it shows itself, in the browser (WebCrypto SHA-256 and Ed25519): the
checkpoint's signature against the verifier key the auditor pinned, each record's inclusion
proof against that checkpoint, and that the checkpoint extends the last one this browser
verified (a consistency proof: a log rewritten or rolled back since, even when re-signed
with the right key, shows). The server's word is never the verdict. Every
response carries a strict Content-Security-Policy (scripts and styles from the page's own
origin only, no inline code, no eval, Trusted Types, no framing) and no third-party
resource exists to load. WebCrypto needs a secure context: serve the console over HTTPS
(it uses XACTHUC_TLS_CERT_FILE / XACTHUC_TLS_KEY_FILE when set) or on a loopback address.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from xacthuc.domain.age import VIETNAM
from xacthuc.domain.b64 import b64_encode
from xacthuc.domain.clock import Clock, parse_instant, rfc3339
from xacthuc.domain.errors import (
    Code,
    FieldInvalid,
    InternalError,
    RoleNotAllowed,
    XacthucError,
)
from xacthuc.ports.store import Store
from xacthuc.server.audit import AuditedCalls, find_records
from xacthuc.server.auth import ApiKeys, Caller, Role
from xacthuc.verifiers.auditlog import AuditLog
from xacthuc.verifiers.guardian_flow import GuardianLinker
from xacthuc.verifiers.phone_otp import check_account_id

log = logging.getLogger("xacthuc.server.console")

CONSOLE_TOTAL = Counter(
    "xacthuc_console_requests_total",
    "Compliance console API calls by method (the endpoint) and outcome reason (OK, or the refusal's)",
    ["method", "reason"],
)

STATIC_DIR = Path(__file__).with_name("console_static")
CONSOLE = "/console/"
API = "/console/api"
# Every file the page loads: name -> media type. Nothing else is served.
STATIC_FILES: dict[str, str] = {
    "console.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "i18n.js": "text/javascript; charset=utf-8",
    "verify.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "media-src 'none'",
        "worker-src 'none'",
        "manifest-src 'none'",
        "frame-src 'none'",
        "child-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELLED: 499,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
MAX_PROOF_PAGE = 200  # records per page when each carries an inclusion proof
MAX_PARAM = 512  # no query parameter is longer (the aging-out page token is the longest)
DAY = 86_400.0


class ConsoleApi:
    """The handlers of the console's JSON API (see the module docstring)."""

    def __init__(
        self,
        *,
        api_keys: ApiKeys,
        store: Store,
        audit_log: AuditLog,
        guardian: GuardianLinker,
        clock: Clock,
    ) -> None:
        self._keys = api_keys
        self._store = store
        self._log = audit_log
        self._guardian = guardian
        self._clock = clock
        self._calls = AuditedCalls(store, clock, channel="console")

    def _caller(self, request: web.Request) -> Caller:
        caller = self._keys.authenticate(request.headers.get("Authorization"))
        if caller.role is not Role.AUDITOR:
            raise RoleNotAllowed()
        return caller

    async def session(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        async with self._calls.audited(caller, "console_sign_in", {}):
            pass
        return _json(
            {
                "platform": caller.platform,
                "key_id": caller.key_id,
                "now": rfc3339(self._clock.now()),
                "origin": self._log.origin(caller.platform),
            }
        )

    async def report(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {"from_time": q.get("from", ""), "to_time": q.get("to", "")}
        async with self._calls.audited(caller, "get_report", params):
            since, until = _period(q)
            total, days = await self._log.daily_report(caller.platform, since, until)
        return _json(
            {
                "from": rfc3339(since),
                "to": rfc3339(until),
                "counts": total,
                "days": [{"day": day, "counts": counts} for day, counts in days],
            }
        )

    async def aging_out(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {"from_time": q.get("from", ""), "to_time": q.get("to", "")}
        async with self._calls.audited(caller, "list_accounts_aging_out", params):
            since, until = _period(q)
            page = await self._guardian.aging_out(
                platform=caller.platform,
                from_time=since,
                to_time=until,
                page_size=_int(q, "page_size", 0, 1000),
                page_token=_text(q, "page_token"),
            )
            params["returned"] = len(page.account_ids)
        return _json({"account_ids": page.account_ids, "next_page_token": page.next_page_token})

    async def records(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {
            "query_account": q.get("account", "")[:128],
            "query_event": q.get("event", "")[:64],
            "tree_size": q.get("tree_size", "")[:20],
        }
        async with self._calls.audited(caller, "query_audit_records", params):
            account = _text(q, "account", 128)
            if account:
                check_account_id(account, "account")
            since, until = _optional_period(q)
            tree_size = _int(q, "tree_size", 0, 2**63)
            size = await self._log.tree_size(caller.platform, tree_size)
            if tree_size > size:
                raise FieldInvalid("tree_size", f"is beyond the end of the log ({size})")
            found, token = await find_records(
                self._log,
                caller.platform,
                account=account,
                event=_text(q, "event", 64),
                since=since,
                until=until,
                page_size=_int(q, "page_size", 0, MAX_PROOF_PAGE if tree_size else 1000),
                page_token=_text(q, "page_token", 128),
            )
            params["returned"] = len(found)
            proofs = [
                await self._log.inclusion_proof(caller.platform, r.index, tree_size)
                if r.index < tree_size
                else None
                for r in found
            ]
        return _json(
            {
                "records": [
                    {
                        "index": r.index,
                        "record": r.raw,
                        "proof": None if proof is None else [b64_encode(h) for h in proof],
                    }
                    for r, proof in zip(found, proofs, strict=True)
                ],
                "next_page_token": token,
                "tree_size": tree_size,
            }
        )

    async def checkpoint(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        async with self._calls.audited(caller, "get_checkpoint", {}) as params:
            latest = await self._log.current_checkpoint(caller.platform)
            params["tree_size"] = latest.tree_size
        return _json(
            {
                "note": latest.note,
                "tree_size": latest.tree_size,
                "root_hash": b64_encode(latest.root_hash),
                "signed_at": rfc3339(latest.signed_at),
                "origin": self._log.origin(caller.platform),
                # The server's claim, shown for comparison only: the page verifies with the
                # key the auditor pinned.
                "verifier_key": self._log.verifier_key(caller.platform),
            }
        )

    async def consistency(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {
            "from_size": q.get("from_size", "")[:20],
            "to_size": q.get("to_size", "")[:20],
        }
        async with self._calls.audited(caller, "get_consistency_proof", params):
            from_size = _int(q, "from_size", 0, 2**63)
            to_size = _int(q, "to_size", 0, 2**63)
            if from_size == 0:
                raise FieldInvalid(
                    "from_size", "must be at least 1 (the empty tree proves nothing)"
                )
            if to_size < from_size:
                raise FieldInvalid("to_size", f"must not be below from_size ({from_size})")
            size = await self._log.tree_size(caller.platform, to_size)
            if to_size > size:
                raise FieldInvalid("to_size", f"is beyond the end of the log ({size} records)")
            proof = await self._log.consistency_proof(caller.platform, from_size, to_size)
        return _json({"proof": [b64_encode(h) for h in proof]})

    async def log_history(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {"from_time": q.get("from", ""), "to_time": q.get("to", "")}
        async with self._calls.audited(caller, "get_log_history", params):
            since, until = _period(q)
            history = await self._log.checkpoint_history(caller.platform)
            size = await self._log.size(caller.platform)
        per_day: dict[str, dict[str, Any]] = {}
        for c in history:
            if since <= c.signed_at < until:
                day = datetime.fromtimestamp(c.signed_at, VIETNAM).date().isoformat()
                per_day[day] = {
                    "day": day,
                    "tree_size": c.tree_size,
                    "signed_at": rfc3339(c.signed_at),
                }
        return _json(
            {
                "days": [per_day[d] for d in sorted(per_day)],
                "checkpoints": len(history),
                "log_size": size,
                "problem": self._log.problem(caller.platform) or "",
            }
        )

    async def export(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        params: dict[str, Any] = {"from_time": q.get("from", ""), "to_time": q.get("to", "")}
        async with self._calls.audited(caller, "export_audit_records", params):
            since, until = _optional_period(q)
            size = await self._log.size(caller.platform)
            start, stop = await self._log.index_range(caller.platform, since, until, size)
            params.update(from_index=start, to_index=stop)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/jsonl; charset=utf-8",
                "Content-Disposition": f'attachment; filename="audit-{caller.platform}-{start}-{stop}.jsonl"',
                "Cache-Control": "no-store",
                "X-Record-Range": f"{start}-{stop}",
                **SECURITY_HEADERS,
            }
        )
        await response.prepare(request)
        async for chunk in self._log.export(caller.platform, start, stop):
            await response.write(chunk)
        await response.write_eof()
        return response


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _text(q: Any, name: str, limit: int = MAX_PARAM) -> str:
    value = str(q.get(name, ""))
    if len(value) > limit:
        raise FieldInvalid(name, f"must be at most {limit} characters")
    return value


def _int(q: Any, name: str, low: int, high: int) -> int:
    text = _text(q, name, 20)
    if text == "":
        return 0
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise FieldInvalid(name, f"must be an integer {low}-{high}")
    return int(text)


def _time(q: Any, name: str) -> float | None:
    text = _text(q, name, 40)
    if not text:
        return None
    try:
        return parse_instant(text)
    except ValueError as e:
        raise FieldInvalid(name, str(e)) from None


def _optional_period(q: Any) -> tuple[float | None, float | None]:
    since, until = _time(q, "from"), _time(q, "to")
    if since is not None and until is not None and until <= since:
        raise FieldInvalid("to", "must be after from")
    return since, until


def _period(q: Any) -> tuple[float, float]:
    since, until = _optional_period(q)
    if since is None:
        raise FieldInvalid("from", "is required")
    if until is None:
        raise FieldInvalid("to", "is required")
    if until - since > 400 * DAY:
        raise FieldInvalid("to", "must be at most 400 days after from")
    return since, until


def _error(error: XacthucError) -> web.Response:
    body = {
        "code": error.code.value,
        "reason": error.reason,
        "message": error.message,
        "metadata": error.metadata,
    }
    return _json(body, HTTP_STATUS.get(error.code, 500))


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Security headers on every response; errors as JSON, never a traceback; API calls
    counted (`xacthuc_console_requests_total`)."""
    reason = "OK"
    try:
        response = await handler(request)
    except XacthucError as e:
        response, reason = _error(e), e.reason
    except web.HTTPException as e:  # no such route or method
        code = "NOT_FOUND" if e.status == 404 else "INVALID_ARGUMENT"
        response = _json({"code": code, "reason": "", "message": e.reason}, e.status)
    except Exception:
        request_id = secrets.token_hex(8)
        log.exception("unexpected error in %s (request id %s)", request.path, request_id)
        response = _error(InternalError(f"internal error (request id {request_id})"))
        reason = "INTERNAL"
    endpoint = request.match_info.route.name
    if endpoint is not None and endpoint.startswith("api:"):
        CONSOLE_TOTAL.labels(endpoint[4:], reason).inc()
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def make_console_app(api: ConsoleApi) -> web.Application:
    """The aiohttp application of the console: the page, its files, its API."""
    pages = {name: (STATIC_DIR / name).read_bytes() for name in ("index.html", *STATIC_FILES)}
    media = {"index.html": "text/html; charset=utf-8", **STATIC_FILES}

    def serve(name: str) -> web.Response:
        response = web.Response(body=pages[name], headers={"Cache-Control": "no-cache"})
        response.headers["Content-Type"] = media[name]
        return response

    async def index(request: web.Request) -> web.StreamResponse:
        return serve("index.html")

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(reason="no such file")
        return serve(name)

    async def root(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": CONSOLE})

    app = web.Application(middlewares=[_guard])
    app.router.add_get("/", root)
    app.router.add_get(CONSOLE, index)
    app.router.add_get(CONSOLE + "static/{name}", static)
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
        "session": api.session,
        "report": api.report,
        "aging-out": api.aging_out,
        "records": api.records,
        "checkpoint": api.checkpoint,
        "consistency": api.consistency,
        "log": api.log_history,
        "export": api.export,
    }
    for name, handler in routes.items():
        app.router.add_get(f"{API}/{name}", handler, name=f"api:{name}")
    return app
