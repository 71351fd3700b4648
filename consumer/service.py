"""The consumer: Kafka → decode and validate → durable buffer → batches.

The consume protocol (``process_messages``), one poll's records at a time:

1. Decode and validate each record; invalid ones are handed to the DLQ producer.
2. Insert the valid ones as pending rows (deduplicated by invoice id + content hash).
3. Commit the store transaction.
4. Wait until the broker acknowledged every DLQ record of this poll.
5. Store offset + 1 of every record of the poll.
6. Commit offsets (asynchronously; synchronously on revoke and on shutdown).

What a restart does after a crash at each step:

- before 3: nothing is durable; the records are read again from the last commit.
- after 3, before 6: the records are read again; their rows exist, so they count
  as ``duplicate`` and are never sent twice; DLQ records may be written again
  (the DLQ is at-least-once: its consumers key on source.partition/offset).
- after 6: nothing is read again.

A failure at 2–4 is never followed by an offset commit: the partitions are
rewound to the first record of the poll and paused; polling goes on (with no
records) so the group membership survives, and the store is probed until it
answers, then consumption resumes where it stopped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from invoice_batch.consumer.flusher import Flusher
from invoice_batch.schemas.codec import invoice_codec_for
from sqlalchemy.exc import SQLAlchemyError

from invoice_batch.batch_requests import request_size_bound
from invoice_batch.crash_points import crash_point
from invoice_batch.invoices import InvalidMessage
from invoice_batch.kafka import DeadLetters, DeliveryFailed
from invoice_batch.logs import get_logger
from invoice_batch.metrics import Metrics
from invoice_batch.settings import Settings
from invoice_batch.store.repository import NewInvoice, Store

log = get_logger("invoice_batch.consumer")

# Records per poll: enough to amortise a store transaction (≈ 1 ms of SQLite fsync)
# over many rows, small enough that a poll's work stays well under a second.
POLL_BATCH = 1_000
POLL_TIMEOUT = 0.5
# How often the lag gauges are refreshed (from librdkafka's cached watermarks).
LAG_SECONDS = 5.0
# Pause between store probes while it is down.
STORE_RETRY_SECONDS = 2.0


def _next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Offset + 1 of the last record of each partition: what storing every record's
    offset in turn leaves stored, in one call instead of one per record."""
    last: dict[tuple[str, int], Message] = {}
    for message in messages:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            continue
        key = (topic, partition)
        previous = last.get(key)
        if previous is None or offset > (previous.offset() or -1):
            last[key] = message
    offsets = []
    for (topic, partition), message in last.items():
        next_offset = (message.offset() or 0) + 1
        epoch = message.leader_epoch()  # kept, as storing the message itself would
        offsets.append(
            TopicPartition(topic, partition, next_offset)
            if epoch is None
            else TopicPartition(topic, partition, next_offset, leader_epoch=epoch)
        )
    return offsets


class TooManyInvalid(Exception):
    """Nearly every recent record is invalid: most likely a bad upstream deploy."""


class InvalidRatioGuard:
    """Stops the consumer when at least ``max_share`` of the last ``window`` records were
    invalid (window 0: never), instead of emptying the topic into the DLQ after a bad deploy."""

    def __init__(self, window: int, max_share: float) -> None:
        self.window = window
        self.max_share = max_share
        self._recent: deque[bool] = deque(maxlen=window)
        self._invalid = 0

    def record(self, invalid: bool) -> None:
        if not self.window:
            return
        if len(self._recent) == self.window and self._recent[0]:
            self._invalid -= 1
        self._recent.append(invalid)
        self._invalid += invalid
        if len(self._recent) == self.window and self._invalid / self.window >= self.max_share:
            raise TooManyInvalid(
                f"{self._invalid} of the last {self.window} records were invalid "
                f"(limit {self.max_share:.0%}); stopping so the topic is not emptied into the DLQ"
            )


class ConsumerService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        consumer: Consumer,
        dead_letters: DeadLetters,
        flusher: Flusher,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.flusher = flusher
        self.metrics = metrics
        self.clock = clock
        self.codec = invoice_codec_for(settings)
        self.guard = InvalidRatioGuard(settings.invalid_window, settings.invalid_max_share)
        self.store_down = False
        self._failed = False
        self._next_flush_check = 0.0
        self._next_lag_check = 0.0

    # -- the group membership

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        crash_point("consume.on_revoke")
        # Every stored offset belongs to a committed poll (the loop finishes a poll
        # before the next one), so committing them here is always safe.
        if not self._failed:
            self._commit(asynchronous=False)
        log.info("partitions revoked", partitions=[p.partition for p in partitions])

    def _commit(self, *, asynchronous: bool) -> None:
        try:
            if asynchronous:
                self.consumer.commit(asynchronous=True)
            else:
                self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed", error=str(exc.args[0]))

    # -- the loop

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; then commit what is durable and return."""
        self.consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not stop.is_set():
                if self.store_down:
                    self._wait_for_store(stop)
                    continue
                messages = self.consumer.consume(POLL_BATCH, POLL_TIMEOUT)
                self.metrics.last_poll.set(time.time())
                records = [m for m in messages if self._is_record(m)]
                if records:
                    self.process_messages(records)
                self._maybe_flush()
                self._observe_lag()
        finally:
            if not self._failed:
                self._commit(asynchronous=False)

    def _is_record(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", error=str(error))
        return False

    def process_messages(self, messages: Sequence[Message]) -> None:
        """Steps 1–6 of the consume protocol for one poll's records."""
        now = self.clock()
        rows: list[NewInvoice] = []
        invalid = 0
        for message in messages:  # 1
            value = message.value()
            _, timestamp_ms = message.timestamp()
            event_time = (
                datetime.fromtimestamp(timestamp_ms / 1000, UTC) if timestamp_ms > 0 else None
            )
            try:
                invoice = self.codec.decode(value, timestamp=event_time)
            except InvalidMessage as exc:
                invalid += 1
                self.guard.record(True)
                self._to_dlq(message, exc)
                continue
            self.guard.record(False)
            rows.append(
                NewInvoice(
                    invoice=invoice,
                    request_bytes=request_size_bound(
                        invoice,
                        model=self.settings.claude_model,
                        max_tokens=self.settings.claude_max_tokens,
                    ),
                    received_at=now,
                    source_topic=message.topic(),
                    source_partition=message.partition(),
                    source_offset=message.offset(),
                    source_key=message.key(),
                    source_value=value,
                )
            )
        try:
            accepted, duplicates = self.store.add_invoices(rows)  # 2, 3
            self.dead_letters.flush()  # 4
        except (SQLAlchemyError, DeliveryFailed) as exc:
            self._rewind_and_pause(messages, exc)
            return
        crash_point("consume.after_db_commit")
        self.consumer.store_offsets(offsets=_next_offsets(messages))  # 5
        self._commit(asynchronous=True)  # 6
        self.metrics.events.labels("accepted").inc(accepted)
        self.metrics.events.labels("duplicate").inc(duplicates)
        self.metrics.events.labels("invalid").inc(invalid)
        if duplicates:
            log.info("duplicates skipped", duplicates=duplicates)

    def _to_dlq(self, message: Message, exc: InvalidMessage) -> None:
        self.dead_letters.send(
            key=message.key(),
            value=message.value(),
            code=exc.code,
            reason=exc.reason,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        self.metrics.dlq.labels(exc.code).inc()
        log.info(
            "record to DLQ",
            code=exc.code,
            reason=exc.reason,
            partition=message.partition(),
            offset=message.offset(),
        )

    def _rewind_and_pause(self, messages: Sequence[Message], exc: Exception) -> None:
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as seek_error:
                log.warning("seek failed", partition=partition, error=str(seek_error.args[0]))
        self.store_down = True
        log.error(
            "store or DLQ write failed; partitions paused until it is back",
            error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
        )

    def _wait_for_store(self, stop: threading.Event) -> None:
        # Poll (returns nothing while paused) to keep the group membership alive.
        self.consumer.poll(0.2)
        if stop.wait(STORE_RETRY_SECONDS):
            return
        try:
            self.store.ping()
        except SQLAlchemyError:
            return
        self.store_down = False
        self.consumer.resume(self.consumer.assignment())
        log.info("store is back; partitions resumed")

    def _observe_lag(self) -> None:
        """Records behind the high watermark, per assigned partition, every LAG_SECONDS."""
        now = time.monotonic()
        if now < self._next_lag_check:
            return
        self._next_lag_check = now + LAG_SECONDS
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            return
        for position in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(position, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            behind = high - position.offset if position.offset >= 0 else high
            self.metrics.consumer_lag.labels(position.topic, str(position.partition)).set(
                max(behind, 0)
            )

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now < self._next_flush_check:
            return
        self._next_flush_check = now + self.settings.flush_check_seconds
        try:
            self.flusher.reconcile()
            self.flusher.flush_due()
        except SQLAlchemyError as exc:
            log.warning("flush check failed: store unavailable", error=type(exc).__name__)
        except Exception as exc:  # the API being down must not stop consumption
            log.warning("flush check failed", error=f"{type(exc).__name__}: {exc}"[:300])
