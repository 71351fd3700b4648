"""Every read and write the services make to the store, one method a transaction.

Callers may assume each public method is atomic: it commits before returning or
raises with nothing written. Methods that move rows between states guard on the
state they expect, so running one twice (after a crash, or from two processes)
changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from invoice_batch.consumer.flush_policy import BufferState
from invoice_batch.crash_points import crash_point
from invoice_batch.invoices import Invoice
from invoice_batch.pricing import Usage
from invoice_batch.schemas.codec import SourceEncoding, source_value_of
from invoice_batch.store.checkpoints import BackgroundCheckpoints
from invoice_batch.store.models import BatchRow, InvoiceRow

# Rows per statement for IN lists and multi-row inserts: under SQLite's 32,766
# bound-variable limit with room for every column, and small enough that a
# PostgreSQL statement stays well under a megabyte.
CHUNK = 2_000


# The columns add_invoices sends, in the order of its value tuples.
_NEW_COLUMNS = (
    "invoice_id",
    "content_hash",
    "payload",
    "request_bytes",
    "received_at",
    "event_time",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_key",
    "source_value",
    "source_encoding",
)
# PRAGMA synchronous: FULL, which fsyncs the WAL at every commit.
_SQLITE_FULL = 2
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has only fsync
# One multi-row INSERT per chunk: sqlite3 runs a statement in one sqlite3_step with
# the GIL released, where executemany takes it back after every row.
_SQLITE_ROWS_PER_STATEMENT = 2_000  # x 12 values: under the 32,766-variable bound


@lru_cache(maxsize=16)
def _insert_sqlite_sql(rows: int) -> str:
    row = f"('pending', 0, {', '.join('?' for _ in _NEW_COLUMNS)})"
    return (
        f"INSERT INTO invoices (status, attempts, {', '.join(_NEW_COLUMNS)}) "
        f"VALUES {', '.join(row for _ in range(rows))} "
        "ON CONFLICT (invoice_id, content_hash) DO NOTHING"
    )


# PostgreSQL, when a pair of the poll is stored already (a poll read again after a
# crash or a rebalance, or another consumer's row): the whole poll in one statement,
# each column an array parameter sent in binary, inserted in list order, conflicts
# skipped.
_INSERT_POSTGRESQL = (
    f"INSERT INTO invoices (status, attempts, {', '.join(_NEW_COLUMNS)}) "
    f"SELECT 'pending', 0, {', '.join(_NEW_COLUMNS)} FROM unnest("
    "%b::varchar[], %b::varchar[], %b::text[], %b::integer[], %b::timestamptz[], "
    "%b::timestamptz[], %b::varchar[], %b::integer[], %b::bigint[], %b::bytea[], %b::bytea[], "
    "%b::varchar[]"
    f") WITH ORDINALITY AS incoming ({', '.join(_NEW_COLUMNS)}, ord) ORDER BY ord "
    "ON CONFLICT (invoice_id, content_hash) DO NOTHING"
)
# Tries of that INSERT when it deadlocks with another writer's (_insert_on_conflict).
_ON_CONFLICT_ATTEMPTS = 3
# The new rows of a poll, streamed in binary: rows in stream order, and none of the
# array building and unnesting of a multi-row INSERT (half the server's time).
_COPY_POSTGRESQL = (
    f"COPY invoices (status, attempts, {', '.join(_NEW_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = (
    "varchar",
    "int4",
    "varchar",
    "varchar",
    "text",
    "int4",
    "timestamptz",
    "timestamptz",
    "varchar",
    "int4",
    "int8",
    "bytea",
    "bytea",
    "varchar",
)


def _insert_postgresql(connection: Connection, rows: Sequence[PendingRow] | bytes) -> int:
    """The rows whose pair is not stored yet; returns how many were inserted. They
    come as PendingRows, or as binary COPY data in ``_COPY_POSTGRESQL``'s columns.

    Nearly every poll is new rows only: they go by COPY, which has no ON CONFLICT. A
    pair stored already (committed, or by a transaction still open, which the COPY
    waits for) makes the COPY fail on the unique index: its savepoint is rolled back
    and the poll goes through INSERT … ON CONFLICT DO NOTHING instead. Looking the
    pairs up before every COPY cost a sixth of the insert to spare that rare retry.
    Two polls copied at once (the consumer's two writers) that share two pairs in
    opposite orders each wait for the other: the server breaks that deadlock by
    failing one COPY, which then takes the same way.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        try:
            # SQLAlchemy's savepoint, not psycopg's transaction(): with nothing sent yet
            # in this transaction, that one would open and commit a transaction of its own.
            with connection.begin_nested(), cursor.copy(_COPY_POSTGRESQL) as copy:
                if isinstance(rows, bytes):
                    copy.write(rows)
                else:
                    copy.set_types(_COPY_TYPES)
                    write_row = copy.write_row
                    for row in rows:
                        write_row(("pending", 0, *row))
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            columns = (
                _copy_columns(rows)
                if isinstance(rows, bytes)
                else [list(column) for column in zip(*rows, strict=True)]
            )
            return _insert_on_conflict(connection, cursor, columns)
        return int(cursor.rowcount)


# Binary COPY's timestamptz: microseconds since this instant.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _int_from_binary(value: bytes) -> int:
    return int.from_bytes(value, "big", signed=True)


# A binary COPY field's value, by its type in _COPY_TYPES.
_FROM_BINARY: dict[str, Callable[[bytes], object]] = {
    "varchar": bytes.decode,
    "text": bytes.decode,
    "int4": _int_from_binary,
    "int8": _int_from_binary,
    "timestamptz": lambda value: PG_EPOCH + timedelta(microseconds=_int_from_binary(value)),
    "bytea": bytes,
}


def _copy_columns(data: bytes) -> list[list[Any]]:
    """The columns of ``_INSERT_POSTGRESQL`` (``_NEW_COLUMNS``) read back from binary
    COPY data in ``_COPY_POSTGRESQL``'s columns: what a poll given as COPY data alone
    (``Store.add_pending_copy``) inserts when its COPY failed."""
    if not data.startswith(_COPY_SIGNATURE):
        raise ValueError("not PostgreSQL binary COPY data")
    position = len(_COPY_SIGNATURE) + 4  # the flags
    position += 4 + int.from_bytes(data[position : position + 4], "big")  # header extension
    decoders = [_FROM_BINARY[name] for name in _COPY_TYPES]
    columns: list[list[Any]] = [[] for _ in decoders]
    while (fields := _int_from_binary(data[position : position + 2])) != -1:
        if fields != len(decoders):
            raise ValueError(f"a COPY tuple of {fields} fields, not {len(decoders)}")
        position += 2
        for column, decode in zip(columns, decoders, strict=True):
            size = _int_from_binary(data[position : position + 4])
            position += 4
            if size < 0:
                column.append(None)
            else:
                column.append(decode(data[position : position + size]))
                position += size
    return columns[2:]  # status and attempts: the INSERT's own


def _insert_on_conflict(connection: Connection, cursor: Any, columns: list[list[Any]]) -> int:
    """``_INSERT_POSTGRESQL`` for a poll whose COPY failed; returns the rows inserted.

    The other transaction whose pairs failed the COPY may still be inserting the
    pairs this poll holds too, and each can then wait for the other again: the server
    fails one of them as a deadlock. Ours is rolled back to its savepoint and tried
    again; the other has gone on meanwhile, so its pairs are then conflicts to skip.
    """
    for attempt in range(1, _ON_CONFLICT_ATTEMPTS + 1):
        try:
            with connection.begin_nested():
                cursor.execute(_INSERT_POSTGRESQL, columns)
                return int(cursor.rowcount)
        except psycopg.errors.DeadlockDetected:
            if attempt == _ON_CONFLICT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _driver_error_base(exc: Exception) -> type[Exception]:
    return psycopg.Error if isinstance(exc, psycopg.Error) else sqlite3.Error


def _insert_sqlite(connection: Connection, values: list[object]) -> int:
    """Rows given as their values, row after row (``len(_NEW_COLUMNS)`` a row)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    accepted = 0
    step = _SQLITE_ROWS_PER_STATEMENT * len(_NEW_COLUMNS)
    for start in range(0, len(values), step):
        params = values[start : start + step]
        # sqlite3 counts the rows really inserted (a conflict counts 0).
        sql = _insert_sqlite_sql(len(params) // len(_NEW_COLUMNS))
        accepted += driver.execute(sql, params).rowcount
    return accepted


# The columns mark_done sets, in the order of its value tuples.
_DONE_COLUMNS = (
    "event_id",
    "api_batch_id",
    "department",
    "amount",
    "currency",
    "summary",
    "approval_required",
    "approval_reasons",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "classified_at",
    "published_at",
)


def _bind_processor(column: ColumnElement[Any], engine: Engine) -> Callable[[Any], object]:
    """What SQLAlchemy does to a value of ``column`` before the driver sees it."""
    processor = column.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    return processor or (lambda value: value)


def _chunks(items: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# A row for add_pending_rows, in _NEW_COLUMNS order: invoice_id, content_hash, payload,
# request_bytes, received_at and event_time (both through Store.datetime_to_db),
# source_topic, source_partition, source_offset, source_key, source_value and
# source_encoding (with an encoding, source_value is None: see ClaimedInvoice).
PendingRow = tuple[
    str,
    str,
    str,
    int,
    object,
    object,
    str | None,
    int | None,
    int | None,
    bytes | None,
    bytes | None,
    str | None,
]


@dataclass(frozen=True, slots=True)
class NewInvoice:
    invoice: Invoice
    request_bytes: int
    received_at: datetime
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_key: bytes | None = None
    source_value: bytes | None = None
    # How source_value is rebuilt from the invoice when it is left out (PendingRow).
    source_encoding: SourceEncoding | None = None


@dataclass(frozen=True, slots=True)
class ClaimedInvoice:
    """A row in a batch: enough to build its request, or its output event.

    ``source_value`` is the original record's value: stored as it came, or, for a row
    stored with a ``source_encoding``, rebuilt from the invoice, byte for byte the same
    (the consumer stores the encoding instead of a second copy of the invoice's text
    only when ``schemas.codec.read_invoice_source`` found the value rebuildable).
    """

    row_id: int
    attempts: int
    invoice: Invoice
    event_time: datetime | None
    source_key: bytes | None
    source_value: bytes | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    # The stored content hash: the event id derives from it (results.event_id_from).
    content_hash: str | None = None


@dataclass(frozen=True, slots=True)
class DoneResult:
    row_id: int
    event_id: str
    record: dict[str, object]
    usage: Usage
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class BatchCounts:
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        # A private in-memory SQLite database: one per connection, so one per thread.
        self.in_memory = self._dialect == "sqlite" and engine.url.database in (None, "", ":memory:")
        on_file = self._dialect == "sqlite" and not self.in_memory
        self._checkpoints = BackgroundCheckpoints(engine) if on_file else None
        # SQLite's WAL, which sync() makes durable after commits that skipped it.
        self._wal_path = os.path.abspath(str(engine.url.database)) + "-wal" if on_file else None
        self._sync_owed = False
        # UTCDateTime's conversion for this backend, for statements sent to the driver
        # directly (SQLite: naive-UTC text in SQLAlchemy's format; PostgreSQL: aware).
        self._datetime_to_db = _bind_processor(InvoiceRow.__table__.c.received_at, engine)
        self._mark_done_binds = {
            name: _bind_processor(InvoiceRow.__table__.c[name], engine)
            for name in ("approval_required", "cost_usd", "classified_at", "published_at")
        }
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._mark_done_sql = (
            "UPDATE invoices SET status = 'done', "
            + ", ".join(f"{name} = {mark}" for name in _DONE_COLUMNS)
            + f" WHERE id = {mark} AND batch_key = {mark} AND status = 'submitted'"
        )

    def ping(self) -> None:
        """Raises when the store cannot be reached."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # ----------------------------------------------------------------- consumer

    def add_invoices(self, rows: Sequence[NewInvoice]) -> tuple[int, int]:
        """Insert pending rows, skipping (invoice_id, content hash) pairs already stored.

        Returns (accepted, duplicates). One transaction for the whole list; rows get
        ids in list order (the flusher claims the oldest first).
        """
        accepted = self.add_pending_rows(self.pending_rows(rows))
        return accepted, len(rows) - accepted

    def pending_rows(self, rows: Sequence[NewInvoice]) -> list[PendingRow]:
        """``rows`` in the form ``add_pending_rows`` takes."""
        to_db = self.datetime_to_db
        pending: list[PendingRow] = []
        for row in rows:
            invoice = row.invoice
            payload, content_hash = invoice.stored_forms()
            pending.append(
                (
                    invoice.invoice_id,
                    content_hash,
                    payload,
                    row.request_bytes,
                    to_db(row.received_at),
                    to_db(invoice.event_time),
                    row.source_topic,
                    row.source_partition,
                    row.source_offset,
                    row.source_key,
                    row.source_value,
                    row.source_encoding,
                )
            )
        return pending

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name: ``sqlite`` or ``postgresql``."""
        return self._dialect

    def add_pending_rows(self, rows: Sequence[PendingRow], *, sync: bool = True) -> int:
        """``add_invoices`` for rows already in the driver's form; returns the rows inserted.

        The insert goes to the driver without SQLAlchemy's per-row parameter
        processing, which was most of the consumer's time: SQLite gets multi-row
        ``INSERT … ON CONFLICT DO NOTHING`` statements; PostgreSQL a binary COPY, or that
        INSERT when a pair is stored already (``_insert_postgresql``).
        The row counts are the rows really inserted. A pair repeated within ``rows``
        is sent once (its first occurrence).

        The statements run with the GIL released (the SQLite library or the server
        works while the driver waits), so a writer thread overlaps them with decoding.

        ``sync=False``: on a SQLite file, commit without waiting for the WAL's fsync;
        the rows are durable only once ``sync`` returns. The consumer's writer goes on
        to the next poll while another thread syncs, and stores this poll's offsets
        only after that. PostgreSQL ignores it.
        """
        seen: set[tuple[str, str]] = set()
        batch: list[PendingRow] = []
        for row in rows:
            key = (row[0], row[1])
            if key not in seen:
                seen.add(key)
                batch.append(row)
        if not batch:
            return 0

        if self._dialect == "sqlite":
            return self.add_pending_flat([value for row in batch for value in row], sync=sync)
        return self._insert_pending(
            lambda connection: _insert_postgresql(connection, batch), unsynced=False
        )

    def add_pending_flat(self, values: list[object], *, sync: bool = True) -> int:
        """``add_pending_rows`` on SQLite for rows given as their values alone, row after
        row (``PollRows.flat``: no pair twice); returns the rows inserted. The consumer
        sends a clean poll this way: no row tuples built, none taken apart again for
        the statement's parameters. PostgreSQL takes rows or COPY data: ValueError.
        """
        if self._dialect != "sqlite":
            raise ValueError("flat row values are for a SQLite store")
        if not values:
            return 0
        accepted = self._insert_pending(
            lambda connection: _insert_sqlite(connection, values),
            unsynced=not sync and self.syncs_apart,
        )
        if self._checkpoints is not None:
            width = len(_NEW_COLUMNS)
            self._checkpoints.committed(sum(map(len, cast("list[str]", values[2::width]))))
        return accepted

    def add_pending_copy(self, copy_data: bytes) -> int:
        """``add_pending_rows`` on PostgreSQL for rows given as binary COPY data alone
        (``PollRows.copy``: columns status, attempts, then a row's; no pair twice);
        returns the rows inserted. The consumer sends a clean poll this way, with no
        row objects built for it. When a pair is stored already the COPY fails, as it
        does for rows, and the rows, read back from the data, go through
        ``INSERT … ON CONFLICT``. SQLite takes rows only: ValueError.
        """
        if self._dialect != "postgresql":
            raise ValueError("binary COPY data is for a PostgreSQL store")
        return self._insert_pending(
            lambda connection: _insert_postgresql(connection, copy_data), unsynced=False
        )

    def _insert_pending(self, insert: Callable[[Connection], int], *, unsynced: bool) -> int:
        """One transaction around ``insert``; its row count."""
        try:
            with (
                self.engine.connect() as connection,
                self._unsynced_commit(connection) if unsynced else contextlib.nullcontext(),
                connection.begin(),
            ):
                accepted = insert(connection)
                crash_point("consume.before_db_commit")
        except (psycopg.Error, sqlite3.Error) as exc:
            # The statements go to the driver directly: raise its errors as the
            # SQLAlchemy ones every caller handles (the consumer pauses and retries).
            raise DBAPIError.instance(None, None, exc, _driver_error_base(exc)) from exc
        return accepted

    @contextlib.contextmanager
    def _unsynced_commit(self, connection: Connection) -> Iterator[None]:
        """SQLite: the transaction inside commits without its WAL fsync, which
        ``sync`` then owes (when the store's own setting is to fsync at commit)."""
        driver = connection.connection.driver_connection
        assert driver is not None
        (level,) = driver.execute("PRAGMA synchronous").fetchone()
        if int(level) < _SQLITE_FULL:  # SQLITE_SYNCHRONOUS=normal: no fsync at commit anyway
            yield
            return
        self._sync_owed = True
        driver.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            try:
                driver.execute(f"PRAGMA synchronous={int(level)}")
            except sqlite3.Error:
                # Never hand a connection that skips its fsyncs back to the pool.
                connection.invalidate()
                raise

    def sync(self) -> None:
        """Make every commit so far durable, as a commit with its own fsync would be:
        what ``add_pending_rows(sync=False)`` left to do. Raises OSError if it cannot.

        SQLite keeps committed pages in its WAL: one fdatasync of that file makes them
        all durable. Had a checkpoint copied them into the database file and the WAL
        started again (or been removed), the checkpoint synced the database first.
        PostgreSQL's commits are durable when they return: nothing to do.
        """
        if self._wal_path is None or not self._sync_owed:
            return
        try:
            descriptor = os.open(self._wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # removed after a full checkpoint, which synced the database file
        try:
            _fdatasync(descriptor)
        finally:
            os.close(descriptor)

    @property
    def syncs_apart(self) -> bool:
        """Whether ``add_pending_rows(sync=False)`` leaves an fsync to ``sync`` (a
        SQLite file); elsewhere both are the plain commit and a no-op."""
        return self._wal_path is not None

    def datetime_to_db(self, value: datetime | None) -> object:
        """An aware datetime as ``add_pending_rows`` sends it to this store's driver."""
        return None if value is None else self._datetime_to_db(value)

    def buffer_state(self) -> BufferState:
        with self.engine.connect() as connection:
            count, size, oldest = connection.execute(
                select(
                    func.count(InvoiceRow.id),
                    func.coalesce(func.sum(InvoiceRow.request_bytes), 0),
                    func.min(InvoiceRow.received_at),
                ).where(InvoiceRow.status == "pending")
            ).one()
            oldest_retry = connection.execute(
                select(func.min(InvoiceRow.retry_at)).where(
                    InvoiceRow.status == "pending", InvoiceRow.retry_at.is_not(None)
                )
            ).scalar()
        # min() of a UTCDateTime column comes back through the same type: aware UTC.
        return BufferState(
            pending_count=int(count),
            pending_bytes=int(size),
            oldest_received_at=oldest,
            oldest_retry_at=oldest_retry,
        )

    def claim_batch(
        self,
        *,
        batch_key: str,
        trigger: str,
        model: str,
        max_requests: int,
        max_bytes: int,
        now: datetime,
        received_before: datetime | None = None,
        retries_only: bool = False,
    ) -> int:
        """Step 1 of the submit protocol: move pending rows into a ``submitting`` batch.

        Takes the oldest pending rows while the request count and byte budget
        allow, marks them submitted with attempts + 1, and writes the batch row
        in the same transaction. Returns the number of rows claimed (0: no batch
        row written). Safe against a concurrent claimer: PostgreSQL skips rows
        another transaction holds; the status guard makes SQLite's serial
        writers see each other's claims.
        """
        query = (
            select(InvoiceRow.id, InvoiceRow.request_bytes)
            .where(InvoiceRow.status == "pending")
            .order_by(InvoiceRow.id)
            .limit(max_requests)
        )
        if received_before is not None:
            query = query.where(InvoiceRow.received_at < received_before)
        if retries_only:
            query = query.where(InvoiceRow.retry_at.is_not(None))
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as connection:
            if self._dialect == "sqlite":
                # Take the write lock first so the SELECT below sees a stable buffer.
                connection.execute(text("UPDATE batches SET key = key WHERE 0"))
            ids: list[int] = []
            total = 0
            for row_id, size in connection.execute(query):
                if ids and total + size > max_bytes:
                    break
                ids.append(row_id)
                total += size
            if not ids:
                return 0
            connection.execute(
                insert(BatchRow).values(
                    key=batch_key,
                    status="submitting",
                    trigger=trigger,
                    model=model,
                    request_count=len(ids),
                    request_bytes=total,
                    created_at=now,
                    succeeded=0,
                    errored=0,
                    canceled=0,
                    expired=0,
                    processing=len(ids),
                    polls=0,
                    input_tokens=0,
                    output_tokens=0,
                    cache_read_tokens=0,
                    cache_creation_tokens=0,
                    cost_usd=0,
                )
            )
            claimed = 0
            for chunk in _chunks(ids):
                claimed += connection.execute(
                    update(InvoiceRow)
                    .where(InvoiceRow.id.in_(chunk), InvoiceRow.status == "pending")
                    .values(
                        status="submitted",
                        batch_key=batch_key,
                        attempts=InvoiceRow.attempts + 1,
                        retry_at=None,
                    )
                ).rowcount
            if claimed != len(ids):
                connection.execute(
                    update(BatchRow)
                    .where(BatchRow.key == batch_key)
                    .values(request_count=claimed, processing=claimed)
                )
            return claimed

    def iter_batch_invoices(
        self, batch_key: str, *, only_submitted: bool = True
    ) -> Iterator[ClaimedInvoice]:
        """The batch's rows in id order, streamed (``yield_per``), not loaded at once."""
        query = select(InvoiceRow).where(InvoiceRow.batch_key == batch_key).order_by(InvoiceRow.id)
        if only_submitted:
            query = query.where(InvoiceRow.status == "submitted")
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=1000).execute(query)
            for row in result:
                yield _claimed(row)

    def iter_batch_payloads(self, batch_key: str) -> Iterator[tuple[int, int, str]]:
        """(row id, attempts, payload) of the batch's submitted rows in id order,
        streamed: only what a create body needs, as plain tuples (whole ORM rows, every
        column through its result processor, were most of the cost of a body)."""
        query = (
            select(InvoiceRow.id, InvoiceRow.attempts, InvoiceRow.payload)
            .where(InvoiceRow.batch_key == batch_key, InvoiceRow.status == "submitted")
            .order_by(InvoiceRow.id)
        )
        with self.engine.connect() as connection:
            yield from connection.execution_options(yield_per=2000).execute(query)

    def invoices_by_id(
        self, batch_key: str, row_ids: Iterable[int], *, sources: bool = True
    ) -> dict[int, ClaimedInvoice]:
        """Rows of this batch still awaiting a result, by row id.

        ``sources=False`` leaves out the original record (key, value, topic,
        partition, offset), which only a dead letter needs: half the bytes read."""
        found: dict[int, ClaimedInvoice] = {}
        ids = list(row_ids)
        # Only the columns a ClaimedInvoice needs, as plain tuples: the whole ORM row
        # (40 columns, each through its result processor) was a fifth of a chunk.
        columns = [
            InvoiceRow.id,
            InvoiceRow.attempts,
            InvoiceRow.payload,
            InvoiceRow.event_time,
            InvoiceRow.content_hash,
        ]
        if sources:
            columns += [
                InvoiceRow.source_key,
                InvoiceRow.source_value,
                InvoiceRow.source_topic,
                InvoiceRow.source_partition,
                InvoiceRow.source_offset,
                InvoiceRow.source_encoding,
            ]
        no_source = (None, None, None, None, None, None)
        loads, from_json = orjson.loads, Invoice.from_json_dict
        with self.engine.connect() as connection:
            for chunk in _chunks(ids):
                for row in connection.execute(
                    select(*columns).where(
                        InvoiceRow.id.in_(chunk),
                        InvoiceRow.batch_key == batch_key,
                        InvoiceRow.status == "submitted",
                    )
                ):
                    values: tuple[Any, ...] = tuple(row)
                    row_id, attempts, payload, event_time, content_hash = values[:5]
                    key, value, topic, partition, offset, encoding = (
                        values[5:] if sources else no_source
                    )
                    invoice = from_json(loads(payload))
                    found[row_id] = ClaimedInvoice(
                        row_id=row_id,
                        attempts=attempts,
                        invoice=invoice,
                        event_time=event_time,
                        source_key=key,
                        source_value=_source_value(value, invoice, encoding),
                        source_topic=topic,
                        source_partition=partition,
                        source_offset=offset,
                        content_hash=content_hash,
                    )
        return found

    def record_created(
        self, batch_key: str, api_batch_id: str, now: datetime, first_poll: datetime
    ) -> bool:
        """Step 4 of the submit protocol: the API accepted the batch. Idempotent."""
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    update(BatchRow)
                    .where(BatchRow.key == batch_key, BatchRow.status == "submitting")
                    .values(
                        status="open",
                        api_batch_id=api_batch_id,
                        submitted_at=now,
                        next_poll_at=first_poll,
                        processing_status="in_progress",
                    )
                ).rowcount
            )

    def release_batch(self, batch_key: str, error: str) -> int:
        """The create certainly did not happen: rows go back to pending, attempt undone."""
        with self.engine.begin() as connection:
            updated = connection.execute(
                update(BatchRow)
                .where(BatchRow.key == batch_key, BatchRow.status == "submitting")
                .values(status="released", last_error=error[:1000])
            ).rowcount
            if not updated:
                return 0
            return int(
                connection.execute(
                    update(InvoiceRow)
                    .where(InvoiceRow.batch_key == batch_key, InvoiceRow.status == "submitted")
                    .values(status="pending", batch_key=None, attempts=InvoiceRow.attempts - 1)
                ).rowcount
            )

    def submitting_batches(self) -> list[BatchRow]:
        with self.engine.connect() as connection:
            return [
                BatchRow(**row._mapping)
                for row in connection.execute(
                    select(*BatchRow.__table__.columns)
                    .where(BatchRow.status == "submitting")
                    .order_by(BatchRow.created_at)
                )
            ]

    def known_api_batch_ids(self, candidates: Iterable[str]) -> set[str]:
        ids = list(candidates)
        if not ids:
            return set()
        with self.engine.connect() as connection:
            return {
                batch_id
                for batch_id in connection.execute(
                    select(BatchRow.api_batch_id).where(BatchRow.api_batch_id.in_(ids))
                ).scalars()
                if batch_id is not None
            }

    # ---------------------------------------------------------------- collector

    def lease_due_batch(self, owner: str, now: datetime, lease: timedelta) -> BatchRow | None:
        """Take the lease of one open batch due for a poll; None when none is due.

        A lease whose holder died expires after ``lease``; then any collector
        takes the batch over.
        """
        with self.engine.begin() as connection:
            candidates = (
                connection.execute(
                    select(BatchRow.key)
                    .where(
                        BatchRow.status == "open",
                        BatchRow.next_poll_at <= now,
                        or_(BatchRow.lease_until.is_(None), BatchRow.lease_until < now),
                    )
                    .order_by(BatchRow.next_poll_at)
                    .limit(5)
                )
                .scalars()
                .all()
            )
            for key in candidates:
                taken = connection.execute(
                    update(BatchRow)
                    .where(
                        BatchRow.key == key,
                        BatchRow.status == "open",
                        or_(BatchRow.lease_until.is_(None), BatchRow.lease_until < now),
                    )
                    .values(lease_owner=owner, lease_until=now + lease)
                ).rowcount
                if taken:
                    row = connection.execute(
                        select(*BatchRow.__table__.columns).where(BatchRow.key == key)
                    ).one()
                    return BatchRow(**row._mapping)
        return None

    def renew_lease(self, batch_key: str, owner: str, until: datetime) -> bool:
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    update(BatchRow)
                    .where(BatchRow.key == batch_key, BatchRow.lease_owner == owner)
                    .values(lease_until=until)
                ).rowcount
            )

    def record_poll(
        self,
        batch_key: str,
        owner: str,
        *,
        processing_status: str,
        counts: BatchCounts,
        next_poll_at: datetime,
        ended_at: datetime | None = None,
    ) -> None:
        """Store what a poll saw and give the lease back."""
        with self.engine.begin() as connection:
            connection.execute(
                update(BatchRow)
                .where(BatchRow.key == batch_key, BatchRow.lease_owner == owner)
                .values(
                    processing_status=processing_status,
                    **_count_values(counts),
                    next_poll_at=next_poll_at,
                    polls=BatchRow.polls + 1,
                    ended_at=ended_at,
                    lease_owner=None,
                    lease_until=None,
                )
            )

    def release_lease(
        self, batch_key: str, owner: str, next_poll_at: datetime, error: str | None = None
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(BatchRow)
                .where(BatchRow.key == batch_key, BatchRow.lease_owner == owner)
                .values(
                    lease_owner=None, lease_until=None, next_poll_at=next_poll_at, last_error=error
                )
            )

    def set_publish_from(self, batch_key: str, owner: str, offsets: Mapping[int, int]) -> bool:
        """Record the publish intent before the first record of a pass is produced.

        False when the lease is no longer ``owner``'s (then it must not publish)."""
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    update(BatchRow)
                    .where(BatchRow.key == batch_key, BatchRow.lease_owner == owner)
                    .values(publish_from=encode_offsets(offsets))
                ).rowcount
            )

    def mark_done(
        self,
        batch_key: str,
        results: Sequence[DoneResult],
        now: datetime,
        *,
        publish_from: Mapping[int, int] | None = None,
    ) -> int:
        """Rows whose event the broker acknowledged. Guarded: a second call is a no-op.

        ``publish_from`` moves the batch's publish intent past the acknowledged
        records in the same transaction."""
        if not results and publish_from is None:
            return 0
        # One UPDATE run as the driver's executemany: SQLAlchemy's per-row parameter
        # processing was 40 % of the collector's time per chunk.
        bind = self._mark_done_binds
        published_at = bind["published_at"](now)
        params = [
            (
                result.event_id,
                record["batch_id"],
                record["department"],
                record["amount"],
                record["currency"],
                record["summary"],
                bind["approval_required"](record["approval_required"]),
                json.dumps(record["approval_reasons"]),
                record["model"],
                result.usage.input_tokens
                + result.usage.cache_read_tokens
                + result.usage.cache_creation_tokens,
                result.usage.output_tokens,
                bind["cost_usd"](result.cost_usd),
                bind["classified_at"](record["classified_at"]),
                published_at,
                result.row_id,
                batch_key,
            )
            for result in results
            for record in (result.record,)
        ]
        with self.engine.begin() as connection:
            changed = (
                int(connection.exec_driver_sql(self._mark_done_sql, params).rowcount)
                if params
                else 0
            )
            if publish_from is not None:
                connection.execute(
                    update(BatchRow)
                    .where(BatchRow.key == batch_key)
                    .values(publish_from=encode_offsets(publish_from))
                )
            return changed

    def mark_retry(self, batch_key: str, row_ids: Sequence[int], error: str, now: datetime) -> int:
        """Back to pending for another attempt (attempts already counts this one)."""
        changed = 0
        with self.engine.begin() as connection:
            for chunk in _chunks(list(row_ids)):
                changed += connection.execute(
                    update(InvoiceRow)
                    .where(
                        InvoiceRow.id.in_(chunk),
                        InvoiceRow.batch_key == batch_key,
                        InvoiceRow.status == "submitted",
                    )
                    .values(
                        status="pending", batch_key=None, retry_at=now, error_message=error[:500]
                    )
                ).rowcount
        return changed

    def mark_dlq(self, batch_key: str | None, row_ids: Sequence[int], code: str, error: str) -> int:
        changed = 0
        guard: list[ColumnElement[bool]] = [InvoiceRow.status.in_(["submitted", "pending"])]
        if batch_key is not None:
            guard.append(InvoiceRow.batch_key == batch_key)
        with self.engine.begin() as connection:
            for chunk in _chunks(list(row_ids)):
                changed += connection.execute(
                    update(InvoiceRow)
                    .where(InvoiceRow.id.in_(chunk), and_(*guard))
                    .values(status="dlq", error_code=code, error_message=error[:500])
                ).rowcount
        return changed

    def unresolved_row_ids(self, batch_key: str) -> list[int]:
        """Rows of the batch still submitted: after all results, these were missing."""
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(InvoiceRow.id).where(
                        InvoiceRow.batch_key == batch_key, InvoiceRow.status == "submitted"
                    )
                ).scalars()
            )

    def finish_batch(
        self,
        batch_key: str,
        owner: str,
        usage: Usage,
        cost: Decimal,
        now: datetime,
        *,
        counts: BatchCounts,
        ended_at: datetime | None,
    ) -> None:
        """The batch is collected: its final request counts, when the API ended it,
        and the usage and cost of the results processed in this pass."""
        with self.engine.begin() as connection:
            connection.execute(
                update(BatchRow)
                .where(BatchRow.key == batch_key)
                .values(
                    status="done",
                    done_at=now,
                    processing_status="ended",
                    **_count_values(counts),
                    ended_at=ended_at,
                    lease_owner=None,
                    lease_until=None,
                    publish_from=None,
                    input_tokens=BatchRow.input_tokens + usage.input_tokens,
                    output_tokens=BatchRow.output_tokens + usage.output_tokens,
                    cache_read_tokens=BatchRow.cache_read_tokens + usage.cache_read_tokens,
                    cache_creation_tokens=BatchRow.cache_creation_tokens
                    + usage.cache_creation_tokens,
                    cost_usd=BatchRow.cost_usd + cost,
                )
            )

    def open_batch_ages(self, now: datetime) -> tuple[int, float]:
        """(open batches, age in seconds of the oldest)."""
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                select(func.count(BatchRow.key), func.min(BatchRow.submitted_at)).where(
                    BatchRow.status.in_(["open", "submitting"])
                )
            ).one()
        if not oldest:
            return int(count), 0.0
        return int(count), (now - oldest).total_seconds()

    def recent_batches(self, limit: int = 20) -> list[BatchRow]:
        with self.engine.connect() as connection:
            return [
                BatchRow(**row._mapping)
                for row in connection.execute(
                    select(*BatchRow.__table__.columns)
                    .order_by(BatchRow.created_at.desc())
                    .limit(limit)
                )
            ]


def _count_values(counts: BatchCounts) -> dict[str, int]:
    """A batch row's request-count columns from what the API reported."""
    return {
        "processing": counts.processing,
        "succeeded": counts.succeeded,
        "errored": counts.errored,
        "canceled": counts.canceled,
        "expired": counts.expired,
    }


def encode_offsets(offsets: Mapping[int, int]) -> str:
    return json.dumps({str(partition): offset for partition, offset in sorted(offsets.items())})


def decode_offsets(stored: str | None) -> dict[int, int] | None:
    """A batch's ``publish_from`` column → {partition: offset}; None when unset."""
    if stored is None:
        return None
    return {int(partition): int(offset) for partition, offset in json.loads(stored).items()}


def _source_value(stored: bytes | None, invoice: Invoice, encoding: str | None) -> bytes | None:
    """The original record's value: as stored, or rebuilt from the invoice."""
    return stored if encoding is None else source_value_of(invoice, cast(SourceEncoding, encoding))


def _claimed(row: object) -> ClaimedInvoice:
    mapping = row._mapping  # type: ignore[attr-defined]
    invoice = Invoice.from_json_dict(json.loads(mapping["payload"]))
    encoding = mapping["source_encoding"]
    return ClaimedInvoice(
        row_id=mapping["id"],
        attempts=mapping["attempts"],
        invoice=invoice,
        event_time=mapping["event_time"],
        source_key=mapping["source_key"],
        source_value=_source_value(mapping["source_value"], invoice, encoding),
        source_topic=mapping["source_topic"],
        source_partition=mapping["source_partition"],
        source_offset=mapping["source_offset"],
        content_hash=mapping["content_hash"],
    )
