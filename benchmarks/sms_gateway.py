"""A loopback SMS gateway for the benchmark: accepts what `HttpSmsSender` posts, keeps the code.

The server's `HttpSmsSender` posts `{"to", "text", "message_id"}`; `message_id` is the
challenge id, so the driver looks the code up by the challenge id a start returned.
"""

from __future__ import annotations

import re

from aiohttp import web

_CODE = re.compile(r"\b(\d{6})\b")


class SmsGateway:
    def __init__(self) -> None:
        self.codes: dict[str, str] = {}  # message_id (= challenge id) -> code
        self.received = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; returns the URL to give the sender."""
        app = web.Application()
        app.router.add_post("/sms", self._sms)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/sms"

    async def _sms(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ConnectionResetError:  # the server stopped mid-request (Ctrl-C): nothing to keep
            return web.Response(status=499)
        found = _CODE.search(body["text"])
        if found is None:
            return web.Response(status=400, text="no code in text")
        self.codes[body["message_id"]] = found.group(1)
        self.received += 1
        return web.Response(status=202)

    def take(self, challenge_id: str) -> str:
        """The code sent for a challenge, forgotten once taken."""
        return self.codes.pop(challenge_id)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
