"""The consumer's insert path on both stores: one statement per poll, duplicates
(already stored, or repeated within the poll) skipped, rows in poll order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from invoice_batch.invoices import Invoice
from invoice_batch.store.models import InvoiceRow
from invoice_batch.store.repository import NewInvoice, Store
from invoice_batch.store.schema import make_engine, upgrade_schema


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
