"""Composition root: builds every component from Settings. The only place that knows them all."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xacthuc.adapters.metrics import (
    PrometheusFlowMetrics,
    PrometheusLogMetrics,
    count_gateway_failure,
    time_store_operations,
    watch_circuit,
)
from xacthuc.adapters.registry.http import HttpRegistry
from xacthuc.adapters.registry.sandbox import SandboxRegistry
from xacthuc.adapters.sms.console import ConsoleSmsSender
from xacthuc.adapters.sms.http import HttpSmsSender
from xacthuc.adapters.sms.none import DiscardingSmsSender
from xacthuc.adapters.store.api_keys import api_key_store_for
from xacthuc.adapters.store.cached import CachedStore
from xacthuc.adapters.store.checkpoints import checkpoint_store_for
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.domain.clock import Clock, SystemClock
from xacthuc.domain.fictional import TEST_NUMBERS_DESCRIPTION, TestNumbers
from xacthuc.domain.keyed import OtpMac, Pseudonymizer
from xacthuc.domain.records import Limits
from xacthuc.domain.statuslist import StatusListNames
from xacthuc.domain.tokens import SigningKey
from xacthuc.ports.api_keys import ApiKeyStore
from xacthuc.ports.audit_log import LogReader
from xacthuc.ports.registry import IdentityRegistry
from xacthuc.ports.sms import SmsSender
from xacthuc.ports.store import Store
from xacthuc.server.auth import ApiKeys, KeyWatcher, Role, new_key
from xacthuc.server.config import Mode, RegistryBackend, Settings, SmsBackend
from xacthuc.server.health import Probe
from xacthuc.server.signing import SigningKeys
from xacthuc.server.telemetry import Telemetry, telemetry_from, untraced
from xacthuc.verifiers.age_out import AgeOutSweeper
from xacthuc.verifiers.auditlog import AuditLog
from xacthuc.verifiers.guardian_flow import GuardianLinker
from xacthuc.verifiers.log_reader import StoreLogReader
from xacthuc.verifiers.personal_id_flow import PersonalIdVerifier
from xacthuc.verifiers.phone_otp import PhoneOtpVerifier
from xacthuc.verifiers.status_publisher import StatusListPublisher

if TYPE_CHECKING:  # asyncpg is loaded only when a database is configured
    from xacthuc.adapters.store.pg_audit import PostgresAuditLog
    from xacthuc.adapters.store.pg_retention import AuditRetention
    from xacthuc.adapters.store.postgres import Database

log = logging.getLogger("xacthuc")

DEMO_PLATFORM = "demo"
# Seconds the personal-ID flow waits for the registry beyond XACTHUC_REGISTRY_DEADLINE_SECONDS
# (which HttpRegistry keeps itself) before it stops waiting: a guard, not the deadline.
REGISTRY_DEADLINE_GRACE = 1.0


@dataclass(frozen=True)
class App:
    """Every part of the service, built once by `build_app`; nothing is optional and nothing
    is replaced later, so no caller checks whether a part exists."""

    settings: Settings
    store: Store
    sms: SmsSender
    registry: IdentityRegistry
    clock: Clock
    api_keys: ApiKeys
    # Keeps `api_keys` in step with the key store (`xacthuc keys create|revoke`): loaded
    # before the server serves, then polled.
    key_watcher: KeyWatcher
    # The attestation signer in use, following the keyring on disk (issue 5).
    signing: SigningKeys
    # Each platform's signed status list (issue 5): named by every token, served by RPC
    # and by the well-known HTTP listener.
    status_lists: StatusListPublisher
    phone: PhoneOtpVerifier
    personal_id: PersonalIdVerifier
    # Children under 16 (issue 4): guardian links, and the sweep that ends them at 16.
    guardian: GuardianLinker
    age_out: AgeOutSweeper
    # The verifiable audit log: Merkle trees, signed checkpoints (issue 6).
    audit_log: AuditLog
    # The dependencies health follows (name -> probe): the store and, when configured, the
    # database; add others here, where they are built.
    probes: dict[str, Probe]
    # Keys made up at start in dev mode, to print once: role -> key.
    demo_keys: dict[Role, str] = field(default_factory=dict)
    # Traces (xacthuc.server.telemetry); None when off.
    telemetry: Telemetry | None = None
    # The system of record (XACTHUC_DATABASE_URL), when configured (issue 10).
    database: Database | None = None
    # With a database: the audit log there, which erases an account's records
    # (EraseAccountRecords), and the retention job (P10: partitions ahead, records past
    # XACTHUC_AUDIT_RETENTION_DAYS erased), a background job of worker 0.
    pg_audit: PostgresAuditLog | None = None
    retention: AuditRetention | None = None

    async def open(self) -> None:
        """Connect to the database and check its schema before serving: raises OSError
        naming the database when it cannot be reached, SchemaMismatch (a ValueError) when
        its schema is not this build's."""
        if self.database is None:
            return
        from xacthuc.domain.errors import StoreUnavailable

        try:
            await self.database.open()
        except StoreUnavailable as e:
            raise OSError(f"cannot reach the database {self.database!r}") from e

    def start(self, *, background_jobs: bool = True) -> None:
        """Start the background tasks: the audit log's checkpointer, the age-out sweep (P6)
        and, with a database, the audit retention job (P10); the API key poll. The server calls it once it serves. `background_jobs`
        False (the workers of `xacthuc serve --workers N` but worker 0) starts only what
        every process needs for itself: the API key poll."""
        if background_jobs:
            self.audit_log.start()
            self.age_out.start()
            if self.retention is not None:
                self.retention.start()
        self.key_watcher.start()

    async def aclose(self) -> None:
        """Stop the background tasks, then close the outbound connections and the store."""
        await self.key_watcher.stop()
        await self.age_out.stop()
        await self.audit_log.stop()
        if self.retention is not None:
            await self.retention.stop()
        await self.sms.aclose()
        await self.registry.aclose()
        await self.store.aclose()
        if self.database is not None:
            await self.database.aclose()
        if self.telemetry is not None:  # flushes the spans left, off the event loop
            await asyncio.to_thread(self.telemetry.shutdown)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        otp_max_attempts=settings.otp_max_attempts,
        phone_max_failures=settings.phone_max_failures,
        phone_lock_base_seconds=settings.phone_lock_base_seconds,
        phone_lock_max_seconds=settings.phone_lock_max_seconds,
        resend_cooldown_seconds=settings.resend_cooldown_seconds,
        sends_per_phone_15m=settings.sends_per_phone_15m,
        sends_per_phone_day=settings.sends_per_phone_day,
        sends_per_platform_hour=settings.sends_per_platform_hour,
        sends_per_client_ip_hour=settings.sends_per_client_ip_hour,
        max_accounts_per_phone=settings.max_accounts_per_phone,
        id_attempts_per_account_hour=settings.id_attempts_per_account_hour,
        id_attempts_per_number_hour=settings.id_attempts_per_number_hour,
        id_max_failures=settings.id_max_failures,
        id_lock_base_seconds=settings.id_lock_base_seconds,
        id_lock_max_seconds=settings.id_lock_max_seconds,
        max_accounts_per_personal_id=settings.max_accounts_per_personal_id,
        max_children_per_guardian=settings.max_children_per_guardian,
        send_lease_seconds=settings.sms_send_lease_seconds,
    )


def make_store(settings: Settings, database: Database | None = None) -> Store:
    """The store the settings name: in memory (the embedded default), or the pair (issue
    10): Redis for what may be lost at the price of a user asking for a new code,
    PostgreSQL (`database`, required: Settings refuse a Redis store without one) for the
    system of record, with each process's cache of account state in front (issue 11:
    Authorize without a round trip), fed by PostgreSQL's notifications, unless it is
    turned off."""
    if settings.store_url.startswith("memory://"):
        return MemoryStore()  # in the process already: nothing to cache
    # Only production needs redis-py loaded.
    from xacthuc.adapters.store.pair import PairStore
    from xacthuc.adapters.store.pg_invalidations import PgInvalidationFeed

    owns = database is None  # a caller without one (the CLI): the store makes and closes it
    database = database or make_database(settings)
    if database is None:
        raise ValueError("a Redis store needs XACTHUC_DATABASE_URL (the system of record)")

    store = PairStore(
        settings.store_url, database, namespace=settings.store_namespace, owns_database=owns
    )
    if settings.state_cache_entries == 0:
        return store
    feed = PgInvalidationFeed(database, max_staleness=settings.state_cache_max_staleness_seconds)
    return CachedStore(
        store,
        feed,
        max_entries=settings.state_cache_entries,
        ttl=settings.state_cache_ttl_seconds,
    )


def make_database(settings: Settings) -> Database | None:
    if settings.database_url is None:
        return None
    from xacthuc.adapters.store.postgres import Database  # loads asyncpg

    return Database(
        settings.database_url.get_secret_value(),
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max_size,
        timeout=settings.database_timeout_seconds,
    )


def make_retention(
    settings: Settings, clock: Clock, database: Database | None
) -> tuple[PostgresAuditLog | None, AuditRetention | None]:
    """With a database, the audit log kept there (erasure) and its retention job."""
    if database is None:
        return None, None
    from xacthuc.adapters.store.pg_audit import PostgresAuditLog
    from xacthuc.adapters.store.pg_retention import AuditRetention

    pg_audit = PostgresAuditLog(database)
    return pg_audit, AuditRetention(pg_audit, clock, days=settings.audit_retention_days)


def make_sms(settings: Settings, clock: Clock, telemetry: Telemetry | None = None) -> SmsSender:
    if settings.sms_backend is SmsBackend.HTTP:
        auth = settings.sms_http_auth_header
        return HttpSmsSender(
            url=settings.sms_http_url,
            auth_header=auth.get_secret_value() if auth else None,
            timeout=settings.sms_http_timeout_seconds,
            retries=settings.sms_http_retries,
            clock=clock,
            trace_configs=telemetry.http() if telemetry else (),
            on_failed_attempt=count_gateway_failure,
        )
    if settings.sms_backend is SmsBackend.CONSOLE:
        return ConsoleSmsSender()
    return DiscardingSmsSender()


def make_registry(settings: Settings, telemetry: Telemetry | None = None) -> IdentityRegistry:
    if settings.registry_backend is RegistryBackend.HTTP:
        cert = (
            (settings.registry_client_cert_file, settings.registry_client_key_file)
            if settings.registry_client_cert_file and settings.registry_client_key_file
            else None
        )
        return HttpRegistry(
            base_url=settings.registry_url,
            client_cert=cert,
            ca_file=settings.registry_ca_file,
            timeout=settings.registry_timeout_seconds,
            retries=settings.registry_retries,
            deadline=settings.registry_deadline_seconds,
            failure_threshold=settings.registry_breaker_failures,
            reset_timeout=settings.registry_breaker_reset_seconds,
            trace_configs=telemetry.http() if telemetry else (),
        )
    if settings.registry_sandbox_file:
        return SandboxRegistry.from_file(settings.registry_sandbox_file)
    return SandboxRegistry.from_file()


def log_reader_for(store: Store, database: Database | None = None) -> LogReader:
    """Where the audit log's reader side comes from: with a database, PostgreSQL (the
    records, their leaf hashes and the stored subtrees: no process reads the whole log);
    otherwise a tree kept in this process over the store's records."""
    if database is not None:
        from xacthuc.adapters.store.pg_audit import PostgresLogReader

        return PostgresLogReader(database)
    return StoreLogReader(store)


def make_audit_log(
    settings: Settings,
    store: Store,
    clock: Clock,
    api_keys: ApiKeys,
    database: Database | None = None,
) -> AuditLog:
    if settings.log_signing_key_file:
        key = SigningKey.from_pem_file(settings.log_signing_key_file)
    else:
        log.warning(
            "dev mode: generated a log signing key for this run (set XACTHUC_LOG_SIGNING_KEY_FILE)"
        )
        key = SigningKey.generate()
    return AuditLog(
        log_reader_for(store, database),
        checkpoint_store_for(store, database),
        key.private_key,
        clock,
        origin=settings.log_origin,
        every_records=settings.checkpoint_every_records,
        every_seconds=settings.checkpoint_every_seconds,
        platforms=api_keys.platforms,
        metrics=PrometheusLogMetrics(),
    )


def observe(store: Store, registry: IdentityRegistry, telemetry: Telemetry | None) -> None:
    """Metrics and traces of the built components: the store's operations are timed, an HTTP
    registry's circuit breaker is a gauge, and with tracing on the Redis client is traced
    (the SMS and registry adapters get their trace configs where they are made)."""
    time_store_operations(store)
    if isinstance(registry, HttpRegistry):
        watch_circuit(registry.name, lambda: registry.circuit_state.value)
    if telemetry is not None:
        from xacthuc.adapters.store.pair import PairStore  # loaded already when in use

        backend = store.backend if isinstance(store, CachedStore) else store
        if isinstance(backend, PairStore):
            telemetry.redis(backend.client)
            if not backend.clustered:
                telemetry.redis(backend.once_client)  # the state-changing scripts (sent once)


def public_base_url(settings: Settings, wellknown_port: int | None = None) -> str:
    """The base of the status list URIs: XACTHUC_PUBLIC_BASE_URL; else the well-known
    listener's own address (with the port it bound, when known); else the issuer."""
    if settings.public_base_url:
        return settings.public_base_url
    if settings.wellknown_listen:
        host, _, port = settings.wellknown_listen.rpartition(":")
        if wellknown_port is not None:
            port = str(wellknown_port)
        return f"http://{host}:{port}"
    return settings.issuer.rstrip("/")


def build_app(
    settings: Settings,
    *,
    store: Store | None = None,
    sms: SmsSender | None = None,
    clock: Clock | None = None,
    api_keys: ApiKeys | None = None,
    registry: IdentityRegistry | None = None,
    telemetry: Telemetry | None = None,
    api_key_store: ApiKeyStore | None = None,
    database: Database | None = None,
) -> App:
    """Build the service. Tests pass their own store, SMS sender, clock, keys, tracing or
    database. `api_keys` are the fixed keys (else the keys file, or dev-mode demo keys); the
    key store (else PostgreSQL's with a database, one in the process without) adds to them
    and wins over them."""
    dev = settings.mode is Mode.DEV
    clock = clock or SystemClock()
    telemetry = telemetry or telemetry_from(settings)
    database = database or make_database(settings)
    store = store or make_store(settings, database)
    probes: dict[str, Probe] = {"store": untraced(store.ping)}
    if database is not None:
        probes["database"] = database.ping
    sms = sms or make_sms(settings, clock, telemetry)
    flow_metrics = PrometheusFlowMetrics()
    otp_keys = [k.get_secret_value().encode() for k in settings.otp_hmac_keys] or [
        secrets.token_bytes(32)
    ]
    pseudonym_key = (
        settings.pseudonym_key.get_secret_value().encode()
        if settings.pseudonym_key
        else secrets.token_bytes(32)
    )
    if dev and (not settings.otp_hmac_keys or settings.pseudonym_key is None):
        log.warning(
            "dev mode: random OTP/pseudonym keys for this run (set XACTHUC_OTP_HMAC_KEYS, "
            "XACTHUC_PSEUDONYM_KEY to keep pseudonyms stable across restarts)"
        )
    if settings.test_numbers:  # dev mode only: production settings refuse them
        log.warning(
            "dev mode: XACTHUC_TEST_NUMBERS is on: %s are never texted and accept the fixed code",
            TEST_NUMBERS_DESCRIPTION,
        )
    demo_keys: dict[Role, str] = {}
    if api_keys is None:
        api_keys = ApiKeys.load(settings.api_keys_file) if settings.api_keys_file else ApiKeys()
        if dev and settings.api_keys_file is None:
            for role in Role:
                raw, entry = new_key(DEMO_PLATFORM, role)
                api_keys.add(entry)
                demo_keys[role] = raw
    # The status lists' names first: the signer names a token's list with them, the
    # publisher signs each list under them, and neither needs the other.
    names = StatusListNames(public_base_url(settings))
    signing = SigningKeys.from_settings(settings, clock, status_list=names.reference)
    status_lists = StatusListPublisher(
        store,
        names=names,
        clock=clock,
        signing_key=lambda: signing.current().key,
        issuer=settings.issuer,
        ttl=settings.status_list_ttl_seconds,
        platforms=api_keys.platforms,
    )
    pseudonyms = Pseudonymizer(pseudonym_key)
    limits = limits_from(settings)
    phone = PhoneOtpVerifier(
        store=store,
        sms=sms,
        clock=clock,
        pseudonyms=pseudonyms,
        otp_mac=OtpMac(otp_keys),
        limits=limits,
        otp_ttl_seconds=settings.otp_ttl_seconds,
        token_ttl_seconds=settings.token_ttl_seconds,
        sms_template=settings.sms_template,
        # Settings refuse test numbers in production mode.
        test_numbers=TestNumbers(settings.test_number_code) if settings.test_numbers else None,
        metrics=flow_metrics,
    )
    registry = registry or make_registry(settings, telemetry)
    observe(store, registry, telemetry)
    pg_audit, retention = make_retention(settings, clock, database)
    personal_id = PersonalIdVerifier(
        store=store,
        registry=registry,
        clock=clock,
        pseudonyms=pseudonyms,
        limits=limits,
        token_ttl_seconds=settings.token_ttl_seconds,
        # HttpRegistry keeps the deadline itself (attempts and back-off); the flow's own
        # timeout, a little later, only guards against a registry that overruns it.
        registry_deadline_seconds=settings.registry_deadline_seconds + REGISTRY_DEADLINE_GRACE,
        metrics=flow_metrics,
    )
    return App(
        settings=settings,
        store=store,
        sms=sms,
        registry=registry,
        clock=clock,
        api_keys=api_keys,
        key_watcher=KeyWatcher(
            api_keys,
            api_key_store or api_key_store_for(store, database),
            interval=settings.api_keys_poll_seconds,
        ),
        signing=signing,
        status_lists=status_lists,
        phone=phone,
        personal_id=personal_id,
        guardian=GuardianLinker(
            store=store,
            clock=clock,
            pseudonyms=pseudonyms,
            limits=limits,
            token_ttl_seconds=settings.token_ttl_seconds,
            metrics=flow_metrics,
        ),
        age_out=AgeOutSweeper(
            store, clock, api_keys.platforms, interval_seconds=settings.age_out_sweep_seconds
        ),
        audit_log=make_audit_log(settings, store, clock, api_keys, database),
        probes=probes,
        demo_keys=demo_keys,
        telemetry=telemetry,
        database=database,
        pg_audit=pg_audit,
        retention=retention,
    )
