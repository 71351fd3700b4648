"""Checks a CLI command makes before it starts work, so that a mistake a person can fix
(a wrong broker address, a wrong DATABASE_URL) is one line naming the setting, exit
code 2, instead of a stack trace or a minute of retries.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from invoice_batch.settings import ConfigError, Settings, redact_url

# Long enough for a broker across a WAN to answer a metadata request, short enough
# that a typo in KAFKA_BOOTSTRAP_SERVERS is reported before the user gives up.
BROKER_TIMEOUT_SECONDS = 5.0
DATABASE_TIMEOUT_SECONDS = 5

_quiet = logging.getLogger("invoice_batch.preflight.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def check_broker(settings: Settings, timeout: float = BROKER_TIMEOUT_SECONDS) -> None:
    """Raise ConfigError unless a broker answers a metadata request within ``timeout``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # librdkafka's own connection errors go to a silent logger: the one line is ours.
    config: dict[str, Any] = {**settings.librdkafka(), "logger": _quiet}
    try:
        AdminClient(config).list_topics(timeout=timeout)
    except KafkaException as exc:
        error: Any = exc.args[0] if exc.args else None
        detail = str(error.str()) if error is not None and hasattr(error, "str") else str(exc)
        if "transport" in detail.lower() or "timed out" in detail.lower():
            raise ConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS: no broker answered at "
                f"{settings.kafka_bootstrap_servers} within {timeout:g} s"
            ) from None
        raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {detail}") from None


def require_api_key(settings: Settings) -> None:
    """Before importing the SDK (seconds on a busy machine): fail fast without a key."""
    if settings.anthropic_api_key is None:
        raise ConfigError("ANTHROPIC_API_KEY: required to call the Message Batches API")


def _without_password(message: str, url: str) -> str:
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if password:
        message = message.replace(password, "***")
    return message


def open_checked_engine(settings: Settings, *, migrate: bool = True) -> Engine:
    """An engine on DATABASE_URL that has answered, with the schema up to date.

    Raises ConfigError naming DATABASE_URL (password redacted) when the URL is
    malformed, names a driver that is not installed, or the database cannot be reached.
    """
    from invoice_batch.store.schema import make_engine, upgrade_schema

    url = settings.sqlalchemy_url()
    shown = redact_url(url)
    try:
        if url.startswith("sqlite"):
            engine = make_engine(url)
        else:
            engine = make_engine(url, connect_args={"connect_timeout": DATABASE_TIMEOUT_SECONDS})
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        reason = _without_password(str(exc).splitlines()[0], url)
        raise ConfigError(f"DATABASE_URL: not a usable SQLAlchemy URL {shown} ({reason})") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (DBAPIError, OSError) as exc:
        engine.dispose()
        original = getattr(exc, "orig", None) or exc
        lines = [line.strip() for line in str(original).splitlines() if line.strip()]
        reason = _without_password(lines[0] if lines else type(original).__name__, url)
        raise ConfigError(f"DATABASE_URL: cannot connect to {shown} ({reason})") from None
    if migrate:
        upgrade_schema(engine)
    return engine
