"""librdkafka configuration for our clients, topic creation, and the DLQ writer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from invoice_batch.settings import Settings


def consumer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "group.id": settings.consumer_group,
        # Offsets move only after the rows are durable (the consume protocol).
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "enable.partition.eof": False,
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
    partitions: int = 1,
    replication: int = 1,
    timeout: float = 15.0,
) -> None:
    """Create the topics that do not exist yet; existing ones are left alone."""
    admin = AdminClient(dict(settings.librdkafka()))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(name, partitions, replication) for name in names if name not in existing]
    if not wanted:
        return
    for future in admin.create_topics(wanted, operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


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
