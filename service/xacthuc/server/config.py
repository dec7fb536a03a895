"""One typed, validated settings object, built once at start-up from XACTHUC_* variables.

Nothing reads the environment at import time. `Settings.load()` turns every bad value into
one readable line (`XACTHUC_OTP_TTL_SECONDS: must be between 60 and 600`), so the operator
sees all problems at once instead of a traceback.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xacthuc.domain.fictional import TEST_NUMBERS_DESCRIPTION
from xacthuc.server.logs import LEVELS, LogFormat

# The shortest audit retention production accepts (R11: the replaced Decree 27/2018 and
# Decree 53/2022 keep logs 24 months; P10 keeps verification records 24 months after the
# account's life).
MIN_PRODUCTION_RETENTION_DAYS = 730


class Mode(StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


class SmsBackend(StrEnum):
    NONE = "none"  # dev default: messages go nowhere (use test numbers, or console)
    CONSOLE = "console"  # dev, chosen explicitly: prints each SMS, code included, to stdout
    HTTP = "http"


class RegistryBackend(StrEnum):
    SANDBOX = "sandbox"
    HTTP = "http"


class ConfigError(Exception):
    """Configuration is invalid; `problems` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def _secrets(value: object) -> object:
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return value


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting of the service. See the configuration table in README.md."""

    model_config = SettingsConfigDict(env_prefix="XACTHUC_", extra="ignore", frozen=True)

    mode: Mode = Mode.DEV
    listen: str = "127.0.0.1:50051"
    log_level: str = "INFO"
    # Unset: console lines in dev mode, JSON lines in production.
    log_format: LogFormat | None = None
    # One INFO line per RPC on `xacthuc.access` (method, platform, status, reason, duration,
    # request id); off: none.
    access_log: bool = True
    metrics_listen: str = ""  # host:port for Prometheus /metrics; empty = off
    # OTLP/gRPC collector for traces (e.g. http://otel-collector:4317); empty = tracing off
    # unless OTEL_EXPORTER_OTLP_ENDPOINT is set (xacthuc.server.telemetry).
    otlp_endpoint: str = ""
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=300)
    # Server processes sharing the port (`xacthuc serve --workers N`, xacthuc.server.workers).
    # Unset: one per core when the configuration can be shared (a Redis store, key files),
    # else 1. 1: a single process, no parent.
    workers: int | None = Field(None, ge=1, le=256)
    # TLS for the gRPC port (PEM files); both or neither. A client CA turns on mutual TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Health (grpc.health.v1): every dependency is probed this often, each probe bounded by
    # the timeout; NOT_SERVING is seen within their sum while one is unreachable.
    health_probe_interval_seconds: float = Field(0.5, gt=0, le=60)
    health_probe_timeout_seconds: float = Field(1.0, gt=0, le=60)

    store_url: str = "memory://"
    store_namespace: str = Field("xacthuc", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    # Account state (attestation + lock) cached in each process for Authorize, dropped on
    # every change PostgreSQL announces (NOTIFY; adapters/store/cached.py). 0 entries: off.
    # The cache serves only while its LISTEN connection answered within max_staleness.
    state_cache_entries: int = Field(100_000, ge=0, le=10_000_000)
    state_cache_ttl_seconds: float = Field(30.0, gt=0, le=3600)
    state_cache_max_staleness_seconds: float = Field(0.1, ge=0.01, le=1.0)
    # The system of record (issue 10): PostgreSQL, `postgresql://user@host:port/db`, TLS by
    # libpq's query options (`?sslmode=verify-full&sslrootcert=/path/ca.pem`). Empty: none
    # (dev mode, with the memory store only: a Redis store needs it). Its schema must be this
    # build's (`xacthuc db migrate`), or the server refuses to start.
    database_url: SecretStr | None = None
    database_pool_min_size: int = Field(1, ge=0, le=100)
    database_pool_max_size: int = Field(10, ge=1, le=1000)
    # Bounds connecting, waiting for a pooled connection and each statement; past it the
    # call answers UNAVAILABLE (STORE_UNAVAILABLE).
    database_timeout_seconds: float = Field(5.0, gt=0, le=120)

    # API keys of the platforms: a read-only JSON file of hashed keys (`xacthuc keys create
    # --file`), and the key store next to XACTHUC_STORE_URL (`xacthuc keys create|revoke`),
    # which every server polls this often (a revoked key is refused within about that).
    api_keys_file: Path | None = None
    api_keys_poll_seconds: float = Field(1.0, ge=0.1, le=5)

    # Keys for keyed hashes. Comma-separated; the first signs new values, all are accepted
    # when checking (rotation). Dev mode generates random ones when empty.
    otp_hmac_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    pseudonym_key: SecretStr | None = None

    # Attestation tokens.
    signing_key_file: Path | None = None  # PEM, PKCS#8 Ed25519 private key
    # A keyring directory (`xacthuc keys init`): several keys, rotated without restart
    # (`xacthuc keys rotate`). When set, it is used instead of signing_key_file.
    signing_keys_dir: Path | None = None
    issuer: str = "https://xacthuc.invalid"
    token_ttl_seconds: int = Field(86_400, ge=60, le=90 * 86_400)

    # The well-known HTTP listener (JWKS, status lists) beside the gRPC port; empty = off.
    wellknown_listen: str = ""
    # The public URL of that listener, as tokens name their status list
    # (`<base>/statuslists/<platform>/0`). Empty: `http://<wellknown_listen>` (the port
    # actually bound), or the issuer when the listener is off.
    public_base_url: str = ""
    jwks_ttl_seconds: int = Field(300, ge=1, le=86_400)  # Cache-Control max-age of the JWKS
    # The status list token's `ttl` (how long verifiers may cache it) and Cache-Control.
    status_list_ttl_seconds: int = Field(300, ge=1, le=86_400)

    # The compliance console (auditor keys only) on its own HTTP listener; empty = off. Over
    # HTTPS with XACTHUC_TLS_CERT_FILE / XACTHUC_TLS_KEY_FILE when they are set (browsers
    # give the page WebCrypto only over HTTPS or on a loopback address).
    console_listen: str = ""

    # SMS.
    sms_backend: SmsBackend = SmsBackend.NONE
    sms_http_url: str = ""
    sms_http_auth_header: SecretStr | None = None
    sms_http_timeout_seconds: float = Field(5.0, gt=0, le=60)
    sms_http_retries: int = Field(2, ge=0, le=5)
    # How long a start owns its challenge while the SMS is being handed over (Limits); the
    # HTTP sender's worst case (every attempt timing out, 5 s Retry-After between) must fit
    # in half of it.
    sms_send_lease_seconds: int = Field(60, ge=10, le=3600)
    sms_template: str = (
        "Ma xac thuc cua ban la {code}. Hieu luc {minutes} phut. Khong chia se ma nay."
    )

    # Test numbers (dev mode only; see xacthuc.domain.fictional): never texted, and their
    # code is this fixed one.
    test_numbers: bool = False
    test_number_code: str = Field("000000", pattern=r"^[0-9]{6}$")

    # P1: codes.
    otp_ttl_seconds: int = Field(300, ge=60, le=600)  # NIST 800-63B / ASVS cap: 10 min
    otp_max_attempts: int = Field(5, ge=1, le=10)
    # P2: per-number failures across challenges.
    phone_max_failures: int = Field(10, ge=3, le=100)
    phone_lock_base_seconds: int = Field(900, ge=60, le=86_400)
    phone_lock_max_seconds: int = Field(86_400, ge=60, le=30 * 86_400)
    # P3: sends.
    resend_cooldown_seconds: int = Field(60, ge=0, le=3600)
    sends_per_phone_15m: int = Field(5, ge=1, le=1000)
    sends_per_phone_day: int = Field(10, ge=1, le=10_000)
    sends_per_platform_hour: int = Field(10_000, ge=1, le=100_000_000)
    sends_per_client_ip_hour: int = Field(20, ge=1, le=1_000_000)
    # P8.
    max_accounts_per_phone: int = Field(10, ge=1, le=1000)

    # Personal ID (R3, R4; P5): the identity registry and the attempt limits (no oracle).
    registry_backend: RegistryBackend = RegistryBackend.SANDBOX
    registry_sandbox_file: Path | None = None  # JSON Lines of synthetic citizens; default shipped
    registry_url: str = ""
    registry_client_cert_file: Path | None = None
    registry_client_key_file: Path | None = None
    registry_ca_file: Path | None = None
    registry_timeout_seconds: float = Field(3.0, gt=0, le=60)
    registry_retries: int = Field(2, ge=0, le=5)
    # One deadline for a whole registry match: every attempt and back-off wait within it.
    registry_deadline_seconds: float = Field(10.0, gt=0, le=300)
    registry_breaker_failures: int = Field(5, ge=1, le=100)
    registry_breaker_reset_seconds: float = Field(30.0, gt=0, le=3600)
    id_attempts_per_account_hour: int = Field(10, ge=1, le=1000)
    id_attempts_per_number_hour: int = Field(10, ge=1, le=1000)
    id_max_failures: int = Field(5, ge=1, le=100)
    id_lock_base_seconds: int = Field(900, ge=60, le=86_400)
    id_lock_max_seconds: int = Field(86_400, ge=60, le=30 * 86_400)
    max_accounts_per_personal_id: int = Field(10, ge=1, le=1000)

    # Children under 16 (R1, P6): children with an active link per guardian, and how often
    # links of children who turned 16 are ended.
    max_children_per_guardian: int = Field(5, ge=1, le=100)
    age_out_sweep_seconds: float = Field(300.0, ge=1, le=86_400)

    # Audit log (P10): signed checkpoints of each platform's Merkle tree (see auditlog.py).
    log_origin: str = "xacthuc.invalid/log"  # checkpoint origin and key name: <origin>/<platform>
    log_signing_key_file: Path | None = None  # PEM, PKCS#8 Ed25519 private key
    checkpoint_every_records: int = Field(1000, ge=1, le=10_000_000)
    checkpoint_every_seconds: int = Field(60, ge=1, le=86_400)
    # P10 retention (with XACTHUC_DATABASE_URL): records older than this many days lose their
    # contents (leaf hashes stay), by worker 0's hourly job; 0 keeps them.
    audit_retention_days: int = Field(0, ge=0, le=36_500)

    _split_keys = field_validator("otp_hmac_keys", mode="before")(_secrets)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return v.upper()

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return LogFormat.JSON if self.mode is Mode.PRODUCTION else LogFormat.CONSOLE

    @field_validator("listen", "metrics_listen", "wellknown_listen", "console_listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v == "":
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return v

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if v == "":
            return v
        if not v.startswith(("http://", "https://")) or any(c in v for c in "?# \t"):
            raise ValueError("must be an http(s) URL without query or fragment")
        return v.rstrip("/")

    @field_validator("log_origin")
    @classmethod
    def _origin(cls, v: str) -> str:
        if not v or len(v) > 200 or "+" in v or any(ch.isspace() or ord(ch) < 0x20 for ch in v):
            raise ValueError("must be 1-200 characters without spaces or '+' (a key name)")
        return v

    @field_validator("store_url")
    @classmethod
    def _store(cls, v: str) -> str:
        if v.startswith(("redis+cluster://", "rediss+cluster://")):
            # Only a cluster needs its URL read here (redis-py is loaded for it anyway).
            from xacthuc.adapters.store.redis_cluster import parse_cluster_url

            parse_cluster_url(v)
            return v
        if not v.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError(
                "must start with memory://, redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://"
            )
        return v

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        if v.get_secret_value() == "":
            return None
        if not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return v

    @field_validator("otp_hmac_keys")
    @classmethod
    def _key_length(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 32 for k in v):
            raise ValueError("each key must be at least 32 characters")
        return v

    @field_validator("pseudonym_key")
    @classmethod
    def _pseudonym_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return v

    @field_validator("sms_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{code}" not in v:
            raise ValueError("must contain {code}")
        try:
            v.format(code="000000", minutes=5)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"only {{code}} and {{minutes}} may be used ({e})") from e
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.sms_backend is SmsBackend.HTTP and not self.sms_http_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "XACTHUC_SMS_HTTP_URL must be an http(s) URL when XACTHUC_SMS_BACKEND=http"
            )
        if self.sms_backend is SmsBackend.HTTP:
            attempts = 1 + self.sms_http_retries
            worst = attempts * self.sms_http_timeout_seconds + self.sms_http_retries * 5.0
            if worst > self.sms_send_lease_seconds / 2:
                raise ValueError(
                    f"XACTHUC_SMS_SEND_LEASE_SECONDS must be at least {2 * worst:g}: twice "
                    "the SMS gateway's worst case (every attempt timing out)"
                )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("XACTHUC_TLS_CERT_FILE and XACTHUC_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("XACTHUC_TLS_CLIENT_CA_FILE needs XACTHUC_TLS_CERT_FILE")
        if self.registry_backend is RegistryBackend.HTTP:
            if not self.registry_url.startswith("https://"):
                raise ValueError(
                    "XACTHUC_REGISTRY_URL must be an https URL when XACTHUC_REGISTRY_BACKEND=http"
                )
            if (self.registry_client_cert_file is None) != (self.registry_client_key_file is None):
                raise ValueError(
                    "XACTHUC_REGISTRY_CLIENT_CERT_FILE and XACTHUC_REGISTRY_CLIENT_KEY_FILE go together"
                )
            if self.registry_deadline_seconds < self.registry_timeout_seconds:
                raise ValueError(
                    "XACTHUC_REGISTRY_DEADLINE_SECONDS must be at least "
                    "XACTHUC_REGISTRY_TIMEOUT_SECONDS (one whole attempt)"
                )
        if self.database_url is not None and self.store_url.startswith("memory://"):
            raise ValueError(
                "XACTHUC_DATABASE_URL needs a Redis store (XACTHUC_STORE_URL=redis://...): "
                "the in-memory store keeps its audit log in the process"
            )
        if self.database_url is None and not self.store_url.startswith("memory://"):
            raise ValueError(
                "XACTHUC_STORE_URL=redis://... needs XACTHUC_DATABASE_URL (postgresql://...): "
                "Redis keeps only challenges in flight, budgets and counters; attestations, "
                "revocations, the status list and the audit log are kept in PostgreSQL"
            )
        if self.database_pool_min_size > self.database_pool_max_size:
            raise ValueError(
                "XACTHUC_DATABASE_POOL_MIN_SIZE must not exceed XACTHUC_DATABASE_POOL_MAX_SIZE"
            )
        if self.audit_retention_days and self.database_url is None:
            raise ValueError(
                "XACTHUC_AUDIT_RETENTION_DAYS needs XACTHUC_DATABASE_URL: only the audit log in "
                "PostgreSQL can lose a record's contents and keep its leaf hash"
            )
        if self.sends_per_phone_15m > self.sends_per_phone_day:
            raise ValueError(
                "XACTHUC_SENDS_PER_PHONE_15M must not exceed XACTHUC_SENDS_PER_PHONE_DAY"
            )
        if self.mode is Mode.PRODUCTION:
            self._refuse_dev_parts()
        return self

    def _refuse_dev_parts(self) -> None:
        dev_parts = []
        if self.sms_backend is SmsBackend.CONSOLE:
            dev_parts.append("XACTHUC_SMS_BACKEND=console prints codes; use http")
        if self.sms_backend is SmsBackend.NONE:
            dev_parts.append("XACTHUC_SMS_BACKEND=none sends no SMS; use http")
        if self.test_numbers:
            dev_parts.append(
                f"XACTHUC_TEST_NUMBERS=true would accept the fixed code for {TEST_NUMBERS_DESCRIPTION}"
                " without sending an SMS; test numbers are for dev and tests only"
            )
        if self.signing_key_file is None and self.signing_keys_dir is None:
            dev_parts.append(
                "neither XACTHUC_SIGNING_KEYS_DIR nor XACTHUC_SIGNING_KEY_FILE is set (a "
                "generated key would not survive a restart)"
            )
        if self.store_url.startswith("memory://"):
            dev_parts.append(
                "XACTHUC_STORE_URL=memory:// keeps nothing across restarts; use redis://"
            )
        if self.database_url is None:
            dev_parts.append(
                "XACTHUC_DATABASE_URL is unset (PostgreSQL keeps what must outlive a Redis "
                "failure: the audit log and its checkpoints)"
            )
        if not self.otp_hmac_keys:
            dev_parts.append("XACTHUC_OTP_HMAC_KEYS is unset")
        if self.pseudonym_key is None:
            dev_parts.append("XACTHUC_PSEUDONYM_KEY is unset")
        if self.log_signing_key_file is None:
            dev_parts.append(
                "XACTHUC_LOG_SIGNING_KEY_FILE is unset (checkpoints signed by a generated key "
                "cannot be verified after a restart)"
            )
        if self.registry_backend is RegistryBackend.SANDBOX:
            dev_parts.append(
                "XACTHUC_REGISTRY_BACKEND=sandbox matches synthetic people only; use http"
            )
        if 0 < self.audit_retention_days < MIN_PRODUCTION_RETENTION_DAYS:
            dev_parts.append(
                f"XACTHUC_AUDIT_RETENTION_DAYS={self.audit_retention_days} is under "
                f"{MIN_PRODUCTION_RETENTION_DAYS} days (R11, P10: records are kept at least "
                "24 months)"
            )
        if self.issuer.rstrip("/").endswith(".invalid"):
            dev_parts.append("XACTHUC_ISSUER is the placeholder https://xacthuc.invalid")
        if self.log_origin.startswith("xacthuc.invalid"):
            dev_parts.append("XACTHUC_LOG_ORIGIN is the placeholder xacthuc.invalid/log")
        if self.wellknown_listen and not self.public_base_url:
            dev_parts.append(
                "XACTHUC_PUBLIC_BASE_URL is unset while XACTHUC_WELLKNOWN_LISTEN is on (tokens "
                "would name the listener's bind address as their status-list URL)"
            )
        if (
            self.console_listen
            and self.tls_cert_file is None
            and not _loopback(self.console_listen)
        ):
            dev_parts.append(
                "XACTHUC_CONSOLE_LISTEN is not a loopback address and XACTHUC_TLS_CERT_FILE is "
                "unset (auditor keys would cross the network in clear)"
            )
        if dev_parts:
            raise ValueError("production mode refuses dev-only parts: " + "; ".join(dev_parts))

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build from the environment (and overrides), or raise ConfigError listing every problem."""
        try:
            # Ignored: the overrides are checked by pydantic right here (ValidationError ->
            # ConfigError), so any value may come in; the generated __init__ wants field types.
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as e:
            problems = []
            for err in e.errors():
                loc = "_".join(str(p) for p in err["loc"]).upper()
                name = f"XACTHUC_{loc}: " if loc else ""
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}{msg}")
            raise ConfigError(problems) from None
