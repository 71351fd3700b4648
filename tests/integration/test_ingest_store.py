"""The consumer's insert path on both stores: one statement per poll, duplicates
(already stored, or repeated within the poll) skipped, rows in poll order."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from invoice_batch.schemas.codec import InvoiceCodec
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from invoice_batch.invoices import Invoice
from invoice_batch.store import checkpoints, repository
from invoice_batch.store.models import InvoiceRow
from invoice_batch.store.repository import NewInvoice, Store
from invoice_batch.store.schema import alembic_config, make_engine, upgrade_schema
from tests.conftest import _postgres_database


def _new(index: int, text: str = "x", at: datetime | None = None) -> NewInvoice:
    invoice = Invoice(
        f"INV-{index:05d}",
        "Supplier",
        "Description",
        Decimal("12.50"),
        "INR",
        None,
        text * 700,
        at,
    )
    return NewInvoice(
        invoice=invoice,
        request_bytes=4000 + index,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        source_topic="invoices",
        source_partition=index % 3,
        source_offset=index,
        source_key=None if index % 2 else f"INV-{index:05d}".encode(),
        source_value=None if index % 5 == 0 else bytes([index % 256]) * 1500,
    )


def test_rows_are_inserted_once_in_order_with_duplicates_skipped(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    store = Store(engine)
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = [_new(i, at=at + timedelta(milliseconds=i) if i % 4 else None) for i in range(2500)]
    # Repeated within the poll: stored once.
    assert store.add_invoices([*first, first[7], first[2499]]) == (2500, 2)
    # Already stored, and a new version of one invoice (other content): only that one.
    assert store.add_invoices([first[3], _new(3, text="y"), first[0]]) == (1, 2)
    assert store.add_invoices([]) == (0, 0)
    with engine.connect() as connection:
        rows = connection.execute(
            select(*InvoiceRow.__table__.columns).order_by(InvoiceRow.id)
        ).all()
    assert [row.invoice_id for row in rows] == [f"INV-{i:05d}" for i in [*range(2500), 3]]
    for row, new in zip(rows, [*first, _new(3, text="y")], strict=True):
        payload, content_hash = new.invoice.stored_forms()
        assert (row.status, row.attempts, row.payload, row.content_hash) == (
            "pending",
            0,
            payload,
            content_hash,
        )
        assert (row.request_bytes, row.received_at, row.event_time) == (
            new.request_bytes,
            new.received_at,
            new.invoice.event_time,
        )
        assert (row.source_topic, row.source_partition, row.source_offset) == (
            "invoices",
            new.source_partition,
            new.source_offset,
        )
        assert (row.source_key, row.source_value) == (new.source_key, new.source_value)
    engine.dispose()


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def test_postgresql_pair_stored_by_another_transaction_after_the_check(postgres_url: str) -> None:
    """A pair another consumer's transaction holds uncommitted: our COPY waits for it on
    the unique index, fails once it commits, and the poll then goes through INSERT …
    ON CONFLICT, which stores every other row, each pair once."""
    database_url = postgres_url
    engine = make_engine(database_url)
    upgrade_schema(engine)
    store, rival = Store(engine), Store(make_engine(database_url))
    rows = [_new(i) for i in range(50)]
    with engine.begin() as connection:
        (options,) = connection.execute(
            text("SELECT reloptions FROM pg_class WHERE relname = 'invoices'")
        ).one()
    assert options == ["toast_tuple_target=8160"]

    # The rival's transaction holds row 7 uncommitted while ours copies: our COPY
    # waits on the unique index, then fails when the rival commits.
    checked = threading.Event()
    result: list[tuple[int, int]] = []

    def ours() -> None:
        result.append(store.add_invoices(rows))

    with rival.engine.begin() as connection:
        repository._insert_postgresql(connection, rival.pending_rows([rows[7]]))
        worker = threading.Thread(target=ours)
        worker.start()
        # Wait until our statement is blocked on the rival's lock.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not checked.is_set():
            with engine.connect() as probe:
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND query LIKE 'COPY invoices%'"
                    )
                ).scalar_one()
            if waiting:
                checked.set()
            time.sleep(0.05)
        assert checked.is_set(), "our COPY never waited on the rival's row"
    worker.join(10)
    assert result == [(49, 1)]
    with engine.connect() as connection:
        stored = (
            connection.execute(select(InvoiceRow.invoice_id).order_by(InvoiceRow.id))
            .scalars()
            .all()
        )
    assert sorted(stored) == sorted(f"INV-{i:05d}" for i in range(50))
    assert stored[0] == "INV-00007"
    rival.engine.dispose()
    engine.dispose()


def test_a_driver_error_in_the_insert_is_a_sqlalchemy_error(database_url: str) -> None:
    """The insert goes to the driver directly; its errors still reach the consumer as
    SQLAlchemy errors, which it answers by pausing and retrying, not by exiting."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    store = Store(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE invoices RENAME TO invoices_away"))
    with pytest.raises(DBAPIError) as raised:
        store.add_invoices([_new(1)])
    assert "invoices" in str(raised.value.orig)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE invoices_away RENAME TO invoices"))
    assert store.add_invoices([_new(1)]) == (1, 0)
    engine.dispose()


def test_a_value_rebuilt_from_the_payload_comes_back_byte_for_byte(database_url: str) -> None:
    """The consumer stores an encoding instead of a second copy of a rebuildable value;
    the collector's dead letters still get the original bytes, and a downgrade to the
    revision before the encoding writes them back into source_value."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    store = Store(engine)
    codec = InvoiceCodec("avro", max_text_bytes=32768)
    base = {
        "invoice_id": "INV-1",
        "supplier": "Taj Hotels",
        "description": "Offsite ₹ rooms",
        "amount": "450000.00",
        "currency": "INR",
        "invoice_date": "2026-03-02",
        "raw_text": "\n".join(["Conference hall, 2 days"] * 60),
    }
    records = [
        {**base, "event_time": "2026-03-02T10:00:00.123+00:00"},
        {**base, "invoice_id": "INV-2"},
        {**base, "invoice_id": "INV-3", "currency": "inr"},  # upper-cased: kept as it came
    ]
    values = [codec.encode(record) for record in records]
    at = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    rows: list[NewInvoice] = []
    encodings = []
    for offset, value in enumerate(values):
        invoice, encoding = codec.decode_source(value, timestamp=at)
        encodings.append(encoding)
        rows.append(
            NewInvoice(
                invoice,
                5_000,
                at,
                source_topic="invoices",
                source_partition=0,
                source_offset=offset,
                source_key=invoice.invoice_id.encode(),
                source_value=None if encoding else value,
                source_encoding=encoding,
            )
        )
    assert encodings == ["avro", "avro-untimed", None]
    assert store.add_invoices(rows) == (3, 0)
    with engine.connect() as connection:
        stored = connection.execute(
            select(InvoiceRow.id, InvoiceRow.source_value).order_by(InvoiceRow.id)
        ).all()
    ids = [row_id for row_id, _ in stored]
    assert [value for _, value in stored] == [None, None, values[2]]
    assert (
        store.claim_batch(
            batch_key="b-1",
            trigger="size",
            model="claude-haiku-4-5",
            max_requests=10,
            max_bytes=10**9,
            now=at,
        )
        == 3
    )
    claimed = store.invoices_by_id("b-1", ids)
    assert [claimed[row_id].source_value for row_id in ids] == values
    assert [c.source_value for c in store.iter_batch_invoices("b-1")] == values
    assert [claimed[row_id].source_key for row_id in ids] == [b"INV-1", b"INV-2", b"INV-3"]
    without_sources = store.invoices_by_id("b-1", ids, sources=False).values()
    assert all(row.source_value is None for row in without_sources)

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    with engine.connect() as connection:
        restored = (
            connection.execute(text("SELECT source_value FROM invoices ORDER BY id"))
            .scalars()
            .all()
        )
    assert [bytes(value) for value in restored] == values
    upgrade_schema(engine)
    engine.dispose()


def test_the_partial_indexes_serve_the_batch_and_report_queries(database_url: str) -> None:
    """batch_key and classified_at are indexed only where set (migration 0006): the
    queries on them compare them to a value, which each store takes as implying that."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    postgresql = engine.dialect.name == "postgresql"
    explain = "EXPLAIN " if postgresql else "EXPLAIN QUERY PLAN "
    queries = {
        "ix_invoices_batch_key": "SELECT id FROM invoices WHERE batch_key = :key",
        "ix_invoices_classified_at": (
            "SELECT id FROM invoices WHERE classified_at >= :since AND classified_at < :until"
        ),
    }
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with engine.connect() as connection:
        if postgresql:
            connection.execute(text("SET enable_seqscan = off"))
            connection.execute(text("SET plan_cache_mode = force_generic_plan"))
        for index, query in queries.items():
            plan = connection.execute(
                text(explain + query), {"key": "b-1", "since": at, "until": at}
            ).all()
            assert index in " ".join(str(line) for line in plan), plan
    engine.dispose()


def _poll_messages(count: int) -> list[Any]:
    """A poll of clean records: own event times and Kafka ones, keys and none, texts
    beyond ASCII."""
    from confluent_kafka import Message

    codec = InvoiceCodec("avro", max_text_bytes=32_768)
    return [
        Message(
            topic="invoices",
            partition=i % 3,
            offset=10_000 + i,
            key=None if i % 4 == 0 else f"K-{i}".encode(),
            value=codec.encode(
                {
                    "invoice_id": f"INV-{i:05d}",
                    "supplier": "Café Coffee Day" if i % 2 else "Dell",
                    "description": "Laptops",
                    "amount": f"{i}.50",
                    "currency": "INR",
                    "invoice_date": "2026-03-01" if i % 3 else None,
                    "raw_text": f'Line "{i}"\n₹ {i}.50 😀 ' * 40 + "end",
                    "event_time": f"2026-03-01T12:00:00.{i % 1000:03d}+00:00" if i % 5 else None,
                }
            ),
            timestamp=(1, 1_772_366_400_000 + i) if i % 7 else (0, -1),
        )
        for i in range(count)
    ]


def _poll_rows(store: Store, *, pg_copy: bool) -> Any:
    from invoice_batch.consumer.rows import PollRows

    poll_rows = PollRows(
        InvoiceCodec("avro", max_text_bytes=32_768),
        store.datetime_to_db,
        model="claude-sonnet-4-5",
        max_tokens=1024,
        pg_copy=pg_copy,
    )
    poll_rows.start(datetime(2026, 3, 1, 23, 0, 0, 123456, tzinfo=UTC))
    return poll_rows


def _compiled_poll(count: int) -> tuple[list[repository.PendingRow], bytes]:
    """A poll's rows and binary COPY data from the compiled path, as the consumer
    makes them for PostgreSQL."""
    messages = _poll_messages(count)
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")  # no connection made
    poll_rows = _poll_rows(Store(engine), pg_copy=True)
    compiled = poll_rows.compiled(messages)
    copy_data = poll_rows.copy(messages)
    assert compiled is not None and copy_data is not None and None not in compiled
    # Repeated within the poll, a pair leaves it to the rows.
    assert poll_rows.copy([*messages, messages[3]]) is None
    return [row for row in compiled if row is not None], copy_data


def _stored(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text(
                    "SELECT status, attempts, invoice_id, content_hash, payload, request_bytes,"
                    " received_at, event_time, source_topic, source_partition, source_offset,"
                    " source_key, source_value, source_encoding FROM invoices ORDER BY id"
                )
            )
        ]


def _source_offset(row: tuple[object, ...]) -> int:
    offset = row[10]
    assert isinstance(offset, int)
    return offset


def test_postgresql_takes_the_compiled_paths_copy_data_as_the_rows(postgres_url: str) -> None:
    """The COPY data the compiled path writes stores exactly what the rows store,
    and reads back as the rows' columns when its COPY fails."""
    engine = make_engine(postgres_url)
    upgrade_schema(engine)
    store = Store(engine)
    rows, copy_data = _compiled_poll(300)
    assert repository._copy_columns(copy_data) == [
        list(column) for column in zip(*rows, strict=True)
    ]
    assert store.add_pending_rows(rows) == 300
    by_rows = _stored(store)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM invoices"))
    assert store.add_pending_copy(copy_data) == 300
    assert _stored(store) == by_rows
    assert by_rows[1][7] == datetime(2026, 3, 1, 12, 0, 0, 1000, tzinfo=UTC)  # its own
    assert by_rows[5][7] == datetime.fromtimestamp(1_772_366_400.005, UTC)  # Kafka's
    assert by_rows[0][7] is None  # neither
    # Read again (every pair stored already): the COPY fails, nothing is added.
    assert store.add_pending_copy(copy_data) == 0
    _assert_the_rest_go_in(store, lambda: store.add_pending_copy(copy_data), by_rows)
    engine.dispose()


def _assert_the_rest_go_in(store: Store, add: Callable[[], int], by_rows: list[Any]) -> None:
    """With a third of the pairs of the 300-row poll stored, ``add`` stores the other
    200, in the poll's order."""
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM invoices WHERE source_offset % 3 <> 0"))
    assert add() == 200
    stored = _stored(store)
    assert sorted(stored, key=_source_offset) == by_rows
    offsets = [_source_offset(row) for row in by_rows]
    assert [_source_offset(row) for row in stored[100:]] == [o for o in offsets if o % 3]


def test_a_sqlite_store_refuses_copy_data(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade_schema(engine)
    _, copy_data = _compiled_poll(5)
    with pytest.raises(ValueError, match="PostgreSQL"):
        Store(engine).add_pending_copy(copy_data)
    engine.dispose()


def test_sqlite_takes_the_compiled_paths_flat_values_as_the_rows(tmp_path: Path) -> None:
    """The flat values the compiled path gives SQLite store exactly what its rows
    store; pairs stored already are skipped and the rest go in, in the poll's order."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade_schema(engine)
    store = Store(engine)
    messages = _poll_messages(300)
    poll_rows = _poll_rows(store, pg_copy=False)
    rows, flat = poll_rows.compiled(messages), poll_rows.flat(messages)
    assert rows is not None and None not in rows and flat is not None
    assert poll_rows.flat([*messages, messages[3]]) is None  # a pair twice: the rows take it
    assert store.add_pending_rows(rows) == 300  # type: ignore[arg-type]
    by_rows = _stored(store)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM invoices"))
    assert store.add_pending_flat(flat) == 300
    assert _stored(store) == by_rows
    assert store.add_pending_flat(flat) == 0  # read again: every pair stored

    def add_then_sync() -> int:
        accepted = store.add_pending_flat(flat, sync=False)
        store.sync()
        return accepted

    _assert_the_rest_go_in(store, add_then_sync, by_rows)
    engine.dispose()


def test_postgresql_refuses_flat_values(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    with pytest.raises(ValueError, match="SQLite"):
        Store(engine).add_pending_flat(["INV-1"])
    engine.dispose()


def _deadlocks(engine: Any) -> int:
    """Deadlocks the server has broken in this database so far."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def _wait_for_a_lock_wait(engine: Any, statement: str) -> None:
    """Until a session running ``statement`` waits on a lock (at most 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as probe:
            if probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE :statement"
                ),
                {"statement": statement + "%"},
            ).scalar_one():
                return
        time.sleep(0.05)
    pytest.fail(f"{statement} never waited on the rival's row")


def _rival_against(
    ours: Callable[[], None],
    statement: str,
    engine: Any,
    rival: Store,
    first: NewInvoice,
    second: NewInvoice,
    result: list[int],
) -> None:
    """The rival stores the first pair; ``ours`` runs in a thread until its
    ``statement`` waits for that pair; then the rival needs the second pair, which
    ours holds: each waits for the other. The rival waits longer before looking for
    a deadlock, so ours finds it and is the one failed. Then checks the outcome."""
    before = _deadlocks(engine)
    with rival.engine.begin() as connection:
        connection.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        repository._insert_postgresql(connection, rival.pending_rows([first]))
        worker = threading.Thread(target=ours)
        worker.start()
        _wait_for_a_lock_wait(engine, statement)
        repository._insert_postgresql(connection, rival.pending_rows([second]))
    worker.join(30)
    rival.engine.dispose()
    _assert_a_deadlock_and_each_pair_once(engine, before, result)


def _assert_a_deadlock_and_each_pair_once(engine: Any, before: int, result: list[int]) -> None:
    """Ours stored only the other row (both pairs are the rival's), the server broke
    a deadlock, and each of the three invoices is stored once. Disposes ``engine``.

    Not always exactly one deadlock: once ours is rolled back to its savepoint, its
    INSERT … ON CONFLICT can take a pair back before the rival's waiting insert does,
    and the two deadlock again; that INSERT is then tried again (_ON_CONFLICT_ATTEMPTS),
    and ``result`` shows it succeeded."""
    assert result == [1]
    assert _deadlocks(engine) > before
    with engine.connect() as connection:
        stored = connection.execute(select(InvoiceRow.invoice_id)).scalars().all()
    assert sorted(stored) == ["INV-00001", "INV-00002", "INV-00003"]
    engine.dispose()


def test_postgresql_two_polls_sharing_pairs_in_opposite_orders_both_store(
    postgres_url: str,
) -> None:
    """The consumer's two writers copy at once. Two polls sharing two pairs in opposite
    orders each wait for the other on the unique index: the server fails one COPY as
    a deadlock, and that poll goes through INSERT … ON CONFLICT, storing each pair once."""
    engine = make_engine(postgres_url)
    upgrade_schema(engine)
    store, rival = Store(engine), Store(make_engine(postgres_url))
    first, second, other = _new(1), _new(2), _new(3)
    result: list[int] = []

    def ours() -> None:  # our poll: the second pair, another row, then the first pair
        result.append(store.add_pending_rows(store.pending_rows([second, other, first])))

    _rival_against(ours, "COPY invoices", engine, rival, first, second, result)


def test_postgresql_an_insert_on_conflict_that_deadlocks_is_tried_again(
    postgres_url: str,
) -> None:
    """The fallback after a failed COPY can meet the same rival again: its INSERT …
    ON CONFLICT holds one pair and waits for the rival's other, while the rival
    waits for the first. The server fails ours; rolled back to its savepoint, it is
    tried again once the rival has gone on, and stores what is not the rival's."""
    engine = make_engine(postgres_url)
    upgrade_schema(engine)
    store, rival = Store(engine), Store(make_engine(postgres_url))
    first, second, other = _new(1), _new(2), _new(3)
    result: list[int] = []

    def ours() -> None:  # the fallback alone: the second pair, another row, the first
        rows = store.pending_rows([second, other, first])
        with engine.begin() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                columns = [list(column) for column in zip(*rows, strict=True)]
                result.append(repository._insert_on_conflict(connection, cursor, columns))

    _rival_against(ours, "INSERT INTO invoices", engine, rival, first, second, result)


def test_sqlite_wal_is_checkpointed_in_the_background_as_the_consumer_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits far below the WAL limit, at which a commit checkpoints by itself: the
    rows reach the database file all the same, copied by the background checkpoint."""
    monkeypatch.setattr(checkpoints, "BACKGROUND_CHECKPOINT_BYTES", 4_000)
    path = tmp_path / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store = Store(engine)

    def in_the_file() -> int:
        """Rows in the database file alone, as a copy without its WAL reads them
        (-1 for a copy taken while a checkpoint was writing pages)."""
        copy = tmp_path / "copy.db"
        shutil.copyfile(path, copy)
        try:
            with contextlib.closing(sqlite3.connect(copy)) as connection:
                return int(connection.execute("SELECT count(*) FROM invoices").fetchone()[0])
        except sqlite3.DatabaseError:
            return -1

    assert store.add_invoices([_new(i) for i in range(3)]) == (3, 0)  # ~850 bytes each
    time.sleep(0.5)
    assert in_the_file() == 0  # in the WAL only: under the threshold
    assert store.add_invoices([_new(i) for i in range(3, 6)]) == (3, 0)  # over it
    deadline = time.monotonic() + 10
    while in_the_file() != 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_the_file() == 6
    engine.dispose()


@pytest.mark.parametrize(("setting", "expected"), [(None, 2), ("normal", 1)])
def test_sqlite_commits_reach_the_disk_unless_told_otherwise(
    tmp_path: Path, setting: str | None, expected: int
) -> None:
    """SQLITE_SYNCHRONOUS: full (2, the default) fsyncs the WAL at every commit, so a
    poll whose offsets the consumer commits survives a host crash; normal (1) only at
    checkpoints. Every connection of the store's pool gets it, the background
    checkpoints' included."""
    from invoice_batch.bootstrap import open_store
    from invoice_batch.settings import load_settings

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    if setting is not None:
        env["SQLITE_SYNCHRONOUS"] = setting
    store = open_store(load_settings(env))
    with store.engine.connect() as first, store.engine.connect() as second:
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == expected
    store.engine.dispose()
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        make_engine(env["DATABASE_URL"], sqlite_synchronous="off")


@pytest.mark.parametrize(("setting", "synced"), [(None, True), ("normal", False)])
def test_sqlite_commits_left_unsynced_are_synced_by_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, synced: bool
) -> None:
    """add_pending_rows(sync=False) commits without the WAL's fsync and leaves the
    connection as it found it (FULL for every later transaction); sync() then
    fdatasyncs the WAL. With SQLITE_SYNCHRONOUS=normal nothing is owed."""
    from invoice_batch.bootstrap import open_store
    from invoice_batch.settings import load_settings

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    if setting is not None:
        env["SQLITE_SYNCHRONOUS"] = setting
    store = open_store(load_settings(env))
    synced_files: list[str] = []
    monkeypatch.setattr(
        repository,
        "_fdatasync",
        lambda descriptor: synced_files.append(os.readlink(f"/proc/self/fd/{descriptor}")),
    )
    seen: list[int] = []
    insert = repository._insert_sqlite

    def observed(connection: Any, batch: Any) -> int:
        driver = connection.connection.driver_connection
        seen.append(driver.execute("PRAGMA synchronous").fetchone()[0])
        return insert(connection, batch)

    monkeypatch.setattr(repository, "_insert_sqlite", observed)
    rows = store.pending_rows([_new(i) for i in range(3)])
    assert store.add_pending_rows(rows, sync=False) == 3
    assert seen == [1]  # NORMAL inside: the commit does not wait for the disk
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == (2 if synced else 1)
    store.sync()
    assert synced_files == ([str(tmp_path / "store.db-wal")] if synced else [])
    assert store.add_pending_rows(store.pending_rows([_new(3)])) == 1  # sync=True: as it was
    assert seen == [1, 2 if synced else 1]
    store.engine.dispose()
