"""The well-known HTTP listener beside the gRPC port: the JWKS and the status lists.

JOSE libraries in any language fetch keys by URL, and the Token Status List draft has
verifiers fetch each list at the `uri` its tokens name, so xacthuc serves:

    GET /.well-known/jwks.json        the JWKS (application/json)
    GET /statuslists/{platform}/{n}   status list token n of a platform (application/statuslist+jwt)
    GET /healthz                      "ok" (200) while the server serves, "unavailable" (503)
                                      while a dependency is down or the server stops

Each public document says how long it may be cached (`Cache-Control: public, max-age=`),
matching the `ttl` of the status list tokens and the JWKS refresh period, carries a strong
ETag (a conditional GET costs a 304 and no body; a status list is the same bytes while it is
unchanged within its ttl window, see `xacthuc.verifiers.status_publisher`) and may be read
from a browser (CORS, as the draft's section 8.1 asks): any origin, the ETag exposed to
scripts, and a preflight (OPTIONS, which a browser sends before a GET carrying
`If-None-Match` or `Cache-Control`) answered 204 for a day. Unknown platforms or lists are 404. Nothing here is secret:
the listener needs no credential.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from xacthuc.domain.statuslist import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
STATUS_LIST_PATH = "/statuslists/{platform}/{n}"
HEALTH_PATH = "/healthz"

_PLATFORM = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # as auth.PLATFORM_ID
_LIST_NO = re.compile(r"0|[1-9][0-9]{0,8}")

JwksProvider = Callable[[], str]
StatusListProvider = Callable[[str, int], Awaitable[str | None]]
# Whether the server serves now: the health prober's verdict (`xacthuc.server.health`).
Serving = Callable[[], bool]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


# CORS for the public documents: no credentials are involved, so any origin may read them.
_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"}
_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "If-None-Match, Cache-Control",
    "Access-Control-Max-Age": "86400",
}


async def _preflight(request: web.Request) -> web.Response:
    """A CORS preflight of the JWKS or a status list: allowed for any origin."""
    return web.Response(status=204, headers=_PREFLIGHT)


def _public(request: web.Request, body: bytes, content_type: str, max_age: int) -> web.Response:
    etag = _etag(body)
    headers = {
        "Cache-Control": f"public, max-age={max_age}",
        "ETag": etag,
        **_CORS,
        "X-Content-Type-Options": "nosniff",
    }
    # RFC 9110 13.1.2: weak comparison (W/ ignored), and "*" matches any representation.
    tags = {
        t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")
    }
    if etag in tags or "*" in tags:
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, headers=headers)
    response.content_type = content_type
    return response


def make_wellknown_app(
    jwks_provider: JwksProvider,
    status_list_provider: StatusListProvider,
    *,
    jwks_ttl: int,
    status_ttl: int,
    serving: Serving = lambda: True,
) -> web.Application:
    """The aiohttp application. `jwks_provider()` returns the JWKS as JSON text (the keyring's
    current one); `status_list_provider(platform, n)` returns the signed status list token, or
    None when there is no such list; `serving()` says whether /healthz answers 200 or 503 (the
    same truth as the gRPC health service)."""

    async def jwks(request: web.Request) -> web.Response:
        return _public(request, jwks_provider().encode(), "application/json", jwks_ttl)

    async def status_list(request: web.Request) -> web.Response:
        platform, n = request.match_info["platform"], request.match_info["n"]
        if not _PLATFORM.fullmatch(platform) or not _LIST_NO.fullmatch(n):
            raise web.HTTPNotFound(text="no such status list")
        token = await status_list_provider(platform, int(n))
        if token is None:
            raise web.HTTPNotFound(text="no such status list")
        response = _public(request, token.encode("ascii"), STATUS_LIST_MEDIA_TYPE, status_ttl)
        if response.status == 200:
            response.enable_compression()  # draft 8.2: SHOULD use Content-Encoding for JWTs
        return response

    async def healthz(request: web.Request) -> web.Response:
        if serving():
            return web.Response(text="ok", headers={"Cache-Control": "no-store"})
        return web.Response(status=503, text="unavailable", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get(STATUS_LIST_PATH, status_list)
    app.router.add_route("OPTIONS", JWKS_PATH, _preflight)
    app.router.add_route("OPTIONS", STATUS_LIST_PATH, _preflight)
    app.router.add_get(HEALTH_PATH, healthz)
    return app


async def start_wellknown(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str = "well-known endpoints",
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> web.AppRunner:
    """Serve `app` on host:port (0 picks a free port: see `bound_port`), over TLS with
    `ssl_context`, without an access log. Stop with `stop_wellknown`. `reuse_port`: the
    port is shared with other processes (SO_REUSEPORT), the workers of `xacthuc serve
    --workers N`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("%s listening on %s", name, ", ".join(map(str, runner.addresses)))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner listens on (useful after binding port 0)."""
    return int(runner.addresses[0][1])


async def stop_wellknown(runner: web.AppRunner) -> None:
    await runner.cleanup()
