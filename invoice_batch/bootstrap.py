"""The one place where each process is wired: settings in, a running service out.

Signals only set the stop flag; the service finishes the step it is in and the
shutdown as a whole gets one deadline (SHUTDOWN_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Literal

import anthropic
from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from invoice_batch import gc_policy
from invoice_batch.http_endpoints import EndpointServer
from invoice_batch.kafka import (
    DeadLetters,
    consumer_config,
    ensure_service_topics,
    producer_config,
)
from invoice_batch.logs import configure_logging, get_logger, register_secrets
from invoice_batch.metrics import Metrics
from invoice_batch.settings import SECRET_KAFKA_KEYS, ConfigError, Settings
from invoice_batch.store.repository import Store
from invoice_batch.store.schema import make_engine, upgrade_schema

log = get_logger("invoice_batch")

# How long readiness trusts a successful API call.
API_RECENT_SECONDS = 300.0


def anthropic_client(settings: Settings) -> anthropic.Anthropic:
    """The SDK client: the real API unless ANTHROPIC_BASE_URL points elsewhere."""
    if settings.anthropic_api_key is None:
        raise ConfigError("ANTHROPIC_API_KEY: required to call the Message Batches API")
    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
    )


def open_store(settings: Settings) -> Store:
    engine = make_engine(settings.sqlalchemy_url(), sqlite_synchronous=settings.sqlite_synchronous)
    upgrade_schema(engine)
    return Store(engine)


class ShutdownDeadline:
    """One time budget for the whole shutdown, started by the first stop signal.

    Every step after the signal (finishing the current poll or chunk, the final
    offset commit, the producer flush) takes its timeout from ``remaining()``. If
    the budget runs out anyway, a watchdog ends the process: what is durable was
    committed at a protocol step, so this is no worse than ``kill -9``.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends_at: float | None = None

    def start(self) -> None:
        if self._ends_at is not None:
            return
        self._ends_at = time.monotonic() + self.seconds
        watchdog = threading.Timer(self.seconds, self._expire)
        watchdog.daemon = True
        watchdog.start()

    def remaining(self, default: float) -> float:
        if self._ends_at is None:
            return default
        return max(0.0, self._ends_at - time.monotonic())

    def _expire(self) -> None:
        log.error("shutdown took longer than its deadline; exiting", seconds=self.seconds)
        os._exit(1)


def install_stop_handlers(stop: threading.Event, deadline: ShutdownDeadline | None = None) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        if deadline is not None:
            deadline.start()
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def _prepare(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    secrets = [
        settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
    ]
    with contextlib.suppress(ArgumentError):
        secrets.append(make_url(settings.sqlalchemy_url()).password)
    secrets += [v for k, v in settings.kafka_options.items() if k in SECRET_KAFKA_KEYS]
    if settings.schema_registry_basic_auth_user_info is not None:
        secrets.append(settings.schema_registry_basic_auth_user_info.get_secret_value())
    register_secrets(secrets)


def _readiness(
    store: Store, broker_check: Callable[[], None], api_seen: Callable[[], float]
) -> Callable[[], tuple[bool, str]]:
    def ready() -> tuple[bool, str]:
        problems = []
        try:
            store.ping()
        except Exception as exc:
            problems.append(f"store unreachable ({type(exc).__name__})")
        try:
            broker_check()
        except Exception as exc:
            problems.append(f"broker unreachable ({type(exc).__name__})")
        if time.time() - api_seen() > API_RECENT_SECONDS:
            problems.append("API not reached in the last 5 minutes")
        return (not problems, "; ".join(problems))

    return ready


class ApiProbe:
    """Remembers when the API last answered; probes with a cheap list call."""

    def __init__(self, client: anthropic.Anthropic) -> None:
        self.client = client.with_options(max_retries=0, timeout=10)
        self.last_ok = 0.0
        self._lock = threading.Lock()

    def seen(self) -> float:
        if time.time() - self.last_ok > API_RECENT_SECONDS / 2 and self._lock.acquire(False):
            try:
                self.client.messages.batches.list(limit=1)
                self.last_ok = time.time()
            except anthropic.APIError:
                pass
            finally:
                self._lock.release()
        return self.last_ok


def run_service(settings: Settings, service: Literal["consumer", "collector"]) -> int:
    """Run a service until SIGTERM/SIGINT. Returns the exit code."""
    _prepare(settings)
    client = anthropic_client(settings)
    store = open_store(settings)
    registry = _registry()
    metrics = Metrics(registry)
    producer = Producer(producer_config(settings))
    dead_letters = DeadLetters(producer, settings.dlq_topic)
    stop = threading.Event()
    deadline = ShutdownDeadline(settings.shutdown_timeout_seconds)
    install_stop_handlers(stop, deadline)
    probe = ApiProbe(client)

    def broker_check() -> None:
        producer.list_topics(timeout=3)

    server = EndpointServer(
        settings.metrics_port_for(service), registry, _readiness(store, broker_check, probe.seen)
    ).start()
    log.info(f"{service} starting", metrics_port=server.port, model=settings.claude_model)
    try:
        if service == "consumer":
            from invoice_batch.consumer.flusher import Flusher
            from invoice_batch.consumer.service import ConsumerService, TooManyInvalid

            ensure_service_topics(settings, [settings.input_topic, settings.dlq_topic])
            consumer = Consumer(consumer_config(settings))
            flusher = Flusher(store, client, settings, metrics)
            try:
                consumer_service = ConsumerService(
                    settings, store, consumer, dead_letters, flusher, metrics
                )
                gc_policy.settle()
                consumer_service.run(stop)
            except TooManyInvalid as exc:
                log.error("consumer stopped", reason=str(exc))
                return 1
            finally:
                consumer.close()
        else:
            from invoice_batch.collector.service import CollectorService

            ensure_service_topics(settings, [settings.output_topic, settings.dlq_topic])
            from invoice_batch.collector.service import default_owner
            from invoice_batch.daily import DailyTasks
            from invoice_batch.store.reporting import OperationsStore

            owner = default_owner()
            daily = DailyTasks(settings, OperationsStore(store.engine), owner)
            collector_service = CollectorService(
                settings, store, client, producer, dead_letters, metrics, owner, daily_tasks=daily
            )
            gc_policy.settle()
            collector_service.run(stop)
    finally:
        producer.flush(deadline.remaining(settings.shutdown_timeout_seconds))
        server.stop()
        store.engine.dispose()
    log.info(f"{service} stopped")
    return 0
