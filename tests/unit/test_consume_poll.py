"""The consume protocol with a poll's store write overlapping the next poll's
decoding (two polls in the writers on PostgreSQL): offsets only for committed
polls, in poll order; a failed write rewinds every poll not committed."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import invoice_batch.consumer.service as service_module
import pytest
from confluent_kafka import Message, TopicPartition
from invoice_batch.consumer.service import ConsumerService
from invoice_batch.schemas.codec import InvoiceCodec
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from invoice_batch.metrics import Metrics
from invoice_batch.settings import load_settings
from invoice_batch.store.models import InvoiceRow
from invoice_batch.store.repository import PendingRow, Store, _copy_columns
from invoice_batch.store.schema import make_engine, upgrade_schema
from tests.conftest import _postgres_database


class FakeConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.calls.append(("store", [(tp.partition, tp.offset) for tp in offsets]))

    def commit(self, asynchronous: bool = True) -> None:
        self.calls.append(("commit", asynchronous))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("in", 0), TopicPartition("in", 1)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", len(partitions)))

    def seek(self, partition: TopicPartition) -> None:
        self.calls.append(("seek", (partition.partition, partition.offset)))


class FakeDeadLetters:
    def flush(self) -> None:
        pass


class FailingStore(Store):
    fail = False
    # Fail only the polls holding one of these offsets.
    fail_offsets: frozenset[int] = frozenset()

    def add_pending_rows(self, rows: Sequence[PendingRow], *, sync: bool = True) -> int:
        self._maybe_fail(row[8] for row in rows)
        return super().add_pending_rows(rows, sync=sync)

    def add_pending_copy(self, copy_data: bytes) -> int:
        self._maybe_fail(_copy_columns(copy_data)[8])
        return super().add_pending_copy(copy_data)

    def add_pending_flat(self, values: list[object], *, sync: bool = True) -> int:
        self._maybe_fail(_flat_offsets(values))
        return super().add_pending_flat(values, sync=sync)

    def _maybe_fail(self, offsets: Iterable[int | None]) -> None:
        if self.fail or any(offset in self.fail_offsets for offset in offsets):
            raise OperationalError("INSERT", {}, Exception("the store is down"))


def _flat_offsets(values: list[object]) -> list[int]:
    """The source offsets of rows given as flat values (Store.add_pending_flat)."""
    return cast("list[int]", values[8::12])  # a PendingRow's 12 values, its offset 9th


def _messages(start: int, count: int, partition: int = 0) -> list[Message]:
    codec = InvoiceCodec("avro", max_text_bytes=32_768)
    return [
        Message(
            topic="in",
            partition=partition,
            offset=offset,
            key=f"INV-{offset}".encode(),
            value=codec.encode(
                {
                    "invoice_id": f"INV-{partition}-{offset}",
                    "amount": "10.00",
                    "currency": "INR",
                    "supplier": "S",
                    "raw_text": "text",
                }
            ),
            timestamp=(1, 1_700_000_000_000 + offset),
        )
        for offset in range(start, start + count)
    ]


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def _service(
    tmp_path: Path, url: str | None = None
) -> tuple[ConsumerService, FakeConsumer, FailingStore]:
    url = url or f"sqlite:///{tmp_path}/store.db"
    settings = load_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "DATABASE_URL": url, "ANTHROPIC_API_KEY": "k"}
    )
    engine = make_engine(url)
    upgrade_schema(engine)
    store = FailingStore(engine)
    consumer = FakeConsumer()
    service = ConsumerService(
        settings,
        store,
        consumer,
        FakeDeadLetters(),
        None,
        Metrics(CollectorRegistry()),  # type: ignore[arg-type]
    )
    return service, consumer, store


def _stored(store: Store) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count(InvoiceRow.id))).scalar_one())


def test_offsets_are_stored_after_the_poll_is_committed_and_synced(tmp_path: Path) -> None:
    """SQLite: two polls in flight (one written while the other's commit is synced);
    a poll's offsets are stored only after its sync."""
    service, consumer, store = _service(tmp_path)
    sync = store.sync

    def recorded_sync() -> None:
        sync()
        consumer.calls.append(("sync", None))

    store.sync = recorded_sync  # type: ignore[method-assign]
    service.consume_poll(_messages(0, 30))
    service.consume_poll(_messages(30, 20))
    assert [call for call in consumer.calls if call[0] != "sync"] == []  # both in flight
    service.consume_poll(_messages(50, 10))  # two in flight: the oldest completes
    assert consumer.calls[-2:] == [("store", [(0, 30)]), ("commit", True)]
    service.finish_pending()
    service.close()
    assert [call for call in consumer.calls if call[0] != "sync"] == [
        ("store", [(0, 30)]),
        ("commit", True),
        ("store", [(0, 50)]),
        ("commit", True),
        ("store", [(0, 60)]),
        ("commit", True),
    ]
    stores = [index for index, call in enumerate(consumer.calls) if call[0] == "store"]
    syncs = [index for index, call in enumerate(consumer.calls) if call[0] == "sync"]
    assert len(syncs) == 3 and all(s < o for s, o in zip(syncs, stores, strict=True))
    assert _stored(store) == 60


def test_a_failed_sync_rewinds_its_poll_and_every_later_one(tmp_path: Path) -> None:
    """The rows are committed but not known to be on the disk: no offsets, and the
    polls are read again (their rows then count as duplicates)."""
    service, consumer, store = _service(tmp_path)
    failures = iter([OSError(5, "Input/output error")])

    def failing_sync() -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure

    store.sync = failing_sync  # type: ignore[method-assign]
    service.consume_poll(_messages(0, 30))
    service.consume_poll(_messages(30, 20))
    service.consume_poll(_messages(50, 10))
    assert [call for call in consumer.calls if call[0] in ("pause", "seek")] == [
        ("pause", 2),
        ("seek", (0, 0)),
    ]
    assert not [call for call in consumer.calls if call[0] in ("store", "commit")]
    assert service.store_down
    assert _stored(store) == 50  # committed, synced or not
    service.close()


def test_a_failed_write_rewinds_both_polls_and_stores_no_offsets(tmp_path: Path) -> None:
    service, consumer, store = _service(tmp_path)
    store.fail = True
    service.consume_poll(_messages(0, 30))
    service.consume_poll([*_messages(30, 5), *_messages(0, 7, partition=1)])
    service.finish_pending()
    service.close()
    assert ("pause", 2) in consumer.calls
    assert sorted(call[1] for call in consumer.calls if call[0] == "seek") == [(0, 0), (1, 0)]
    assert not [call for call in consumer.calls if call[0] in ("store", "commit")]
    assert service.store_down
    assert _stored(store) == 0


def test_postgresql_keeps_two_polls_in_the_writers_and_completes_them_in_order(
    tmp_path: Path, postgres_url: str
) -> None:
    service, consumer, store = _service(tmp_path, postgres_url)
    service.consume_poll(_messages(0, 30))
    service.consume_poll(_messages(30, 20))
    assert consumer.calls == []  # both in the writers
    service.consume_poll(_messages(50, 10))  # the writers are full: the oldest completes
    assert consumer.calls == [("store", [(0, 30)]), ("commit", True)]
    service.finish_pending()
    service.close()
    assert consumer.calls[2:] == [
        ("store", [(0, 50)]),
        ("commit", True),
        ("store", [(0, 60)]),
        ("commit", True),
    ]
    assert _stored(store) == 60
    store.engine.dispose()


def test_postgresql_a_failed_write_rewinds_every_later_poll_even_one_stored(
    tmp_path: Path, postgres_url: str
) -> None:
    """The oldest poll fails while the next one, in the other writer, is stored: no
    offsets at all, and all three polls are read again; the stored one's rows then
    count as duplicates."""
    service, consumer, store = _service(tmp_path, postgres_url)
    store.fail_offsets = frozenset({0})
    service.consume_poll(_messages(0, 30))
    service.consume_poll(_messages(30, 20, partition=1))
    service.consume_poll([*_messages(50, 10), *_messages(0, 5, partition=2)])
    assert ("pause", 2) in consumer.calls
    assert sorted(call[1] for call in consumer.calls if call[0] == "seek") == [
        (0, 0),
        (1, 30),
        (2, 0),
    ]
    assert not [call for call in consumer.calls if call[0] in ("store", "commit")]
    assert service.store_down
    assert _stored(store) == 20  # the second poll's
    # The store is back: the three polls again, as the rewound partitions give them.
    store.fail_offsets = frozenset()
    service.store_down = False
    consumer.calls.clear()
    service.consume_poll(_messages(0, 30))
    service.consume_poll(_messages(30, 20, partition=1))
    service.consume_poll([*_messages(50, 10), *_messages(0, 5, partition=2)])
    service.finish_pending()
    service.close()
    assert [call for call in consumer.calls if call[0] == "store"] == [
        ("store", [(0, 30)]),
        ("store", [(1, 50)]),
        ("store", [(0, 60), (2, 5)]),
    ]
    assert _stored(store) == 65
    duplicates = service.metrics.events.labels("duplicate")._value.get()
    assert duplicates == 20
    store.engine.dispose()


class _RunningConsumer(FakeConsumer):
    """What ``run`` needs of a consumer: scripted polls for ``consume``, then ``stop``;
    scripted single records for ``poll`` (the store-outage loop)."""

    def __init__(self, polls: list[list[Message]], singles: list[Message], stop: Any) -> None:
        super().__init__()
        self.polls, self.singles, self.stop = polls, singles, stop

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if not self.polls:
            self.stop.set()
            return []
        return self.polls.pop(0)

    def poll(self, timeout: float) -> Message | None:
        return self.singles.pop(0) if self.singles else None

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", len(partitions)))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []


def _offsets_stored(calls: list[tuple[str, Any]]) -> dict[int, int]:
    highest: dict[int, int] = {}
    for kind, value in calls:
        if kind == "store":
            for partition, offset in value:
                highest[partition] = max(highest.get(partition, 0), offset)
    return highest


def test_a_record_polled_while_the_store_is_down_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition assigned during an outage is not paused: the record its poll gives
    is sought back to and its partition paused, never dropped."""
    monkeypatch.setattr(service_module, "STORE_RETRY_SECONDS", 0.01)
    service, _, store = _service(tmp_path)
    stop = threading.Event()
    polled = _messages(0, 1, partition=2)[0]
    consumer = _RunningConsumer(
        # The first poll fails (the two after it are rewound with it); after the
        # outage, partition 0 is read again from 0, and partition 2 from the record
        # put back.
        [
            _messages(0, 10),
            _messages(10, 10),
            _messages(20, 5),
            _messages(0, 25),
            _messages(0, 5, partition=2),
        ],
        [polled],
        stop,
    )
    service.consumer = consumer  # type: ignore[assignment]
    store.fail_offsets = frozenset({0})
    original = store.add_pending_flat

    def fails_once(values: list[object], *, sync: bool = True) -> int:
        try:
            return original(values, sync=sync)
        finally:
            store.fail_offsets = frozenset()

    store.add_pending_flat = fails_once  # type: ignore[method-assign]
    service.run(stop)
    assert [call for call in consumer.calls if call[0] in ("pause", "seek", "resume")] == [
        ("pause", 2),
        ("seek", (0, 0)),  # the failed poll
        ("pause", 2),
        ("seek", (2, 0)),  # the record polled in the outage
        ("resume", 2),
    ]
    assert _offsets_stored(consumer.calls) == {0: 25, 2: 5}
    assert _stored(store) == 30


def test_a_writer_error_of_any_kind_stores_no_later_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only SQLAlchemy's errors: whatever a writer raises, the polls after it are
    rewound with it, and none of their offsets is stored."""
    monkeypatch.setattr(service_module, "STORE_RETRY_SECONDS", 0.01)
    service, _, store = _service(tmp_path)  # two polls in flight, as on PostgreSQL
    stop = threading.Event()
    running = _RunningConsumer([_messages(0, 30), _messages(30, 20), _messages(50, 10)], [], stop)
    service.consumer = running  # type: ignore[assignment]
    original = store.add_pending_flat

    def breaks_on_the_first(values: list[object], *, sync: bool = True) -> int:
        if 0 in _flat_offsets(values):
            raise RuntimeError("not a database error")
        return original(values, sync=sync)

    store.add_pending_flat = breaks_on_the_first  # type: ignore[method-assign]
    service.run(stop)
    assert _offsets_stored(running.calls) == {}
    assert [call for call in running.calls if call[0] in ("pause", "seek")] == [
        ("pause", 2),
        ("seek", (0, 0)),
    ]
    assert _stored(store) == 20  # the second poll's, read again as duplicates later
