"""One frozen settings object per process, read from the environment at the entry point.

Every setting is an environment variable with the same name in upper case
(``BATCH_MAX_REQUESTS``); a config file may set the same keys. Any other
``KAFKA_*`` variable is passed to librdkafka: ``KAFKA_SECURITY_PROTOCOL`` becomes
``security.protocol``. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Hard limits of the Message Batches API (BATCH_API_FACTS.md): a batch larger than
# these is rejected whole, so the settings may only go below them.
API_MAX_REQUESTS = 100_000
API_MAX_BYTES = 256 * 1024 * 1024

# librdkafka settings that carry secrets; their values are masked wherever printed.
SECRET_KAFKA_KEYS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password"})

DEFAULT_DATABASE_URL = "sqlite:///var/invoice-batch.db"
# SQLITE_SYNCHRONOUS: how SQLite syncs its WAL (store/schema.py, make_engine).
SqliteSynchronous = Literal["full", "normal"]


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming the setting."""


def _parse_thresholds(raw: str) -> dict[str, Decimal]:
    thresholds: dict[str, Decimal] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        code, sep, value = part.partition("=")
        code = code.strip().upper()
        if not sep or not re.fullmatch(r"[A-Z]{3}", code):
            raise ValueError(f"expected CUR=AMOUNT pairs like INR=200000, got {part!r}")
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{code} threshold {value.strip()!r} is not a number") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{code} threshold must be a non-negative number")
        thresholds[code] = amount
    return thresholds


class Settings(BaseSettings):
    """Every knob of both services. Immutable once built."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[no-untyped-def]
        # load_settings() reads the environment (and a config file) itself, so that
        # tests can pass their own mapping; the object sees only what it is given.
        return (init_settings,)

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    input_topic: str = "invoices"
    output_topic: str = "invoices.classified"
    dlq_topic: str = "invoices.dlq"
    consumer_group: str = "invoice-batch"
    input_format: Literal["avro", "json"] = "avro"
    output_format: Literal["avro", "json"] = "avro"
    schema_registry_url: str | None = None
    # Confluent Cloud's registry API key as KEY:SECRET (basic.auth.user.info).
    schema_registry_basic_auth_user_info: SecretStr | None = None
    # false where producers may not register schemas: the latest registered one is used.
    schema_registry_auto_register: bool = True
    # Raw Avro only: comma-separated .avsc files of newer writer schemas (schemas/codec.py).
    avro_writer_schemas: str = ""
    # Topic creation on start (consumer: input + DLQ, collector: output + DLQ), when allowed.
    topics_auto_create: bool = True
    topic_partitions: int = Field(default=6, ge=1)
    # -1: the broker's default.replication.factor.
    topic_replication_factor: int = Field(default=-1, ge=-1)
    # Unset: the broker's retention.ms.
    topic_retention_hours: float | None = Field(default=None, gt=0)
    # librdkafka's group session timeout; Tansu's first join waits about half of it.
    kafka_session_timeout_ms: int = Field(default=45_000, ge=1_000)

    # Store
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    # SQLite only. full: a commit is on disk (the WAL fsynced) before the consumer
    # commits the poll's offsets, so even a power loss or an OS crash loses nothing.
    # normal: the WAL is fsynced only at checkpoints; a process crash still loses
    # nothing, but a host crash can roll back commits whose offsets were committed.
    sqlite_synchronous: SqliteSynchronous = "full"

    # Claude
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    claude_model: str = "claude-haiku-4-5"
    claude_max_tokens: int = Field(default=1024, ge=64, le=64_000)

    # Flush policy
    batch_max_requests: int = Field(default=10_000, ge=1, le=API_MAX_REQUESTS)
    batch_max_bytes: int = Field(default=200_000_000, ge=10_000, le=API_MAX_BYTES)
    batch_max_wait_seconds: float = Field(default=3600, gt=0)
    batch_cutoff: time | None = None
    batch_timezone: str = "UTC"
    # How often the consumer asks the flush policy; a cut-off is honoured within this.
    flush_check_seconds: float = Field(default=1.0, gt=0)

    # Approval policy
    approval_thresholds: Annotated[dict[str, Decimal], NoDecode] = Field(
        default_factory=lambda: _parse_thresholds("INR=200000,USD=2500,EUR=2500,GBP=2000")
    )

    # Collector
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Failed requests go out in the next batch after this delay, cut-off or not.
    retry_delay_seconds: float = Field(default=60.0, ge=0)
    # How long a create may take; a batch whose create outcome is unknown is
    # reconciled with the API's list only after this (plus a minute).
    create_timeout_seconds: float = Field(default=600.0, gt=0)
    poll_min_seconds: float = Field(default=5.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    # Results per chunk: one producer flush and one store transaction each; a crash
    # between the two is found again on the output topic (the publish intent).
    collect_chunk_size: int = Field(default=2_000, ge=1, le=10_000)

    # Input validation
    max_text_bytes: int = Field(default=32_768, ge=256)
    # The consumer stops (a bad upstream deploy) when at least INVALID_MAX_SHARE of the
    # last INVALID_WINDOW records were invalid; INVALID_WINDOW=0 turns the guard off.
    invalid_window: int = Field(default=1_000, ge=0)
    invalid_max_share: float = Field(default=1.0, gt=0, le=1)

    # Operations
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)

    # Results kept in the store, and the morning summary
    # Classified (done) and dead-lettered rows older than this are deleted once a day.
    results_retention_days: int = Field(default=90, ge=1, le=36_500)
    # USD_RATES=INR=84.2: 1 USD = 84.2 INR, to show costs in the invoices' currency.
    usd_rates: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    # The collector sends the summary e-mail once a day at this local time (BATCH_TIMEZONE).
    summary_at: time = time(6, 0)
    summary_from: str | None = None
    summary_to: str | None = None
    # SUMMARY_TO_DEPARTMENTS=IT=it-ap@x.com,HR=hr@x.com: each gets its own approval queue.
    summary_to_departments: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"

    # librdkafka pass-through, filled from KAFKA_* by load_settings (not an env var itself).
    kafka_options: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("approval_thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            return _parse_thresholds(value)
        return value

    @field_validator("usd_rates", mode="before")
    @classmethod
    def _rates(cls, value: object) -> object:
        if isinstance(value, str):
            rates = _parse_thresholds(value)
            if any(rate <= 0 for rate in rates.values()):
                raise ValueError("every rate must be above zero (1 USD = RATE units)")
            return rates
        return value

    @field_validator("summary_to_departments", mode="before")
    @classmethod
    def _department_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            addresses: dict[str, str] = {}
            for part in value.split(","):
                if not part.strip():
                    continue
                department, sep, address = part.partition("=")
                if not sep or not department.strip() or "@" not in address:
                    raise ValueError(
                        f"expected DEPARTMENT=address pairs like IT=it-ap@example.com, got {part!r}"
                    )
                addresses[department.strip()] = address.strip()
            return addresses
        return value

    @field_validator("summary_to", "summary_from")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for address in value.split(","):
            if "@" not in address:
                raise ValueError(f"{address.strip()!r} is not an e-mail address")
        return value

    @field_validator("summary_at", mode="before")
    @classmethod
    def _summary_at(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
            raise ValueError(f"expected HH:MM (24 h), got {value!r}")
        return value

    @field_validator("batch_cutoff", mode="before")
    @classmethod
    def _cutoff(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
                raise ValueError(f"expected HH:MM (24 h), got {value!r}")
        return value

    @field_validator("batch_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.batch_timezone)

    def sqlalchemy_url(self) -> str:
        return self.database_url.get_secret_value()

    def librdkafka(self) -> dict[str, str | int | float | bool]:
        """Common librdkafka configuration: bootstrap servers plus every KAFKA_* option."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap_servers
        }
        config.update(self.kafka_options)
        return config

    @property
    def summary_recipients(self) -> list[str]:
        """SUMMARY_TO as a list of addresses."""
        return [a.strip() for a in (self.summary_to or "").split(",") if a.strip()]

    def smtp_configured(self) -> bool:
        """The summary e-mail goes out only with a server, a sender and somebody to read it."""
        return bool(
            self.smtp_host
            and self.summary_from
            and (self.summary_recipients or self.summary_to_departments)
        )

    def metrics_port_for(self, service: Literal["consumer", "collector"]) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return 9101 if service == "consumer" else 9102


# librdkafka options that "nothing lost" and "no duplicates" rest on: the service sets
# them, and a KAFKA_* variable may not (it would silently override them).
FIXED_KAFKA_OPTIONS = {
    "enable.auto.commit": "the consumer commits offsets only for records already stored",
    "enable.auto.offset.store": "the consumer stores offsets only for records already stored",
    "enable.idempotence": "the producers must not write a record twice when they retry",
    "acks": "the producers wait for every in-sync replica (acks=all)",
}

# Variables starting with KAFKA_ that are our own settings, not librdkafka options.
_OWN_KAFKA_VARIABLES = frozenset({"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SESSION_TIMEOUT_MS"})


def kafka_options_from(environ: Mapping[str, str]) -> dict[str, str]:
    """``KAFKA_SASL_MECHANISM=PLAIN`` → ``{"sasl.mechanism": "PLAIN"}``."""
    options = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith("KAFKA_") and upper not in _OWN_KAFKA_VARIABLES:
            options[upper.removeprefix("KAFKA_").lower().replace("_", ".")] = value
    return options


def masked(settings: Settings) -> dict[str, str]:
    """The effective settings as strings, secrets replaced by ``**********``."""
    shown: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if name == "kafka_options":
            for key, option in sorted(value.items()):
                env_name = "KAFKA_" + key.upper().replace(".", "_")
                shown[env_name] = "**********" if key in SECRET_KAFKA_KEYS else option
            continue
        if isinstance(value, SecretStr):
            text = "**********"
        elif value is None:
            text = ""
        elif isinstance(value, dict):
            text = ",".join(f"{k}={v}" for k, v in value.items())
        else:
            text = str(value)
        shown[name.upper()] = text
    # DATABASE_URL is secret only in its password part: show the rest.
    shown["DATABASE_URL"] = redact_url(settings.sqlalchemy_url())
    return shown


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def read_config_file(path: Path) -> dict[str, str]:
    """A TOML file with the same keys as the environment (either case), flat."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict | list):
            raise ConfigError(f"config file {path}: {key} must be a plain value")
        values[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    **overrides: object,
) -> Settings:
    """Build the settings. Precedence, highest first: ``overrides``, the environment,
    the config file (``config_file``, else INVOICE_BATCH_CONFIG), the defaults.

    Raises ConfigError with one line naming the first bad setting.
    """
    env = dict(os.environ if environ is None else environ)
    path = config_file or (
        Path(env["INVOICE_BATCH_CONFIG"]) if env.get("INVOICE_BATCH_CONFIG") else None
    )
    merged = {**(read_config_file(path) if path else {}), **{k.upper(): v for k, v in env.items()}}
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        if name == "kafka_options":
            continue
        raw = merged.get(name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    kafka_options = kafka_options_from(merged)
    values["kafka_options"] = kafka_options
    for option in kafka_options:
        if option in FIXED_KAFKA_OPTIONS:
            variable = "KAFKA_" + option.upper().replace(".", "_")
            raise ConfigError(f"{variable} cannot be set: {FIXED_KAFKA_OPTIONS[option]}")
    values.update(overrides)
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{field.upper()}: {message}") from None


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file URL so the default ``./var/`` works out of the box."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
