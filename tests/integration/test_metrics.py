"""Prometheus series per platform after a real server run, and the Grafana dashboard that
charts them (docs/grafana/xacthuc.json): every series it queries exists."""

from __future__ import annotations

import datetime
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from xacthuc.adapters.metrics import STORE_OPERATIONS, time_store_operations
from xacthuc.adapters.registry.http import HttpRegistry
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain import errors
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.sms import SmsDeliveryError, SmsMessage
from xacthuc.server.app import build_app, make_sms
from xacthuc.server.runtime import start_server

from ..conftest import pair_store
from .conftest import START, CapturingSms, Harness, make_keys, make_settings

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "xacthuc.json"
# The series of issue 12 item 4; the dashboard charts each of them.
FLOW_SERIES = (
    "xacthuc_sms_sends_total",
    "xacthuc_sms_send_seconds_bucket",
    "xacthuc_registry_calls_total",
    "xacthuc_registry_call_seconds_bucket",
    "xacthuc_registry_circuit_state",
    "xacthuc_store_operation_seconds_bucket",
    "xacthuc_refusals_total",
    "xacthuc_sms_gateway_attempt_failures_total",
)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def closed_port() -> int:
    """A loopback port nobody listens on (connects are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def metered(
    redis_url: str, redis_namespace: str, database: Database
) -> AsyncIterator[Harness]:
    """A server whose e-ID registry refuses connections (its circuit opens after 1 failure)."""
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    registry = HttpRegistry(
        base_url=f"https://127.0.0.1:{closed_port()}",
        retries=0,
        timeout=2.0,
        deadline=2.0,
        failure_threshold=1,
        reset_timeout=3600,
    )
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        database=database,
        sms=sms,
        clock=clock,
        api_keys=keys,
        registry=registry,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)


async def run_every_flow(h: Harness) -> None:
    """An SMS sent and one the gateway refuses, a refusal by the resend cooldown, and a
    registry call that gets no answer."""
    alpha = await h.client("alpha")
    await alpha.start_phone_verification(
        account_id="m-1", phone_number="0912345001", client_ip="203.0.113.9"
    )
    with pytest.raises(errors.ResendTooSoon):
        await alpha.start_phone_verification(
            account_id="m-1", phone_number="0912345001", client_ip="203.0.113.9"
        )
    h.sms.fail = True
    with pytest.raises(errors.SmsDeliveryFailed):
        await alpha.start_phone_verification(
            account_id="m-2", phone_number="0912345002", client_ip="203.0.113.9"
        )
    with pytest.raises(errors.RegistryUnavailable):
        await alpha.verify_personal_id(
            account_id="m-3",
            personal_id_number="001085336181",
            full_name="Nguyễn Văn An",
            date_of_birth=datetime.date(1985, 3, 14),
            purpose="no_vietnamese_mobile",
            declared_no_vietnamese_mobile=True,
            client_ip="203.0.113.9",
        )


async def fail_one_gateway_attempt() -> None:
    """The SMS sender the composition root makes, against a gateway that is not there."""
    settings = make_settings(
        sms_backend="http",
        sms_http_url=f"http://127.0.0.1:{closed_port()}/sms",
        sms_http_retries=0,
    )
    sender = make_sms(settings, FixedClock(START))
    try:
        with pytest.raises(SmsDeliveryError):
            await sender.send(SmsMessage("+84912345678", "code 123456", "msg-metrics-1"))
    finally:
        await sender.aclose()


async def test_the_composed_sms_sender_counts_failed_attempts() -> None:
    """Gateway attempts that fail are counted by kind (here no connection could be made)."""
    before = value("xacthuc_sms_gateway_attempt_failures_total", failure="ConnectError")
    await fail_one_gateway_attempt()
    after = value("xacthuc_sms_gateway_attempt_failures_total", failure="ConnectError")
    assert 1.0 == after - before


async def test_flow_series_count_per_platform_and_outcome(metered: Harness) -> None:
    """Sends by outcome, refusals by reason, registry calls by outcome (with latency), store
    latency by operation and the registry's circuit state, all labelled by platform."""
    before = {
        "sent": value("xacthuc_sms_sends_total", platform="alpha", outcome="sent"),
        "failed": value("xacthuc_sms_sends_total", platform="alpha", outcome="failed"),
        "sms_seconds": value("xacthuc_sms_send_seconds_count", platform="alpha", outcome="sent"),
        "refused": value("xacthuc_refusals_total", platform="alpha", reason="RESEND_TOO_SOON"),
        "unavailable": value(
            "xacthuc_registry_calls_total", platform="alpha", outcome="unavailable"
        ),
        "registry_seconds": value(
            "xacthuc_registry_call_seconds_count", platform="alpha", outcome="unavailable"
        ),
        "starts": value("xacthuc_store_operation_seconds_count", operation="start_challenge"),
        "beta": value("xacthuc_sms_sends_total", platform="beta", outcome="sent"),
    }
    assert 0.0 == value("xacthuc_registry_circuit_state", registry="127.0.0.1")  # closed
    await run_every_flow(metered)
    after = {
        "sent": value("xacthuc_sms_sends_total", platform="alpha", outcome="sent"),
        "failed": value("xacthuc_sms_sends_total", platform="alpha", outcome="failed"),
        "sms_seconds": value("xacthuc_sms_send_seconds_count", platform="alpha", outcome="sent"),
        "refused": value("xacthuc_refusals_total", platform="alpha", reason="RESEND_TOO_SOON"),
        "unavailable": value(
            "xacthuc_registry_calls_total", platform="alpha", outcome="unavailable"
        ),
        "registry_seconds": value(
            "xacthuc_registry_call_seconds_count", platform="alpha", outcome="unavailable"
        ),
        "starts": value("xacthuc_store_operation_seconds_count", operation="start_challenge"),
        "beta": value("xacthuc_sms_sends_total", platform="beta", outcome="sent"),
    }
    assert {
        "sent": 1.0,
        "failed": 1.0,
        "sms_seconds": 1.0,
        "refused": 1.0,
        "unavailable": 1.0,
        "registry_seconds": 1.0,
        "starts": 3.0,  # two sends and the refused resend
        "beta": 0.0,  # only alpha called
    } == {k: after[k] - before[k] for k in before}
    assert 2.0 == value("xacthuc_registry_circuit_state", registry="127.0.0.1")  # open


def labels_in_use() -> dict[str, set[str]]:
    """Label names of every xacthuc series with samples."""
    found: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith("xacthuc_"):
                found.setdefault(family.name, set()).update(sample.labels)
    return found


async def test_no_series_is_labelled_by_account(metered: Harness) -> None:
    """Label cardinality stays bounded: no xacthuc series has an account (or any other
    per-user) label."""
    await run_every_flow(metered)
    allowed = {"platform", "outcome", "reason", "operation", "registry", "method", "failure", "le"}
    allowed.add("background_jobs")  # xacthuc_serving: "0" or "1"
    assert {} == {k: v - allowed for k, v in labels_in_use().items() if v - allowed}


def series_names() -> set[str]:
    """Every series name the registry exposes, samples or not yet."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


async def test_dashboard_queries_only_series_that_exist(metered: Harness) -> None:
    """Every metric name in the dashboard's PromQL exists in the registry after a server run,
    the flow series among them have samples, and the dashboard charts every flow series."""
    await run_every_flow(metered)
    await fail_one_gateway_attempt()
    used = {name for q in dashboard_queries() for name in re.findall(r"\bxacthuc_\w+", q)}
    assert set() == used - series_names()
    with_samples = {sample.name for family in REGISTRY.collect() for sample in family.samples}
    assert set() == set(FLOW_SERIES) - with_samples
    assert set() == set(FLOW_SERIES) - used


async def test_store_timing_keeps_the_store_and_wraps_once() -> None:
    """Timing a store keeps its class and its answers; timing it twice counts each call once."""
    store = time_store_operations(time_store_operations(MemoryStore()))
    assert isinstance(store, MemoryStore)
    before = value("xacthuc_store_operation_seconds_count", operation="ping")
    await store.ping()
    assert 1.0 == value("xacthuc_store_operation_seconds_count", operation="ping") - before
    assert "aclose" not in STORE_OPERATIONS
    assert "start_challenge" in STORE_OPERATIONS
