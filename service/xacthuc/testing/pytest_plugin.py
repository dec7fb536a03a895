"""pytest fixtures for platforms testing their xacthuc integration.

Enable in your top-level conftest.py: `pytest_plugins = ["xacthuc.testing.pytest_plugin"]`.

- `xacthuc_server`: a running `InProcessServer` (fresh per test: empty store, new keys).
  Override this fixture in your conftest.py to pass settings.
- `xacthuc_client` / `xacthuc_auditor`: blocking `Client`s with the platform's and the
  auditor's key.
- `xacthuc_async_client`: an `AsyncClient` (when pytest-asyncio is installed).
- `xacthuc_sms`: the server's `CapturingSmsSender` (`last_code(number)`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from xacthuc.client import Client
from xacthuc.server.auth import Role
from xacthuc.testing.server import InProcessServer
from xacthuc.testing.sms import CapturingSmsSender


@pytest.fixture
def xacthuc_server() -> Iterator[InProcessServer]:
    """A real xacthuc server on 127.0.0.1 (memory store, test numbers on), stopped after the test."""
    with InProcessServer() as server:
        yield server


@pytest.fixture
def xacthuc_client(xacthuc_server: InProcessServer) -> Iterator[Client]:
    """A blocking client of `xacthuc_server` with the platform's API key."""
    with xacthuc_server.client() as client:
        yield client


@pytest.fixture
def xacthuc_auditor(xacthuc_server: InProcessServer) -> Iterator[Client]:
    """A blocking client of `xacthuc_server` with the auditor's API key (audit RPCs)."""
    with xacthuc_server.client(role=Role.AUDITOR) as client:
        yield client


@pytest.fixture
def xacthuc_sms(xacthuc_server: InProcessServer) -> CapturingSmsSender:
    """What `xacthuc_server` sent by SMS; `xacthuc_sms.last_code("0912345678")`."""
    return xacthuc_server.sms


if importlib.util.find_spec("pytest_asyncio") is not None:
    from collections.abc import AsyncIterator

    import pytest_asyncio

    from xacthuc.client import AsyncClient

    @pytest_asyncio.fixture
    async def xacthuc_async_client(xacthuc_server: InProcessServer) -> AsyncIterator[AsyncClient]:
        """An asyncio client of `xacthuc_server` with the platform's API key."""
        async with await xacthuc_server.async_client() as client:
            yield client
