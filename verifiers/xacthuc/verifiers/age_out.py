"""The aging-out sweep (P6): links end when the child turns 16.

Authorization needs no sweep: from the 16th birthday (local midnight in Vietnam) the decision
table answers AGED_OUT and the child's token has expired. The sweep makes the records say so:
every `interval` seconds it ends each link whose child has turned 16 (reason `aged_out`,
audited `guardian_link_ended`), frees the guardian's slot and marks the attestation issued
under the link "aged_out". It runs over the platforms that have API keys, in batches, and is
safe to run in several replicas at once (each batch is one atomic store step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from xacthuc.domain.clock import Clock
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.ports.store import Store

log = logging.getLogger("xacthuc.verifiers.age_out")

BATCH = 500


class AgeOutSweeper:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        platforms: Callable[[], Iterable[str]],
        *,
        interval_seconds: float = 300.0,
        batch: int = BATCH,
    ) -> None:
        self._store = store
        self._clock = clock
        self._platforms = platforms
        self._interval = interval_seconds
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: float | None = None) -> int:
        """End every link aged out at `now` (default: the clock) on every platform; how many."""
        at = self._clock.now() if now is None else now
        total = 0
        for platform in sorted(self._platforms()):
            while True:
                ended = await self._store.sweep_aged_out(platform, at, self._batch)
                total += ended
                if ended < self._batch:
                    break
        if total:
            log.info("guardian links aged out: %d", total)
        return total

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="age-out")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except StoreUnavailable:
                log.warning("age-out sweep: store unavailable; retrying next round")
            except Exception:
                log.exception("age-out sweep failed; retrying next round")
