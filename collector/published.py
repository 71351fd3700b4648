"""What a collector already published: the output topic read back from the publish intent.

Before it publishes, the collector stores on the batch row the offsets of the output
topic from which its records will land (``batches.publish_from``). A collector that
takes the batch over after a crash reads the topic from there to its end and marks
the rows whose events it finds done instead of publishing them again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from invoice_batch.kafka import consumer_config
from invoice_batch.settings import Settings

# How long reading the output back may take before the pass gives up (and retries).
READ_TIMEOUT_SECONDS = 60.0


class ReadBackFailed(Exception):
    """The output topic could not be read back to its end."""


class OutputLog:
    """Read access to the output topic: end offsets and the events since an intent."""

    def __init__(self, settings: Settings, decode: Callable[[bytes], Mapping[str, object]]) -> None:
        self.topic = settings.output_topic
        self.decode = decode
        self.timeout = settings.shutdown_timeout_seconds
        self._config = {
            **consumer_config(settings),
            # Assigned partitions only: the group is never joined and nothing is committed.
            "group.id": f"{settings.consumer_group}-readback-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
        }
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def end_offsets(self) -> dict[int, int]:
        """The high watermark of every partition of the output topic."""
        consumer = self._client()
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.timeout)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None:
                raise ReadBackFailed(f"output topic {self.topic!r} has no metadata")
            return {
                partition: consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=self.timeout
                )[1]
                for partition in topic.partitions
            }
        except KafkaException as exc:
            raise ReadBackFailed(f"reading the output topic's offsets failed: {exc}") from exc

    def event_ids_since(self, offsets: Mapping[int, int], batch_id: str) -> set[str]:
        """Event ids of ``batch_id``'s records from ``offsets`` to the topic's end now."""
        ends = self.end_offsets()
        starts = {p: offsets.get(p, 0) for p in ends if ends[p] > offsets.get(p, 0)}
        if not starts:
            return set()
        consumer = self._client()
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        found: set[str] = set()
        remaining = dict(starts)
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise ReadBackFailed(
                        f"the output topic was not read back within {READ_TIMEOUT_SECONDS:.0f} s"
                    )
                for message in consumer.consume(1000, 0.5):
                    if message.error() is not None:
                        continue
                    partition, offset = message.partition(), message.offset()
                    if partition is None or offset is None:
                        continue
                    if offset + 1 >= ends[partition]:
                        remaining.pop(partition, None)
                    value = message.value()
                    if value is None:
                        continue
                    try:
                        record = self.decode(value)
                    except Exception:  # not ours to judge: another writer's record
                        continue
                    if record.get("batch_id") == batch_id:
                        found.add(str(record["event_id"]))
                # Compacted or deleted records leave gaps: the position tells the truth.
                for position in consumer.position(
                    [TopicPartition(self.topic, p) for p in list(remaining)]
                ):
                    if position.offset >= ends[position.partition]:
                        remaining.pop(position.partition, None)
        except KafkaException as exc:
            raise ReadBackFailed(f"reading the output topic back failed: {exc}") from exc
        finally:
            consumer.unassign()
        return found

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
