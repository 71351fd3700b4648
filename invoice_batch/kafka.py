"""librdkafka configuration for our clients, topic creation, and the DLQ writer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from invoice_batch.settings import Settings

# How our consumers fetch, besides librdkafka's defaults. Once a partition's local
# queue passes queued.max.messages.kbytes (64 MB: about 30,000 invoices of 2 KB),
# librdkafka stops fetching it for fetch.queue.backoff.ms, 1 s by default. Reading a
# backlog, a consumer empties that queue well within the second, then waits out the
# rest of it. For 100,000 bench invoices that cost the consumer a tenth of its ingest
# rate (1.97-2.16 s against 1.76-1.83 on SQLite) and a bare consumer loop two fifths
# of its own (1.50-1.62 s against 0.74-0.95). With 20 ms the queue stays fed and its
# bound still holds: while it is full, librdkafka looks again every 20 ms instead of
# fetching. KAFKA_FETCH_QUEUE_BACKOFF_MS overrides it.
CONSUMER_FETCH: dict[str, Any] = {"fetch.queue.backoff.ms": 20}


def consumer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "group.id": settings.consumer_group,
        # Offsets move only after the rows are durable (the consume protocol).
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "enable.partition.eof": False,
        **CONSUMER_FETCH,
    }
    config.update(settings.librdkafka())
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        # No duplicates from the producer's own retries, and acks from every replica.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "compression.type": "lz4",
    }
    config.update(settings.librdkafka())
    return config


def ensure_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int | None = None,
    replication: int | None = None,
    retention_hours: float | None = None,
    timeout: float = 15.0,
) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left alone (their
    partitions and settings are the operator's). Returns the names created.

    Partitions, replication factor (-1: the broker's default) and retention come from
    the arguments, else TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR and
    TOPIC_RETENTION_HOURS. Safe to run from several processes at once: a topic
    another process created meanwhile counts as existing.
    """
    partitions = partitions or settings.topic_partitions
    replication = replication if replication is not None else settings.topic_replication_factor
    retention_hours = retention_hours or settings.topic_retention_hours
    config = {"retention.ms": str(int(retention_hours * 3_600_000))} if retention_hours else {}
    admin = AdminClient(dict(settings.librdkafka()))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(name, partitions, replication, config=config)
        for name in dict.fromkeys(names)
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def ensure_service_topics(settings: Settings, names: Iterable[str]) -> None:
    """Topic creation on a service's start: only with TOPICS_AUTO_CREATE (the default).

    Where the service's credentials may not create topics (most managed clusters),
    set TOPICS_AUTO_CREATE=false and create them with ``invoice-batch topics create``.
    """
    if settings.topics_auto_create:
        ensure_topics(settings, names)


class DeliveryFailed(Exception):
    """The broker did not acknowledge a record; nothing after it may be committed."""


class DeadLetters:
    """Writes rejected records to the DLQ topic: original bytes, reason in headers.

    ``flush`` blocks until the broker acknowledged every record sent so far and
    raises DeliveryFailed otherwise, so the caller commits offsets only after it.
    """

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._failures: list[str] = []
        self.pending = 0

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        code: str,
        reason: str,
        topic: str | None,
        partition: int | None,
        offset: int | None,
    ) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("error.code", code.encode()),
            ("error.message", reason.encode("utf-8", "replace")),
            ("source.topic", (topic or "").encode()),
            ("source.partition", str(partition if partition is not None else -1).encode()),
            ("source.offset", str(offset if offset is not None else -1).encode()),
        ]
        while True:
            try:
                self.producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self.producer.poll(0.1)
        self.pending += 1

    def flush(self, timeout: float = 30.0) -> None:
        if not self.pending:
            return
        remaining = self.producer.flush(timeout)
        self.pending = 0
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryFailed(
                f"{remaining} DLQ records unacknowledged, {len(failures)} failed: "
                f"{failures[0] if failures else 'timeout'}"
            )
