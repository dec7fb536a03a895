"""Health that tells the truth: grpc.health.v1 follows the dependencies the service needs.

A background prober calls every dependency's probe (the store's `ping()`; later others, such
as a PostgreSQL connection) concurrently, each bounded by `timeout`, every `interval`
seconds. While any probe fails or hangs, the overall status ("") and every xacthuc service
are NOT_SERVING, so a load balancer or orchestrator stops sending calls that could only
answer UNAVAILABLE; when all probes pass again, they return to SERVING. A transition is
seen within `interval + timeout` (0.5 s + 1 s by default).

The same verdict answers `GET /healthz` on the well-known listener (`is_serving`): 200 while
serving, 503 while a dependency is down and from the moment the server starts stopping.

Only transitions are written to the health servicer (Watch streams see each one) and logged,
with the failing dependency's name and error type: never its message, which may hold an
address or credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

log = logging.getLogger("xacthuc")

# A dependency check: returns when the dependency answers, raises (or hangs) when it does not.
Probe = Callable[[], Awaitable[object]]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    """Keeps the health status of `services` ("" included) equal to "every probe passes"."""

    def __init__(
        self,
        health: HealthServicer,
        services: Sequence[str],
        probes: Mapping[str, Probe],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._health = health
        self._services = tuple(dict.fromkeys(("", *services)))
        self._probes = dict(probes)
        self._interval = interval
        self._timeout = timeout
        self._serving: bool | None = None
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool | None:
        """The status last written (None before the first probe)."""
        return self._serving

    def is_serving(self) -> bool:
        """Whether the server serves now: not stopping, and no probe failed at the last round
        (before the first round the server has just pinged its store: serving)."""
        return not self._stopped and self._serving is not False

    async def probe(self) -> dict[str, str]:
        """Run every probe once, concurrently; the failing ones by name, with why."""
        names = list(self._probes)
        results = await asyncio.gather(
            *(self._bounded(self._probes[n]) for n in names), return_exceptions=True
        )
        failed: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed[name] = _why(result)
        return failed

    async def _bounded(self, probe: Probe) -> None:
        async with asyncio.timeout(self._timeout):
            await probe()

    async def update(self) -> bool:
        """Probe once and write the status when it changed; returns whether serving."""
        failed = await self.probe()
        serving = not failed
        if serving != self._serving:
            if serving:
                if self._serving is not None:
                    log.info("dependencies reachable again: health SERVING")
            else:
                log.warning(
                    "dependency unreachable (%s): health NOT_SERVING",
                    ", ".join(f"{name}: {why}" for name, why in sorted(failed.items())),
                )
            status = SERVING if serving else NOT_SERVING
            for service in self._services:
                await self._health.set(service, status)
            self._serving = serving
        return serving

    def start(self) -> None:
        if self._task is None and self._probes:
            self._task = asyncio.create_task(self._run(), name="xacthuc-health-monitor")

    async def stop(self) -> None:
        """End the prober for good: from now on the server is stopping (`is_serving` False)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.update()
            except Exception:  # a bug here must not end the prober; the status stays as it was
                log.exception("health probe failed unexpectedly")
            await asyncio.sleep(self._interval)


def _why(error: BaseException) -> str:
    """The error's type (and its cause's): enough to act on, nothing from its message."""
    if isinstance(error, TimeoutError):
        return "no answer in time"
    cause = error.__cause__
    name = type(error).__name__
    return f"{name} ({type(cause).__name__})" if cause is not None else name
