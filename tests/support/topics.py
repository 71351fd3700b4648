"""Reading whole topics back in tests, with a real librdkafka consumer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    check: Callable[[], None] | None = None,
    settle: float = 0.0,
) -> list[Record]:
    """Records from the start of ``topic`` until ``expected`` arrived (then ``settle`` s more,
    to catch extras such as duplicates) or ``timeout`` passed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            if check is not None:
                check()
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                records.append(
                    Record(
                        message.key(),
                        message.value(),
                        dict(message.headers() or []),
                        message.partition(),
                        message.offset(),
                    )
                )
    finally:
        consumer.close()
    return records


def produce_raw(
    bootstrap: str,
    topic: str,
    items: list[tuple[bytes | None, bytes | None]],
    producer: Producer | None = None,
) -> None:
    """Produce ``items`` and wait for every acknowledgement: at most 30 s with a
    producer of its own; without limit with ``producer``, one made by
    ``patient_producer``."""
    patient = producer is not None
    if producer is None:
        producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
    if patient:
        while producer.flush(5) > 0:
            pass
    else:
        assert producer.flush(30) == 0


def patient_producer(bootstrap: str) -> Producer:
    """A producer whose records never time out: a frozen broker delays them, but
    they are neither dropped nor sent twice."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 0,
        }
    )


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every record now on ``topic``, read by partition assignment (no group join):
    from the low to the high watermark of each partition."""
    from confluent_kafka import TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = list(metadata.topics[topic].partitions) if topic in metadata.topics else []
        ends: dict[int, int] = {}
        starts = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        consumer.assign(starts)
        records: list[Record] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error():
                    continue
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                records.append(
                    Record(
                        message.key(),
                        message.value(),
                        dict(message.headers() or []),
                        partition,
                        offset,
                    )
                )
                if offset + 1 >= ends[partition]:
                    done.add(partition)
        if len(done) < len(ends):
            raise TimeoutError(
                f"read {len(records)} records of {topic}; not all partitions reached their end"
            )
        return records
    finally:
        consumer.close()
