"""What the outbound HTTP adapters (SMS gateway, e-ID registry) share."""

from __future__ import annotations

import urllib.request

from yarl import URL


def proxy_from_environment(url: URL) -> str | None:
    """The forward proxy the environment names for `url`, if any (HTTP(S)_PROXY, ALL_PROXY,
    NO_PROXY, as curl reads them). aiohttp's own `trust_env` does this per request, through
    threads; the adapters read it once, when they are built."""
    if urllib.request.proxy_bypass(url.host or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all") or None
