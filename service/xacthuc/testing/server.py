"""A real xacthuc server inside the test process, on a thread and event loop of its own.

Its own thread lets blocking tests use the blocking `Client` and asyncio tests use
`AsyncClient` on their own loop, both over a real loopback gRPC connection, exactly as a
platform's code talks to the deployed service.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from types import TracebackType
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.client import AsyncClient, Client
from xacthuc.domain.clock import Clock
from xacthuc.server.app import App, build_app
from xacthuc.server.auth import ApiKeys, Role, new_key
from xacthuc.server.config import Mode, Settings
from xacthuc.server.runtime import Server, start_server
from xacthuc.testing.sms import CapturingSmsSender

DEFAULT_TEST_NUMBER_CODE = "000000"
DEFAULT_PLATFORM = "test-platform"


class _KitSettings(Settings):
    """Settings from the arguments only: the test machine's XACTHUC_* variables (perhaps a
    deployment's) must not change what a test sees."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class InProcessServer:
    """`with InProcessServer() as xt:` starts the server; `xt.client()` is a connected
    blocking client of the platform, `await xt.async_client()` an asyncio one.

    Dev mode, memory store, the shipped sandbox registry, test numbers on (code
    `test_number_code`), SMS captured in `sms`. Any other setting by keyword, by its
    Settings name (`otp_ttl_seconds=60`); pass a `Clock` (e.g. `FixedClock`) to move time.
    """

    def __init__(
        self,
        *,
        platform: str = DEFAULT_PLATFORM,
        test_number_code: str = DEFAULT_TEST_NUMBER_CODE,
        clock: Clock | None = None,
        sms: CapturingSmsSender | None = None,
        **settings: Any,
    ) -> None:
        self.platform = platform
        self.sms = sms or CapturingSmsSender()
        self.test_number_code = test_number_code
        defaults: dict[str, Any] = {
            "mode": Mode.DEV,
            "listen": "127.0.0.1:0",
            "store_url": "memory://",
            "test_numbers": True,
            "test_number_code": test_number_code,
            "otp_hmac_keys": [secrets.token_urlsafe(32)],
            "pseudonym_key": secrets.token_urlsafe(32),
        }
        self.settings: Settings = _KitSettings(**{**defaults, **settings})
        keys = ApiKeys()
        self.platform_key, entry = new_key(platform, Role.PLATFORM)
        keys.add(entry)
        self.auditor_key, entry = new_key(platform, Role.AUDITOR)
        keys.add(entry)
        self._api_keys = keys
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None

    @property
    def app(self) -> App:
        """The composed service (store, verifiers, ...), for tests that look inside."""
        return self._running().app

    @property
    def port(self) -> int:
        return self._running().port

    @property
    def target(self) -> str:
        """`127.0.0.1:<port>`: what `Client.connect` takes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> InProcessServer:
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="xacthuc-test-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._start(), loop).result(30)
        except BaseException:
            self._halt_loop()
            raise
        return self

    async def _start(self) -> Server:
        app = build_app(
            self.settings,
            store=MemoryStore(),
            sms=self.sms,
            clock=self._clock,
            api_keys=self._api_keys,
        )
        return await start_server(app, self.settings.listen)

    def stop(self) -> None:
        """Stop the server (calls in flight are cancelled) and its thread."""
        server, self._server = self._server, None
        if server is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(server.stop(grace=0), self._loop).result(30)
        self._halt_loop()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()

    def _running(self) -> Server:
        if self._server is None:
            raise RuntimeError("the server is not running: use `with InProcessServer() as xt:`")
        return self._server

    def client(self, *, role: Role = Role.PLATFORM, timeout: float = 5.0) -> Client:
        """A blocking client with the platform's key (or the auditor's); close it, or use
        `with`."""
        key = self.platform_key if role is Role.PLATFORM else self.auditor_key
        return Client.connect(self.target, api_key=key, timeout=timeout, retries=0)

    async def async_client(
        self,
        *,
        role: Role = Role.PLATFORM,
        timeout: float = 5.0,  # noqa: ASYNC109  # the client's call deadline, as in AsyncClient.connect
    ) -> AsyncClient:
        """An asyncio client on the running loop (the caller's), with the platform's key (or
        the auditor's); close it, or use `async with`."""
        key = self.platform_key if role is Role.PLATFORM else self.auditor_key
        return await AsyncClient.connect(self.target, api_key=key, timeout=timeout, retries=0)

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
