"""The consumer: Kafka → decode and validate → durable buffer → batches.

The consume protocol (``process_messages``), one poll's records at a time:

1. Decode and validate each record; invalid ones are handed to the DLQ producer.
2. Insert the valid ones as pending rows (deduplicated by invoice id + content hash).
3. Commit the store transaction, and have it on the disk (SQLite's WAL fsynced).
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
rewound to the first record of the poll and paused; polling goes on so the group
membership survives (a record it returns, from a partition assigned during the
outage and so not paused, is put back and its partition paused), and the store is
probed until it answers, then consumption resumes where it stopped.

The loop (``run``) overlaps steps 2–3 of a poll, run by a writer thread, with the
polling and step 1 of the next. On PostgreSQL two polls are in the writers at once,
on two connections, so one poll's COPY keeps the server busy while the previous
poll's commit waits for its WAL flush. SQLite has one writer at a time: it commits
a poll without waiting for the disk and goes on to the next while a syncer thread
fsyncs the WAL (``Store.sync``), so two polls are in flight there too. Once two are,
the oldest poll gets steps 4–6 after its commit (and sync), before the next poll's
rows go to a writer. So offsets are still stored only for committed polls that are
on the disk, in poll order, and a failure rewinds to the first record of the
failed poll and of every later one, whether a writer stored it or not (read again,
its rows count as duplicates), and drops the next poll's decoded rows (read again
too). A revoke or a stop first finishes the polls in the writers.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice, repeat
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from invoice_batch.consumer.flusher import Flusher
from invoice_batch.consumer.rows import COMPILED, PollRows
from invoice_batch.schemas.codec import invoice_codec_for
from sqlalchemy.exc import SQLAlchemyError

from invoice_batch.crash_points import crash_point
from invoice_batch.invoices import InvalidMessage
from invoice_batch.kafka import DeadLetters, DeliveryFailed
from invoice_batch.logs import get_logger
from invoice_batch.metrics import Metrics
from invoice_batch.settings import Settings
from invoice_batch.store.repository import PendingRow, Store

log = get_logger("invoice_batch.consumer")

# Records per poll: enough to amortise a store transaction (a WAL flush) and the
# writer thread's hand-over over many rows, small enough that a poll's work stays
# well under a second.
POLL_BATCH = 2_000
POLL_TIMEOUT = 0.5
# How often the lag gauges are refreshed (from librdkafka's cached watermarks).
LAG_SECONDS = 5.0
# Pause between store probes while it is down.
STORE_RETRY_SECONDS = 2.0
# The interpreter's thread switch interval once the writer thread runs (default 5 ms).
# The writer needs the GIL between statements, and on PostgreSQL after every 32 KB of
# COPY data it sent; each time it waits up to an interval for the decoding thread.
# With the default it stored a poll at half the speed. Since step 1 runs in C (which
# lets go of the lock while it reads, escapes and hashes each record) and PostgreSQL's
# COPY data comes ready from it, 0.2 ms beats 50 µs, whose lock hand-overs cost more
# than they saved: ingest 1.61-1.89 s against 1.66-2.15 on SQLite, 1.90-2.39 against
# 2.29-2.72 on PostgreSQL (100,000 records, three runs each, alternating); 1 ms was
# slower on PostgreSQL.
WRITER_SWITCH_INTERVAL = 0.0002
# Polls in the writers at once on PostgreSQL. With one, the server stood idle through
# every commit's WAL flush (a fifth of the time): 100,000 records took 1.91-2.09 s
# with one against 1.47-1.64 with two, and 1.49-1.52 with three.
WRITERS_POSTGRESQL = 2
# Polls in flight on a SQLite file: one being written, one whose commit is being
# synced. With the fsync inside the commit, the writer stood still through it.
SQLITE_POLLS_IN_FLIGHT = 2


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


@dataclass(slots=True, eq=False)
class _Poll:
    """One poll's records after step 1, and its store write once handed to the writer."""

    messages: Sequence[Message]
    # The rows for the store; none when the poll goes as COPY data alone (pg_copy).
    rows: list[PendingRow]
    invalid: int
    # PostgreSQL: every record's row as binary COPY data, when the compiled path took
    # the whole poll (PollRows.copy).
    pg_copy: bytes | None = None
    # SQLite: every record's row values in one list, likewise (PollRows.flat).
    flat: list[object] | None = None
    write: Future[int] | None = field(default=None)
    # SQLite: the WAL's fsync after the write's commit, run while the next poll is written.
    synced: Future[None] | None = field(default=None)

    @property
    def offered(self) -> int:
        """The rows offered to the store: every record's when it went as COPY data or
        flat values."""
        whole = self.pg_copy is not None or self.flat is not None
        return len(self.messages) if whole else len(self.rows)


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

    def record_valid(self, count: int) -> None:
        """``record(False)`` ``count`` times, raising exactly when that would."""
        if not self.window:
            return
        recent = self._recent
        # A valid record can raise only by filling the window: every record after that
        # was checked with a full window, and a valid one never raises the share. So one
        # at a time until the window is full, then all the rest at once.
        while count > 0 and len(recent) < self.window:
            self.record(False)
            count -= 1
        if count > 0:
            self._invalid -= sum(islice(recent, min(count, self.window)))  # pushed out
            recent.extend(repeat(False, count))


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
        self.poll_rows = PollRows(
            self.codec,
            store.datetime_to_db,
            model=settings.claude_model,
            max_tokens=settings.claude_max_tokens,
            pg_copy=store.dialect == "postgresql",
        )
        self.guard = InvalidRatioGuard(settings.invalid_window, settings.invalid_max_share)
        self.store_down = False
        self._next_flush_check = 0.0
        self._next_lag_check = 0.0
        # The polls whose rows the writer threads are storing (steps 2–3), oldest first.
        self._in_writer: deque[_Poll] = deque()
        self._writer: ThreadPoolExecutor | None = None
        self._syncer: ThreadPoolExecutor | None = None
        # Writer threads (WRITERS_POSTGRESQL on PostgreSQL). SQLite has one writer at
        # a time: a second would only wait for the first one's lock.
        self._writers = WRITERS_POSTGRESQL if store.dialect == "postgresql" else 1
        # Polls in the writers at once. On SQLite the second is written while the
        # first one's commit is synced to the disk (SQLITE_POLLS_IN_FLIGHT).
        self._depth = (
            WRITERS_POSTGRESQL if store.dialect == "postgresql" else SQLITE_POLLS_IN_FLIGHT
        )
        # A private in-memory SQLite database exists once per thread: write in this one.
        self._overlap = not store.in_memory

    # -- the group membership

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        crash_point("consume.on_revoke")
        # Finish the poll in the writer while its partitions are still ours. Every
        # stored offset then belongs to a committed poll, so committing is safe.
        self.finish_pending()
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
        if not COMPILED and self.codec.reads_raw_directly:
            log.warning(
                "invoice_batch._avro_rows is not built (no C compiler or OpenSSL headers at "
                "install): every record is decoded in Python, which takes about five times "
                "as long"
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
                    self.consume_poll(records)
                else:
                    self.finish_pending()
                self._maybe_flush()
                self._observe_lag()
        finally:
            try:
                self.finish_pending()
            finally:
                self.close()
                self._commit(asynchronous=False)

    def close(self) -> None:
        """Stop the writer threads (after ``finish_pending``)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None

    def _is_record(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", error=str(error))
        return False

    def process_messages(self, messages: Sequence[Message]) -> None:
        """Steps 1–6 of the consume protocol for one poll's records, in this thread."""
        self.finish_pending()
        poll = self._decode(messages)  # 1
        try:
            accepted = self._store_rows(poll)  # 2, 3
        except SQLAlchemyError as exc:
            self._rewind_and_pause(poll.messages, exc)
            return
        self._complete(poll, accepted)

    def consume_poll(self, messages: Sequence[Message]) -> None:
        """What ``run`` does with a poll's records: steps 1–6, with 2–3 in a writer.

        Step 1 of this poll overlaps the writers storing the previous ones; once the
        writers are full, the oldest poll in them gets steps 4–6, and this one goes to
        a writer. Call ``finish_pending`` to have the last polls committed.
        """
        if not self._overlap:
            self.process_messages(messages)
            return
        poll = self._decode(messages)  # 1, while the writers run 2–3 of earlier polls
        while len(self._in_writer) >= self._depth:
            if not self._finish_oldest(also_rewind=poll.messages):
                return  # it failed; this poll is read again after the rewind
        if self._writer is None:
            self._writer = ThreadPoolExecutor(self._writers, thread_name_prefix="store-writer")
            sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL))
        poll.write = self._writer.submit(self._store_rows, poll)  # 2, 3
        self._in_writer.append(poll)

    def finish_pending(self, also_rewind: Sequence[Message] = ()) -> bool:
        """Wait for the polls in the writers and give each steps 4–6, oldest first;
        False if one failed.

        On a failure the partitions are rewound to the first records of the failed
        poll, of the polls after it and of ``also_rewind`` (a later poll not yet
        written), and paused.
        """
        while self._in_writer:
            if not self._finish_oldest(also_rewind):
                return False
        return True

    def _finish_oldest(self, also_rewind: Sequence[Message] = ()) -> bool:
        """``finish_pending`` for the oldest poll in the writers only."""
        poll = self._in_writer.popleft()
        assert poll.write is not None
        try:
            accepted = poll.write.result()
            if poll.synced is not None:
                poll.synced.result()
        except Exception as exc:
            # Not only SQLAlchemyError: an error of any other kind escaping here would
            # leave the later polls in the writers for run's finally to complete, and
            # their offsets would cover this poll's records.
            self._rewind_from(poll, also_rewind, exc)
            return False
        return self._complete(poll, accepted, also_rewind)

    def _rewind_from(self, poll: _Poll, also_rewind: Sequence[Message], exc: Exception) -> None:
        """``poll`` failed: rewind to its records, those of every poll after it in the
        writers (waited for first) and ``also_rewind``, and pause."""
        self._rewind_and_pause([*poll.messages, *self._drain_writers(), *also_rewind], exc)

    def _drain_writers(self) -> list[Message]:
        """After a failure: wait for the polls still in the writers, whatever their
        outcome, and return their records, to be read again. Rows they stored count
        as duplicates then."""
        records: list[Message] = []
        while self._in_writer:
            poll = self._in_writer.popleft()
            for pending in (poll.write, poll.synced):
                if pending is not None:
                    with contextlib.suppress(Exception):
                        pending.result()
            records.extend(poll.messages)
        return records

    def _decode(self, messages: Sequence[Message]) -> _Poll:
        """Step 1: decode and validate; rows in the store's form, invalid ones to the DLQ.

        The compiled path takes the poll's clean records; the rest go the Python way
        (``consumer/rows.py``)."""
        poll_rows = self.poll_rows
        poll_rows.start(self.clock())
        guard = self.guard
        copy = poll_rows.copy(messages)
        if copy is not None:
            guard.record_valid(len(messages))
            return _Poll(messages, [], 0, pg_copy=copy)
        flat = poll_rows.flat(messages)
        if flat is not None:
            guard.record_valid(len(messages))
            return _Poll(messages, [], 0, flat=flat)
        compiled = poll_rows.compiled(messages)
        if compiled is not None and None not in compiled:
            guard.record_valid(len(compiled))
            return _Poll(messages, cast("list[PendingRow]", compiled), 0)
        python_row = poll_rows.python_row
        rows: list[PendingRow] = []
        invalid = 0
        # The guard hears of the valid records a run at a time: before the next invalid
        # one, and after the last record.
        counted = 0
        for index, message in enumerate(messages):
            row = None if compiled is None else compiled[index]
            if row is None:
                try:
                    row = python_row(message)
                except InvalidMessage as exc:
                    invalid += 1
                    guard.record_valid(len(rows) - counted)
                    counted = len(rows)
                    guard.record(True)
                    self._to_dlq(message, exc)
                    continue
            rows.append(row)
        guard.record_valid(len(rows) - counted)
        return _Poll(messages, rows, invalid)

    def _store_rows(self, poll: _Poll) -> int:
        """Steps 2–3 (in the writer thread when run overlaps polls); on a SQLite file
        the commit's fsync is handed to the syncer thread (``poll.synced``)."""
        if poll.pg_copy is not None:
            return self.store.add_pending_copy(poll.pg_copy)
        sync = not self.store.syncs_apart
        if poll.flat is not None:
            accepted = self.store.add_pending_flat(poll.flat, sync=sync)
        else:
            accepted = self.store.add_pending_rows(poll.rows, sync=sync)
        if sync:
            return accepted
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-syncer")
        poll.synced = self._syncer.submit(self.store.sync)
        return accepted

    def _complete(self, poll: _Poll, accepted: int, also_rewind: Sequence[Message] = ()) -> bool:
        """Steps 4–6 for a poll whose rows are committed."""
        try:
            self.dead_letters.flush()  # 4
        except DeliveryFailed as exc:
            self._rewind_from(poll, also_rewind, exc)
            return False
        crash_point("consume.after_db_commit")
        self.consumer.store_offsets(offsets=_next_offsets(poll.messages))  # 5
        self._commit(asynchronous=True)  # 6
        duplicates = poll.offered - accepted
        self.metrics.events.labels("accepted").inc(accepted)
        self.metrics.events.labels("duplicate").inc(duplicates)
        self.metrics.events.labels("invalid").inc(poll.invalid)
        if duplicates:
            log.info("duplicates skipped", duplicates=duplicates)
        return True

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
        self._pause_at(messages)
        self.store_down = True
        log.error(
            "store or DLQ write failed; partitions paused until it is back",
            error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
        )

    def _pause_at(self, messages: Sequence[Message]) -> None:
        """Pause every assigned partition, and seek each partition of ``messages``
        back to its first record there."""
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

    def _wait_for_store(self, stop: threading.Event) -> None:
        # Poll to keep the group membership alive. A paused partition returns nothing,
        # but one assigned since the pause (a rebalance during the outage) is not
        # paused: a record from it is put back, and that partition paused too. Dropped,
        # it would be skipped for good once the next poll's offsets were committed.
        message = self.consumer.poll(0.2)
        if message is not None and self._is_record(message):
            self._pause_at([message])
            log.info(
                "partition assigned during the store outage paused", partition=message.partition()
            )
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
