"""Prometheus series of the use cases (the `xacthuc.ports.metrics` ports) and of the shell's
own components: the store's latency, the registry's circuit breaker.

docs/grafana/xacthuc.json charts exactly these series (tests/test_metrics.py keeps it so).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram

from xacthuc.ports.store import Store

# Gauges say how they combine over the workers of `xacthuc serve --workers N` (prometheus_client
# multiprocess mode); a single process ignores it.
TREE_SIZE = Gauge(
    "xacthuc_audit_tree_size",
    "Records in the audit log, by platform",
    ["platform"],
    multiprocess_mode="mostrecent",
)
SERVING = Gauge(
    "xacthuc_serving",
    "1 while the process serves; background_jobs: whether it runs the background jobs "
    "(checkpointer, age-out sweep). With several workers, one series per live worker (pid)",
    ["background_jobs"],
    multiprocess_mode="liveall",
)
CHECKPOINTS_SIGNED = Counter(
    "xacthuc_audit_checkpoints_signed_total", "Checkpoints signed and stored", ["platform"]
)
CHECKPOINT_REFUSALS = Counter(
    "xacthuc_audit_checkpoint_refusals_total",
    "Checkpoints not signed because the log no longer matches the latest one",
    ["platform"],
)
LEAF_MISMATCHES = Counter(
    "xacthuc_audit_leaf_mismatches_total",
    "Stored records that no longer hash to the leaf hash read earlier",
    ["platform"],
)


class PrometheusLogMetrics:
    def tree_size(self, platform: str, size: int) -> None:
        TREE_SIZE.labels(platform).set(size)

    def checkpoint_signed(self, platform: str) -> None:
        CHECKPOINTS_SIGNED.labels(platform).inc()

    def checkpoint_refused(self, platform: str) -> None:
        CHECKPOINT_REFUSALS.labels(platform).inc()

    def leaf_mismatch(self, platform: str) -> None:
        LEAF_MISMATCHES.labels(platform).inc()


# The verification flows (`xacthuc.ports.metrics.FlowMetrics`). Labels stay bounded: platform
# ids come from the configured API keys, outcomes and reasons from fixed sets.
SMS_SENDS = Counter(
    "xacthuc_sms_sends_total",
    "SMS handed to the channel, by platform and outcome (sent, failed, error)",
    ["platform", "outcome"],
)
SMS_SECONDS = Histogram(
    "xacthuc_sms_send_seconds",
    "Time the SMS channel took per message, retries included, by platform and outcome",
    ["platform", "outcome"],
)
SMS_GATEWAY_ATTEMPT_FAILURES = Counter(
    "xacthuc_sms_gateway_attempt_failures_total",
    "Failed attempts at the SMS gateway, retried ones included, by kind "
    "(HTTP 429, HTTP 4xx, HTTP 5xx, TimeoutError, ConnectError, ...)",
    ["failure"],
)
REGISTRY_CALLS = Counter(
    "xacthuc_registry_calls_total",
    "Questions to the identity registry, by platform and outcome (match, no_match, unavailable)",
    ["platform", "outcome"],
)
REGISTRY_SECONDS = Histogram(
    "xacthuc_registry_call_seconds",
    "Time the identity registry took per question, retries included, by platform and outcome",
    ["platform", "outcome"],
)
REFUSALS = Counter(
    "xacthuc_refusals_total",
    "Requests refused by a budget or a lock, by platform and reason",
    ["platform", "reason"],
)
# The shell's own series.
STORE_SECONDS = Histogram(
    "xacthuc_store_operation_seconds",
    "Latency of each store operation (one atomic step), by operation",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CIRCUIT_STATE = Gauge(
    "xacthuc_registry_circuit_state",
    "Circuit breaker of each identity registry: 0 closed, 1 half-open, 2 open",
    ["registry"],
    multiprocess_mode="livemax",  # each worker has its own breaker: the worst one shows
)
CIRCUIT_REFRESH_SECONDS = 1.0
_CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class PrometheusFlowMetrics:
    """The label children of each (platform, outcome) are looked up once and kept (`labels()`
    takes a lock and hashes its arguments on every call): a start or an ID check reports one
    outcome per call. Both label sets are bounded (see above)."""

    def __init__(self) -> None:
        self._sms: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._registry: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def sms_send(self, platform: str, outcome: str, seconds: float) -> None:
        key = (platform, outcome)
        series = self._sms.get(key)
        if series is None:
            series = self._sms[key] = (SMS_SENDS.labels(*key), SMS_SECONDS.labels(*key))
        series[0].inc()
        series[1].observe(seconds)

    def registry_call(self, platform: str, outcome: str, seconds: float) -> None:
        key = (platform, outcome)
        series = self._registry.get(key)
        if series is None:
            series = self._registry[key] = (
                REGISTRY_CALLS.labels(*key),
                REGISTRY_SECONDS.labels(*key),
            )
        series[0].inc()
        series[1].observe(seconds)

    def refused(self, platform: str, reason: str) -> None:
        REFUSALS.labels(platform, reason).inc()


def count_gateway_failure(kind: str) -> None:
    """A failed attempt at the SMS gateway (`HttpSmsSender(on_failed_attempt=...)`)."""
    SMS_GATEWAY_ATTEMPT_FAILURES.labels(kind).inc()


def watch_circuit(registry: str, state: Callable[[], str]) -> None:
    """Expose a registry's circuit state, read at each scrape: an open circuit turns
    half-open by the passing of time alone, with no call to report it.

    In a worker of `xacthuc serve --workers N` (prometheus_client multiprocess mode) the
    parent answers the scrape from what the workers wrote, and a read-at-scrape function is
    never called: a daemon thread writes the state every `CIRCUIT_REFRESH_SECONDS` instead
    (the state is a read of two fields and the clock)."""

    def value() -> float:
        return _CIRCUIT_VALUES.get(state(), -1.0)

    child = CIRCUIT_STATE.labels(registry)
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        child.set_function(value)
        return

    def refresh() -> None:
        while True:
            child.set(value())
            time.sleep(CIRCUIT_REFRESH_SECONDS)

    threading.Thread(target=refresh, name=f"circuit-state-{registry}", daemon=True).start()


def time_store_operations(store: Store) -> Store:
    """Times every operation of the `Store` contract on this instance (`aclose` aside), by
    operation name. The instance keeps its class (`checkpoint_store_for` looks at it); its
    bound methods are replaced by timed ones, once however often it is called."""
    if not getattr(store, _TIMED, False):
        for name in STORE_OPERATIONS:
            setattr(store, name, _timed(name, getattr(store, name)))
        setattr(store, _TIMED, True)
    return store


_TIMED = "_xacthuc_store_timed"


STORE_OPERATIONS = tuple(
    name
    for name, member in vars(Store).items()
    if inspect.iscoroutinefunction(member) and name != "aclose"
)


def _timed(
    operation: str, method: Callable[..., Awaitable[object]]
) -> Callable[..., Awaitable[object]]:
    histogram = STORE_SECONDS.labels(operation)  # bound once: labels() takes a lock per call

    @functools.wraps(method)
    async def timed(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)

    return timed
