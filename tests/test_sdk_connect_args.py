"""The SDK refuses connection arguments no call could use, at `connect`, with a ValueError
that does not echo the key (a newline in a key pasted from a file was a gRPC INTERNAL on every
call; a negative timeout a DeadlineExceeded)."""

from __future__ import annotations

import math

import pytest

from xacthuc.client import AsyncClient, Client

TARGET = "127.0.0.1:9"  # never dialled: nothing is called


@pytest.mark.parametrize(
    "api_key",
    ["xk_abc\n", "xk_abc def", "xk_\x00", "xk_é", " xk_abc"],
    ids=["newline", "space", "nul", "non-ascii", "leading-space"],
)
async def test_a_key_that_is_no_header_value_is_refused_at_connect(api_key: str) -> None:
    with pytest.raises(ValueError, match="api_key") as sync_error:
        Client.connect(TARGET, api_key=api_key)
    with pytest.raises(ValueError, match="api_key") as async_error:
        await AsyncClient.connect(TARGET, api_key=api_key)
    for e in (sync_error.value, async_error.value):
        assert api_key.strip() not in str(e)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
async def test_a_timeout_that_is_no_deadline_is_refused_at_connect(seconds: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client.connect(TARGET, api_key="xk_abc_def", timeout=seconds)
    with pytest.raises(ValueError, match="timeout"):
        await AsyncClient.connect(TARGET, api_key="xk_abc_def", timeout=seconds)


async def test_a_good_key_and_timeout_connect() -> None:
    with Client.connect(TARGET, api_key="xk_5ffcea66a4b6_WXlcsBJm-TCiL", timeout=0.5):
        pass
    async with await AsyncClient.connect(TARGET, api_key="xk_5ffcea66a4b6_WXl", timeout=2):
        pass
