"""Closed-loop load generation, latency statistics and per-process CPU accounting.

A closed loop keeps exactly N calls in flight: each of N workers issues a call, waits for
its answer, records the latency, and issues the next one at once. Throughput is then
`calls / elapsed` and latency is measured at that throughput (no coordinated-omission
correction is needed because there is no target rate to fall behind).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# One call of worker `i`. Raises Exhausted when there is no more work (the phase ends early).
Op = Callable[[int], Awaitable[object]]


class Exhausted(Exception):
    """The operation has nothing more to do (for example no prepared challenge left)."""


@dataclass
class PhaseResult:
    name: str
    calls: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls only
    errors: Counter[str] = field(default_factory=Counter)
    exhausted: bool = False

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Successful calls per second."""
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the successful calls' latency, in ms."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] * 1000


async def closed_loop(
    name: str, op: Op, *, concurrency: int, duration: float | None = None, calls: int | None = None
) -> PhaseResult:
    """Run `op` from `concurrency` workers until `duration` seconds passed, `calls` calls were
    issued, or `op` raised Exhausted. Every started call finishes before this returns."""
    result = PhaseResult(name)
    deadline = math.inf if duration is None else time.perf_counter() + duration
    budget = math.inf if calls is None else calls
    issued = 0

    async def worker(i: int) -> None:
        nonlocal issued
        while issued < budget and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                await op(i)
            except Exhausted:
                result.exhausted = True
                return
            except Exception as e:  # a failed call is counted, not fatal
                result.errors[type(e).__name__] += 1
            else:
                result.latencies.append(time.perf_counter() - started)
            result.calls += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.elapsed = time.perf_counter() - began
    return result


class CpuMeter:
    """CPU used by some processes (all their threads) between start() and stop(), and by the
    whole machine, so that load from anything else running meanwhile shows up as "other".

    Reads /proc/<pid>/stat and /proc/stat (Linux); what cannot be read reports None.
    """

    _TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._before: dict[str, float | None] = {}
        self._host_before: float | None = None
        self._began = 0.0

    @classmethod
    def _cpu_seconds(cls, pid: int | None) -> float | None:
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / cls._TICK  # utime + stime

    @classmethod
    def _host_busy_seconds(cls) -> float | None:
        """CPU seconds all cores spent on anything but idle and I/O wait, since boot."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(ticks) - ticks[3] - ticks[4]) / cls._TICK

    def start(self) -> None:
        self._before = {k: self._cpu_seconds(p) for k, p in self._pids.items()}
        self._host_before = self._host_busy_seconds()
        self._began = time.perf_counter()

    def stop(self) -> dict[str, float | None]:
        """Percent of one core each process used (200 = two cores busy), plus "host" (the
        whole machine) and "other" (host minus the processes measured)."""
        wall = time.perf_counter() - self._began

        def pct(before: float | None, after: float | None) -> float | None:
            return (
                None
                if before is None or after is None or wall <= 0
                else 100 * (after - before) / wall
            )

        out = {k: pct(self._before.get(k), self._cpu_seconds(p)) for k, p in self._pids.items()}
        host = pct(self._host_before, self._host_busy_seconds())
        ours = sum(v for v in out.values() if v is not None)
        out["host"] = host
        out["other"] = None if host is None else max(0.0, host - ours)
        return out
