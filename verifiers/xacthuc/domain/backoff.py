"""Exponential back-off with full jitter: how long to wait before trying again.

One computation for every retry loop of ours: the outbound adapters (SMS gateway, e-ID
registry). (The SDK leaves its retries to gRPC's service config.) The wait before retry n
(n = 1, 2, ...) is drawn uniformly from
[0, min(cap, base * 2**(n-1))] ("full jitter"): clients that failed together do not come
back together, and the expected wait still doubles with every failure.
"""

from __future__ import annotations

import math
import random

_MAX_DOUBLINGS = 62  # past this the cap has long applied; keeps the arithmetic finite


def full_jitter(retry: int, *, base: float, cap: float = math.inf) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry)."""
    if retry < 1:
        raise ValueError("retry counts from 1")
    ceiling = min(cap, base * 2 ** min(retry - 1, _MAX_DOUBLINGS))
    return random.uniform(0.0, ceiling)


def check_retry_options(retries: int, backoff: float) -> None:
    """Refuse retry settings a retry loop cannot use (ValueError, said in the option's name)."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if not (backoff >= 0 and math.isfinite(backoff)):
        raise ValueError("backoff must be a non-negative number of seconds")
